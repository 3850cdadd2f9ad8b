// The two layouts with stand-ins: a hub as a wrapper chart (hub-charts/<hub>/) or as values on
// an upstream chart (hub-configs/<hub>.yaml), commands asserted exactly for both; a repository
// shaped like earthlab/hub-ops at 108871a; discovery, --changed, --validate (the cache, the
// images the chart runs), --diff, --rollback-on-failure, the lock, promote-from-staging and
// pr-comment on the upstream-chart layout; the image's name set when a prefix is configured.
// test/e2e/layout.test.ts runs the upstream chart with real helm from a local chart repository.
import { describe, test, after } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { makeRepo, runDeploy, commit, git, tempDir, assertUsageError, ROOT, HELM3, SECRET_TOKEN, type Rule, type RunResult } from './support/harness.ts'
import { withoutLock, lockCalls } from './support/hostile-deploy.ts'
import { startServer, stopServers, type TestServer } from './support/http.ts'
import { cachedChart } from '../lib/layout.ts'
import type { ChartSource } from '../deploy.ts'

const REPO_URL = 'https://jupyterhub.github.io/helm-chart/'
const USER = (hub: string) => `earthlabhubops/ea-k8s-user-${hub}`
const userTag = (repo: string, hub: string) => git(repo, 'log', '-n', '1', '--pretty=format:%h', '--', `user-images/${hub}`)
const deployments: Rule = { tool: 'kubectl', match: 'get deployments -o name', stdout: 'deployment.apps/hub\ndeployment.apps/proxy\n' }
const missing: Rule = { tool: 'docker', match: '^manifest inspect', exit: 1, stderr: 'no such manifest\n' }
const errorLines = (r: RunResult) => r.stderr.split('\n').filter((l) => l.startsWith('ERROR:'))
const warnings = (r: RunResult) => r.stderr.split('\n').filter((l) => l.startsWith('WARNING:'))

/** hub-configs/<hub>.yaml as the upstream chart reads it: no `jupyterhub:` level. */
const hubConfig = (hub: string) => `singleuser:\n  image:\n    name: ${USER(hub)}\n    tag: set-on-deployment\n  defaultUrl: /lab/tree/ea-course-materials-2024\nhub:\n  baseUrl: /\n`

/**
 * A repository shaped like earthlab/hub-ops at 108871a: every hub's values in hub-configs/,
 * the old wrapper charts still in hub-charts/, user images, git-crypt'ed secrets (plain here).
 */
function hubOps(hubs = ['staginghub', 'ea-hub'], extra: Record<string, string> = {}): string {
  const repo = makeRepo({ hubs })
  commit(repo, { ...Object.fromEntries(hubs.map((hub) => [`hub-configs/${hub}.yaml`, hubConfig(hub)])), ...extra }, 'move to the upstream chart: hub-configs/')
  return repo
}

/** A chart archive in the cache --validate and --diff read (HELM_CACHE_HOME), as an earlier run would have pulled it. */
function cachedUpstream(version = '0.10.6', url = REPO_URL): { HELM_CACHE_HOME: string; file: string } {
  const home = tempDir('deploy-helm-cache-')
  const source: ChartSource = { layout: 'upstream-chart', chart: 'jupyterhub/jupyterhub', repository: { name: 'jupyterhub', url }, version, valuesFiles: [], valuesPrefix: '' }
  const file = cachedChart({ HELM_CACHE_HOME: home }, source)
  fs.mkdirSync(path.dirname(file), { recursive: true })
  fs.writeFileSync(file, 'a chart archive\n')
  return { HELM_CACHE_HOME: home, file }
}

const noKubeconfig = () => ({ KUBECONFIG: path.join(tempDir(), 'none') })
const withKubeconfig = () => {
  const file = path.join(tempDir(), 'kubeconfig')
  fs.writeFileSync(file, 'apiVersion: v1\nkind: Config\n')
  return { KUBECONFIG: file }
}

/** A rendered manifest whose one Deployment runs `image` (what `helm template` prints). */
const rendered = (image: string, extra = ''): Rule => ({
  tool: 'helm', match: '^template',
  stdout: `---\n# Source: jupyterhub/templates/hub.yaml\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: user-placeholder\nspec:\n  template:\n    spec:\n      containers:\n        - name: pause\n          image: ${image}\n${extra}`,
})

test('earthlab/hub-ops at 108871a: --no-setup --build --push --deploy ea-hub runs its deploy.py\'s build, repo add, release, chart, version, values files and tag, then waits for each deployment', { timeout: 30_000 }, async () => {
  const repo = hubOps()
  const tag = userTag(repo, 'ea-hub')
  const r = await runDeploy(repo, ['--no-setup', '--build', '--push', '--deploy', 'ea-hub'], { rules: [HELM3, deployments, missing] })
  assert.equal(r.code, 0, r.stderr)
  const commands = withoutLock(r.commands)
  assert.deepEqual([...commands.slice(0, -2), ...commands.slice(-2).sort()], [
    'helm version --client --short',
    // Is it in the registry? (deploy.py pulls to find out; we ask without downloading) No: built, and no cache candidate.
    `docker manifest inspect ${USER('ea-hub')}:${tag}`,
    `docker build -t ${USER('ea-hub')}:${tag} user-images/ea-hub`,
    `docker push ${USER('ea-hub')}:${tag}`,
    `helm repo add jupyterhub ${REPO_URL}`,
    `helm upgrade --install --namespace ea-hub ea-hub jupyterhub/jupyterhub --wait --timeout 600s --cleanup-on-fail --create-namespace --version 0.10.6 -f hub-configs/ea-hub.yaml -f secrets/ea-hub.yaml --set-string singleuser.image.tag=${tag}`,
    'kubectl --namespace ea-hub get deployments -o name',
    'kubectl rollout status --namespace ea-hub --watch deployment.apps/hub --timeout=600s',
    'kubectl rollout status --namespace ea-hub --watch deployment.apps/proxy --timeout=600s',
  ])
  assert.ok(!r.commands.includes('helm dep up'), 'no local chart: no helm dep up')
  assert.match(r.stdout, new RegExp(`^Using ${USER('ea-hub')}:${tag} as user image for ea-hub$`, 'm'))
  // The stale wrapper chart is said to be unused, never silently shadowed.
  assert.deepEqual(warnings(r), ['WARNING: ea-hub: hub-configs/ea-hub.yaml on jupyterhub/jupyterhub 0.10.6 is used; hub-charts/ea-hub/ is not (where both exist the values file wins: remove the one you do not mean)'])
  // The deploy lock is taken in the hub's namespace, as on the other layout.
  assert.ok(lockCalls(r.commands).includes('kubectl create --namespace ea-hub -o json -f -'), r.commands.join('\n'))
})

test('the upstream-chart layout: hub-configs/common.yaml first; a configured prefix sets the images\' names; HUB_CHART* choose the chart', { timeout: 30_000 }, async () => {
  const repo = hubOps(['staginghub', 'ea-hub'], { 'hub-configs/common.yaml': 'hub:\n  baseUrl: /\n' })
  commit(repo, { 'hub-images/ea-hub/Dockerfile': 'FROM scratch\n' }, 'hub image')
  const [user, hub] = [userTag(repo, 'ea-hub'), git(repo, 'log', '-n', '1', '--pretty=format:%h', '--', 'hub-images/ea-hub')]
  const env = {
    USER_IMAGE_PREFIX: 'hubsacr.azurecr.io/user-', HUB_IMAGE_PREFIX: 'hubsacr.azurecr.io/hub-',
    HUB_CHART: 'z2jh/jupyterhub', HUB_CHART_REPO: 'https://hub.jupyter.org/helm-chart/', HUB_CHART_VERSION: '3.3.8',
  }
  const r = await runDeploy(repo, ['--no-setup', '--deploy', 'ea-hub'], { rules: [HELM3], env })
  assert.equal(r.code, 0, r.stderr)
  assert.deepEqual(withoutLock(r.commands).slice(1, 3), [
    'helm repo add z2jh https://hub.jupyter.org/helm-chart/',
    'helm upgrade --install --namespace ea-hub ea-hub z2jh/jupyterhub --wait --timeout 600s --cleanup-on-fail --create-namespace --version 3.3.8' +
      ' -f hub-configs/common.yaml -f hub-configs/ea-hub.yaml -f secrets/ea-hub.yaml' +
      ` --set-string singleuser.image.name=hubsacr.azurecr.io/user-ea-hub --set-string singleuser.image.tag=${user}` +
      ` --set-string hub.image.name=hubsacr.azurecr.io/hub-ea-hub --set-string hub.image.tag=${hub}`,
  ])
  assert.match(r.stdout, new RegExp(`^Using hubsacr.azurecr.io/user-ea-hub:${user} as user image for ea-hub$`, 'm'))
})

test('the wrapper-chart layout: a configured prefix sets jupyterhub.*.image.name before the tag; unset, the original\'s tag only', { timeout: 30_000 }, async () => {
  const repo = makeRepo({ hubImages: ['staginghub'] })
  const [user, hub] = [userTag(repo, 'staginghub'), git(repo, 'log', '-n', '1', '--pretty=format:%h', '--', 'hub-images/staginghub')]
  const UPGRADE = 'helm upgrade --install --namespace staginghub staginghub hub-charts/staginghub --wait --timeout 600s --cleanup-on-fail --create-namespace -f secrets/staginghub.yaml'
  const [prefixed, userOnly, plain] = await Promise.all([
    runDeploy(repo, ['--no-setup', '--deploy', 'staginghub'], { rules: [HELM3], env: { USER_IMAGE_PREFIX: '127.0.0.1:5000/uni/user-', HUB_IMAGE_PREFIX: '127.0.0.1:5000/uni/hub-' } }),
    runDeploy(repo, ['--no-setup', '--deploy', 'staginghub'], { rules: [HELM3], env: { USER_IMAGE_PREFIX: '127.0.0.1:5000/uni/user-' } }),
    runDeploy(repo, ['--no-setup', '--deploy', 'staginghub'], { rules: [HELM3] }),
  ])
  const upgrade = (r: RunResult) => {
    assert.equal(r.code, 0, r.stderr)
    assert.deepEqual(withoutLock(r.commands).slice(1, 2), ['helm dep up'])
    return r.commands.find((c) => c.startsWith('helm upgrade'))
  }
  assert.equal(upgrade(prefixed), `${UPGRADE} --set-string jupyterhub.singleuser.image.name=127.0.0.1:5000/uni/user-staginghub --set-string jupyterhub.singleuser.image.tag=${user} --set-string jupyterhub.hub.image.name=127.0.0.1:5000/uni/hub-staginghub --set-string jupyterhub.hub.image.tag=${hub}`)
  assert.equal(upgrade(userOnly), `${UPGRADE} --set-string jupyterhub.singleuser.image.name=127.0.0.1:5000/uni/user-staginghub --set-string jupyterhub.singleuser.image.tag=${user} --set-string jupyterhub.hub.image.tag=${hub}`)
  assert.equal(upgrade(plain), `${UPGRADE} --set-string jupyterhub.singleuser.image.tag=${user} --set-string jupyterhub.hub.image.tag=${hub}`)
})

test('both layouts in one run: the wrapper chart gets helm dep up in its dir, the upstream one helm repo add; staging first', { timeout: 30_000 }, async () => {
  const repo = makeRepo({ hubs: ['staginghub', 'ea-hub'] })
  git(repo, 'rm', '-rq', 'hub-charts/ea-hub')
  commit(repo, { 'hub-configs/ea-hub.yaml': hubConfig('ea-hub') }, 'ea-hub moves to the upstream chart, its old chart removed')
  const r = await runDeploy(repo, ['--no-setup', '--deploy', 'ea-hub', 'staginghub'], { rules: [HELM3] })
  assert.equal(r.code, 0, r.stderr)
  const helm = r.commands.filter((c) => /^helm (dep|repo|upgrade)/.test(c)).map((c) => c.split(' --wait')[0])
  assert.deepEqual(helm, [
    'helm dep up',
    'helm upgrade --install --namespace staginghub staginghub hub-charts/staginghub',
    `helm repo add jupyterhub ${REPO_URL}`,
    'helm upgrade --install --namespace ea-hub ea-hub jupyterhub/jupyterhub',
  ])
  assert.match(r.calls.find((c) => c.argv.join(' ') === 'dep up')!.cwd, /hub-charts\/staginghub$/)
  assert.deepEqual(warnings(r), [], 'no stale chart here: nothing to say')
})

test('--list finds both layouts, one line each; a hub with both is listed once and the unused chart named; --dry-run says which is used', { timeout: 30_000 }, async () => {
  const repo = makeRepo({ hubs: ['staginghub', 'ea-hub'], monitoring: true })
  commit(repo, {
    'hub-configs/ea-hub.yaml': hubConfig('ea-hub'), 'hub-configs/nbgrader-hub.yaml': hubConfig('nbgrader-hub'), 'secrets/nbgrader-hub.yaml': 'x: 1\n',
    'hub-configs/common.yaml': 'hub: {}\n', 'hub-configs/Not_A_Hub.yaml': 'x: 1\n', 'hub-configs/README.md': 'notes\n',
  }, 'hub-configs')
  const list = await runDeploy(repo, ['--list'])
  assert.equal(list.code, 0, list.stderr)
  assert.equal(list.stdout, 'ea-hub\nnbgrader-hub\nstaginghub\nmonitoring\n')
  assert.deepEqual(warnings(list), ['WARNING: ea-hub: hub-configs/ea-hub.yaml on jupyterhub/jupyterhub 0.10.6 is used; hub-charts/ea-hub/ is not (where both exist the values file wins: remove the one you do not mean)'])
  const plan = await runDeploy(repo, ['--dry-run', '--no-setup', '--deploy', 'ea-hub'])
  assert.equal(plan.code, 0, plan.stderr)
  assert.match(plan.stdout, /^# chart: jupyterhub\/jupyterhub 0\.10\.6 \(https:\/\/jupyterhub\.github\.io\/helm-chart\/\) with hub-configs\/common\.yaml, hub-configs\/ea-hub\.yaml$/m)
  assert.match(plan.stdout, /^# ea-hub: hub-configs\/ea-hub\.yaml on jupyterhub\/jupyterhub 0\.10\.6 is used; hub-charts\/ea-hub\/ is not /m)
  assert.match(plan.stderr, /INFO:root:Executing helm repo add jupyterhub https:\/\/jupyterhub\.github\.io\/helm-chart\//)
  assert.match(plan.stderr, /INFO:root:Executing helm upgrade --install --namespace ea-hub ea-hub jupyterhub\/jupyterhub .*--version 0\.10\.6 -f hub-configs\/common\.yaml -f hub-configs\/ea-hub\.yaml -f secrets\/ea-hub\.yaml/)
  const wrapper = await runDeploy(repo, ['--dry-run', '--no-setup', '--deploy', 'staginghub'])
  assert.doesNotMatch(wrapper.stdout, /^# chart:|is not \(where both/m, 'a wrapper chart alone: the plan as before')
})

test('--changed: a hub\'s values file changes that hub, common.yaml or a HUB_CHART key in the env file every upstream-chart hub; an unused wrapper chart none', { timeout: 30_000 }, async () => {
  const repo = makeRepo({ hubs: ['staginghub', 'ea-hub', 'edsc-hub'] })
  commit(repo, { 'hub-configs/ea-hub.yaml': hubConfig('ea-hub'), 'hub-configs/edsc-hub.yaml': hubConfig('edsc-hub'), 'hub.env': 'HUB_CHART_VERSION=0.10.6\nGKE_ZONE=us-central1-b\n' }, 'two hubs move')
  const changed = async (files: Record<string, string>, args: string[] = []) => {
    const before = git(repo, 'rev-parse', 'HEAD')
    commit(repo, files)
    const r = await runDeploy(repo, ['--changed', `${before}..HEAD`, ...args])
    assert.equal(r.code, 0, r.stderr)
    return r.stdout.split('\n').filter(Boolean)
  }
  assert.deepEqual(await changed({ 'hub-configs/ea-hub.yaml': `${hubConfig('ea-hub')}# more\n` }), ['ea-hub'])
  assert.deepEqual(await changed({ 'hub-configs/common.yaml': 'hub: {}\n' }), ['ea-hub', 'edsc-hub'])
  assert.deepEqual(await changed({ 'hub-charts/ea-hub/values.yaml': 'unused: 1\n' }), [], 'hub-charts/ea-hub/ is not what ea-hub deploys')
  assert.deepEqual(await changed({ 'hub-charts/staginghub/values.yaml': 'x: 2\n', 'secrets/edsc-hub.yaml': 'y: 1\n' }), ['edsc-hub', 'staginghub'])
  assert.deepEqual(await changed({ 'hub.env': 'HUB_CHART_VERSION=1.1.3\nGKE_ZONE=us-central1-b\n' }, ['--env-file', 'hub.env']), ['ea-hub', 'edsc-hub'])
  assert.deepEqual(await changed({ 'hub.env': 'HUB_CHART_VERSION=1.1.3\nGKE_ZONE=us-east1-b\n' }, ['--env-file', 'hub.env']), [], 'another key: no hub')
})

test('bad HUB_CHART, HUB_CHART_REPO or HUB_CHART_VERSION: one line naming the key, exit 2, nothing run', { timeout: 30_000 }, async () => {
  const repo = hubOps()
  const cases: [Record<string, string>, string][] = [
    [{ HUB_CHART: 'jupyterhub' }, 'HUB_CHART=jupyterhub: not a chart as <repository name>/<chart name>, such as jupyterhub/jupyterhub; fix it in .env or the environment'],
    [{ HUB_CHART: '--repo=x/y' }, 'HUB_CHART=--repo=x/y: not a chart as <repository name>/<chart name>'],
    [{ HUB_CHART_REPO: 'https://user:pa55@charts.example.org/' }, 'HUB_CHART_REPO=https://***@charts.example.org/: not the http(s) URL of a chart repository, without credentials'],
    [{ HUB_CHART_REPO: 'file:///etc' }, 'HUB_CHART_REPO=file:///etc: not the http(s) URL of a chart repository'],
    [{ HUB_CHART_VERSION: '^1.0.0' }, 'HUB_CHART_VERSION=^1.0.0: not an exact chart version such as 0.10.6'],
  ]
  const results = await Promise.all(cases.map(([env]) => runDeploy(repo, ['--no-setup', '--deploy', 'ea-hub'], { rules: [HELM3], env, secrets: ['pa55@'] })))
  results.forEach((r, i) => assertUsageError(r, cases[i][1]))
})

test('--validate on the upstream chart: the cached archive, no network; the deploy\'s values files and images; the render\'s images checked', { timeout: 30_000 }, async () => {
  const repo = hubOps()
  const tag = userTag(repo, 'ea-hub')
  const { HELM_CACHE_HOME, file } = cachedUpstream()
  const prefix = { USER_IMAGE_PREFIX: '127.0.0.1:5000/hubs/user-' }
  const r = await runDeploy(repo, ['--validate', 'ea-hub'], { rules: [HELM3, rendered(`127.0.0.1:5000/hubs/user-ea-hub:${tag}`)], env: { HELM_CACHE_HOME, ...prefix, ...noKubeconfig() } })
  assert.equal(r.code, 0, r.stderr)
  const values = `--namespace ea-hub -f hub-configs/ea-hub.yaml -f secrets/ea-hub.yaml --set-string singleuser.image.name=127.0.0.1:5000/hubs/user-ea-hub --set-string singleuser.image.tag=${tag}`
  assert.deepEqual(r.commands, ['helm version --client --short', `helm lint ${file} ${values}`, `helm template ea-hub ${file} ${values}`])
  assert.match(r.stderr, new RegExp(`jupyterhub/jupyterhub 0\\.10\\.6: cached in ${file.replace(/[.]/g, '\\.')}`))
  assert.match(r.stdout, /^ea-hub: valid \(helm lint, 1 objects rendered, server-side check skipped/m)
})

test('--validate: another image where the run\'s should be is a problem naming the values path, on either layout; no image at all a warning', { timeout: 40_000 }, async () => {
  const upstream = hubOps()
  const wrapper = makeRepo()
  const { HELM_CACHE_HOME } = cachedUpstream()
  const [ut, wt] = [userTag(upstream, 'ea-hub'), userTag(wrapper, 'staginghub')]
  const env = { HELM_CACHE_HOME, ...noKubeconfig() }
  const spec = `# Source: jupyterhub/templates/hub/configmap.yaml\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: hub-config\ndata:\n  singleuser.image-spec: ${USER('staginghub')}:${wt}\n`
  const [wrongName, wrongTag, specInConfig, absent] = await Promise.all([
    runDeploy(upstream, ['--validate', 'ea-hub'], { rules: [HELM3, rendered(`earthlabhubops/other:${ut}`)], env }),
    runDeploy(wrapper, ['--validate', 'staginghub'], { rules: [HELM3, rendered(`${USER('staginghub')}:latest`)], env }),
    runDeploy(wrapper, ['--validate', 'staginghub'], { rules: [HELM3, rendered('k8s.gcr.io/pause:3.2', spec)], env }),
    runDeploy(wrapper, ['--validate', 'staginghub'], { rules: [HELM3, rendered('k8s.gcr.io/pause:3.2')], env }),
  ])
  assert.equal(wrongName.code, 1, wrongName.stderr)
  assert.deepEqual(errorLines(wrongName), [
    `ERROR: ea-hub: values singleuser.image.name: the chart runs earthlabhubops/other:${ut}, not ${USER('ea-hub')}:${ut}, the user image this run deploys; set USER_IMAGE_PREFIX (deploy.ts then sets singleuser.image.name), or name ${USER('ea-hub')} there in hub-configs/ea-hub.yaml`,
    'ERROR: validation of ea-hub failed: 1 problem (listed above)',
  ])
  assert.equal(wrongTag.code, 1, wrongTag.stderr)
  assert.equal(errorLines(wrongTag)[0], `ERROR: staginghub: values jupyterhub.singleuser.image.tag: the chart runs ${USER('staginghub')}:latest, not ${USER('staginghub')}:${wt}, the user image this run deploys; the chart does not take its image's tag from values jupyterhub.singleuser.image.tag: make it do so`)
  assert.equal(specInConfig.code, 0, specInConfig.stderr)
  assert.deepEqual(warnings(specInConfig), [])
  assert.equal(absent.code, 0, absent.stderr)
  assert.deepEqual(warnings(absent), [`WARNING: staginghub: no rendered object uses the user image ${USER('staginghub')}:${wt}: check that the chart takes values jupyterhub.singleuser.image.name and jupyterhub.singleuser.image.tag`])
})

test('--validate: helm cannot fetch the upstream chart: its whole reason, not its last line (exit 1, nothing rendered)', { timeout: 30_000 }, async () => {
  const repo = hubOps()
  const HELM_CACHE_HOME = tempDir('deploy-helm-cache-')
  const said = 'Error: looks like "https://jupyterhub.github.io/helm-chart/" is not a valid chart repository or cannot be reached:\nGet "https://jupyterhub.github.io/helm-chart/index.yaml": dial tcp: lookup jupyterhub.github.io: no such host\n'
  const r = await runDeploy(repo, ['--validate', 'ea-hub'], { rules: [HELM3, { tool: 'helm', match: '^pull', exit: 1, stderr: said }], env: { HELM_CACHE_HOME, ...noKubeconfig() } })
  assert.equal(r.code, 1, r.stderr)
  assert.equal(r.commands.length, 2, r.commands.join('\n'))
  assert.match(r.commands[1], new RegExp(`^helm pull jupyterhub --repo ${REPO_URL} --version 0\\.10\\.6 --destination ${HELM_CACHE_HOME}/deploy\\.ts/charts/[0-9a-f]{16}/\\.pull-\\w+$`))
  assert.equal(errorLines(r)[0], 'ERROR: ea-hub: could not fetch jupyterhub/jupyterhub 0.10.6 from https://jupyterhub.github.io/helm-chart/: looks like "https://jupyterhub.github.io/helm-chart/" is not a valid chart repository or cannot be reached: Get "https://jupyterhub.github.io/helm-chart/index.yaml": dial tcp: lookup jupyterhub.github.io: no such host')
  assert.deepEqual(fs.readdirSync(path.dirname(r.commands[1].split(' ').at(-1)!)), [], 'no half-pulled archive left')
})

test('--diff on the upstream chart: the release against the cached chart\'s server-side dry run; the hub\'s plain values stay readable, old secrets masked', { timeout: 30_000 }, async () => {
  const repo = hubOps()
  const tag = userTag(repo, 'ea-hub')
  const { HELM_CACHE_HOME, file } = cachedUpstream()
  const OLD = 'old-proxy-token-0123456789abcdef'
  const manifest = (token: string) => `apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: hub-config\ndata:\n  default-url: /lab/tree/ea-course-materials-2024\n  token: ${token}\n`
  const r = await runDeploy(repo, ['--no-setup', '--diff', 'ea-hub'], {
    env: { HELM_CACHE_HOME, ...withKubeconfig() },
    secrets: [OLD],
    rules: [HELM3,
      { tool: 'helm', match: '^status', stdout: JSON.stringify({ name: 'ea-hub', version: 3, info: { status: 'deployed' }, manifest: manifest(OLD), config: { singleuser: { defaultUrl: '/lab/tree/ea-course-materials-2024' }, proxy: { secretToken: OLD } } }) },
      { tool: 'helm', match: '^upgrade .*--dry-run=server', stdout: JSON.stringify({ manifest: manifest(SECRET_TOKEN) }) }],
  })
  assert.equal(r.code, 0, r.stderr)
  assert.deepEqual(r.commands, [
    'helm version --client --short',
    'helm status ea-hub --namespace ea-hub --output json',
    `helm upgrade --install --namespace ea-hub ea-hub ${file} --dry-run=server --output json -f hub-configs/ea-hub.yaml -f secrets/ea-hub.yaml --set-string singleuser.image.tag=${tag}`,
  ])
  assert.match(r.stdout, /^ {3}default-url: \/lab\/tree\/ea-course-materials-2024$/m)
  assert.match(r.stdout, /^- {2}token: \*\*\*$/m)
  assert.match(r.stdout, /^ea-hub: 1 changed, 0 added, 0 removed$/m)
})

test('--rollback-on-failure on the upstream chart: a failed rollout rolls the release back to the revision live before', { timeout: 30_000 }, async () => {
  const repo = hubOps()
  const r = await runDeploy(repo, ['--no-setup', '--deploy', '--rollback-on-failure', 'ea-hub'], {
    rules: [HELM3,
      { tool: 'helm', match: '^history', stdout: JSON.stringify([{ revision: 1, status: 'deployed', chart: 'jupyterhub-0.10.6', description: '' }]) },
      { tool: 'helm', match: '^upgrade', stdout: 'REVISION: 2\n' },
      { tool: 'kubectl', match: 'get deployments', exit: 1 }],
  })
  assert.equal(r.code, 1, r.stderr)
  const helm = r.commands.filter((c) => /^helm (repo|history|upgrade|rollback)/.test(c))
  assert.deepEqual(helm.slice(0, 4).map((c) => c.split(' --wait')[0]), [
    `helm repo add jupyterhub ${REPO_URL}`,
    'helm history ea-hub --namespace ea-hub -o json',
    'helm upgrade --install --namespace ea-hub ea-hub jupyterhub/jupyterhub',
    'helm rollback ea-hub 1 --namespace ea-hub',
  ])
  assert.ok(helm.includes('helm rollback ea-hub 1 --namespace ea-hub --wait --timeout 600s'), helm.join('\n'))
})

describe('plugins on the upstream-chart layout', { concurrency: true }, () => {
  const servers: TestServer[] = []
  after(async () => {
    await Promise.all(servers.map((s) => s.close()))
    await stopServers()
  }, { timeout: 30_000 })
  const plugin = (name: string) => path.join(ROOT, 'plugins', `${name}.ts`)
  const record = (deps: Record<string, string>) => JSON.stringify({ commit: '0123456789ab', images: { user: 'abc1234' }, deps })
  const staging = (deps: Record<string, string>): Rule => ({ tool: 'helm', match: '^history staginghub', stdout: JSON.stringify([{ revision: 2, status: 'deployed', description: record(deps) }]) })
  const description = (r: RunResult) => {
    const argv = r.calls.find((c) => c.tool === 'helm' && c.argv[0] === 'upgrade')!.argv
    return JSON.parse(argv[argv.indexOf('--description') + 1])
  }

  test('promote-from-staging: the upstream chart\'s version is recorded and compared as helm resolves it (v0.10.6 is 0.10.6); another version is refused', { timeout: 40_000 }, async () => {
    const repo = hubOps()
    const env = { PRODUCTION_CHARTS: 'ea-hub' }
    const args = ['--no-setup', '--deploy', '--plugin', plugin('promote-from-staging'), 'ea-hub']
    const [same, prefixed, newer] = await Promise.all([
      runDeploy(repo, args, { rules: [HELM3, staging({ jupyterhub: '0.10.6' })], env }),
      runDeploy(repo, args, { rules: [HELM3, staging({ jupyterhub: 'v0.10.6' })], env: { ...env, HUB_CHART_VERSION: 'v0.10.6' } }),
      runDeploy(repo, args, { rules: [HELM3, staging({ jupyterhub: '0.10.6' })], env: { ...env, HUB_CHART_VERSION: '1.1.3' } }),
    ])
    assert.equal(same.code, 0, same.stderr)
    assert.deepEqual(description(same).deps, { jupyterhub: '0.10.6' })
    assert.equal(prefixed.code, 0, prefixed.stderr)
    assert.ok(prefixed.commands.some((c) => c.includes('jupyterhub/jupyterhub --wait') && c.includes('--version v0.10.6')), prefixed.commands.join('\n'))
    assert.deepEqual(description(prefixed).deps, { jupyterhub: '0.10.6' })
    assert.equal(newer.code, 3, newer.stderr)
    assert.match(errorLines(newer)[0], /plugin promote-from-staging verify: jupyterhub 0\.10\.6 on staginghub vs 1\.1\.3 here: deploy staginghub first/)
    assert.ok(!newer.commands.some((c) => /^helm (repo|upgrade)/.test(c)), newer.commands.join('\n'))
  })

  test('health-check reads the hub\'s values from hub-configs/: a file that does not parse is named (exit 2, before the deploy)', { timeout: 30_000 }, async () => {
    const repo = hubOps()
    commit(repo, { 'hub-configs/ea-hub.yaml': 'ingress:\n  hosts: [hub.example.org\n' }, 'broken')
    const r = await runDeploy(repo, ['--no-setup', '--deploy', '--plugin', plugin('health-check'), 'ea-hub'], { rules: [HELM3] })
    assert.equal(r.code, 2, r.stderr)
    assert.match(errorLines(r)[0], /^ERROR: plugin health-check verify: hub-configs\/ea-hub\.yaml:\d+: not valid YAML; fix it, or set HUB_URL_EA_HUB to the hub's URL$/)
    assert.ok(!r.commands.some((c) => /^helm (repo|upgrade)/.test(c)), r.commands.join('\n'))
  })

  test('pr-comment: the section names the upstream chart, its version and the values files', { timeout: 40_000 }, async () => {
    const api = await startServer([{ body: [] }, { status: 201, body: { id: 7 } }])
    servers.push(api)
    const repo = hubOps()
    const { HELM_CACHE_HOME } = cachedUpstream()
    const event = path.join(tempDir('pr-event-'), 'event.json')
    fs.writeFileSync(event, JSON.stringify({ pull_request: { number: 12 } }))
    const TOKEN = 'ghs_layoutToken0123456789abcdef'
    const r = await runDeploy(repo, ['--validate', '--plugin', plugin('pr-comment'), 'ea-hub'], {
      rules: [HELM3, rendered(`${USER('ea-hub')}:${userTag(repo, 'ea-hub')}`)],
      env: { HELM_CACHE_HOME, ...noKubeconfig(), GITHUB_TOKEN: TOKEN, GITHUB_REPOSITORY: 'earthlab/hub-ops', GITHUB_EVENT_PATH: event, GITHUB_API_URL: api.origin },
      secrets: [TOKEN],
    })
    assert.equal(r.code, 0, r.stderr)
    const body = (JSON.parse((await api.received())[1].body) as { body: string }).body
    assert.match(body, /^### ea-hub\n\n\*\*Chart:\*\* `jupyterhub\/jupyterhub` 0\.10\.6 with `hub-configs\/ea-hub\.yaml`$/m)
    assert.match(body, /^\*\*Validation:\*\* :white_check_mark: valid \(1 object; with its secrets; /m)
  })
})
