// The command line and bad input: each mistake is one clear line, exit 2, nothing run.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { makeRepo, runDeploy, git, tempDir, standinBin, assertUsageError, HELM3 } from './support/harness.ts'

test('--help lists the flags and the exit codes', { timeout: 15_000 }, async () => {
  const r = await runDeploy(makeRepo(), ['--help'])
  assert.equal(r.code, 0)
  for (const flag of ['--no-setup', '--build', '--push', '--deploy', '--dry-run', '--env-file', '--list', '--plugin']) assert.match(r.stdout, new RegExp(flag))
  assert.match(r.stdout, /2 usage or configuration error/)
})

test('--version prints the package version', { timeout: 15_000 }, async () => {
  const r = await runDeploy(makeRepo(), ['--version'])
  assert.equal(r.code, 0)
  assert.match(r.stdout, /^deploy\.ts \d+\.\d+\.\d+/)
})

test('--list prints the discovered charts, monitoring last', { timeout: 15_000 }, async () => {
  const repo = makeRepo({ hubs: ['staginghub', 'ea-hub'], monitoring: true })
  fs.mkdirSync(path.join(repo, 'hub-charts/not-a-chart'))
  const r = await runDeploy(repo, ['--list'])
  assert.equal(r.code, 0)
  assert.deepEqual(r.stdout.trim().split('\n'), ['ea-hub', 'staginghub', 'monitoring'])
})

test('no chart name: exit 2 listing the valid charts', { timeout: 15_000 }, async () => {
  assertUsageError(await runDeploy(makeRepo(), ['--deploy']), /no chart name given; valid charts: staginghub/)
})

test('unknown chart: exit 2 listing the valid charts', { timeout: 15_000 }, async () => {
  assertUsageError(await runDeploy(makeRepo({ hubs: ['staginghub', 'ea-hub'] }), ['--deploy', 'nope']), 'unknown chart "nope"; valid charts: ea-hub, staginghub')
})

test('a chart name is a release name: 53 characters accepted (chart and STAGING_CHART), 54 refused', { timeout: 25_000 }, async () => {
  const longest = `h${'x'.repeat(51)}1`
  const over = `h${'x'.repeat(52)}1`
  assert.deepEqual([longest.length, over.length], [53, 54])
  const repo = makeRepo({ hubs: ['staginghub', longest, over] })
  const [list, ok, refused, staging] = await Promise.all([
    runDeploy(repo, ['--list']),
    runDeploy(repo, ['--dry-run', '--no-setup', '--deploy', longest], { env: { STAGING_CHART: longest } }),
    runDeploy(repo, ['--dry-run', '--no-setup', '--deploy', over]),
    runDeploy(repo, ['--dry-run', '--no-setup', '--deploy', longest], { env: { STAGING_CHART: over } }),
  ])
  assert.deepEqual(list.stdout.trim().split('\n'), [longest, 'staginghub'])
  assert.equal(ok.code, 0, ok.stderr)
  assert.match(ok.stderr, new RegExp(`Executing helm upgrade --install --namespace ${longest} ${longest} hub-charts/${longest} `))
  assertUsageError(refused, `chart name "${over}" is not a valid release name (lowercase letters, digits and -, at most 53)`)
  assertUsageError(staging, `STAGING_CHART=${over}: not a chart name`)
})

test('unknown flag: exit 2 naming it', { timeout: 15_000 }, async () => {
  assertUsageError(await runDeploy(makeRepo(), ['--deplyo', 'staginghub']), 'unknown option --deplyo')
})

test('--push without --build: exit 2 naming the fix, nothing run (it would push nothing)', { timeout: 15_000 }, async () => {
  assertUsageError(await runDeploy(makeRepo(), ['--no-setup', '--push', 'staginghub']), '--push pushes only what this run builds: add --build')
})

test('missing secrets/<chart>.yaml for a deploy', { timeout: 15_000 }, async () => {
  const repo = makeRepo()
  git(repo, 'rm', '-q', 'secrets/staginghub.yaml')
  assertUsageError(await runDeploy(repo, ['--no-setup', '--deploy', 'staginghub']), 'secrets/staginghub.yaml: the chart\'s secret values file not found')
})

test('a git-crypt-locked secrets file names the file and git-crypt unlock', { timeout: 15_000 }, async () => {
  const repo = makeRepo()
  fs.writeFileSync(path.join(repo, 'secrets/staginghub.yaml'), Buffer.concat([Buffer.from('\0GITCRYPT\0'), Buffer.from([0x8f, 0x01, 0xff])]))
  assertUsageError(await runDeploy(repo, ['--no-setup', '--deploy', 'staginghub']), 'secrets/staginghub.yaml is encrypted: run `git-crypt unlock` first')
})

test('missing Docker password file when setup runs', { timeout: 15_000 }, async () => {
  assertUsageError(await runDeploy(makeRepo({ noSetupSecrets: true }), ['staginghub']), /secrets\/gke-auth-key\.json: GCLOUD_KEY_FILE .* not found/)
  const repo = makeRepo()
  git(repo, 'rm', '-q', 'secrets/dockerhub')
  assertUsageError(await runDeploy(repo, ['staginghub']), /secrets\/dockerhub: DOCKER_PASSWORD_FILE .* not found/)
})

test('a chart dir whose Chart.yaml is not valid', { timeout: 15_000 }, async () => {
  const repo = makeRepo()
  fs.writeFileSync(path.join(repo, 'hub-charts/staginghub/Chart.yaml'), 'name: [unclosed\n')
  assertUsageError(await runDeploy(repo, ['--no-setup', '--deploy', 'staginghub']), /hub-charts\/staginghub\/Chart\.yaml: not valid YAML/)
  fs.writeFileSync(path.join(repo, 'hub-charts/staginghub/Chart.yaml'), 'apiVersion: v2\n')
  assertUsageError(await runDeploy(repo, ['--no-setup', '--deploy', 'staginghub']), /Chart\.yaml: needs at least a name and a version/)
})

test('not inside a git repository', { timeout: 15_000 }, async () => {
  const dir = tempDir()
  fs.mkdirSync(path.join(dir, 'hub-charts/staginghub'), { recursive: true })
  fs.writeFileSync(path.join(dir, 'hub-charts/staginghub/Chart.yaml'), 'name: staginghub\nversion: 0.1.0\n')
  assertUsageError(await runDeploy(dir, ['--no-setup', '--deploy', 'staginghub'], { env: { GIT_CEILING_DIRECTORIES: path.dirname(dir) } }), /is not a git repository/)
})

test('a shallow clone is refused before any build or deploy', { timeout: 15_000 }, async () => {
  const origin = makeRepo()
  const clone = tempDir()
  git(clone, 'clone', '-q', '--depth', '1', `file://${origin}`, 'repo')
  assertUsageError(await runDeploy(path.join(clone, 'repo'), ['--no-setup', '--build', 'staginghub']), /shallow clone.*git fetch --unshallow/)
})

test('a tool missing from PATH is named with how to install it', { timeout: 15_000 }, async () => {
  const bin = standinBin(['gcloud', 'kubectl', 'docker'])
  for (const tool of ['git', 'bash', 'node']) {
    const real = (process.env.PATH ?? '').split(':').map((d) => path.join(d, tool)).find((p) => fs.existsSync(p))!
    fs.symlinkSync(real, path.join(bin, tool))
  }
  const r = await runDeploy(makeRepo(), ['--no-setup', '--deploy', 'staginghub'], { path: bin, noStandins: true })
  assertUsageError(r, 'helm not found on PATH: install Helm 4')
})

test('a malformed .env names the file and line', { timeout: 15_000 }, async () => {
  const repo = makeRepo()
  fs.writeFileSync(path.join(repo, '.env'), 'GKE_ZONE=europe-west1-b\nthis is not an assignment\n')
  assertUsageError(await runDeploy(repo, ['--no-setup', '--deploy', 'staginghub']), '.env:2: not a KEY=VALUE line')
})

test('--env-file (--dotenv under Node 20) naming a missing file', { timeout: 15_000 }, async () => {
  const flag = process.env.DEPLOY_RUNTIME === 'deno' ? '--env-file' : '--dotenv'
  assertUsageError(await runDeploy(makeRepo(), [flag, 'prod.env', '--deploy', 'staginghub']), 'prod.env: no such env file')
})

test('--dotenv reads configuration from the named file; the environment still wins', { timeout: 15_000 }, async () => {
  const repo = makeRepo()
  fs.writeFileSync(path.join(repo, 'prod.env'), 'GKE_CLUSTER=prod-cluster\nGKE_ZONE=europe-west1-b\n')
  const r = await runDeploy(repo, ['--dotenv', 'prod.env', 'staginghub'], { env: { GKE_ZONE: 'asia-east1-a' } })
  assert.equal(r.code, 0, r.stderr)
  assert.ok(r.commands.includes('gcloud container clusters get-credentials prod-cluster --zone=asia-east1-a --project=ea-jupyter'), r.commands.join('\n'))
})

test('a timeout that is not a duration is a configuration error', { timeout: 15_000 }, async () => {
  const r = await runDeploy(makeRepo(), ['--no-setup', '--deploy', 'staginghub'], { env: { ROLLOUT_TIMEOUT: 'soon' } })
  assertUsageError(r, 'ROLLOUT_TIMEOUT=soon: not a duration')
})

test('an external command that fails exits 1 with the command named', { timeout: 15_000 }, async () => {
  const r = await runDeploy(makeRepo(), ['--no-setup', '--deploy', 'staginghub'], {
    rules: [HELM3, { tool: 'helm', match: '^dep up', exit: 1, stderr: 'Error: no repository definition for https://hub.jupyter.org/helm-chart/\n' }],
  })
  assert.equal(r.code, 1)
  assert.match(r.stderr, /ERROR: helm dep up exited with 1/)
  assert.ok(!r.commands.some((c) => c.startsWith('helm upgrade')))
})

test('an image dir with no commits is refused before anything runs', { timeout: 15_000 }, async () => {
  const repo = makeRepo()
  fs.mkdirSync(path.join(repo, 'hub-images/staginghub'), { recursive: true })
  fs.writeFileSync(path.join(repo, 'hub-images/staginghub/Dockerfile'), 'FROM scratch\n')
  assertUsageError(await runDeploy(repo, ['--build', 'staginghub']), 'hub-images/staginghub has no commits: commit it before building or deploying')
})
