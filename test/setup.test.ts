// Setup phase: credentials in a private per-run directory, the password only on stdin.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import crypto from 'node:crypto'
import { makeRepo, runDeploy, tempDir, HELM2, HELM3, PASSWORD, PRIVATE_KEY_LINE, SETUP_COMMANDS } from './support/harness.ts'

const sha256 = (s: string) => crypto.createHash('sha256').update(s).digest('hex')

test('Helm 2 setup runs the original commands, with docker login --password-stdin', { timeout: 15_000 }, async () => {
  const r = await runDeploy(makeRepo(), ['staginghub'], { rules: [HELM2] })
  assert.equal(r.code, 0, r.stderr)
  assert.deepEqual(r.commands, ['helm version --client --short', ...SETUP_COMMANDS[2]])
})

test('Helm 3 setup has no helm init and no tiller wait', { timeout: 15_000 }, async () => {
  const r = await runDeploy(makeRepo(), ['staginghub'], { rules: [HELM3] })
  assert.equal(r.code, 0, r.stderr)
  assert.deepEqual(r.commands, ['helm version --client --short', ...SETUP_COMMANDS[3]])
})

test('configuration keys replace the hard-coded cluster, project, zone and Docker user', { timeout: 15_000 }, async () => {
  const r = await runDeploy(makeRepo(), ['staginghub'], {
    env: { GKE_CLUSTER: 'hubs', GKE_ZONE: 'europe-west4-a', GCP_PROJECT: 'uni-hubs', DOCKER_USERNAME: 'unibot', DOCKER_REGISTRY: 'ghcr.io' },
  })
  assert.equal(r.code, 0, r.stderr)
  assert.ok(r.commands.includes('gcloud container clusters get-credentials hubs --zone=europe-west4-a --project=uni-hubs'))
  assert.ok(r.commands.includes('docker login -u unibot --password-stdin ghcr.io'))
})

test('the Docker password reaches docker login on stdin only, never argv or logs', { timeout: 15_000 }, async () => {
  const r = await runDeploy(makeRepo(), ['--verbose', 'staginghub'])
  assert.equal(r.code, 0, r.stderr)
  const login = r.calls.find((c) => c.tool === 'docker' && c.argv[0] === 'login')!
  assert.equal(login.stdinSha256, sha256(PASSWORD))
  for (const c of r.calls) assert.ok(!c.argv.join(' ').includes(PASSWORD), `argv of ${c.tool}`)
  assert.ok(!(r.stdout + r.stderr).includes(PASSWORD))
})

test('a secret a tool prints is redacted from the relayed output', { timeout: 15_000 }, async () => {
  const r = await runDeploy(makeRepo(), ['staginghub'], {
    rules: [HELM3, { tool: 'gcloud', match: 'get-credentials', stdout: `debug: password=${PASSWORD} key=${PRIVATE_KEY_LINE}\n` }],
  })
  assert.equal(r.code, 0, r.stderr)
  assert.match(r.stdout, /debug: password=\*\*\* key=\*\*\*/)
  assert.ok(!(r.stdout + r.stderr).includes(PRIVATE_KEY_LINE))
})

test('setup writes credentials to a private per-run dir that later commands inherit', { timeout: 15_000 }, async () => {
  const repo = makeRepo()
  const r = await runDeploy(repo, ['--deploy', 'staginghub'], {
    rules: [HELM3, { tool: 'gcloud', match: 'get-credentials', touch: 'KUBECONFIG' }, { tool: 'kubectl', match: 'get deployments', stdout: '' }],
  })
  assert.equal(r.code, 0, r.stderr)
  const kubeconfig = r.calls.find((c) => c.argv.includes('get-credentials'))!.env.KUBECONFIG!
  assert.ok(kubeconfig.startsWith(os.tmpdir()), kubeconfig)
  assert.ok(!kubeconfig.startsWith(r.home))
  for (const c of r.calls.slice(1)) {
    assert.equal(c.env.KUBECONFIG, kubeconfig, `${c.tool} ${c.argv.join(' ')}`)
    assert.equal(path.dirname(c.env.CLOUDSDK_CONFIG!), path.dirname(kubeconfig))
    assert.equal(path.dirname(c.env.DOCKER_CONFIG!), path.dirname(kubeconfig))
  }
  assert.ok(!fs.existsSync(path.join(r.home, '.kube')), '~/.kube untouched')
  assert.ok(!fs.existsSync(path.join(r.home, '.docker')), '~/.docker untouched')
  assert.ok(!fs.existsSync(path.dirname(kubeconfig)), 'the private dir is removed after the run')
})

test('the private DOCKER_CONFIG keeps the user\'s CLI plugins (buildx) reachable', { timeout: 15_000 }, async () => {
  const repo = makeRepo()
  const userDocker = tempDir('docker-cfg-')
  fs.mkdirSync(path.join(userDocker, 'cli-plugins'))
  const r = await runDeploy(repo, ['staginghub'], { env: { DOCKER_CONFIG: userDocker } })
  assert.equal(r.code, 0, r.stderr)
  const login = r.calls.find((c) => c.argv[0] === 'login')!
  assert.notEqual(login.env.DOCKER_CONFIG, userDocker)
  assert.equal(login.dockerPluginsLinked, true)
})

test('--no-setup uses the user\'s own configuration as is', { timeout: 15_000 }, async () => {
  const r = await runDeploy(makeRepo(), ['--no-setup', '--deploy', 'staginghub'], {
    env: { KUBECONFIG: '/home/someone/.kube/config', DOCKER_CONFIG: undefined },
  })
  assert.equal(r.code, 0, r.stderr)
  assert.ok(!r.commands.some((c) => c.startsWith('gcloud') || c.startsWith('docker login')))
  for (const c of r.calls) assert.equal(c.env.KUBECONFIG, '/home/someone/.kube/config')
})
