// End-to-end: `deploy.ts --no-setup --deploy <hub>` with the REAL helm and kubectl of each
// toolchain (helm 3.17 + kubectl 1.32, helm 4.1 + kubectl 1.35: test/support/tools.ts; first on
// PATH, no stand-ins) against the simulated Kubernetes API of test/support/kube-api.ts.
// Run: node --import tsx --test test/e2e/deploy.test.ts (TEST_TOOLCHAINS=helm4 for one)
// Every test has its own fixture repository, API server, HOME and KUBECONFIG, so they run
// concurrently.
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { test, type TestContext } from 'node:test'
import { deploymentsTemplate } from '../support/charts.ts'
import { commit, git, tempDir, type RunResult } from '../support/harness.ts'
import { type KubeApi, type KubeApiOptions, type Pod } from '../support/kube-api.ts'
import { cluster as e2eCluster, forEachToolchain, ON, show } from '../support/e2e.ts'

// ---------------------------------------------------------------------------------------
// Fixture repository, built by code: hub-charts/<hub> depends on vendor/jupyterhub through a
// file:// repository, so `helm dep up` needs no network and `--set-string
// jupyterhub.singleuser.image.tag=...` lands in the dependency.

interface FixtureOptions {
  /** Adds a hub chart template that does not parse. */
  broken?: boolean
}

interface Fixture {
  repo: string
  hub: string
  /** A value of secrets/<hub>.yaml that the chart puts in its ConfigMap. */
  secret: string
}

const DEP_DEPLOYMENTS = deploymentsTemplate({
  vars: { user: 'printf "%s:%s" .Values.singleuser.image.name .Values.singleuser.image.tag' },
  images: { hub: '.Values.hub.image', 'user-placeholder': '$user' },
  env: { SINGLEUSER_IMAGE: '$user' },
})

const DEP_SERVICE = `apiVersion: v1
kind: Service
metadata:
  name: hub
spec:
  selector: {app: jupyterhub, component: hub, release: {{ .Release.Name }}}
  ports:
    - {name: http, port: 8081, targetPort: 8081}
`

const DEP_CONFIGMAP = `apiVersion: v1
kind: ConfigMap
metadata:
  name: hub-config
data:
  singleuser-tag: {{ .Values.singleuser.image.tag | quote }}
  cookie-secret: {{ .Values.hub.cookieSecret | quote }}
`

function makeFixture(opts: FixtureOptions = {}): Fixture {
  const repo = tempDir('deploy-e2e-repo-')
  const hub = `e2e${randomBytes(3).toString('hex')}`
  const secret = randomBytes(12).toString('hex')
  git(repo, 'init', '-q', '-b', 'main')
  const files: Record<string, string> = {
    '.gitignore': 'hub-charts/*/charts/\nhub-charts/*/Chart.lock\n',
    [`hub-charts/${hub}/Chart.yaml`]: [
      'apiVersion: v2', `name: ${hub}`, 'version: 0.1.0', 'dependencies:',
      '  - name: jupyterhub', '    version: 0.1.0', '    repository: file://../../vendor/jupyterhub', '',
    ].join('\n'),
    [`hub-charts/${hub}/values.yaml`]: [
      'jupyterhub:', '  singleuser:', '    image:', `      name: example/user-${hub}`, '      tag: set-on-deployment', '',
    ].join('\n'),
    'vendor/jupyterhub/Chart.yaml': 'apiVersion: v2\nname: jupyterhub\nversion: 0.1.0\n',
    'vendor/jupyterhub/values.yaml': [
      'hub:', '  image: example/hub:4.1', '  cookieSecret: ""',
      'singleuser:', '  image:', '    name: example/user', '    tag: latest', '',
    ].join('\n'),
    'vendor/jupyterhub/templates/deployments.yaml': DEP_DEPLOYMENTS,
    'vendor/jupyterhub/templates/service.yaml': DEP_SERVICE,
    'vendor/jupyterhub/templates/configmap.yaml': DEP_CONFIGMAP,
    [`secrets/${hub}.yaml`]: `jupyterhub:\n  hub:\n    cookieSecret: ${secret}\n  proxy:\n    secretToken: ${randomBytes(12).toString('hex')}\n`,
  }
  if (opts.broken) files[`hub-charts/${hub}/templates/broken.yaml`] = 'kind: ConfigMap\ndata: {{ .Values.jupyterhub.hub\n'
  commit(repo, files, 'chart and secrets')
  commit(repo, { [`user-images/${hub}/Dockerfile`]: `FROM scratch\nLABEL hub=${hub}\n` }, 'user image')
  return { repo, hub, secret }
}

/** The tag deploy.ts computes: abbreviated hash of the last commit touching user-images/<hub>. */
const userTag = (f: Fixture) => git(f.repo, 'log', '-n', '1', '--pretty=format:%h', '--', `user-images/${f.hub}`)

// ---------------------------------------------------------------------------------------
// One simulated cluster, HOME and KUBECONFIG per test; deploy.ts with real helm/kubectl.

const all = (r: RunResult) => `${r.stdout}\n${r.stderr}`
function exits(r: RunResult, code: number) {
  assert.equal(r.code, code, `expected exit ${code}: ${show(r)}`)
}
const revisions = (api: KubeApi, f: Fixture) => api.helmReleases(f.hub, f.hub).map((r) => [r.version, r.info.status])
const image = (api: KubeApi, f: Fixture, name: string) => api.get('deployments', f.hub, name)?.spec.template.spec.containers[0].image
/** The run's final error line (deploy.ts prints `ERROR: <one line>` last). */
const finalError = (r: RunResult) => r.stderr.trim().split('\n').at(-1) ?? ''

await forEachToolchain('deploy.ts --deploy with real helm and kubectl', (tools) => {
  /** One simulated cluster, HOME and KUBECONFIG per test (test/support/e2e.ts), the real helm and kubectl. */
  const cluster = (t: TestContext, opts: KubeApiOptions = {}) => e2eCluster(t, { tools, ...opts })
  const on = ON[tools.toolchain]

  test('installs, waits for every deployment, then upgrades to the new user image tag', { timeout: 80_000 }, async (t) => {
    const { api, deploy } = await cluster(t)
    const f = makeFixture()
    const tag1 = userTag(f)

    const first = await deploy(f, ['--no-setup', '--deploy', f.hub])
    exits(first, 0)
    assert.match(first.stderr, new RegExp(`Executing helm dep up\\n`))
    assert.match(first.stdout, /Saving 1 charts/, 'helm dep up vendored the file:// dependency')
    assert.ok(fs.existsSync(path.join(f.repo, 'hub-charts', f.hub, 'charts', 'jupyterhub-0.1.0.tgz')))
    assert.match(first.stdout, new RegExp(`Using example/user-${f.hub}:${tag1} as user image for ${f.hub}`.replace(/[.]/g, '\\.')))
    assert.match(first.stderr, new RegExp(`Executing helm upgrade --install --namespace ${f.hub} ${f.hub} hub-charts/${f.hub} .*--set-string jupyterhub\\.singleuser\\.image\\.tag=${tag1}`))
    assert.deepEqual(revisions(api, f), [[1, 'deployed']])
    assert.equal(image(api, f, 'user-placeholder'), `example/user-${f.hub}:${tag1}`)
    assert.equal(image(api, f, 'hub'), 'example/hub:4.1')
    assert.ok(api.get('services', f.hub, 'hub')?.spec.clusterIP)
    assert.equal(api.get('configmaps', f.hub, 'hub-config')?.data?.['cookie-secret'], f.secret, 'secrets/<hub>.yaml reached the chart')
    assert.ok(!all(first).includes(f.secret), 'the secret value is never printed')

    // the deployments were listed, then both rollouts waited for at once, output prefixed
    assert.match(first.stderr, new RegExp(`Executing and capturing kubectl --namespace ${f.hub} get deployments -o name`))
    const started = [...first.stderr.matchAll(/Executing kubectl rollout status --namespace \S+ --watch (\S+) --timeout=60s/g)].map((m) => m[1])
    assert.deepEqual(started.sort(), ['deployment.apps/hub', 'deployment.apps/user-placeholder'])
    assert.match(first.stdout, /^\[hub\] deployment "hub" successfully rolled out$/m)
    assert.match(first.stdout, /^\[user-placeholder\] deployment "user-placeholder" successfully rolled out$/m)

    // a new commit touching user-images/<hub>: the upgrade points the chart at its hash
    const full = commit(f.repo, { [`user-images/${f.hub}/Dockerfile`]: `FROM scratch\nLABEL hub=${f.hub} version=2\n` }, 'user image v2')
    const tag2 = userTag(f)
    assert.notEqual(tag2, tag1)
    assert.ok(full.startsWith(tag2) || tag2.startsWith(full))
    const second = await deploy(f, ['--no-setup', '--deploy', f.hub])
    exits(second, 0)
    assert.deepEqual(revisions(api, f), [[1, 'superseded'], [2, 'deployed']])
    assert.equal(image(api, f, 'user-placeholder'), `example/user-${f.hub}:${tag2}`)
    assert.equal(api.get('configmaps', f.hub, 'hub-config')?.data?.['singleuser-tag'], tag2)
    assert.match(second.stdout, /^\[user-placeholder\] deployment "user-placeholder" successfully rolled out$/m)
  })

  test('CLUSTER_PROVIDER=kubeconfig: setup deploys through a private copy of the repository\'s kubeconfig', { timeout: 65_000 }, async (t) => {
    const { api, deploy } = await cluster(t)
    const f = makeFixture()
    const file = path.join(tempDir(), 'kubeconfig')
    await api.writeKubeconfig(file)
    const kubeconfig = fs.readFileSync(file, 'utf8')
    commit(f.repo, { 'secrets/kubeconfig.yaml': kubeconfig }, 'cluster credentials')
    // The environment's KUBECONFIG leads nowhere: only the repository's file can reach the cluster.
    const r = await deploy(f, ['--deploy', f.hub], { CLUSTER_PROVIDER: 'kubeconfig', REGISTRY_PROVIDER: 'none', KUBECONFIG: '/nonexistent/kubeconfig' })
    exits(r, 0)
    assert.deepEqual(revisions(api, f), [[1, 'deployed']])
    const token = /token: (\S+)/.exec(kubeconfig)![1]
    assert.ok(!all(r).includes(token), 'the kubeconfig\'s token is masked')
  })

  test('helm --wait times out on a deployment that never becomes ready: exit 1 with diagnostics', { timeout: 60_000 }, async (t) => {
    const { api, deploy } = await cluster(t, { neverReady: (name) => name === 'hub' })
    const f = makeFixture()
    const r = await deploy(f, ['--no-setup', '--deploy', f.hub], { HELM_TIMEOUT: '3', ROLLOUT_TIMEOUT: '3s' })
    exits(r, 1)
    assert.match(r.stderr, new RegExp(`Executing helm upgrade --install .* ${on.wait} --timeout 3s `))
    assert.match(r.stderr, on.waitFailed, "helm's own error is relayed")
    assert.match(r.stderr, new RegExp(`ERROR: diagnostics for namespace ${f.hub}:`))
    assert.match(r.stderr, new RegExp(`Executing kubectl get events --namespace ${f.hub} --sort-by=\\.lastTimestamp`))
    assert.match(r.stdout, /Warning\s+BackOff\s+pod\/hub-\w+-\w+\s+Back-off pulling image "example\/hub:4\.1"/)
    assert.match(r.stderr, new RegExp(`Executing kubectl get pods --namespace ${f.hub}`))
    assert.match(r.stdout, /^hub-\w+-\w+\s+0\/1\s+ImagePullBackOff/m)
    assert.match(r.stderr, new RegExp(`Executing helm status ${f.hub} --namespace ${f.hub}`))
    assert.match(r.stdout, /^STATUS: failed$/m)
    assert.match(finalError(r), /^ERROR: helm upgrade .*exited with 1$/)
    assert.doesNotMatch(r.stderr, /kubectl rollout status/, 'no rollout after a failed upgrade')
    assert.deepEqual(revisions(api, f), [[1, 'failed']])
  })

  test('a rollout that does not finish within ROLLOUT_TIMEOUT: exit 1 with diagnostics', { timeout: 60_000 }, async (t) => {
    // The deployment changes once helm's wait has passed (as if someone edited it) to pods that
    // never become ready, so kubectl rollout status is what fails. (Helm 3's --wait would pass
    // with maxUnavailable 1 and no pod ready; Helm 4's watcher waits for every pod.)
    const broken = (_: string, pod: Pod) => pod.metadata.labels?.broken === 'true'
    const { api, deploy } = await cluster(t, { neverReady: broken })
    const f = makeFixture()
    let output = ''
    const breakAfterHelm = (d: Buffer) => {
      if (output.includes('get deployments -o name')) return
      output += d
      if (!output.includes('get deployments -o name')) return
      const dep = api.get('deployments', f.hub, 'user-placeholder')!
      const template = dep.spec.template
      template.metadata = { ...template.metadata, labels: { ...template.metadata?.labels, broken: 'true' } }
      api.put(dep)
    }
    const r = await deploy(f, ['--no-setup', '--deploy', f.hub], { HELM_TIMEOUT: '3', ROLLOUT_TIMEOUT: '3s' }, { onSpawn: (c) => c.stderr!.on('data', breakAfterHelm) })
    exits(r, 1)
    assert.deepEqual(revisions(api, f), [[1, 'deployed']], 'helm --wait passed')
    assert.match(r.stdout, /^\[hub\] deployment "hub" successfully rolled out$/m)
    assert.match(r.stdout, /^\[user-placeholder\] Waiting for deployment "user-placeholder" rollout to finish: 0 of 1 updated replicas are available\.\.\.$/m)
    assert.match(r.stderr, /^\[user-placeholder\] error: timed out waiting for the condition$/m)
    assert.match(r.stderr, new RegExp(`ERROR: diagnostics for namespace ${f.hub}:`))
    assert.match(r.stderr, /Executing kubectl get events /)
    assert.match(r.stdout, /Warning\s+Failed\s+pod\/user-placeholder-\w+-\w+\s+Failed to pull image "example\/user-e2e\w+:\w+": simulated pull failure/)
    assert.match(r.stderr, /Executing kubectl get pods /)
    assert.match(r.stdout, /^user-placeholder-\w+-\w+\s+0\/1\s+ImagePullBackOff/m)
    assert.match(r.stdout, /^hub-\w+-\w+\s+1\/1\s+Running/m)
    assert.match(r.stderr, /Executing helm status /)
    assert.match(r.stdout, /^STATUS: deployed$/m)
    assert.equal(finalError(r), 'ERROR: rollout of deployment.apps/user-placeholder did not finish within 3s')
  })

  test('a chart that does not render: exit 1, a clean error, no release', { timeout: 60_000 }, async (t) => {
    const { api, deploy } = await cluster(t)
    const f = makeFixture({ broken: true })
    const r = await deploy(f, ['--no-setup', '--deploy', f.hub])
    exits(r, 1)
    assert.match(r.stderr, new RegExp(`Error: .*parse error at \\(${f.hub}/templates/broken\\.yaml:\\d+\\): unclosed action`), "helm's reason is shown")
    assert.match(finalError(r), /^ERROR: helm upgrade .*exited with 1$/)
    assert.doesNotMatch(r.stderr, /^\s+at /m, 'no stack trace')
    assert.deepEqual(api.helmReleases(f.hub, f.hub), [], 'no release created')
    assert.deepEqual(api.list('deployments', f.hub), [])
    assert.doesNotMatch(r.stderr, /kubectl rollout status/)
  })

  test('a release left pending-upgrade by a helm upgrade killed mid-wait: refused with the repair command; --recover rolls back, then deploys', { timeout: 100_000 }, async (t) => {
    const c = await cluster(t)
    const { api, deploy, helm } = c
    const f = makeFixture()
    exits(await deploy(f, ['--no-setup', '--deploy', f.hub]), 0)
    // The real helm, killed while it waits for pods that never become ready (a cancelled CI job)
    api.setNeverReady((_, pod) => pod.spec.containers.some((container) => container.image?.endsWith(':interrupted')))
    const upgrade = spawn(tools.helm, ['upgrade', '--install', '--namespace', f.hub, f.hub, `hub-charts/${f.hub}`, '--wait', '--timeout', '60s', '--set-string', 'jupyterhub.singleuser.image.tag=interrupted'], {
      cwd: f.repo, stdio: 'ignore', env: { PATH: `${tools.binDir}${path.delimiter}${process.env.PATH}`, HOME: c.home, KUBECONFIG: c.kubeconfig },
    })
    const exited = new Promise((resolve) => upgrade.on('close', resolve))
    t.after(() => upgrade.kill('SIGKILL'))
    for (let i = 0; !image(api, f, 'user-placeholder')?.endsWith(':interrupted'); i++) {
      assert.ok(i < 600, `helm never applied the upgrade: ${JSON.stringify(revisions(api, f))}`)
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
    upgrade.kill('SIGKILL')
    await exited
    assert.deepEqual(revisions(api, f), [[1, 'deployed'], [2, 'pending-upgrade']], 'helm left the release pending-upgrade')
    api.setNeverReady(undefined)
    commit(f.repo, { [`user-images/${f.hub}/Dockerfile`]: `FROM scratch\nLABEL hub=${f.hub} version=2\n` }, 'user image v2')
    const before = image(api, f, 'user-placeholder')

    const refused = await deploy(f, ['--no-setup', '--deploy', f.hub])
    exits(refused, 1)
    const repair = `helm rollback ${f.hub} 1 --namespace ${f.hub} ${on.wait} --timeout 60s`
    assert.match(finalError(refused), /^ERROR: release \S+ is stuck in pending-upgrade \(revision 2/)
    assert.ok(finalError(refused).includes(`\`${repair}\``), `names the repair command: ${finalError(refused)}`)
    assert.match(finalError(refused), /--recover/)
    assert.doesNotMatch(refused.stderr, /diagnostics for namespace/, 'helm refused before changing anything: nothing to diagnose')
    assert.deepEqual(revisions(api, f), [[1, 'deployed'], [2, 'pending-upgrade']], 'nothing upgraded')
    assert.equal(image(api, f, 'user-placeholder'), before)
    // the command the message names does repair the release (checked below through --recover)

    const recovered = await deploy(f, ['--no-setup', '--deploy', '--recover', f.hub])
    exits(recovered, 0)
    assert.match(recovered.stderr, new RegExp(`WARNING: release ${f.hub} is stuck in pending-upgrade: recovering with ${repair}`))
    assert.match(recovered.stderr, new RegExp(`Executing ${repair}\\n(.|\\n)*Executing helm upgrade --install`))
    const history = revisions(api, f)
    // helm rollback does not rewrite the interrupted revision 2; only the last one counts
    assert.deepEqual(history, [[1, 'superseded'], [2, 'pending-upgrade'], [3, 'superseded'], [4, 'deployed']], 'rollback made revision 3, the upgrade 4')
    assert.equal(api.helmReleases(f.hub, f.hub)[2].info.description, 'Rollback to 1')
    assert.equal(image(api, f, 'user-placeholder'), `example/user-${f.hub}:${userTag(f)}`)
    const status = await helm('status', f.hub, '--namespace', f.hub, '-o', 'json')
    assert.equal(JSON.parse(status.stdout).info.status, 'deployed')
  })

  test('a first install left pending-install: refused with `helm uninstall`; --recover uninstalls, then installs', { timeout: 85_000 }, async (t) => {
    const { api, deploy } = await cluster(t)
    const f = makeFixture()
    api.seedHelmRelease({ name: f.hub, namespace: f.hub, status: 'pending-install', description: 'Initial install underway' })

    const refused = await deploy(f, ['--no-setup', '--deploy', f.hub])
    exits(refused, 1)
    assert.match(finalError(refused), /^ERROR: release \S+ is stuck in pending-install \(revision 1/)
    assert.ok(finalError(refused).includes(`\`helm uninstall ${f.hub} --namespace ${f.hub}\``), finalError(refused))
    assert.deepEqual(revisions(api, f), [[1, 'pending-install']], 'nothing installed')

    const recovered = await deploy(f, ['--no-setup', '--deploy', '--recover', f.hub])
    exits(recovered, 0)
    assert.match(recovered.stderr, new RegExp(`Executing helm uninstall ${f.hub} --namespace ${f.hub}\\n(.|\\n)*Executing helm upgrade --install`))
    assert.deepEqual(revisions(api, f), [[1, 'deployed']], 'a fresh install')
    assert.equal(image(api, f, 'user-placeholder'), `example/user-${f.hub}:${userTag(f)}`)
  })
})
