// Moving in (docs/migrating.md), with stand-ins: what the moves rely on beyond the commands
// test/docs.test.ts runs on each repository. A wrapper chart with a local (file://)
// dependency, as mybinder.org-deploy's environments become: the dependency's own dependencies
// fetched first (deploy and --validate, no cached archive trusted), --changed counting the
// shared chart's files; chartpress's uncommitted values refused; a sops-encrypted secrets
// file (hubploy's) refused; the workflow the page gives the upstream deploy.py's repository.
// test/e2e/migrating.test.ts deploys such a chart with the real helm.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { YAML } from 'zx'
import { HELM3, ROOT, SECRET_TOKEN, assertUsageError, commit, runDeploy, type RunResult } from './support/harness.ts'
import { migrationFixture } from './support/migrating.ts'
import { withoutLock } from './support/hostile-deploy.ts'

const nested = (env: string, file: string) => `mybinder:\n${fs.readFileSync(file, 'utf8').replace(/^/gm, '  ').trimEnd()}\n`
const wrapper = (env: string) => `apiVersion: v2\nname: ${env}\nversion: 0.1.0\ndependencies:\n  - name: mybinder\n    version: ">=0.0.0-0"\n    repository: file://../../mybinder\n`

/** The mybinder.org-deploy-shaped repository after the page's moves: each environment a wrapper chart of mybinder/. */
function mybinderMoved(): string {
  const { repo } = migrationFixture('mybinder')
  const files: Record<string, string> = {}
  for (const env of ['staging', 'prod']) {
    files[`hub-charts/${env}/Chart.yaml`] = wrapper(env)
    files[`hub-charts/${env}/values.yaml`] = nested(env, path.join(repo, `config/${env}.yaml`))
    files[`secrets/${env}.yaml`] = nested(env, path.join(repo, `secrets/config/${env}.yaml`))
  }
  files['.gitignore'] = 'node_modules\nmybinder*/charts\nmybinder*/Chart.lock\nhub-charts/*/charts/\nhub-charts/*/Chart.lock\n'
  commit(repo, files, 'each environment a hub')
  return repo
}

const calls = (r: RunResult, tool: string, first: string) => r.calls.filter((c) => c.tool === tool && c.argv[0] === first)
const upgradeOf = (r: RunResult) => r.commands.find((c) => c.startsWith('helm upgrade'))!.split(' --wait')[0]

test('an environment of mybinder/: helm dep up mybinder from the root, then the wrapper\'s helm dep up in its chart, then its release', { timeout: 30_000 }, async () => {
  const repo = mybinderMoved()
  const r = await runDeploy(repo, ['--no-setup', '--deploy', 'staging'], { rules: [HELM3] })
  assert.equal(r.code, 0, r.stderr)
  assert.deepEqual(withoutLock(r.commands).slice(1, 4).map((c) => c.split(' --wait')[0]), [
    'helm dep up mybinder',
    'helm dep up',
    'helm upgrade --install --namespace staging staging hub-charts/staging',
  ])
  assert.deepEqual(calls(r, 'helm', 'dep').map((c) => path.relative(repo, c.cwd)), ['', 'hub-charts/staging'])
  assert.match(r.commands.find((c) => c.startsWith('helm upgrade'))!, / -f secrets\/staging\.yaml$/)
})

test('local dependencies: each that has dependencies of its own fetched first, a dependency before the chart that needs it; a chart without any runs only its own helm dep up', { timeout: 30_000 }, async () => {
  const { repo } = migrationFixture('original')
  const chart = (name: string, deps: string[]) =>
    `apiVersion: v2\nname: ${name}\nversion: 1.0.0\ndependencies:\n${deps.map((d) => `  - name: ${path.basename(d.replace(/^file:\/\//, ''))}\n    version: 1.0.0\n    repository: ${d}\n`).join('')}`
  commit(repo, {
    // ea-hub -> shared/outer -> shared/inner -> jupyterhub (a chart repository); shared/plain declares none.
    'hub-charts/ea-hub/Chart.yaml': chart('ea-hub', ['file://../../shared/outer', 'file://../../shared/plain']),
    'shared/outer/Chart.yaml': chart('outer', ['file://../inner']),
    'shared/inner/Chart.yaml': chart('inner', ['https://jupyterhub.github.io/helm-chart']),
    'shared/plain/Chart.yaml': 'apiVersion: v2\nname: plain\nversion: 1.0.0\n',
  }, 'ea-hub on shared charts')
  const [shared, plain] = await Promise.all([
    runDeploy(repo, ['--no-setup', '--deploy', 'ea-hub'], { rules: [HELM3] }),
    runDeploy(repo, ['--no-setup', '--deploy', 'staginghub'], { rules: [HELM3] }),
  ])
  assert.equal(shared.code, 0, shared.stderr)
  assert.deepEqual(calls(shared, 'helm', 'dep').map((c) => [c.argv.join(' '), path.relative(repo, c.cwd)]), [
    ['dep up shared/inner', ''],
    ['dep up shared/outer', ''],
    ['dep up', 'hub-charts/ea-hub'],
  ])
  assert.equal(plain.code, 0, plain.stderr)
  assert.deepEqual(calls(plain, 'helm', 'dep').map((c) => [c.argv.join(' '), path.relative(repo, c.cwd)]), [['dep up', 'hub-charts/staginghub']])
})

test('--changed: a change of mybinder/ changes every environment; one environment\'s values, that one', { timeout: 30_000 }, async () => {
  const repo = mybinderMoved()
  commit(repo, { 'mybinder/templates/static.yaml': 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: static\n' }, 'the shared chart')
  commit(repo, { 'hub-charts/prod/values.yaml': 'mybinder:\n  projectName: other\n' }, 'prod only')
  const [shared, prod, both] = await Promise.all([
    runDeploy(repo, ['--changed', 'HEAD~2..HEAD~1']),
    runDeploy(repo, ['--changed', 'HEAD~1..HEAD']),
    runDeploy(repo, ['--changed', 'HEAD~2..HEAD', '--json']),
  ])
  assert.equal(shared.code, 0, shared.stderr)
  assert.equal(shared.stdout, 'prod\nstaging\n')
  assert.equal(prod.stdout, 'prod\n')
  assert.deepEqual(JSON.parse(both.stdout), ['prod', 'staging'])
})

test('--validate with local dependencies trusts no cached archive: helm dep up mybinder, then helm dep up, even with Chart.lock and charts/ in place', { timeout: 30_000 }, async () => {
  const repo = mybinderMoved()
  for (const env of ['staging', 'prod']) {
    fs.mkdirSync(path.join(repo, `hub-charts/${env}/charts`))
    fs.writeFileSync(path.join(repo, `hub-charts/${env}/charts/mybinder-0.0.1-set.by.chartpress.tgz`), 'an archive of mybinder/ as it was\n')
    fs.writeFileSync(path.join(repo, `hub-charts/${env}/Chart.lock`), 'dependencies:\n- name: mybinder\n  repository: file://../../mybinder\n  version: 0.0.1-set.by.chartpress\n')
  }
  const r = await runDeploy(repo, ['--dry-run', '--validate', 'staging'])
  assert.equal(r.code, 0, r.stderr)
  const helm = r.stderr.split('\n').filter((l) => /^INFO:root:Executing and capturing helm (dep|lint)/.test(l))
  assert.deepEqual(helm.map((l) => l.replace('INFO:root:Executing and capturing ', '').split(' --namespace')[0]), ['helm dep up mybinder', 'helm dep up', 'helm lint hub-charts/staging'])
  assert.doesNotMatch(r.stderr, /dependencies already in/)
})

test('chartpress\'s way, values.yaml of mybinder/ changed in CI and not committed: the deploy is refused (exit 2) naming it, nothing run', { timeout: 30_000 }, async () => {
  const repo = mybinderMoved()
  fs.appendFileSync(path.join(repo, 'mybinder/values.yaml'), 'federationRedirect:\n  image:\n    tag: 0.1.0-n123.hdeadbee\n')
  const r = await runDeploy(repo, ['--no-setup', '--deploy', 'staging'], { rules: [HELM3] })
  assertUsageError(r, 'mybinder/values.yaml has uncommitted or untracked changes that would be deployed as if committed: commit or stash them first')
})

test('a secrets file sops encrypted (hubploy\'s) is refused, for a deploy and a validation, naming the file and the fix; its values never shown', { timeout: 30_000 }, async () => {
  const { repo } = migrationFixture('original')
  const encrypted = 'ENC[AES256_GCM,data:q2sXbXwT,iv:abc=,tag:def=,type:str]'
  commit(repo, {
    'secrets/staginghub.yaml': `jupyterhub:\n  proxy:\n    secretToken: ${encrypted}\nsops:\n  kms: []\n  gcp_kms:\n    - resource_id: projects/p/locations/global/keyRings/r/cryptoKeys/k\n  lastmodified: "2024-05-01T10:00:00Z"\n  mac: ENC[AES256_GCM,data:xyz=,type:str]\n  version: 3.8.1\n`,
  }, 'sops')
  const [deploy, validate] = await Promise.all([
    runDeploy(repo, ['--no-setup', '--deploy', 'staginghub'], { rules: [HELM3], secrets: [encrypted] }),
    runDeploy(repo, ['--validate', 'staginghub'], { rules: [HELM3], secrets: [encrypted] }),
  ])
  for (const r of [deploy, validate]) {
    assertUsageError(r, 'secrets/staginghub.yaml is encrypted with sops: helm would deploy its ENC[...] values as they are; decrypt it (sops --decrypt --in-place secrets/staginghub.yaml) and let git-crypt encrypt it (docs/migrating.md#from-hubploy)')
  }
  // A key of that name in plain values is no sops file.
  commit(repo, { 'secrets/staginghub.yaml': `jupyterhub:\n  proxy:\n    secretToken: ${SECRET_TOKEN}\nsops: not the metadata\n` }, 'plain')
  const plain = await runDeploy(repo, ['--no-setup', '--deploy', 'staginghub'], { rules: [HELM3] })
  assert.equal(plain.code, 0, plain.stderr)
  assert.match(upgradeOf(plain), / staginghub hub-charts\/staginghub$/)
})

test('docs/migrating.md: the workflow given to the upstream deploy.py\'s repository is valid YAML, clones with full history and runs deploy.ts only with documented flags, --no-setup', { timeout: 5_000 }, () => {
  const doc = fs.readFileSync(path.join(ROOT, 'docs/migrating.md'), 'utf8')
  const block = /```yaml\n(# \.github\/workflows\/build-deploy\.yml:[\s\S]*?)```/.exec(doc)?.[1]
  assert.ok(block, 'the workflow block')
  const workflow = YAML.parse(block)
  const readme = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8')
  const steps = Object.values(workflow.jobs as Record<string, { steps: { uses?: string; with?: Record<string, unknown>; run?: string }[] }>).flatMap((j) => j.steps)
  const runs = steps.flatMap((s) => (s.run?.includes('deploy.ts') ? [s.run] : []))
  assert.deepEqual(runs, ['npx tsx deploy.ts --no-setup --build --push ${{ matrix.hubname }}', 'npx tsx deploy.ts --no-setup --deploy ${{ matrix.hubname }}'])
  for (const flag of runs.flatMap((r) => r.match(/--[a-z-]+/g) ?? [])) assert.ok(readme.includes(`\`${flag}`), `README lacks ${flag}`)
  for (const s of steps.filter((s) => s.uses?.startsWith('actions/checkout'))) assert.equal(s.with?.['fetch-depth'], 0)
  assert.ok(!steps.some((s) => s.uses?.startsWith('actions/setup-python') || s.run?.includes('deploy.py')), 'no Python left')
})
