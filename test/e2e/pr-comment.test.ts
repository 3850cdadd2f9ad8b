// End-to-end: the pull-request review flow, `deploy.ts --no-setup --validate --diff --plugin
// pr-comment`, with the REAL helm and kubectl of each toolchain (helm 3.17 + kubectl 1.32, helm
// 4.1 + kubectl 1.35) against the simulated Kubernetes API
// (test/support/kube-api.ts) and a local stand-in of GitHub's REST API (test/support/http.ts).
// What the plugin posts is built from deploy.ts's own ctx.validation and ctx.diff.
// Run: node --import tsx --test test/e2e/pr-comment.test.ts
import assert from 'node:assert/strict'
import type { ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { after, test, type TestContext } from 'node:test'
import { MARKER } from '../../plugins/pr-comment.ts'
import { deploymentsTemplate } from '../support/charts.ts'
import { commit, git, runDeploy, tempDir, ROOT, type RunResult } from '../support/harness.ts'
import { startServer, stopServers, type Received, type TestServer } from '../support/http.ts'
import { startKubeApi } from '../support/kube-api.ts'
import type { KubeTools } from '../support/tools.ts'
import { forEachToolchain, scrubbed, show } from '../support/e2e.ts'
const PLUGIN = path.join(ROOT, 'plugins', 'pr-comment.ts')
const TOKEN = `ghs_${randomBytes(16).toString('hex')}`
const COMMENTS = '/repos/earthlab/hub-ops/issues/12/comments'

// ---------------------------------------------------------------------------------------
// Fixture: hubs whose chart renders a Deployment, a ConfigMap holding a value of its
// secrets/<hub>.yaml, and a Secret holding another one (stringData and base64 data).

const TEMPLATES = `apiVersion: v1
kind: ConfigMap
metadata:
  name: hub-config
data:
  greeting: {{ .Values.greeting | quote }}
  cookie-secret: {{ .Values.cookieSecret | quote }}
---
apiVersion: v1
kind: Secret
metadata:
  name: hub-secret
type: Opaque
stringData:
  cookieSecret: {{ .Values.cookieSecret | quote }}
data:
  proxyToken: {{ .Values.proxyToken | b64enc | quote }}
`

interface Hub {
  name: string
  cookie: string
  token: string
}

const newHub = (): Hub => ({ name: `pc${randomBytes(3).toString('hex')}`, cookie: randomBytes(12).toString('hex'), token: randomBytes(12).toString('hex') })
const secretsYaml = (h: Hub) => `cookieSecret: ${h.cookie}\nproxyToken: ${h.token}\n`
const values = (greeting: string) => `greeting: ${greeting}\nsingleuser:\n  image:\n    name: example/user\n    tag: set-on-deployment\n`

function hubFiles(h: Hub): Record<string, string> {
  return {
    [`hub-charts/${h.name}/Chart.yaml`]: `apiVersion: v2\nname: ${h.name}\nversion: 0.1.0\n`,
    [`hub-charts/${h.name}/values.yaml`]: values('hello'),
    [`hub-charts/${h.name}/templates/deployments.yaml`]: deploymentsTemplate({ images: { hub: '"example/hub:4.1"' } }),
    [`hub-charts/${h.name}/templates/others.yaml`]: TEMPLATES,
    [`secrets/${h.name}.yaml`]: secretsYaml(h),
    [`user-images/${h.name}/Dockerfile`]: `FROM scratch\nLABEL hub=${h.name}\n`,
  }
}

function makeRepo(hubs: Hub[]): string {
  const repo = tempDir('deploy-prc-repo-')
  git(repo, 'init', '-q', '-b', 'main')
  commit(repo, Object.assign({}, ...hubs.map(hubFiles)), 'hubs')
  return repo
}

/** Every secret value of the hubs, whole and base64: none may reach the comment. */
const planted = (hubs: Hub[]) => hubs.flatMap((h) => [h.cookie, h.token]).flatMap((s) => [s, Buffer.from(s).toString('base64')])

// ---------------------------------------------------------------------------------------
// One simulated cluster and one GitHub stand-in per test.

const children = new Set<ChildProcess>()
const servers: TestServer[] = []

async function setup(t: TestContext, tools: KubeTools) {
  const api = await startKubeApi({ readyDelayMs: 0, kubernetesVersion: tools.kubernetesVersion })
  t.after(() => api.close())
  const home = tempDir('deploy-prc-home-')
  const kubeconfig = path.join(home, 'kubeconfig')
  await api.writeKubeconfig(kubeconfig)
  const github = await startServer([{ body: [] }, { status: 201, body: { id: 4242, body: 'created' } }, { body: { id: 4242, body: 'updated' } }])
  servers.push(github)
  const event = path.join(home, 'event.json')
  fs.writeFileSync(event, JSON.stringify({ action: 'synchronize', number: 12, pull_request: { number: 12 } }))
  const env = {
    ...scrubbed(), HOME: home, KUBECONFIG: kubeconfig, HELM_TIMEOUT: '60', ROLLOUT_TIMEOUT: '60s', USER_IMAGE_PREFIX: 'example/user-',
    GITHUB_TOKEN: TOKEN, GITHUB_REPOSITORY: 'earthlab/hub-ops', GITHUB_EVENT_PATH: event, GITHUB_API_URL: github.origin,
  }
  const PATH = `${tools.binDir}${path.delimiter}${process.env.PATH}`
  async function deploy(repo: string, hubs: Hub[], args: string[]): Promise<RunResult> {
    let child: ChildProcess | undefined
    const timer = setTimeout(() => child?.kill('SIGTERM'), 120_000)
    try {
      return await runDeploy(repo, args, { env, path: PATH, noStandins: true, secrets: [TOKEN, ...planted(hubs)], onSpawn: (c) => children.add((child = c)) })
    } finally {
      clearTimeout(timer)
      if (child) children.delete(child)
    }
  }
  return { api, github, deploy }
}

const bodyOf = (q: Received) => (JSON.parse(q.body) as { body: string }).body
const route = (q: Received) => `${q.method} ${q.path}`
const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')

function assertNoSecret(body: string, hubs: Hub[]) {
  for (const s of [TOKEN, ...planted(hubs)]) assert.ok(!body.includes(s), `${s.slice(0, 4)}... in the comment`)
}

await forEachToolchain('pr-comment on --validate --diff with real helm and kubectl', (tools) => {
  after(async () => {
    for (const child of children) child.kill('SIGKILL')
    await Promise.all(servers.map((s) => s.close()))
    await stopServers()
  }, { timeout: 30_000 })

  test('an installed chart changed: the comment holds the validation line, the diff summary and the diff in <details>, no secret', { timeout: 60_000 }, async (t) => {
    const { api, github, deploy } = await setup(t, tools)
    const hub = newHub()
    const repo = makeRepo([hub])
    const installed = await deploy(repo, [hub], ['--no-setup', '--deploy', hub.name])
    assert.equal(installed.code, 0, show(installed))
    const old = { ...hub }
    hub.cookie = randomBytes(12).toString('hex')
    commit(repo, { [`hub-charts/${hub.name}/values.yaml`]: values('bonjour'), [`secrets/${hub.name}.yaml`]: secretsYaml(hub) }, 'greeting and cookie')

    const from = api.requests.length
    const r = await deploy(repo, [hub, old], ['--no-setup', '--validate', '--diff', '--plugin', PLUGIN, hub.name])
    assert.equal(r.code, 0, show(r))
    assert.deepEqual(api.requests.slice(from).filter((q) => q.write).map((q) => `${q.method} ${q.path}`), [], 'the review run writes nothing')
    assert.match(r.stderr, /pr-comment: commented the plan on pull request #12/)
    const got = await github.received()
    assert.deepEqual(got.map(route), [`GET ${COMMENTS}?per_page=100`, `POST ${COMMENTS}`])
    assert.equal(got[1].headers.authorization, `Bearer ${TOKEN}`)
    const body = bodyOf(got[1])
    assert.ok(body.startsWith(`${MARKER}\n`), body)
    assert.match(body, new RegExp(`^### ${hub.name}$`, 'm'))
    assert.match(body, /^\*\*Validation:\*\* :white_check_mark: valid \(3 objects; with its secrets; checked by the API server\)$/m)
    assert.match(body, /^\*\*Diff\*\* \(against revision 1\): 2 changed, 0 added, 0 removed$/m)
    const details = /<details><summary>Changes<\/summary>\n\n(`{3,})diff\n([^]*?)\n\1\n<\/details>/.exec(body)
    assert.ok(details, body)
    const diff = details[2]
    assert.match(diff, new RegExp(`^ConfigMap/${hub.name}/hub-config: changed$`, 'm'))
    assert.match(diff, /^- {2}greeting: hello$/m)
    assert.match(diff, /^\+ {2}greeting: bonjour$/m)
    assert.match(diff, /^\+ {2}cookie-secret: \*\*\*$/m, 'the new secret value, masked')
    assert.match(diff, new RegExp(`^Secret/${hub.name}/hub-secret: changed\\n  secret keys changed cookieSecret \\(values not shown\\)$`, 'm'))
    assert.match(diff, new RegExp(`^${escape(hub.name)}: 2 changed, 0 added, 0 removed$`, 'm'))
    assertNoSecret(body, [hub, old])
  })

  test('two charts, one installed and one not: one comment covering both', { timeout: 60_000 }, async (t) => {
    const { github, deploy } = await setup(t, tools)
    const hubs = [newHub(), newHub()]
    const repo = makeRepo(hubs)
    const installed = await deploy(repo, hubs, ['--no-setup', '--deploy', hubs[0].name])
    assert.equal(installed.code, 0, show(installed))
    commit(repo, { [`hub-charts/${hubs[0].name}/values.yaml`]: values('hallo') }, 'greeting')

    const r = await deploy(repo, hubs, ['--no-setup', '--validate', '--diff', '--plugin', PLUGIN, ...hubs.map((h) => h.name)])
    assert.equal(r.code, 0, show(r))
    const got = await github.received()
    // One listing, one comment created by the first chart to finish, updated by the second.
    assert.deepEqual(got.map(route), [`GET ${COMMENTS}?per_page=100`, `POST ${COMMENTS}`, 'PATCH /repos/earthlab/hub-ops/issues/comments/4242'])
    const body = bodyOf(got[2])
    assert.equal(body.split(MARKER).length, 2, 'one marker')
    for (const h of hubs) assert.match(body, new RegExp(`^### ${h.name}$`, 'm'))
    assert.equal(body.match(/^\*\*Validation:\*\* :white_check_mark: valid \(3 objects; with its secrets; checked by the API server\)$/gm)?.length, 2, body)
    assert.match(body, /^\*\*Diff\*\* \(against revision 1\): 1 changed, 0 added, 0 removed$/m)
    assert.match(body, /^\*\*Diff\*\* \(not installed yet\): 0 changed, 3 added, 0 removed$/m)
    assert.equal(body.match(/<details><summary>Changes<\/summary>/g)?.length, 2, body)
    assert.match(body, /^\+ {2}greeting: hallo$/m)
    assert.match(body, new RegExp(`^Secret/${hubs[1].name}/hub-secret: added$`, 'm'))
    assertNoSecret(body, hubs)
  })
})
