// Hostile inputs, classes 1 and 4 of docs/reliability.md: every path to output masked
// (and only secrets), and I/O faults and unclear errors. Every case checks the exit code,
// the message, what ran, and (in hostileRun) that no planted secret shows in any form.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { makeRepo, commit, tempDir, HELM3, ROOT, SECRET_TOKEN, PASSWORD, type Rule } from './support/harness.ts'
import { HOSTILE as H, hostileRun, assertRefused, show } from './support/hostile.ts'
import { startServer, closedPort, stopServers } from './support/http.ts'
import { secretKey, ordinaryValue, Secrets } from '../deploy.ts'

after(stopServers, { timeout: 30_000 })

const shipped = (name: string) => path.join(ROOT, 'plugins', `${name}.ts`)
const b64 = (s: string) => Buffer.from(s).toString('base64')
const DEPLOY = ['--no-setup', '--deploy', 'staginghub']
/** helm prints `text` while it updates the chart's dependencies (relayed output). */
const helmPrints = (text: string): Rule[] => [HELM3, { tool: 'helm', match: '^dep up', stdout: text }]
const repoWith = (files: Record<string, string>) => makeRepo({ secrets: files })
/** A repo whose plugins/<name>.ts has these hooks (TypeScript object members). */
function repoWithPlugin(name: string, hooks: string): string {
  const repo = makeRepo()
  commit(repo, { [`plugins/${name}.ts`]: `export default { name: '${name}', ${hooks} }\n` })
  return repo
}
const errorLines = (stderr: string) => stderr.split('\n').filter((l) => l.startsWith('ERROR: '))

// ---------------------------------------------------------------------------------------
// Class 1: secrets

test('secrets file that is not YAML: file and line named, its content never shown, nothing run', { timeout: 15_000 }, async () => {
  const repo = repoWith({ 'secrets/staginghub.yaml': `jupyterhub:\n  proxy:\n    secretToken: ${H.token}\n  hub: [${H.password}\n    cookieSecret: x\n` })
  const r = await hostileRun(repo, DEPLOY, { secrets: [H.token, H.password] })
  assertRefused(r, /^ERROR: secrets\/staginghub\.yaml:\d+: not valid YAML \([a-z ]+\); fix the file \(its content is not shown: it holds secrets\)$/)
})

test('secrets file that is not YAML under --dry-run: noted in the plan by file and line, no content', { timeout: 15_000 }, async () => {
  const repo = repoWith({ 'secrets/staginghub.yaml': `jupyterhub:\n  proxy:\n    secretToken: "${H.token}\n  hub: {a: [${H.password}}\n` })
  const r = await hostileRun(repo, ['--dry-run', ...DEPLOY], { secrets: [H.token, H.password] })
  assert.equal(r.code, 0, show(r))
  assert.match(r.stdout, /^# secrets\/staginghub\.yaml:\d+: not valid YAML .*\(a real run stops here, exit 2\)$/m)
  assert.equal(r.calls.filter((c) => c.argv[0] !== 'version').length, 0, show(r))
})

test('a value YAML reads as a number is masked as written and as parsed', { timeout: 15_000 }, async () => {
  const repo = repoWith({ 'secrets/staginghub.yaml': `jupyterhub:\n  hub:\n    config:\n      GitHubOAuthenticator:\n        client_id: ${H.number}\n` })
  const r = await hostileRun(repo, DEPLOY, { secrets: [H.number], rules: helmPrints(`client_id=${H.number} parsed=${Number(H.number)}\n`) })
  assert.equal(r.code, 0, show(r))
  assert.match(r.stdout, /^client_id=\*\*\* parsed=\*\*\*$/m)
})

test('values under secret-looking keys are masked whatever their length; a small number under one is not (issue 18)', { timeout: 20_000 }, async () => {
  const repo = repoWith({ 'secrets/staginghub.yaml': `db:\n  password: 4711\n  apiKey: x9z\n  authToken: ${H.token}\n` })
  const r = await hostileRun(repo, DEPLOY, { secrets: [H.token], rules: helmPrints(`pw=4711 key=x9z token=${H.token} word=x9zq\n`) })
  assert.equal(r.code, 0, show(r))
  // A short secret is masked where it stands alone, not inside other words; small numbers are never secrets.
  assert.match(r.stdout, /^pw=4711 key=\*\*\* token=\*\*\* word=x9zq$/m)
})

test('booleans, small numbers, short words and paths are not masked (secrets file, .env and environment)', { timeout: 30_000 }, async () => {
  const repo = repoWith({
    'secrets/staginghub.yaml': `jupyterhub:\n  proxy:\n    secretToken: ${H.token}\n    https:\n      enabled: true\n      port: 1000\n  auth:\n    type: github\n  singleuser:\n    storage: 10Gi\n`,
  })
  commit(repo, { '.env': `GKE_ZONE=europe-west1-b\nDOCKER_PASSWORD_FILE=secrets/dockerhub\nMY_API_TOKEN='${H.password}'\n` })
  const text = `enabled=true port=1000 type=github storage=10Gi zone=europe-west1-b file=secrets/dockerhub token=${H.token} api=${H.password}\n`
  const r = await hostileRun(repo, DEPLOY, { secrets: [H.token, H.password], rules: helmPrints(text) })
  assert.equal(r.code, 0, show(r))
  assert.match(r.stdout, /^enabled=true port=1000 type=github storage=10Gi zone=europe-west1-b file=secrets\/dockerhub token=\*\*\* api=\*\*\*$/m)
  assert.match(r.stdout, /^staginghub +rollout +ok/m)
})

test('credentials in any URL a tool prints are masked (userinfo), registered or not', { timeout: 20_000 }, async () => {
  const r = await hostileRun(makeRepo(), DEPLOY, {
    secrets: [H.url],
    rules: helmPrints(`Get "https://robot:${H.url}@charts.example.org/index.yaml": 401\nalso oci://${H.url}@registry.example.org/x\n`),
  })
  assert.equal(r.code, 0, show(r))
  assert.match(r.stdout, /^Get "https:\/\/\*\*\*@charts\.example\.org\/index\.yaml": 401$/m)
  assert.match(r.stdout, /^also oci:\/\/\*\*\*@registry\.example\.org\/x$/m)
})

test('health-check URL with credentials: sent as basic auth, never printed', { timeout: 15_000 }, async () => {
  const server = await startServer([{ status: 200, body: { version: '5.2.1' } }])
  const r = await hostileRun(makeRepo(), ['--no-setup', '--deploy', '--plugin', shipped('health-check'), 'staginghub'], {
    env: { HUB_URL_STAGINGHUB: `http://hubadmin:${H.url}@127.0.0.1:${server.port}/` },
    secrets: [H.url],
  })
  assert.equal(r.code, 0, show(r))
  assert.match(r.stderr, new RegExp(`health-check: waiting up to 5m for http://127\\.0\\.0\\.1:${server.port}/hub/api `))
  assert.match(r.stderr, /answers: JupyterHub 5\.2\.1/)
  const [request] = await server.received()
  assert.equal(request.headers.authorization, `Basic ${b64(`hubadmin:${H.url}`)}`)
  await server.close()
})

test('health-check URL with credentials that never answers: the failure names the URL, not the password', { timeout: 15_000 }, async () => {
  const port = await closedPort()
  const r = await hostileRun(makeRepo(), ['--no-setup', '--deploy', '--plugin', shipped('health-check'), 'staginghub'], {
    env: { HUB_URL_STAGINGHUB: `http://hubadmin:${encodeURIComponent(H.password)}@127.0.0.1:${port}/`, HEALTH_CHECK_TIMEOUT: '1s' },
    secrets: [H.password],
  })
  assert.equal(r.code, 1, show(r))
  assert.deepEqual(errorLines(r.stderr).length, 1, show(r))
  assert.match(errorLines(r.stderr)[0], new RegExp(`^ERROR: plugin health-check afterRollout: http://127\\.0\\.0\\.1:${port}/hub/api did not answer`))
})

test('base64 forms of secrets (rendered Secret manifests, docker auth) are masked in relayed output', { timeout: 15_000 }, async () => {
  const manifest = [
    'Error: UPGRADE FAILED: cannot patch Secret "hub":',
    `  proxy.token: ${b64(SECRET_TOKEN)}`,
    `  with-newline: ${b64(`${SECRET_TOKEN}\n`)}`,
    `  auth: ${b64(`earthlabcu:${PASSWORD}`)}`,
    `  api: ${b64(H.token)}`,
  ].join('\n')
  const repo = repoWith({ 'secrets/staginghub.yaml': `jupyterhub:\n  proxy:\n    secretToken: ${SECRET_TOKEN}\n  hub:\n    apiToken: ${H.token}\n` })
  const r = await hostileRun(repo, ['--deploy', 'staginghub'], {
    secrets: [H.token],
    rules: [HELM3, { tool: 'helm', match: '^upgrade', exit: 1, stderr: `${manifest}\n` }],
  })
  assert.equal(r.code, 1, show(r))
  assert.match(errorLines(r.stderr).at(-1)!, /^ERROR: helm upgrade --install .* exited with 1$/)
  for (const form of [b64(SECRET_TOKEN), b64(`${SECRET_TOKEN}\n`), b64(`earthlabcu:${PASSWORD}`), b64(H.token)]) {
    assert.ok(!r.stderr.includes(form), `${form} in\n${r.stderr}`)
  }
})

test('URL-encoded and JSON-escaped forms of a secret with special characters are masked', { timeout: 15_000 }, async () => {
  const special = 'Hj3#kP9!m"W2\\xQ7$ z'
  const repo = repoWith({ 'secrets/staginghub.yaml': `postgres:\n  password: '${special}'\n` })
  const text = `dsn=postgres://app@db/x?password=${encodeURIComponent(special)} form=${encodeURIComponent(special).replace(/%20/g, '+')} json=${JSON.stringify({ pw: special })}\n`
  const r = await hostileRun(repo, DEPLOY, { secrets: [special], rules: helmPrints(text) })
  assert.equal(r.code, 0, show(r))
  assert.match(r.stdout, /^dsn=postgres:\/\/\*\*\*@db\/x\?password=\*\*\* form=\*\*\* json=\{"pw":"\*\*\*"\}$/m)
})

test('a multi-line value (block scalar) is masked whole, line by line and JSON-escaped', { timeout: 15_000 }, async () => {
  const indented = H.multiline.split('\n').map((l) => `        ${l}`).join('\n')
  const repo = repoWith({ 'secrets/staginghub.yaml': `jupyterhub:\n  proxy:\n    https:\n      key: |\n${indented}\n` })
  const [first, , last] = H.multiline.split('\n')
  const text = `first: ${first}\nlast: ${last}\n${H.multiline}\nkey=${JSON.stringify(H.multiline)}\n`
  const r = await hostileRun(repo, DEPLOY, { secrets: [H.multiline], rules: helmPrints(text) })
  assert.equal(r.code, 0, show(r))
  assert.match(r.stdout, /^first: \*\*\*\nlast: \*\*\*\n\*\*\*\nkey="\*\*\*"$/m)
})

test('a shortened message is masked before the cut: no part of a secret at its end', { timeout: 15_000 }, async () => {
  const repo = repoWithPlugin('long', `verify(ctx: { config: { env: Record<string, string> } }) { throw new Error('x'.repeat(480) + ctx.config.env.DEPLOY_HOOK_TOKEN + 'y'.repeat(40)) }`)
  const r = await hostileRun(repo, ['--no-setup', '--deploy', '--plugin', 'long', 'staginghub'], { env: { DEPLOY_HOOK_TOKEN: H.token }, secrets: [H.token] })
  assertRefused(r, /^ERROR: plugin long verify: x{480}\*\*\*y+…$/, 3)
  assert.ok(errorLines(r.stderr)[0].length <= 'ERROR: plugin long verify: '.length + 500, show(r))
})

test('a plugin that fails to load with a secret in its error: exit 2, masked', { timeout: 15_000 }, async () => {
  const repo = makeRepo()
  commit(repo, { 'plugins/loader.ts': `import fs from 'node:fs'\nthrow new Error('bad config: ' + fs.readFileSync('secrets/staginghub.yaml', 'utf8').replace(/\\n/g, ' '))\n` })
  const r = await hostileRun(repo, ['--no-setup', '--deploy', '--plugin', 'loader', 'staginghub'])
  assertRefused(r, /^ERROR: plugins\/loader\.ts: plugin failed to load: bad config: jupyterhub: +proxy: +secretToken: \*\*\*/)
})

test('a plugin hook that throws a secret: masked in the error and the GitHub annotation, exit 1', { timeout: 15_000 }, async () => {
  const repo = repoWithPlugin('leaky', `afterDeploy(ctx: { config: { env: Record<string, string> } }) { throw new Error('cannot post with ' + ctx.config.env.SLACK_WEBHOOK_URL + '\\n' + 'second line') }`)
  const hook = `https://hooks.slack.com/services/T0/B0/${H.token}`
  const r = await hostileRun(repo, ['--no-setup', '--deploy', '--plugin', 'leaky', 'staginghub'], { env: { SLACK_WEBHOOK_URL: hook, GITHUB_ACTIONS: 'true' }, secrets: [hook, H.token] })
  assert.equal(r.code, 1, show(r))
  assert.deepEqual(errorLines(r.stderr), ['ERROR: plugin leaky afterDeploy: cannot post with ***'])
  assert.match(r.stdout, /^::error::plugin leaky afterDeploy: cannot post with \*\*\*$/m)
  assert.ok(!r.commands.some((c) => c.startsWith('kubectl rollout')), show(r))
})

test('a promise a plugin never awaits rejects with a secret: one masked line, exit 1, credentials removed', { timeout: 15_000 }, async () => {
  const repo = repoWithPlugin('unawaited', `afterDeploy(ctx: { config: { env: Record<string, string> } }) { Promise.reject(new Error('async ' + ctx.config.env.API_TOKEN)); return new Promise((r) => setTimeout(r, 5000)) }`)
  const r = await hostileRun(repo, ['--deploy', '--plugin', 'unawaited', 'staginghub'], { env: { API_TOKEN: H.token }, secrets: [H.token] })
  assert.equal(r.code, 1, show(r))
  assert.deepEqual(errorLines(r.stderr), ['ERROR: unexpected error (an unawaited promise or a callback, e.g. in a plugin): async ***'])
  assert.ok(r.commands.some((c) => c.startsWith('gcloud auth')), 'setup ran: the credentials dir existed')
  assert.ok(!r.commands.some((c) => c.startsWith('kubectl rollout')), show(r))
})

test('an exception thrown in a plugin callback: one masked line, exit 1', { timeout: 15_000 }, async () => {
  const repo = repoWithPlugin('callback', `verify(ctx: { config: { env: Record<string, string> } }) { setTimeout(() => { throw new TypeError('cb ' + ctx.config.env.DB_PASSWORD) }, 10); return new Promise((r) => setTimeout(r, 5000)) }`)
  const r = await hostileRun(repo, ['--no-setup', '--deploy', '--plugin', 'callback', 'staginghub'], { env: { DB_PASSWORD: H.password }, secrets: [H.password] })
  assert.equal(r.code, 1, show(r))
  assert.deepEqual(errorLines(r.stderr), ['ERROR: unexpected error (an unawaited promise or a callback, e.g. in a plugin): cb ***'])
  assert.deepEqual(r.commands.filter((c) => !c.startsWith('helm version')), [], show(r))
})

test('a fail hook that throws a secret: a masked warning, the first failure\'s exit code kept', { timeout: 15_000 }, async () => {
  const repo = repoWithPlugin('failing', `fail(ctx: { config: { env: Record<string, string> } }) { throw new Error('notify failed: ' + ctx.config.env.NOTIFY_TOKEN) }`)
  const r = await hostileRun(repo, ['--no-setup', '--deploy', '--plugin', 'failing', 'staginghub'], {
    env: { NOTIFY_TOKEN: H.token },
    secrets: [H.token],
    rules: [HELM3, { tool: 'helm', match: '^upgrade', exit: 1 }],
  })
  assert.equal(r.code, 1, show(r))
  assert.match(r.stderr, /^WARNING: plugin failing fail failed: notify failed: \*\*\*$/m)
})

test('a failing command\'s last line in the error is masked (docker login echoing the password)', { timeout: 15_000 }, async () => {
  const r = await hostileRun(makeRepo(), ['staginghub'], {
    rules: [HELM3, { tool: 'docker', match: '^login', exit: 1, stderr: `Error response from daemon: Get "https://registry-1.docker.io/v2/": unauthorized: incorrect password ${PASSWORD}\n` }],
  })
  assert.equal(r.code, 1, show(r))
  assert.match(errorLines(r.stderr)[0], /^ERROR: docker login -u earthlabcu --password-stdin exited with 1: Error response .*unauthorized: incorrect password \*\*\*$/)
})

test('a service account key that is not JSON: exit 2 naming the file, content never shown', { timeout: 15_000 }, async () => {
  const repo = repoWith({ 'secrets/gke-auth-key.json': `{"type": "service_account", "private_key": "${H.multiline.replace(/\n/g, '\\n')}` })
  const r = await hostileRun(repo, ['staginghub'], { secrets: [H.multiline] })
  assertRefused(r, /^ERROR: secrets\/gke-auth-key\.json: GCLOUD_KEY_FILE \(the Google Cloud credential file\) is not valid JSON; download it again \(its content is not shown: it holds secrets\)$/)
})

test('an empty Docker password file: exit 2 naming the file and the key', { timeout: 15_000 }, async () => {
  const r = await hostileRun(repoWith({ 'secrets/dockerhub': '\n' }), ['staginghub'])
  assertRefused(r, /^ERROR: secrets\/dockerhub: DOCKER_PASSWORD_FILE \(the Docker Hub password\) is empty; put the credential in it$/)
})

test('a .env line that does not parse is named by line, its content (a secret) never shown', { timeout: 15_000 }, async () => {
  const repo = makeRepo()
  commit(repo, { '.env': `GKE_ZONE=europe-west1-b\nthis line holds ${H.token}\n` })
  const r = await hostileRun(repo, DEPLOY, { secrets: [H.token] })
  assertRefused(r, /^ERROR: \.env:2: not a KEY=VALUE line; fix or remove it$/)
})

test('the masking rule, both directions: which keys and which values are secrets', { timeout: 5_000 }, () => {
  for (const key of ['secretToken', 'DOCKER_PASSWORD', 'client-secret', 'apiKey', 'GIT_CRYPT_KEY', 'auth', 'CI_DEPLOY_TOKEN', 'SLACK_WEBHOOK_URL', 'credentials', 'cookieSecret', 'db.pass']) {
    assert.equal(secretKey(key), true, key)
  }
  for (const key of ['GCLOUD_KEY_FILE', 'DOCKER_PASSWORD_FILE', 'DOCKER_USERNAME', 'SSH_AUTH_SOCK', 'tokenUrl', 'authenticator_class', 'PWD', 'GKE_ZONE', 'monkey', 'HOOK_TIMEOUT', 'enabled']) {
    assert.equal(secretKey(key), false, key)
  }
  for (const value of ['true', 'False', 'on', 'null', '1000', '3', '10Gi', '0.5', 'github', 'LoadBalan', 'abc']) assert.equal(ordinaryValue(value), true, value)
  for (const value of ['12345678901234567890', 'hub.example.org', 'abc123def', 'LoadBalancerX', 'pa55word', 'p a s s']) assert.equal(ordinaryValue(value), false, value)
})

test('shortening never leaves the start of a secret at the cut', { timeout: 5_000 }, () => {
  const secrets = new Secrets()
  secrets.add(H.url)
  assert.equal(secrets.redact(`${'x'.repeat(20)}${H.url.slice(0, 7)}`, 25), `${'x'.repeat(20)}***…`)
  assert.equal(secrets.redact(`${'x'.repeat(20)} ${H.url} tail`, 25), `${'x'.repeat(20)} ***…`)
})

// ---------------------------------------------------------------------------------------
// Class 4: I/O faults and unclear errors

test('output closed early (| head -1): the deploy runs to the end, exit 0, credentials removed', { timeout: 15_000 }, async () => {
  const r = await hostileRun(makeRepo(), ['--deploy', 'staginghub'], {
    rules: [HELM3, { tool: 'kubectl', match: 'get deployments', stdout: 'deployment.apps/hub\n' }],
    onSpawn: (child) => child.stdout!.once('data', () => child.stdout!.destroy()),
  })
  assert.equal(r.code, 0, show(r))
  assert.ok(r.commands.some((c) => c.startsWith('helm upgrade')), show(r))
  assert.ok(r.commands.some((c) => c.startsWith('kubectl rollout status')), show(r))
})

test('a repository git refuses (dubious ownership): git\'s complaint and the fix, exit 2', { timeout: 15_000 }, async () => {
  const r = await hostileRun(makeRepo(), DEPLOY, { env: { GIT_TEST_ASSUME_DIFFERENT_OWNER: '1' } })
  assertRefused(r, /^ERROR: git refuses .*: detected dubious ownership in repository at .* \(owned by another user\); if you trust it, run `git config --global --add safe\.directory /)
})

test('DOCKER_USERNAME= (empty) in .env: exit 2 naming the key, not the default used silently', { timeout: 15_000 }, async () => {
  const repo = makeRepo()
  commit(repo, { '.env': 'DOCKER_USERNAME=\n' })
  const r = await hostileRun(repo, ['staginghub'])
  assertRefused(r, /^ERROR: DOCKER_USERNAME is set but empty \(in \.env\): give it a value, or remove it to use the default \(earthlabcu\)$/)
})

test('an empty key in the environment (a CI secret not configured): exit 2 naming it', { timeout: 15_000 }, async () => {
  const r = await hostileRun(makeRepo(), DEPLOY, { env: { GKE_CLUSTER: '' } })
  assertRefused(r, /^ERROR: GKE_CLUSTER is set but empty \(in the environment\)/)
})

test('a missing secrets/<chart>.yaml: the message names the real fix', { timeout: 15_000 }, async () => {
  const repo = makeRepo()
  fs.rmSync(path.join(repo, 'secrets/staginghub.yaml'))
  const r = await hostileRun(repo, DEPLOY)
  assertRefused(r, /^ERROR: secrets\/staginghub\.yaml: the chart's secret values file not found; create it with the chart's secret values and encrypt it with git-crypt \(docs\/adding-a-hub\.md, step 3\)$/)
})

test('secrets/<chart>.yaml that is a directory: exit 2, not a JavaScript error', { timeout: 15_000 }, async () => {
  const repo = makeRepo()
  fs.rmSync(path.join(repo, 'secrets/staginghub.yaml'))
  fs.mkdirSync(path.join(repo, 'secrets/staginghub.yaml'))
  const r = await hostileRun(repo, DEPLOY)
  assertRefused(r, /^ERROR: secrets\/staginghub\.yaml: the chart's secret values file is a directory, not a file; create it/)
})

test('run from hub-charts/: a hint to run from the repository root', { timeout: 15_000 }, async () => {
  const repo = makeRepo()
  const r = await hostileRun(path.join(repo, 'hub-charts'), DEPLOY)
  assertRefused(r, new RegExp(`^ERROR: no charts in .*hub-charts: run deploy\\.ts from the repository root, .*${path.basename(repo)}$`))
})

test('--list from hub-charts/: the same hint as a warning', { timeout: 15_000 }, async () => {
  const r = await hostileRun(path.join(makeRepo(), 'hub-charts'), ['--list'])
  assert.equal(r.code, 0, show(r))
  assert.equal(r.stdout, '')
  assert.match(r.stderr, /^WARNING: no charts in .*hub-charts: run deploy\.ts from the repository root/m)
})

test('a Chart.yaml that is a directory: exit 2 naming it', { timeout: 15_000 }, async () => {
  const repo = makeRepo({ hubs: ['staginghub', 'ea-hub'] })
  fs.rmSync(path.join(repo, 'hub-charts/ea-hub/Chart.yaml'))
  fs.mkdirSync(path.join(repo, 'hub-charts/ea-hub/Chart.yaml'))
  const r = await hostileRun(repo, ['--no-setup', '--deploy', 'ea-hub'])
  assertRefused(r, /^ERROR: hub-charts\/ea-hub\/Chart\.yaml: not a file; fix the chart$/)
})

test('--env-file naming a directory: exit 2 naming it', { timeout: 15_000 }, async () => {
  const repo = makeRepo()
  const r = await hostileRun(repo, ['--dotenv', 'secrets', ...DEPLOY])
  assertRefused(r, /^ERROR: secrets: not a file; give --env-file a file$/)
})

test('promote-from-staging with dependencies written as a map: one line naming the file and the fix', { timeout: 15_000 }, async () => {
  const repo = makeRepo()
  commit(repo, { 'hub-charts/staginghub/Chart.yaml': 'apiVersion: v2\nname: staginghub\nversion: 0.1.0\ndependencies:\n  jupyterhub:\n    version: 3.3.7\n' })
  const r = await hostileRun(repo, ['--no-setup', '--deploy', '--plugin', shipped('promote-from-staging'), 'staginghub'])
  assertRefused(r, /^ERROR: plugin promote-from-staging verify: hub-charts\/staginghub\/Chart\.yaml: dependencies must be a list of entries \(- name: …, version: …, repository: …\), not a map; fix the chart$/)
})

test('promote-from-staging with a requirements.yaml that is not YAML: file and line, exit 2', { timeout: 20_000 }, async () => {
  const repo = makeRepo()
  commit(repo, { 'hub-charts/staginghub/requirements.yaml': 'dependencies:\n  - name: jupyterhub\n   version: [3\n' })
  const r = await hostileRun(repo, ['--no-setup', '--deploy', '--plugin', shipped('promote-from-staging'), 'staginghub'])
  assertRefused(r, /^ERROR: plugin promote-from-staging verify: hub-charts\/staginghub\/requirements\.yaml:\d+: not valid YAML; fix the chart$/)
})

test('health-check with a values.yaml that is not YAML: one line naming the file, before anything is deployed', { timeout: 15_000 }, async () => {
  const repo = makeRepo()
  commit(repo, { 'hub-charts/staginghub/values.yaml': 'jupyterhub:\n  ingress:\n    hosts: [hub.example.org\n  hub: {}\n' })
  const r = await hostileRun(repo, ['--no-setup', '--deploy', '--plugin', shipped('health-check'), 'staginghub'])
  assertRefused(r, /^ERROR: plugin health-check verify: hub-charts\/staginghub\/values\.yaml:\d+: not valid YAML; fix it, or set HUB_URL_STAGINGHUB to the hub's URL$/)
})

test('health-check with a hub URL that is not http(s): exit 2 naming the key, before anything is deployed', { timeout: 15_000 }, async () => {
  const r = await hostileRun(makeRepo(), ['--no-setup', '--deploy', '--plugin', shipped('health-check'), 'staginghub'], {
    env: { HUB_URL_STAGINGHUB: `ftp://admin:${H.url}@hub.example.org/` },
    secrets: [H.url],
  })
  assertRefused(r, /^ERROR: plugin health-check verify: HUB_URL_STAGINGHUB: the hub URL is not an http\(s\) URL; give one like https:\/\/hub\.example\.org\/$/)
})

test('BASH_ENV in .env: exit 2 naming it, nothing sourced or run', { timeout: 15_000 }, async () => {
  const repo = makeRepo()
  const marker = path.join(tempDir(), 'sourced')
  commit(repo, { '.env': 'BASH_ENV=hook.sh\n', 'hook.sh': `touch ${marker}\n` })
  const r = await hostileRun(repo, DEPLOY)
  assertRefused(r, /^ERROR: \.env: BASH_ENV would make the commands deploy\.ts starts run other code or read elsewhere; remove it from \.env/)
  assert.equal(fs.existsSync(marker), false)
})

test('GIT_DIR in .env (git would read another repository): exit 2 naming it', { timeout: 15_000 }, async () => {
  const repo = makeRepo()
  commit(repo, { '.env': `GIT_DIR=${makeRepo()}/.git\n` })
  const r = await hostileRun(repo, DEPLOY)
  assertRefused(r, /^ERROR: \.env: GIT_DIR would make the commands/)
})

test('BASH_ENV and ENV in the environment never reach the shell that starts a tool', { timeout: 15_000 }, async () => {
  const dir = tempDir()
  const marker = path.join(dir, 'sourced')
  fs.writeFileSync(path.join(dir, 'hook.sh'), `echo sourced >> ${marker}\n`)
  const r = await hostileRun(makeRepo(), DEPLOY, { env: { BASH_ENV: path.join(dir, 'hook.sh'), ENV: path.join(dir, 'hook.sh') } })
  assert.equal(r.code, 0, show(r))
  assert.ok(r.commands.some((c) => c.startsWith('helm upgrade')), show(r))
  assert.equal(fs.existsSync(marker), false, 'a shell sourced BASH_ENV or ENV')
})

test('an exported bash function named like a tool (BASH_FUNC_helm%%) does not replace it', { timeout: 15_000 }, async () => {
  const r = await hostileRun(makeRepo(), DEPLOY, { env: { 'BASH_FUNC_helm%%': '() { echo hijacked; }' } })
  assert.equal(r.code, 0, show(r))
  assert.ok(r.commands.some((c) => c.startsWith('helm upgrade --install')), show(r))
  assert.doesNotMatch(r.stdout, /hijacked/)
})

for (const [args, message] of [
  [['--plugin=', ...DEPLOY], /^ERROR: --plugin needs a value: a plugin name or path$/],
  [['--json', 'staginghub'], /^ERROR: --json only applies to --changed, --list, --plan, --validate or --diff: add one of them or drop --json$/],
  [['--changed', 'HEAD~1..HEAD', 'staginghub'], /^ERROR: --changed only lists charts: drop the chart names \(run the deploy as its own command\)$/],
  [['--no-setup', '--recover', 'staginghub'], /^ERROR: --recover repairs a release before deploying it: add --deploy \(or drop --recover\)$/],
  [['--list', '--deploy'], /^ERROR: --list only lists charts: drop --deploy$/],
  [['--list', 'staginghub'], /^ERROR: --list only lists charts: drop the chart names$/],
  [['--changed', 'HEAD~1..HEAD', '--build'], /^ERROR: --changed only lists charts: drop --build/],
] as const) {
  test(`flags that do not go together: ${args.join(' ')}`, { timeout: 15_000 }, async () => {
    assertRefused(await hostileRun(makeRepo(), [...args]), message)
  })
}

test('--changed in a repository git refuses: git\'s complaint, not "every chart changed"', { timeout: 15_000 }, async () => {
  const r = await hostileRun(makeRepo(), ['--changed', 'HEAD~1..HEAD'], { env: { GIT_TEST_ASSUME_DIFFERENT_OWNER: '1' } })
  assertRefused(r, /^ERROR: git refuses .*: detected dubious ownership in repository at /)
  assert.equal(r.stdout, '')
})

test('an unreadable GITHUB_EVENT_PATH is named in a warning, not ignored silently', { timeout: 15_000 }, async () => {
  const r = await hostileRun(makeRepo(), ['--no-setup', '--build', 'staginghub'], {
    env: { GITHUB_EVENT_NAME: 'push', GITHUB_EVENT_PATH: path.join(tempDir(), 'missing-event.json') },
    rules: [HELM3, { tool: 'docker', match: '^manifest', exit: 0 }],
  })
  assert.equal(r.code, 0, show(r))
  assert.match(r.stderr, /^WARNING: GITHUB_EVENT_PATH=.*missing-event\.json: not a readable JSON event, so the pushed range is unknown: an image is rebuilt only when its tag is missing from the registry$/m)
  assert.ok(!r.commands.some((c) => c.startsWith('docker build')), show(r))
})

test('a plugin that passes a secret to helm as an argument is stopped before helm runs', { timeout: 15_000 }, async () => {
  const repo = repoWithPlugin('setter', `beforeDeploy(ctx: { config: { env: Record<string, string> } }) { return { helmArgs: ['--set', 'hub.token=' + ctx.config.env.HUB_API_TOKEN] } }`)
  const r = await hostileRun(repo, ['--no-setup', '--deploy', '--plugin', 'setter', 'staginghub'], { env: { HUB_API_TOKEN: H.token }, secrets: [H.token] })
  assert.equal(r.code, 1, show(r))
  assert.deepEqual(errorLines(r.stderr), ['ERROR: plugin setter beforeDeploy: helmArgs contain a secret: pass secrets to helm in a values file, never as arguments'])
  assert.ok(!r.commands.some((c) => c.startsWith('helm upgrade') || c.startsWith('helm dep')), show(r))
})

test('an image prefix Docker cannot use: exit 2 naming the key, before anything runs', { timeout: 15_000 }, async () => {
  const r = await hostileRun(makeRepo(), ['--no-setup', '--build', 'staginghub'], { env: { USER_IMAGE_PREFIX: 'EarthLab/User Images-' } })
  assertRefused(r, /^ERROR: USER_IMAGE_PREFIX=EarthLab\/User Images-: not an image name prefix such as earthlabhubops\/ea-k8s-user-; fix it in \.env or the environment$/)
})

// ---------------------------------------------------------------------------------------
// Issue 18, class 2: masking that neither leaks nor blinds

test('a URL password holding a raw @ is masked up to the last @ before the host', { timeout: 30_000 }, async () => {
  const password = 'S3cr@tPassw0rd-9z'
  const url = `postgres://app:${password}@db.example.org/hub`
  const r = await hostileRun(makeRepo(), DEPLOY, { env: { DATABASE_URL: url }, secrets: [password], rules: helmPrints(`connecting to ${url}\nalso mysql://u:${password}@other:3306\n`) })
  assert.equal(r.code, 0, show(r))
  assert.match(r.stdout, /^connecting to postgres:\/\/\*\*\*@db\.example\.org\/hub$/m)
  assert.match(r.stdout, /^also mysql:\/\/\*\*\*@other:3306$/m)
})

test('credentials by their common names: PGPASSWORD, MYSQL_PWD, GITHUB_PAT, CI_JOB_JWT, DB_PASSWORD2, APITOKEN; PWD stays readable', { timeout: 30_000 }, async () => {
  const names = ['PGPASSWORD', 'MYSQL_PWD', 'GITHUB_PAT', 'CI_JOB_JWT', 'DB_PASSWORD2', 'APITOKEN', 'npm_authToken2']
  const env = Object.fromEntries(names.map((n, i) => [n, `value-of-${i}-zq8Xk2p`]))
  const text = names.map((n, i) => `${n}=value-of-${i}-zq8Xk2p`).join(' ')
  const r = await hostileRun(makeRepo(), DEPLOY, { env, secrets: Object.values(env), rules: helmPrints(`${text}\n`) })
  assert.equal(r.code, 0, show(r))
  assert.match(r.stdout, new RegExp(`^${names.map((n) => `${n}=\\*\\*\\*`).join(' ')}$`, 'm'))
  for (const plain of ['PWD', 'OLDPWD', 'PATH', 'PAT_COUNT_LIMIT']) assert.equal(secretKey(plain), false, plain)
})

test('booleans, small numbers and chart names under secret-looking keys stay readable (issue 18: no blinding)', { timeout: 30_000 }, async () => {
  const repo = repoWith({
    'secrets/staginghub.yaml': `jupyterhub:\n  hub:\n    config:\n      Authenticator:\n        enable_auth_state: true\n        auth_refresh_age: 300\n        auth_hub_name: staginghub\n        secret_null: null\n  proxy:\n    secretToken: ${H.token}\n`,
  })
  const text = `enable_auth_state=true age=300 construed a 300s wait on staginghub; none null token=${H.token}\n`
  const r = await hostileRun(repo, DEPLOY, { secrets: [H.token], rules: helmPrints(text) })
  assert.equal(r.code, 0, show(r))
  assert.match(r.stdout, /^enable_auth_state=true age=300 construed a 300s wait on staginghub; none null token=\*\*\*$/m)
  // The chart's name is readable in every line and the summary.
  assert.match(r.stdout, /^==> deploy staginghub$/m)
  assert.match(r.stdout, /^staginghub +rollout +ok/m)
})

test('the base64 of a short secret is masked; a short secret inside a word is not', { timeout: 30_000 }, async () => {
  const repo = repoWith({ 'secrets/staginghub.yaml': `db:\n  password: k9Zq\n` })
  const text = `b64=${b64('k9Zq')} b64nopad=${b64('k9Zq').replace(/=+$/, '')} pair=${b64('app:k9Zq')} word=k9Zqx alone=k9Zq\n`
  const r = await hostileRun(repo, DEPLOY, { rules: helmPrints(text) })
  assert.equal(r.code, 0, show(r))
  const line = r.stdout.split('\n').find((l) => l.startsWith('b64='))!
  assert.ok(!line.includes(b64('k9Zq').replace(/=+$/, '')), line)
  assert.ok(!line.includes(b64('app:k9Zq').slice(4, 10)), line)
  assert.match(line, / word=k9Zqx alone=\*\*\*$/)
})

test('a token a login prints before it fails is masked in the error, the fail hooks and the output', { timeout: 30_000 }, async () => {
  const token = 'ya29.a0AfB_byLeakyAccessToken0123456789abcdef'
  const repo = makeRepo()
  commit(repo, { 'plugins/seen.ts': `import fs from 'node:fs'\nexport default { name: 'seen', fail(ctx: { error: { message: string } }) { fs.writeFileSync('fail-hook.txt', ctx.error.message) } }\n` })
  const r = await hostileRun(repo, ['--deploy', '--plugin', 'seen', 'staginghub'], {
    env: { REGISTRY_PROVIDER: 'gar', USER_IMAGE_PREFIX: 'us-docker.pkg.dev/p/r/user-', HUB_IMAGE_PREFIX: 'us-docker.pkg.dev/p/r/hub-' },
    secrets: [token],
    rules: [HELM3, { tool: 'gcloud', match: '^auth print-access-token', stdout: `${token}\n`, stderr: `ERROR: (gcloud.auth.print-access-token) refreshing failed after printing ${token}\n`, exit: 1 }],
  })
  assert.equal(r.code, 1, show(r))
  assert.match(errorLines(r.stderr).join('\n'), /gcloud auth print-access-token exited with 1: ERROR: \(gcloud\.auth\.print-access-token\) refreshing failed after printing \*\*\*/)
  assert.ok(!fs.readFileSync(path.join(repo, 'fail-hook.txt'), 'utf8').includes('AccessToken'), 'the fail hook saw the token')
  assert.ok(!r.commands.some((c) => c.startsWith('docker login')), 'no login with a failed token')
})

test('a kubeconfig exec plugin\'s env values and --token arguments are masked', { timeout: 30_000 }, async () => {
  const envValue = 'exec-env-credential-7Hq2Lm9Xz'
  const argToken = 'exec-arg-token-Pq4Rt8Vw2Yz'
  const kubeconfig = [
    'apiVersion: v1', 'kind: Config', 'clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443"}}]',
    'contexts: [{name: c, context: {cluster: c, user: u}}]', 'current-context: c',
    'users:', '- name: u', '  user:', '    exec:', '      apiVersion: client.authentication.k8s.io/v1', '      command: get-token',
    `      args: ["--cluster", "c", "--token=${argToken}"]`, `      env: [{name: AWS_SESSION, value: "${envValue}"}, {name: REGION, value: "eu-west-1"}]`, '',
  ].join('\n')
  const repo = repoWith({ 'secrets/kubeconfig.yaml': kubeconfig })
  const r = await hostileRun(repo, ['--deploy', 'staginghub'], {
    env: { CLUSTER_PROVIDER: 'kubeconfig', REGISTRY_PROVIDER: 'none' },
    secrets: [envValue, argToken],
    rules: helmPrints(`env=${envValue} arg=${argToken} region=eu-west-1 cluster=c\n`),
  })
  assert.equal(r.code, 0, show(r))
  assert.match(r.stdout, /^env=\*\*\* arg=\*\*\* region=eu-west-1 cluster=c$/m)
})
