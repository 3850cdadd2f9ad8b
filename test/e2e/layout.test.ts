// End-to-end: a hub on the upstream-chart layout (hub-configs/<hub>.yaml, beside a stale
// hub-charts/<hub>/) with the REAL helm and kubectl of each toolchain (helm 3.17 + kubectl 1.32,
// helm 4.1 + kubectl 1.35) against the simulated Kubernetes API, the
// chart served by a chart repository on 127.0.0.1 (index.yaml and an archive built here by
// `helm package` and `helm repo index`). The deploy adds the repository, installs its chart at
// HUB_CHART_VERSION with the hub's values, and runs the image it built (name and tag);
// --validate pulls the chart once into helm's cache and then needs no network; --diff renders it.
// Run: node --import tsx --test test/e2e/layout.test.ts
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { promisify } from 'node:util'
import { after, test, type TestContext } from 'node:test'
import { deploymentsTemplate } from '../support/charts.ts'
import { commit, git, tempDir, type RunResult } from '../support/harness.ts'
import { startFileServer, stopServers, type TestServer } from '../support/http.ts'
import { cluster as e2eCluster, forEachToolchain, show } from '../support/e2e.ts'
const run = promisify(execFile)

// ---------------------------------------------------------------------------------------
// The upstream chart, `jupyterhub` at 0.10.6 (HUB_CHART_VERSION's default), as a chart
// repository serves it: a user-placeholder Deployment running singleuser.image, a hub
// Deployment, and a ConfigMap with a value from the hub's values and one from its secrets.

const TEMPLATES = {
  'templates/deployments.yaml': deploymentsTemplate({
    vars: { user: 'printf "%s:%s" .Values.singleuser.image.name .Values.singleuser.image.tag' },
    images: { hub: '.Values.hub.image', 'user-placeholder': '$user' },
  }),
  'templates/configmap.yaml': 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: hub-config\ndata:\n  greeting: {{ .Values.greeting | quote }}\n  cookie-secret: {{ .Values.hub.cookieSecret | quote }}\n',
}

/** index.yaml and the packaged chart, built by the real helm. */
async function chartRepository(helm: string): Promise<Record<string, Uint8Array>> {
  const src = path.join(tempDir('deploy-upstream-chart-'), 'jupyterhub')
  const out = tempDir('deploy-chart-repo-')
  const files: Record<string, string> = {
    'Chart.yaml': 'apiVersion: v2\nname: jupyterhub\nversion: 0.10.6\n',
    'values.yaml': 'greeting: hello\nhub:\n  image: example/hub:4.1\n  cookieSecret: ""\nsingleuser:\n  image:\n    name: jupyterhub/k8s-singleuser-sample\n    tag: "0.10.6"\n',
    ...TEMPLATES,
  }
  for (const [file, text] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(src, file)), { recursive: true })
    fs.writeFileSync(path.join(src, file), text)
  }
  const env = { PATH: process.env.PATH, HOME: tempDir('deploy-helm-home-') }
  await run(helm, ['package', src, '--destination', out], { env })
  await run(helm, ['repo', 'index', out], { env })
  return Object.fromEntries(fs.readdirSync(out).map((f) => [`/${f}`, fs.readFileSync(path.join(out, f))]))
}

interface Fixture {
  repo: string
  hub: string
  secret: string
}

/**
 * A repository shaped like earthlab/hub-ops at 108871a: the hub's values in hub-configs/, a
 * stale wrapper chart in hub-charts/ (whose dependency cannot be fetched: using it would fail),
 * a user image, the secrets.
 */
function makeFixture(): Fixture {
  const repo = tempDir('deploy-e2e-layout-')
  const hub = `ul${randomBytes(3).toString('hex')}`
  const secret = randomBytes(12).toString('hex')
  git(repo, 'init', '-q', '-b', 'main')
  commit(repo, {
    [`hub-charts/${hub}/Chart.yaml`]: `apiVersion: v2\nname: ${hub}\nversion: 0.1.0\ndependencies:\n  - name: jupyterhub\n    version: 0.8.2\n    repository: file://../../vendor/gone\n`,
    [`hub-configs/${hub}.yaml`]: hubConfig('hello'),
    [`secrets/${hub}.yaml`]: `hub:\n  cookieSecret: ${secret}\n`,
  }, 'the hub on the upstream chart; the old wrapper chart still there')
  commit(repo, { [`user-images/${hub}/Dockerfile`]: `FROM scratch\nLABEL hub=${hub}\n` }, 'user image')
  return { repo, hub, secret }
}

/** The hub's values: the name the original's prefix gives, which a configured prefix overrides. */
const hubConfig = (greeting: string) => `greeting: ${greeting}\nsingleuser:\n  image:\n    name: earthlabhubops/ea-k8s-user-hub\n    tag: set-on-deployment\n`
const userTag = (f: Fixture) => git(f.repo, 'log', '-n', '1', '--pretty=format:%h', '--', `user-images/${f.hub}`)
const paths = async (server: TestServer) => (await server.received()).map((q) => q.path)

await forEachToolchain('the upstream-chart layout with real helm and kubectl', (tools) => {
  const servers: TestServer[] = []
  after(async () => {
    await Promise.all(servers.map((s) => s.close()))
    await stopServers()
  }, { timeout: 30_000 })
  const built = chartRepository(tools.helm)
  /** A chart repository of its own for one test: its URL is HUB_CHART_REPO. */
  async function repository() {
    const server = await startFileServer(await built)
    servers.push(server)
    return server
  }
  async function setup(t: TestContext) {
    const server = await repository()
    const f = makeFixture()
    const c = await e2eCluster(t, { tools, secrets: [f.secret] })
    const HELM_CACHE_HOME = tempDir('deploy-e2e-helm-cache-')
    const env = { HUB_CHART_REPO: `${server.origin}/`, HELM_CACHE_HOME }
    const deploy = (args: string[], extra: Record<string, string | undefined> = {}) => c.deploy(f, args, { ...env, ...extra } as Record<string, string>)
    return { server, f, c, deploy }
  }
  const exits = (r: RunResult, code: number) => assert.equal(r.code, code, show(r))

  test('--deploy: helm repo add, the chart at 0.10.6 with hub-configs/ and secrets/, the image built by name and tag; the stale chart said unused', { timeout: 90_000 }, async (t) => {
    const { server, f, c, deploy } = await setup(t)
    const r = await deploy(['--no-setup', '--deploy', f.hub])
    exits(r, 0)
    assert.match(r.stderr, new RegExp(`INFO:root:Executing helm repo add jupyterhub ${server.origin}/`))
    assert.match(r.stderr, new RegExp(`^WARNING: ${f.hub}: hub-configs/${f.hub}\\.yaml on jupyterhub/jupyterhub 0\\.10\\.6 is used; hub-charts/${f.hub}/ is not`, 'm'))
    assert.deepEqual(await paths(server), ['/index.yaml', '/jupyterhub-0.10.6.tgz'])
    const [release] = c.api.helmReleases(f.hub, f.hub)
    assert.equal(release.info.status, 'deployed')
    assert.equal((release.chart.metadata as { version?: string }).version, '0.10.6')
    // USER_IMAGE_PREFIX=example/user- (the cluster's runs set it): the image built is the image run.
    assert.equal(c.api.get('deployments', f.hub, 'user-placeholder')?.spec.template.spec.containers[0].image, `example/user-${f.hub}:${userTag(f)}`)
    assert.equal(c.api.get('configmaps', f.hub, 'hub-config')?.data?.greeting, 'hello')
    assert.equal(c.api.get('configmaps', f.hub, 'hub-config')?.data?.['cookie-secret'], f.secret)
  })

  test('--validate pulls the chart once into the cache, then needs no network; an uncached version says helm\'s whole reason', { timeout: 90_000 }, async (t) => {
    const { server, f, deploy } = await setup(t)
    const first = await deploy(['--validate', f.hub])
    exits(first, 0)
    assert.match(first.stdout, new RegExp(`^${f.hub}: valid \\(helm lint, 3 objects rendered, checked by the API server\\)$`, 'm'))
    assert.deepEqual(await paths(server), ['/index.yaml', '/jupyterhub-0.10.6.tgz'])
    await server.close()
    const offline = await deploy(['--validate', f.hub])
    exits(offline, 0)
    assert.match(offline.stderr, /jupyterhub\/jupyterhub 0\.10\.6: cached in .*\/deploy\.ts\/charts\/[0-9a-f]{16}\/jupyterhub-0\.10\.6\.tgz/)
    assert.doesNotMatch(offline.stderr, /Executing helm pull/)
    const uncached = await deploy(['--validate', f.hub], { HUB_CHART_VERSION: '0.11.1' })
    exits(uncached, 1)
    assert.match(uncached.stderr, new RegExp(`^ERROR: ${f.hub}: could not fetch jupyterhub/jupyterhub 0\\.11\\.1 from ${server.origin}/: .*${server.origin}/index\\.yaml.*connection refused`, 'm'))
  })

  test('--validate without a configured prefix: the chart runs the name in hub-configs/, not the image the run deploys: a problem naming singleuser.image.name', { timeout: 60_000 }, async (t) => {
    const { f, deploy } = await setup(t)
    const r = await deploy(['--validate', f.hub], { USER_IMAGE_PREFIX: undefined })
    exits(r, 1)
    const tag = userTag(f)
    assert.match(r.stderr, new RegExp(`^ERROR: ${f.hub}: values singleuser\\.image\\.name: the chart runs earthlabhubops/ea-k8s-user-hub:${tag}, not earthlabhubops/ea-k8s-user-${f.hub}:${tag}, the user image this run deploys; set USER_IMAGE_PREFIX`, 'm'))
  })

  test('--diff after a change of the hub\'s values: the release against the cached chart, object by object', { timeout: 90_000 }, async (t) => {
    const { f, deploy } = await setup(t)
    exits(await deploy(['--no-setup', '--deploy', f.hub]), 0)
    commit(f.repo, { [`hub-configs/${f.hub}.yaml`]: hubConfig('bonjour') }, 'greeting')
    const r = await deploy(['--no-setup', '--diff', f.hub])
    exits(r, 0)
    assert.match(r.stdout, new RegExp(`^ConfigMap/${f.hub}/hub-config: changed$`, 'm'))
    assert.match(r.stdout, /^- {2}greeting: hello$/m)
    assert.match(r.stdout, /^\+ {2}greeting: bonjour$/m)
    assert.match(r.stdout, new RegExp(`^${f.hub}: 1 changed, 0 added, 0 removed$`, 'm'))
  })
})
