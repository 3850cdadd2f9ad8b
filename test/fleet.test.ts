// The fleet file: each mistake one line naming the file, line, key path and fix (exit 2,
// nothing run); without a fleet file every command is what it was; with one, --changed and
// --list give CI one job per cluster, and the workflow gives each job its own credentials.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { YAML } from 'zx'
import { HELM3, ROOT, assertUsageError, commit, git, makeRepo, runDeploy, tempDir, type RunResult } from './support/harness.ts'
import { FLEET_ENV, TOKENS, fleetRepo, recorded, upgrades } from './support/fleet.ts'

const VALID = `clusters:
  east:
    provider: gke
    GKE_CLUSTER: east
    GKE_ZONE: us-east1-b
    GCP_PROJECT: ea-jupyter
  west:
    provider: kubeconfig
    KUBECONFIG_FILE: secrets/west-kubeconfig.yaml
waves:
  - name: staging
    soak: 2d
  - name: rest
hubs:
  staginghub: { cluster: east, wave: staging }
  ea-hub: { cluster: west, wave: rest }
`

/** A repository with staginghub and ea-hub (and `more` charts) and this fleet file. */
function withFleet(text: string, more: string[] = []): string {
  const repo = makeRepo({ hubs: ['staginghub', 'ea-hub', ...more] })
  commit(repo, { 'fleet.yaml': text }, 'the fleet')
  return repo
}

const MISTAKES: [string, string, string | RegExp][] = [
  ['not YAML', 'clusters: [\n', /^ERROR: fleet\.yaml:2: not valid YAML \(.+\); fix the file$/],
  ['a misspelt top-level key', VALID.replace('waves:', 'wavez:'), 'fleet.yaml:10: wavez: unknown key; did you mean waves? (a fleet file has clusters, waves and hubs) (and 1 more mistake in fleet.yaml after this one)'],
  ['a misspelt cluster key', VALID.replace('    GKE_ZONE: us-east1-b', '    GKE_ZONE: us-east1-b\n    HELM_TIMOUT: 600'), 'fleet.yaml:6: clusters.east.HELM_TIMOUT: unknown key; did you mean HELM_TIMEOUT? (a cluster has provider, parallel and the keys of docs/configuration.md)'.replace('HELM_TIMEOUT: unknown', 'HELM_TIMOUT: unknown')],
  ['no provider', VALID.replace('    provider: kubeconfig\n', ''), 'fleet.yaml:7: clusters.west: provider is missing; add provider: gke|eks|aks|kubeconfig'],
  ['an unknown provider', VALID.replace('provider: gke', 'provider: gcp'), 'fleet.yaml:3: clusters.east.provider: "gcp" is not a cluster provider; use one of gke, eks, aks, kubeconfig (docs/clusters.md)'],
  ['a wave without soak', VALID.replace('    soak: 2d\n', ''), 'fleet.yaml:11: waves[0] (staging): soak is missing: how long its hubs must run a change before the next wave gets it; add soak: 2d (or 0)'],
  ['a soak that is none', VALID.replace('soak: 2d', 'soak: 2 days'), 'fleet.yaml:12: waves[0] (staging).soak: 2 days is not a soak; give one up to a year, such as 0, 12h, 2d, 1w or 1d12h'],
  ['a hub that has no chart', VALID + '  nope: { cluster: east, wave: rest }\n', 'fleet.yaml:17: hubs.nope: no chart of that name (hub-charts/nope/Chart.yaml or hub-configs/nope.yaml); add the chart or remove the entry'],
  ['an unknown cluster', VALID.replace('ea-hub: { cluster: west', 'ea-hub: { cluster: wets'), 'fleet.yaml:16: hubs.ea-hub.cluster: wets is not one of the clusters; did you mean west? (clusters: east, west)'],
  ['an unknown wave', VALID.replace('wave: rest }', 'wave: rets }'), 'fleet.yaml:16: hubs.ea-hub.wave: rets is not one of the waves; did you mean rest? (waves: staging, rest)'],
  ['a value a tool would take for an option', VALID.replace('GKE_CLUSTER: east', 'GKE_CLUSTER: --east'), 'fleet.yaml:4: clusters.east.GKE_CLUSTER: not a GKE cluster name (lowercase letters, digits, -); give the value, or leave the key out to use .env\'s'],
  ['a cluster that does not name itself', VALID.replace('    GKE_ZONE: us-east1-b\n', ''), 'fleet.yaml:2: clusters.east: GKE_ZONE missing; a gke cluster names itself with GKE_CLUSTER, GKE_ZONE, GCP_PROJECT here'],
  ['the same cluster twice', VALID.replace('    provider: kubeconfig\n    KUBECONFIG_FILE: secrets/west-kubeconfig.yaml', '    provider: gke\n    GKE_CLUSTER: east\n    GKE_ZONE: us-east1-b\n    GCP_PROJECT: ea-jupyter'), 'fleet.yaml:7: clusters.west: the same cluster as clusters.east (same GKE_CLUSTER, GKE_ZONE, GCP_PROJECT); give each cluster its own'],
  ['a bad duration', VALID.replace('    GCP_PROJECT: ea-jupyter\n', '    GCP_PROJECT: ea-jupyter\n    HELM_TIMEOUT: soon\n'), 'fleet.yaml:2: clusters.east: HELM_TIMEOUT=soon: not a duration; use one from 1s to 24h, e.g. 600, 90s, 10m, 1h30m'],
  ['a staging chart on another cluster', VALID.replace('    GCP_PROJECT: ea-jupyter\n', '    GCP_PROJECT: ea-jupyter\n    STAGING_CHART: ea-hub\n'), 'fleet.yaml:7: clusters.east.STAGING_CHART: ea-hub is not a hub on this cluster; name one of its hubs, or leave the key out'],
  ['a cap that is no number', VALID.replace('    provider: kubeconfig\n', '    provider: kubeconfig\n    parallel: 0\n'), 'fleet.yaml:9: clusters.west.parallel: 0 is not a number of hubs; give a whole number, 1 or more'],
  ['a wave with no hub', VALID.replace('  - name: rest\n', '  - name: canary\n    soak: 1w\n  - name: rest\n'), 'fleet.yaml:13: waves[1] (canary): no hub is in this wave; put hubs in it (wave: canary) or remove it'],
]

test('fleet.yaml: each mistake is one line naming the file, line, key path and fix; exit 2, nothing run', { timeout: 120_000 }, async () => {
  const runs = await Promise.all(MISTAKES.map(([, text]) => runDeploy(withFleet(text), ['--plan'])))
  runs.forEach((r, i) => assertUsageError(r, MISTAKES[i][2] instanceof RegExp ? MISTAKES[i][2] : new RegExp(`^ERROR: ${MISTAKES[i][2].replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`)))
  // A chart the file leaves out would never be deployed: named, with the entry to add.
  assertUsageError(await runDeploy(withFleet(VALID, ['new-hub']), ['--deploy', 'ea-hub']),
    /^ERROR: fleet\.yaml:14: hubs: the chart new-hub has no entry, so no wave would deploy it; add new-hub: \{ cluster: \.\.\., wave: \.\.\. \}$/)
})

test('the fleet flags: what needs a fleet file, and combinations that would do less than they say', { timeout: 60_000 }, async () => {
  const plain = makeRepo({ hubs: ['staginghub', 'ea-hub'] })
  const { repo } = fleetRepo()
  const cases: [string, string[], string][] = [
    [plain, ['--waves', '--deploy'], '--waves needs a fleet file: there is no fleet.yaml here (docs/fleet.md)'],
    [plain, ['--plan'], '--plan needs a fleet file: there is no fleet.yaml here (docs/fleet.md)'],
    [plain, ['--deploy', '--cluster', 'east', 'staginghub'], '--cluster needs a fleet file: there is no fleet.yaml here (docs/fleet.md)'],
    [repo, ['--plan', '--cluster', 'nope'], '--cluster nope: not a cluster of fleet.yaml; clusters: east, west'],
    [repo, ['--plan', '--deploy'], '--plan only reads where the change stands: drop --deploy (--waves --deploy deploys)'],
    [repo, ['--plan', '--dry-run'], '--plan only reads where the change stands: drop --dry-run (--waves --deploy deploys)'],
    [repo, ['--waves'], '--waves deploys the hubs whose wave is open: add --deploy (or look first with --plan)'],
    [repo, ['--waves', '--deploy', 'ea-hub'], '--waves chooses the hubs itself: drop the chart names (or deploy them by name, without --waves)'],
    [repo, ['--plan', '--observed', 'x'], '--observed fills in the clusters a --plan or --waves run with --cluster does not reach: add --cluster NAME and --plan or --waves, or drop --observed'],
    [repo, ['--list', '--cluster', 'east'], '--list only lists charts: drop --cluster'],
    [repo, ['--changed', 'HEAD~1..HEAD', '--waves'], '--changed only lists charts: drop --waves (run the deploy as its own command)'],
    [repo, ['--no-setup', '--waves', '--deploy'], '--no-setup uses your own kubeconfig, which reaches one cluster, and this run needs east, west: add --cluster NAME (one cluster a run), or drop --no-setup'],
    [repo, ['--no-setup', '--deploy', 'staginghub', 'west-hub'], '--no-setup uses your own kubeconfig, which reaches one cluster, and this run needs east, west: add --cluster NAME (one cluster a run), or drop --no-setup'],
    [repo, ['--deploy', '--cluster', 'east', 'staginghub', 'west-hub'], 'west-hub is on cluster west, not east (fleet.yaml); drop it or run with --cluster west'],
  ]
  const [validate, ...runs] = await Promise.all([
    // A validation reaches a cluster only for its optional server-side check: hubs of both clusters at once are fine.
    runDeploy(repo, ['--no-setup', '--validate', 'staginghub', 'west-hub'], { env: FLEET_ENV, rules: [HELM3] }),
    ...cases.map(([where, args]) => runDeploy(where, args, { env: FLEET_ENV })),
  ])
  runs.forEach((r, i) => assertUsageError(r, new RegExp(`^ERROR: ${cases[i][2].replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`)))
  assert.equal(validate.code, 0, validate.stderr)
  assert.match(validate.stdout, /^west-hub\s+validate\s+ok/m)
})

/** The commands of a run, a fleet deploy's --description left out. */
const withoutRecord = (r: RunResult) => r.commands.map((c) => c.replace(/ --description \{.*\}$/, '')).sort()

test('no fleet file: every command is what it was; a fleet of one cluster adds only the record of each deploy', { timeout: 90_000 }, async () => {
  const plain = makeRepo({ hubs: ['staginghub', 'ea-hub'], monitoring: true })
  // The same commits (so the same image tags), and the fleet file on top.
  const fleet = tempDir('deploy-repo-')
  git(fleet, 'clone', '-q', plain, '.')
  // The one cluster is .env's (the original's GKE cluster), named in the file as a fleet must.
  commit(fleet, {
    'fleet.yaml': 'clusters:\n  jhub: { provider: gke, GKE_CLUSTER: jhub, GKE_ZONE: us-central1-b, GCP_PROJECT: ea-jupyter }\nwaves:\n  - { name: staging, soak: 1d }\n  - { name: production }\nhubs:\n  staginghub: { cluster: jhub, wave: staging }\n  ea-hub: { cluster: jhub, wave: production }\n  monitoring: { cluster: jhub, wave: production }\n',
  })
  const args = ['--build', '--push', '--deploy', 'staginghub', 'ea-hub', 'monitoring']
  const rules = [HELM3, { tool: 'docker' as const, match: '^manifest', exit: 1 }]
  const [before, after, changedBefore, listBefore] = await Promise.all([
    runDeploy(plain, args, { rules }),
    runDeploy(fleet, args, { rules }),
    runDeploy(plain, ['--changed', 'HEAD~3..HEAD', '--json']),
    runDeploy(plain, ['--list']),
  ])
  for (const r of [before, after, changedBefore, listBefore]) assert.equal(r.code, 0, r.stderr)
  assert.ok(!before.commands.some((c) => c.includes('--description')), 'no record without a fleet file')
  assert.deepEqual(withoutRecord(after), withoutRecord(before))
  for (const chart of ['staginghub', 'ea-hub', 'monitoring']) {
    const call = upgrades(after).get(chart)!
    assert.deepEqual(Object.keys(recorded(call)), ['commit', 'chart', 'images', 'deps'], chart)
    assert.equal(recorded(call).commit, git(fleet, 'rev-parse', 'HEAD').slice(0, 12))
  }
  assert.deepEqual(JSON.parse(changedBefore.stdout), ['ea-hub', 'staginghub', 'monitoring'], 'a JSON array of charts, as before')
  assert.equal(listBefore.stdout, 'ea-hub\nstaginghub\nmonitoring\n')
})

test('--changed --json and --list --json with a fleet file: one matrix entry per cluster, hubs wave by wave', { timeout: 60_000 }, async () => {
  const { repo, old } = fleetRepo()
  // After the change to every hub, one to west-hub alone.
  fs.appendFileSync(path.join(repo, 'hub-charts/west-hub/values.yaml'), '# west only\n')
  git(repo, 'commit', '-q', '-am', 'west-hub only')
  const [all, change, westOnly, plainList, lines] = await Promise.all([
    runDeploy(repo, ['--list', '--json']),
    runDeploy(repo, ['--changed', `${old}..HEAD~1`, '--json']),
    runDeploy(repo, ['--changed', 'HEAD~1..HEAD', '--json']),
    runDeploy(makeRepo({ hubs: ['staginghub', 'ea-hub'] }), ['--list', '--json']),
    runDeploy(repo, ['--changed', 'HEAD~1..HEAD']),
  ])
  for (const r of [all, change, westOnly, plainList, lines]) assert.equal(r.code, 0, r.stderr)
  const east = { cluster: 'east', hubs: ['staginghub', 'east-canary', 'ea-hub'], waves: [{ wave: 'staging', hubs: ['staginghub'] }, { wave: 'canary', hubs: ['east-canary'] }, { wave: 'rest', hubs: ['ea-hub'] }] }
  const west = { cluster: 'west', hubs: ['west-staging', 'west-canary', 'west-hub'], waves: [{ wave: 'staging', hubs: ['west-staging'] }, { wave: 'canary', hubs: ['west-canary'] }, { wave: 'rest', hubs: ['west-hub'] }] }
  assert.deepEqual(JSON.parse(all.stdout), [east, west])
  assert.deepEqual(JSON.parse(change.stdout), [east, west])
  assert.deepEqual(JSON.parse(westOnly.stdout), [{ cluster: 'west', hubs: ['west-hub'], waves: [{ wave: 'rest', hubs: ['west-hub'] }] }])
  assert.equal(plainList.stdout, '["ea-hub","staginghub"]\n')
  assert.equal(lines.stdout, 'west-hub\n')
})

test('a plain deploy with a fleet file: each hub with its own cluster\'s credentials, the clusters at once, and recorded', { timeout: 60_000 }, async () => {
  const { repo, head } = fleetRepo()
  const r = await runDeploy(repo, ['--deploy', 'ea-hub', 'west-hub', 'staginghub'], { rules: [HELM3], env: FLEET_ENV, secrets: TOKENS })
  assert.equal(r.code, 0, r.stderr)
  const done = upgrades(r)
  assert.deepEqual([...done.keys()].sort(), ['ea-hub', 'staginghub', 'west-hub'])
  for (const hub of done.keys()) assert.equal(recorded(done.get(hub)!).commit, head.slice(0, 12))
  // east's staging chart first on east; west's hub does not wait for it.
  const at = (hub: string) => r.calls.indexOf(done.get(hub)!)
  assert.ok(at('staginghub') < at('ea-hub'), r.commands.join('\n'))
  assert.notEqual(done.get('west-hub')!.kubeconfigSha256, done.get('ea-hub')!.kubeconfigSha256)
})

test('CI: with a fleet file, one job per cluster observes and one deploys, each with its own cluster\'s credentials only', { timeout: 10_000 }, () => {
  const workflow = YAML.parse(fs.readFileSync(path.join(ROOT, '.github/workflows/deploy.yml'), 'utf8'))
  assert.ok('schedule' in workflow.on, 'a schedule resumes rollouts')
  for (const name of ['observe', 'waves']) {
    const job = workflow.jobs[name]
    assert.ok(job, name)
    assert.match(String(job.strategy.matrix.include), /fromJSON\(needs\.changes\.outputs\.(clusters|fleet)\)/, name)
    // A GitHub environment per cluster holds that cluster's secrets and variables, and only a job of that cluster gets them.
    assert.equal(job.environment, '${{ matrix.cluster }}', name)
    const runs = job.steps.map((s: { run?: string }) => s.run ?? '').join('\n')
    assert.match(runs, /deploy\.ts --(plan|waves) .*--cluster "\$\{\{ matrix\.cluster \}\}"/, name)
    assert.doesNotMatch(JSON.stringify(job), /secrets\.GKE_|secrets\.AWS_|secrets\.AZURE_/, `${name}: cluster credentials come from the cluster's environment`)
  }
  assert.deepEqual(workflow.jobs.waves.needs, ['changes', 'observe'])
  assert.match(workflow.jobs.waves.steps.map((s: { run?: string }) => s.run ?? '').join('\n'), /--waves --cluster "\$\{\{ matrix\.cluster \}\}" --observed observed --build --push --deploy/)
  assert.equal(workflow.jobs.waves.concurrency.group, 'fleet-${{ matrix.cluster }}')
  // Without a fleet file the jobs that were are the jobs that run.
  for (const job of ['staging', 'production', 'monitoring']) assert.match(workflow.jobs[job].if, /needs\.changes\.outputs/)
})
