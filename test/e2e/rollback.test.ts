// End-to-end: `deploy.ts --no-setup --deploy --rollback-on-failure <hub>` with the REAL helm and
// kubectl of each toolchain (helm 3.17 + kubectl 1.32, helm 4.1 + kubectl 1.35) against the
// simulated Kubernetes API: a new image that never becomes
// ready, a health check that fails, a first install that fails. What the release history and
// the deployment look like afterwards is what real helm did.
// Run: node --import tsx --test test/e2e/rollback.test.ts
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import path from 'node:path'
import { after, test, type TestContext } from 'node:test'
import { deploymentsTemplate } from '../support/charts.ts'
import { commit, git, tempDir, ROOT, type RunResult } from '../support/harness.ts'
import { startServer, stopServers, type TestServer } from '../support/http.ts'
import type { KubeApi, KubeApiOptions, NeverReady } from '../support/kube-api.ts'
import { cluster as e2eCluster, forEachToolchain, ON, show } from '../support/e2e.ts'

interface Fixture {
  repo: string
  hub: string
}

function makeFixture(): Fixture {
  const repo = tempDir('rollback-e2e-repo-')
  const hub = `rb${randomBytes(3).toString('hex')}`
  git(repo, 'init', '-q', '-b', 'main')
  commit(repo, {
    '.gitignore': 'hub-charts/*/charts/\nhub-charts/*/Chart.lock\n',
    [`hub-charts/${hub}/Chart.yaml`]: `apiVersion: v2\nname: ${hub}\nversion: 0.1.0\ndependencies:\n  - name: jupyterhub\n    version: 0.1.0\n    repository: file://../../vendor/jupyterhub\n`,
    [`hub-charts/${hub}/values.yaml`]: `jupyterhub:\n  singleuser:\n    image:\n      name: example/user-${hub}\n      tag: set-on-deployment\n`,
    'vendor/jupyterhub/Chart.yaml': 'apiVersion: v2\nname: jupyterhub\nversion: 0.1.0\n',
    'vendor/jupyterhub/values.yaml': 'singleuser:\n  image:\n    name: example/user\n    tag: latest\n',
    // The user image runs in a deployment: a new tag is a new rollout.
    'vendor/jupyterhub/templates/deployments.yaml': deploymentsTemplate({
      vars: { user: 'printf "%s:%s" .Values.singleuser.image.name .Values.singleuser.image.tag' },
      images: { 'user-placeholder': '$user' },
    }),
    [`secrets/${hub}.yaml`]: `jupyterhub:\n  proxy:\n    secretToken: ${randomBytes(12).toString('hex')}\n`,
  }, 'chart')
  commit(repo, { [`user-images/${hub}/Dockerfile`]: 'FROM scratch\n' }, 'user image')
  return { repo, hub }
}

/** A new commit of the user image: the next deploy uses a new tag. */
function newImage(f: Fixture): string {
  commit(f.repo, { [`user-images/${f.hub}/Dockerfile`]: `FROM scratch\nLABEL v=${randomBytes(3).toString('hex')}\n` }, 'user image, new')
  return userTag(f)
}

const userTag = (f: Fixture) => git(f.repo, 'log', '-n', '1', '--pretty=format:%h', '--', `user-images/${f.hub}`)

const servers: TestServer[] = []

function exits(r: RunResult, code: number) {
  assert.equal(r.code, code, `expected exit ${code}: ${show(r)}`)
}
const releases = (api: KubeApi, f: Fixture) => api.helmReleases(f.hub, f.hub)
const revisions = (api: KubeApi, f: Fixture) => releases(api, f).map((r) => [r.version, r.info.status])
const image = (api: KubeApi, f: Fixture) => api.get('deployments', f.hub, 'user-placeholder')?.spec.template.spec.containers[0].image
/** Pods of an image that never become ready: its pulls fail (the simulated kubelet). */
const brokenImage = (tag: string): NeverReady => (_deployment, pod) => pod.spec.containers.some((c) => c.image?.endsWith(`:${tag}`))

await forEachToolchain('deploy.ts --rollback-on-failure with real helm and kubectl', (tools) => {
  /** One simulated cluster, HOME and KUBECONFIG per test (test/support/e2e.ts), with short helm and rollout bounds. */
  const cluster = (t: TestContext, opts: KubeApiOptions = {}) => e2eCluster(t, { tools, env: { HELM_TIMEOUT: '30', ROLLOUT_TIMEOUT: '30s' }, ...opts })
  const on = ON[tools.toolchain]
  after(async () => {
    await Promise.all(servers.map((s) => s.close()))
    await stopServers()
  }, { timeout: 30_000 })

  test('a new image that never becomes ready: revision 2 failed, the release back on 1 (as revision 3), the old image running', { timeout: 70_000 }, async (t) => {
    const { api, deploy } = await cluster(t)
    const f = makeFixture()
    const good = userTag(f)
    exits(await deploy(f, ['--no-setup', '--deploy', f.hub]), 0)
    assert.deepEqual(revisions(api, f), [[1, 'deployed']])
    const bad = newImage(f)
    api.setNeverReady(brokenImage(bad))

    const r = await deploy(f, ['--no-setup', '--deploy', '--rollback-on-failure', f.hub], { HELM_TIMEOUT: '5' })
    exits(r, 1)
    assert.match(r.stderr, on.waitFailed, "helm's --wait gave up")
    assert.match(r.stderr, new RegExp(`WARNING: ${f.hub} failed after helm upgrade made revision 2: rolling back to revision 1, the one live before this run`))
    assert.match(r.stderr, new RegExp(`Executing helm rollback ${f.hub} 1 --namespace ${f.hub} ${on.wait} --timeout 5s`))
    assert.match(r.stdout, /Rollback was a success! Happy Helming!/)
    assert.match(r.stdout, /^\[user-placeholder\] deployment "user-placeholder" successfully rolled out$/m, 'the rollback\'s rollout was waited for')
    assert.match(r.stderr, new RegExp(`WARNING: ${f.hub} rolled back to revision 1`))
    assert.match(r.stderr.trim().split('\n').at(-1)!, /^ERROR: helm upgrade .*exited with 1$/, 'the run fails with the upgrade\'s error')
    // Real helm: the failed upgrade stays revision 2; the rollback is a new revision 3.
    assert.deepEqual(revisions(api, f), [[1, 'superseded'], [2, 'failed'], [3, 'deployed']])
    assert.equal(releases(api, f)[2].info.description, 'Rollback to 1')
    assert.equal(image(api, f), `example/user-${f.hub}:${good}`)
  })

  test('a health check that fails after a good rollout: revision 2 superseded by the rollback to 1; notify-slack says so', { timeout: 65_000 }, async (t) => {
    const { api, deploy } = await cluster(t)
    const f = makeFixture()
    const good = userTag(f)
    exits(await deploy(f, ['--no-setup', '--deploy', f.hub]), 0)
    const next = newImage(f)
    const hub = await startServer([{ status: 503 }])
    const hook = await startServer()
    servers.push(hub, hook)
    const key = `HUB_URL_${f.hub.toUpperCase()}`

    const r = await deploy(f, ['--no-setup', '--deploy', '--plugin', path.join(ROOT, 'plugins/health-check.ts'), '--plugin', path.join(ROOT, 'plugins/notify-slack.ts'), f.hub], {
      ROLLBACK_ON_FAILURE: 'true', [key]: hub.origin, HEALTH_CHECK_TIMEOUT: '2s', NOTIFY_WEBHOOK_URL: `${hook.origin}/h`,
    })
    exits(r, 1)
    assert.match(r.stderr, new RegExp(`ERROR: plugin health-check afterRollout: ${hub.origin}/hub/api did not answer`))
    assert.match(r.stderr, new RegExp(`WARNING: ${f.hub} failed after helm upgrade made revision 2: rolling back to revision 1`))
    assert.match(r.stderr, new RegExp(`WARNING: ${f.hub} rolled back to revision 1`))
    assert.deepEqual(revisions(api, f), [[1, 'superseded'], [2, 'superseded'], [3, 'deployed']])
    assert.equal(image(api, f), `example/user-${f.hub}:${good}`)
    assert.notEqual(next, good)
    const body = (await hook.json())[0] as Record<string, unknown>
    assert.equal(body.failedPhase, 'rollout')
    assert.equal(body.rolledBackTo, 1)
  })

  test('a first install that fails: no rollback, a clear message, the failed release left for inspection', { timeout: 60_000 }, async (t) => {
    const { api, deploy } = await cluster(t, { neverReady: () => true })
    const f = makeFixture()
    const r = await deploy(f, ['--no-setup', '--deploy', '--rollback-on-failure', f.hub], { HELM_TIMEOUT: '3' })
    exits(r, 1)
    assert.match(r.stderr, new RegExp(`WARNING: ${f.hub}: this was its first install, so there is no earlier revision to roll back to; the release is left as it is \\(\`helm uninstall ${f.hub} --namespace ${f.hub}\` removes it\\)`))
    assert.doesNotMatch(r.stderr, /helm rollback/)
    assert.deepEqual(revisions(api, f), [[1, 'failed']])
  })
})
