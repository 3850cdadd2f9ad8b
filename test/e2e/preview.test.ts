// End-to-end: `deploy.ts --validate` and `--diff` with the REAL helm and kubectl of each toolchain
// (helm 3.17 + kubectl 1.32, helm 4.1 + kubectl 1.35) against the simulated Kubernetes API
// (test/support/kube-api.ts), on a chart with a Secret.
// The API's request log proves that --diff (and --validate's server-side dry run) write nothing.
// Run: node --import tsx --test test/e2e/preview.test.ts
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { test, type TestContext } from 'node:test'
import { deploymentsTemplate } from '../support/charts.ts'
import { commit, git, tempDir, type RunResult } from '../support/harness.ts'
import type { KubeApi } from '../support/kube-api.ts'
import type { KubeTools, Toolchain } from '../support/tools.ts'
import { cluster as e2eCluster, forEachToolchain, show } from '../support/e2e.ts'

// ---------------------------------------------------------------------------------------
// Fixture: hub-charts/<hub> depends on vendor/jupyterhub (file://), which renders two
// Deployments, a Service, a ConfigMap and a Secret, and has a values.schema.json that refuses
// unknown keys under `hub`, as the real jupyterhub chart does.

const DEPLOYMENTS = deploymentsTemplate({
  vars: { user: 'printf "%s:%s" .Values.singleuser.image.name .Values.singleuser.image.tag' },
  images: { hub: '.Values.hub.image', 'user-placeholder': '$user' },
})

const OTHERS = `{{- if .Values.service }}
apiVersion: v1
kind: Service
metadata:
  name: hub
spec:
  selector: {app: jupyterhub, component: hub}
  ports:
    - {name: http, port: 8081, targetPort: 8081}
{{- end }}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: hub-config
data:
  singleuser-tag: {{ .Values.singleuser.image.tag | quote }}
  cookie-secret: {{ .Values.hub.cookieSecret | quote }}
---
apiVersion: v1
kind: Secret
metadata:
  name: hub-secret
type: Opaque
stringData:
  cookieSecret: {{ .Values.hub.cookieSecret | quote }}
data:
  proxyToken: {{ .Values.proxy.secretToken | b64enc | quote }}
{{- if .Values.extra }}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: extra
data:
  greeting: hello
{{- end }}
`

const SCHEMA = JSON.stringify({
  type: 'object',
  properties: { hub: { type: 'object', additionalProperties: false, properties: { image: { type: 'string' }, cookieSecret: { type: 'string' } } } },
})

interface Fixture {
  repo: string
  hub: string
  cookie: string
  token: string
}

function makeFixture(): Fixture {
  const repo = tempDir('deploy-preview-repo-')
  const hub = `pv${randomBytes(3).toString('hex')}`
  const cookie = randomBytes(12).toString('hex')
  const token = randomBytes(12).toString('hex')
  git(repo, 'init', '-q', '-b', 'main')
  commit(repo, {
    '.gitignore': 'hub-charts/*/charts/\nhub-charts/*/Chart.lock\n',
    [`hub-charts/${hub}/Chart.yaml`]: `apiVersion: v2\nname: ${hub}\nversion: 0.1.0\ndependencies:\n  - name: jupyterhub\n    version: 0.1.0\n    repository: file://../../vendor/jupyterhub\n`,
    [`hub-charts/${hub}/values.yaml`]: `jupyterhub:\n  singleuser:\n    image:\n      name: example/user-${hub}\n      tag: set-on-deployment\n`,
    'vendor/jupyterhub/Chart.yaml': 'apiVersion: v2\nname: jupyterhub\nversion: 0.1.0\n',
    'vendor/jupyterhub/values.yaml': 'hub:\n  image: example/hub:4.1\n  cookieSecret: ""\nproxy:\n  secretToken: ""\nsingleuser:\n  image:\n    name: example/user\n    tag: latest\nservice: true\nextra: false\n',
    'vendor/jupyterhub/values.schema.json': SCHEMA,
    'vendor/jupyterhub/templates/deployments.yaml': DEPLOYMENTS,
    'vendor/jupyterhub/templates/others.yaml': OTHERS,
    [`secrets/${hub}.yaml`]: secretsYaml(cookie, token),
  }, 'chart and secrets')
  commit(repo, { [`user-images/${hub}/Dockerfile`]: `FROM scratch\nLABEL hub=${hub}\n` }, 'user image')
  return { repo, hub, cookie, token }
}

/** How each toolchain's helm words a key values.schema.json refuses (Helm 4 checks with another JSON Schema library). */
const UNKNOWN_KEY: Record<Toolchain, string> = { helm3: 'Additional property imagee is not allowed', helm4: "additional properties 'imagee' not allowed" }
/** Which check finds it: Helm 4's lint skips the values schema of a chart without templates of its own (a wrapper chart); its render does not. */
const SCHEMA_CHECK: Record<Toolchain, string> = { helm3: 'lint', helm4: 'render' }

/** A secret value as it may leak: itself, and base64 as a Secret's data holds it. */
const plainAndBase64 = (s: string) => [s, Buffer.from(s).toString('base64')]
const secretsYaml = (cookie: string, token: string) => `jupyterhub:\n  hub:\n    cookieSecret: ${cookie}\n  proxy:\n    secretToken: ${token}\n`
const userTag = (f: Fixture) => git(f.repo, 'log', '-n', '1', '--pretty=format:%h', '--', `user-images/${f.hub}`)

// ---------------------------------------------------------------------------------------
// One simulated cluster, HOME and KUBECONFIG per test.

/** One simulated cluster, HOME and KUBECONFIG per test (test/support/e2e.ts); the fixture's secrets never shown. */
async function cluster(t: TestContext, tools: KubeTools) {
  const c = await e2eCluster(t, { tools })
  return { ...c, deploy: (f: Fixture, args: string[], env?: Record<string, string>) => c.deploy(f, args, env, { secrets: [f.cookie, f.token].flatMap(plainAndBase64) }) }
}

function exits(r: RunResult, code: number) {
  assert.equal(r.code, code, `expected exit ${code}: ${show(r)}`)
}
/** The write requests since `from`, server-side dry runs included: --validate and --diff need none. */
const writes = (api: KubeApi, from: number) => api.requests.slice(from).filter((r) => r.write).map((r) => `${r.method} ${r.path}${r.query}`)

await forEachToolchain('deploy.ts --validate and --diff with real helm and kubectl', (tools) => {

  test('--validate with no cluster: dependencies, lint and a render with the deploy\'s values; the kubeconfig is not needed', { timeout: 60_000 }, async (t) => {
    const { deploy } = await cluster(t, tools)
    const f = makeFixture()
    const r = await deploy(f, ['--validate', f.hub], { KUBECONFIG: path.join(tempDir(), 'none') })
    exits(r, 0)
    const tag = userTag(f)
    assert.match(r.stderr, /Executing and capturing helm dep up\n/)
    // The runs set USER_IMAGE_PREFIX (test/support/e2e.ts): the image's name is set before its tag.
    const images = `--set-string jupyterhub\\.singleuser\\.image\\.name=example/user-${f.hub} --set-string jupyterhub\\.singleuser\\.image\\.tag=${tag}`
    assert.match(r.stderr, new RegExp(`Executing and capturing helm lint hub-charts/${f.hub} --namespace ${f.hub} -f secrets/${f.hub}\\.yaml ${images}\\n`))
    assert.match(r.stderr, new RegExp(`Executing and capturing helm template ${f.hub} hub-charts/${f.hub} --namespace ${f.hub} -f secrets/${f.hub}\\.yaml ${images}\\n`))
    assert.doesNotMatch(r.stderr, /gcloud|docker login/, '--validate alone runs no setup')
    assert.doesNotMatch(r.stderr, /^WARNING/m, 'nothing to warn about (a wrapper chart has no templates of its own)')
    assert.match(r.stdout, new RegExp(`^${f.hub}: valid \\(helm lint, 5 objects rendered, server-side check skipped: no cluster access \\(--no-setup and no kubeconfig\\)\\)$`, 'm'))

    // A local (file://) dependency is packaged afresh on every run: its directory may have
    // changed since charts/ was written (lib/localcharts.ts), so a lock is no cache for it.
    const again = await deploy(f, ['--validate', f.hub], { KUBECONFIG: path.join(tempDir(), 'none') })
    exits(again, 0)
    assert.match(again.stderr, /helm dep up/)
    assert.doesNotMatch(again.stderr, /helm dep build|dependencies already in/)
  })

  test('--validate names the file and the values path of each problem, exits 1, and --json carries them', { timeout: 60_000 }, async (t) => {
    const { deploy } = await cluster(t, tools)
    const f = makeFixture()
    commit(f.repo, {
      [`hub-charts/${f.hub}/values.yaml`]: `jupyterhub:\n  hub:\n    imagee: typo\n  singleuser:\n    image:\n      name: example/user-${f.hub}\n`,
    }, 'typo')
    const r = await deploy(f, ['--validate', '--json', f.hub], { KUBECONFIG: path.join(tempDir(), 'none') })
    exits(r, 1)
    const line = new RegExp(`^ERROR: ${f.hub}: values jupyterhub\\.hub: ${UNKNOWN_KEY[tools.toolchain]} \\(values\\.schema\\.json of jupyterhub\\)$`, 'gm')
    assert.match(r.stderr, line)
    assert.equal(r.stderr.match(line)?.length, 1, 'lint and template report it once')
    assert.match(r.stderr, new RegExp(`^${f.hub}: invalid: 1 problem$`, 'm'))
    assert.match(r.stderr, new RegExp(`ERROR: validation of ${f.hub} failed: 1 problem \\(listed above\\)$`, 'm'))
    const doc = JSON.parse(r.stdout)
    assert.equal(doc.version, 1)
    const [chart] = doc.charts
    assert.equal(chart.chart, f.hub)
    assert.equal(chart.result, 'failed')
    assert.equal(chart.diff, null)
    assert.equal(chart.validation.valid, false)
    assert.equal(chart.validation.secrets, 'used')
    assert.equal(chart.validation.serverSide, 'skipped')
    assert.deepEqual(chart.validation.errors.map((e: { check: string; valuesPath: string }) => [e.check, e.valuesPath]), [[SCHEMA_CHECK[tools.toolchain], 'jupyterhub.hub']])

    // a template that does not parse: the file and line, as a repository path
    commit(f.repo, { [`hub-charts/${f.hub}/values.yaml`]: 'jupyterhub: {}\n', [`hub-charts/${f.hub}/templates/broken.yaml`]: 'kind: ConfigMap\ndata: {{ .Values.jupyterhub.hub\n' }, 'broken')
    const broken = await deploy(f, ['--validate', f.hub], { KUBECONFIG: path.join(tempDir(), 'none') })
    exits(broken, 1)
    assert.match(broken.stderr, new RegExp(`^ERROR: ${f.hub}: hub-charts/${f.hub}/templates/broken\\.yaml:3: unclosed action started at `, 'm'))
  })

  test('--validate with secrets still locked renders without them and says so in one line', { timeout: 60_000 }, async (t) => {
    const { deploy } = await cluster(t, tools)
    const f = makeFixture()
    fs.writeFileSync(path.join(f.repo, `secrets/${f.hub}.yaml`), Buffer.concat([Buffer.from('\0GITCRYPT\0'), randomBytes(40)]))
    const r = await deploy(f, ['--validate', f.hub], { KUBECONFIG: path.join(tempDir(), 'none') })
    exits(r, 0)
    const lines = r.stderr.split('\n').filter((l) => l.includes('locked'))
    assert.deepEqual(lines, [`WARNING: ${f.hub}: secrets/${f.hub}.yaml is locked (git-crypt): validating without it, so values that need it are not checked`])
    assert.doesNotMatch(r.stderr, /-f secrets\//, 'the locked file is not passed to helm')
    assert.match(r.stdout, new RegExp(`^${f.hub}: valid `, 'm'))
  })

  test('--diff on a chart not installed: everything added; read-only; then a deploy and a change: changed, added, removed, Secret values hidden', { timeout: 60_000 }, async (t) => {
    const { api, deploy } = await cluster(t, tools)
    const f = makeFixture()

    let from = api.requests.length
    const fresh = await deploy(f, ['--no-setup', '--diff', '--validate', f.hub])
    exits(fresh, 0)
    assert.deepEqual(writes(api, from), [], '--validate and --diff made no write request')
    assert.ok(api.requests.slice(from).some((r) => r.path === `/api/v1/namespaces/${f.hub}/secrets` && /owner%3Dhelm/.test(r.query)), 'helm read the release')
    assert.match(fresh.stdout, new RegExp(`^${f.hub}: valid \\(helm lint, 5 objects rendered, checked by the API server\\)$`, 'm'))
    assert.match(fresh.stdout, new RegExp(`^${f.hub} is not installed: every object is added$`, 'm'))
    for (const id of ['Service/hub', 'ConfigMap/hub-config', 'Secret/hub-secret', 'Deployment/hub', 'Deployment/user-placeholder']) {
      const [kind, name] = id.split('/')
      assert.match(fresh.stdout, new RegExp(`^${kind}/${f.hub}/${name}: added$`, 'm'))
    }
    assert.match(fresh.stdout, new RegExp(`^  secret keys added cookieSecret, proxyToken \\(values not shown\\)$`, 'm'))
    assert.match(fresh.stdout, new RegExp(`^${f.hub}: 0 changed, 5 added, 0 removed$`, 'm'))
    assert.deepEqual(api.helmReleases(f.hub, f.hub), [], 'nothing installed')
    assert.deepEqual(api.list('namespaces').filter((n) => n.metadata.name === f.hub), [], 'no namespace created')

    exits(await deploy(f, ['--no-setup', '--deploy', f.hub]), 0)
    const newCookie = randomBytes(12).toString('hex')
    commit(f.repo, {
      [`secrets/${f.hub}.yaml`]: secretsYaml(newCookie, f.token),
      [`hub-charts/${f.hub}/values.yaml`]: `jupyterhub:\n  singleuser:\n    image:\n      name: example/user-${f.hub}\n  service: false\n  extra: true\n`,
      [`user-images/${f.hub}/Dockerfile`]: `FROM scratch\nLABEL hub=${f.hub} v=2\n`,
    }, 'new cookie, no service, an extra ConfigMap, a new user image')
    const tag = userTag(f)

    from = api.requests.length
    const r = await deploy(f, ['--no-setup', '--diff', f.hub])
    exits(r, 0)
    assert.deepEqual(writes(api, from), [], '--diff made no write request')
    assert.deepEqual(api.writes(from), [], 'and changed nothing')
    assert.ok(api.requests.slice(from).every((r) => r.method === 'GET'), 'only GET requests')
    assert.deepEqual(api.helmReleases(f.hub, f.hub).map((x) => x.version), [1], 'no new revision')
    for (const shown of plainAndBase64(newCookie)) assert.ok(!`${r.stdout}${r.stderr}`.includes(shown), 'the new secret value is never shown, plain or base64')
    assert.match(r.stdout, new RegExp(`^ConfigMap/${f.hub}/hub-config: changed\\n--- ConfigMap/${f.hub}/hub-config \\(revision 1\\)\\n\\+\\+\\+ ConfigMap/${f.hub}/hub-config \\(${git(f.repo, 'rev-parse', '--short=7', 'HEAD')}\\)\\n@@ `, 'm'))
    assert.match(r.stdout, /^- {2}cookie-secret: \*\*\*$/m, 'the old value, masked')
    assert.match(r.stdout, /^\+ {2}cookie-secret: \*\*\*$/m, 'the new value, masked')
    // A tag like 647e354 reads as a number in YAML, so it is quoted there.
    assert.match(r.stdout, new RegExp(`^\\+ {2}singleuser-tag: (${tag}|"${tag}")$`, 'm'))
    assert.match(r.stdout, new RegExp(`^Secret/${f.hub}/hub-secret: changed\\n  secret keys changed cookieSecret \\(values not shown\\)$`, 'm'))
    assert.match(r.stdout, new RegExp(`^Deployment/${f.hub}/user-placeholder: changed$`, 'm'))
    assert.match(r.stdout, new RegExp(`^\\+ +- image: example/user-${f.hub}:${tag}$`, 'm'))
    assert.doesNotMatch(r.stdout, new RegExp(`^Deployment/${f.hub}/hub: `, 'm'), 'an unchanged object is not listed')
    assert.match(r.stdout, new RegExp(`^ConfigMap/${f.hub}/extra: added$`, 'm'))
    assert.match(r.stdout, new RegExp(`^Service/${f.hub}/hub: removed$`, 'm'))
    assert.match(r.stdout, new RegExp(`^${f.hub}: 3 changed, 1 added, 1 removed$`, 'm'))

    const j = await deploy(f, ['--no-setup', '--diff', '--json', f.hub])
    exits(j, 0)
    for (const shown of plainAndBase64(newCookie)) assert.ok(!`${j.stdout}${j.stderr}`.includes(shown), 'nor in --json')
    const [chart] = JSON.parse(j.stdout).charts
    assert.equal(chart.result, 'ok')
    assert.equal(chart.validation, null)
    assert.equal(chart.diff.revision, 1)
    assert.deepEqual(chart.diff.summary, { changed: 3, added: 1, removed: 1, unchanged: 1 })
    const secret = chart.diff.objects.find((o: { kind: string }) => o.kind === 'Secret')
    assert.deepEqual(secret, { id: `Secret/${f.hub}/hub-secret`, kind: 'Secret', namespace: f.hub, name: 'hub-secret', change: 'changed', diff: '', secretKeys: { added: [], removed: [], changed: ['cookieSecret'] } })
    assert.match(chart.diff.text, new RegExp(`${f.hub}: 3 changed, 1 added, 1 removed\\n$`))
    assert.doesNotMatch(j.stdout, /^(==>|<==|INFO)/m, 'stdout holds only the JSON document')
  })
})
