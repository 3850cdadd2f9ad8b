// Waves with recording stand-ins: 6 hubs on 2 clusters in 3 waves (test/support/fleet.ts),
// each cluster its own kubeconfig (a call's kubeconfig names its cluster), helm history seeded
// per hub with records of chosen ages. Nothing reaches a wave early, a failing canary stops
// the change at its wave, a scheduled re-run picks up where the last stopped, and a cluster's
// job reads and deploys its own cluster with its own credentials only.
import { after, test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { HELM3, commit, git, runDeploy, tempDir, type Rule, type RunResult } from './support/harness.ts'
import { startServer, stopServers } from './support/http.ts'
import { DAY, FLEET_ENV, SIX, TOKENS, fleetRepo, history, kubeconfigSha, recorded, upgrades, type Revision } from './support/fleet.ts'

const HOUR = 3600 * 1000
after(() => stopServers(), { timeout: 30_000 })
const run = (repo: string, args: string[], rules: Rule[], env: Record<string, string> = {}) =>
  runDeploy(repo, args, { rules: [HELM3, ...rules], env: { ...FLEET_ENV, ...env }, secrets: TOKENS })
const errors = (r: RunResult) => r.stderr.split('\n').filter((l) => l.startsWith('ERROR:'))
const next = (r: RunResult) => /^next: (.*)$/m.exec(r.stdout)?.[1]

/** Every upgrade ran against its own hub's cluster, with the change's record. */
function assertDeployed(r: RunResult, expected: Record<string, 'east' | 'west'>, head: string) {
  const done = upgrades(r)
  assert.deepEqual([...done.keys()].sort(), Object.keys(expected).sort(), r.commands.join('\n'))
  for (const [hub, cluster] of Object.entries(expected)) {
    const call = done.get(hub)!
    assert.equal(call.kubeconfigSha256, kubeconfigSha(cluster), `${hub} must be deployed with ${cluster}'s kubeconfig`)
    assert.equal(recorded(call).commit, head.slice(0, 12))
  }
}

/** Both staging hubs run the change, deployed `ageMs` ago. */
const staging = (head: string, ageMs: number, west = ageMs) =>
  [history('staginghub', [{ commit: head, ageMs }]), history('west-staging', [{ commit: head, ageMs: west }])]

test('nothing reaches a wave early: a wave opens only when every hub of the one before runs the change, deployed, for its soak', { timeout: 90_000 }, async () => {
  const { repo, old, head } = fleetRepo()
  const short = head.slice(0, 12)
  const before = (hub: string): Rule => history(hub, [{ commit: old, ageMs: 30 * DAY }])
  const canariesOld = [before('east-canary'), before('west-canary')]
  const [oneNotSoaked, stagingBehind, canariesSoaking, canariesOpen] = await Promise.all([
    // staginghub soaked (3d of 2d), west-staging not (1d): the canaries wait for west-staging.
    run(repo, ['--waves', '--deploy'], [...staging(head, 3 * DAY, 1 * DAY), ...canariesOld]),
    // A staging hub still runs the commit before the change: only it is deployed.
    run(repo, ['--waves', '--deploy'], [history('staginghub', [{ commit: old, ageMs: 10 * DAY }]), history('west-staging', [{ commit: head, ageMs: 3 * DAY }]), ...canariesOld]),
    // Staging soaked, the canaries run the change for 6d of their 7d: the rest waits.
    run(repo, ['--waves', '--deploy'], [...staging(head, 9 * DAY), history('east-canary', [{ commit: head, ageMs: 6 * DAY }]), history('west-canary', [{ commit: head, ageMs: 6.5 * DAY }])]),
    // Staging soaked: both canaries, each on its own cluster, and nothing else.
    run(repo, ['--waves', '--deploy'], [...staging(head, 3 * DAY, 2 * DAY + HOUR), ...canariesOld]),
  ])
  for (const r of [oneNotSoaked, stagingBehind, canariesSoaking, canariesOpen]) assert.equal(r.code, 0, r.stderr)

  assertDeployed(oneNotSoaked, {}, head)
  assert.match(oneNotSoaked.stdout, /^wave 1 staging, soak 2d: soaking: every hub runs it; soaking until \d{4}-\d\d-\d\d \d\d:\d\d UTC \(in 23h 5\dm\)$/m)
  assert.match(next(oneNotSoaked)!, /^nothing to deploy now: wave canary waits for wave staging to soak, until .* \(in 23h 5\dm\)$/)
  assert.match(oneNotSoaked.stdout, /^ {2}east-canary +east +behind +[0-9a-f]{12} +1 /m)

  assertDeployed(stagingBehind, { staginghub: 'east' }, head)
  assert.match(stagingBehind.stdout, /^wave 1 staging, soak 2d: open: staginghub does not run it yet$/m)
  assert.match(stagingBehind.stdout, /^wave 2 canary, soak 7d: waiting: waits for wave staging: staginghub does not run it yet$/m)

  assertDeployed(canariesSoaking, {}, head)
  assert.match(next(canariesSoaking)!, /^nothing to deploy now: wave rest waits for wave canary to soak, until .* \(in 23h 5\dm\)$/)

  assertDeployed(canariesOpen, { 'east-canary': 'east', 'west-canary': 'west' }, head)
  assert.equal(next(canariesOpen), `wave canary is open: east-canary, west-canary can get ${short} now`)
  assert.match(canariesOpen.stdout, /^east-canary\s+rollout\s+ok/m)
  assert.ok(!canariesOpen.commands.some((c) => /^helm upgrade .* (ea-hub|west-hub) /.test(c)), 'the rest waits for the canaries')
})

test('a failing canary stops the change at its wave: failed here before, failed now, or rolled back', { timeout: 90_000 }, async () => {
  const { repo, old, head } = fleetRepo()
  const short = head.slice(0, 12)
  const failedBefore: Revision[] = [{ commit: old, ageMs: 30 * DAY, status: 'superseded' }, { commit: head, ageMs: 2 * DAY, status: 'failed' }]
  const rolledBack: Revision[] = [{ commit: old, ageMs: 30 * DAY, status: 'superseded' }, { commit: head, ageMs: 2 * DAY, status: 'failed' }, { description: 'Rollback to 1', ageMs: 2 * DAY }]
  const westCanary = history('west-canary', [{ commit: head, ageMs: 8 * DAY }])
  const [before, back, now] = await Promise.all([
    run(repo, ['--waves', '--deploy'], [...staging(head, 10 * DAY), history('east-canary', failedBefore), westCanary]),
    run(repo, ['--waves', '--deploy', '--rollback-on-failure'], [...staging(head, 10 * DAY), history('east-canary', rolledBack), westCanary]),
    // This run deploys both canaries; east-canary's upgrade fails: west-canary's cluster goes on.
    run(repo, ['--waves', '--deploy'], [...staging(head, 3 * DAY), { tool: 'helm', match: '^upgrade --install --namespace east-canary ', exit: 1, stderr: 'Error: UPGRADE FAILED: timed out waiting for the condition\n' }]),
  ])
  for (const r of [before, back]) {
    assert.equal(r.code, 3, r.stderr)
    assertDeployed(r, {}, head)
    assert.deepEqual(errors(r), [`ERROR: the change ${short} stops at wave canary: east-canary: revision 2 failed deploying ${short}`])
    assert.match(r.stdout, /^wave 2 canary, soak 7d: stopped: east-canary: revision 2 failed deploying /m)
    assert.match(r.stdout, new RegExp(`^wave 3 rest: waiting: the change stopped at wave canary$`, 'm'))
    assert.match(r.stdout, /^ {2}east-canary +east +failed /m)
  }
  assert.match(back.stdout, /^ {2}east-canary +east +failed +[0-9a-f]{12} +3 /m, 'rolled back: revision 3 runs what revision 1 ran')

  assert.equal(now.code, 1, now.stderr)
  assertDeployed(now, { 'east-canary': 'east', 'west-canary': 'west' }, head)
  assert.match(now.stdout, /^east-canary\s+deploy\s+failed/m)
  assert.match(now.stdout, /^west-canary\s+rollout\s+ok/m)
})

test('a scheduled re-run picks up where the last run stopped: the state is the record each run left in the releases', { timeout: 90_000 }, async () => {
  const { repo, old, head } = fleetRepo()
  const stale = (hub: string) => history(hub, [{ commit: old, ageMs: 30 * DAY }])
  // Run 1: staging has soaked: the canaries get the change, and the run stops there.
  const first = await run(repo, ['--waves', '--deploy'], [...staging(head, 3 * DAY), stale('east-canary'), stale('west-canary'), stale('ea-hub'), stale('west-hub')])
  assert.equal(first.code, 0, first.stderr)
  assertDeployed(first, { 'east-canary': 'east', 'west-canary': 'west' }, head)
  // What run 1 wrote is what the next runs read: its descriptions, as the canaries' new revisions.
  const left = (hub: string, ageMs: number) => {
    const call = upgrades(first).get(hub)!
    return history(hub, [{ commit: old, ageMs: 30 * DAY }, { description: call.argv[call.argv.lastIndexOf('--description') + 1], ageMs }])
  }
  const [hourLater, weekLater] = await Promise.all([
    run(repo, ['--waves', '--deploy'], [...staging(head, 3 * DAY + HOUR), left('east-canary', HOUR), left('west-canary', HOUR), stale('ea-hub'), stale('west-hub')]),
    run(repo, ['--waves', '--deploy'], [...staging(head, 10 * DAY), left('east-canary', 7 * DAY + HOUR), left('west-canary', 7 * DAY + HOUR), stale('ea-hub'), stale('west-hub')]),
  ])
  for (const r of [hourLater, weekLater]) assert.equal(r.code, 0, r.stderr)
  assertDeployed(hourLater, {}, head)
  assert.match(hourLater.stdout, /^ {2}east-canary +east +runs it +[0-9a-f]{12} +2 /m)
  assert.match(next(hourLater)!, /^nothing to deploy now: wave rest waits for wave canary to soak, until .* \(in 6d 2[23]h\)$/)
  assertDeployed(weekLater, { 'ea-hub': 'east', 'west-hub': 'west' }, head)
  // Every hub then runs the change: a run after that has nothing to do.
  const done = await run(repo, ['--waves', '--deploy'], [...staging(head, 20 * DAY), ...['east-canary', 'west-canary', 'ea-hub', 'west-hub'].map((h) => history(h, [{ commit: head, ageMs: 10 * DAY }]))])
  assert.equal(done.code, 0, done.stderr)
  assertDeployed(done, {}, head)
  assert.equal(next(done), `every hub runs ${head.slice(0, 12)}, soaked: the rollout is complete`)
})

test('a later commit that leaves a hub\'s files alone keeps its soak; one that changes them starts it again', { timeout: 60_000 }, async () => {
  const { repo, head } = fleetRepo()
  // A commit that touches only ea-hub: the canaries run it already (their files did not change).
  git(repo, 'checkout', '-q', '-b', 'later')
  fs.appendFileSync(path.join(repo, 'hub-charts/ea-hub/values.yaml'), '# later\n')
  git(repo, 'commit', '-q', '-am', 'ea-hub only')
  const later = git(repo, 'rev-parse', 'HEAD')
  const rules = [...staging(head, 10 * DAY), ...['east-canary', 'west-canary'].map((h) => history(h, [{ commit: head, ageMs: 8 * DAY }])), history('ea-hub', [{ commit: head, ageMs: 2 * DAY }]), history('west-hub', [{ commit: head, ageMs: 2 * DAY }])]
  const r = await run(repo, ['--waves', '--deploy'], rules)
  assert.equal(r.code, 0, r.stderr)
  assertDeployed(r, { 'ea-hub': 'east' }, later)
  assert.match(r.stdout, /^ {2}staginghub +east +runs it +/m)
})

test('a cluster\'s job reads and deploys its own cluster only: the other cluster\'s credentials are not even in its checkout', { timeout: 90_000 }, async () => {
  const { repo, old, head } = fleetRepo()
  const rules = [...staging(head, 3 * DAY), ...['east-canary', 'west-canary'].map((h) => history(h, [{ commit: old, ageMs: 30 * DAY }]))]
  // west's job observes west (its --plan --json), as CI's observe job does.
  const westPlan = await run(repo, ['--plan', '--cluster', 'west', '--json'], rules)
  assert.equal(westPlan.code, 0, westPlan.stderr)
  const observed = tempDir('deploy-observed-')
  fs.writeFileSync(path.join(observed, 'west.json'), westPlan.stdout)
  const plan = JSON.parse(westPlan.stdout)
  assert.deepEqual(plan.clusters, ['west'])
  assert.equal(plan.commit, head)
  assert.deepEqual(plan.hubs.filter((h: { state: string }) => h.state !== 'unobserved').map((h: { hub: string }) => h.hub).sort(), ['west-canary', 'west-hub', 'west-staging'])
  // east's job: a checkout without west's kubeconfig.
  fs.rmSync(path.join(repo, 'secrets/west-kubeconfig.yaml'))
  const [alone, withObserved] = await Promise.all([
    run(repo, ['--waves', '--deploy', '--cluster', 'east'], rules),
    run(repo, ['--waves', '--deploy', '--cluster', 'east', '--observed', observed], rules),
  ])
  for (const r of [westPlan, alone, withObserved]) {
    const clusters = new Set(r.calls.map((c) => c.kubeconfigSha256).filter(Boolean))
    assert.equal(clusters.size, 1, r.commands.join('\n'))
  }
  assert.deepEqual([...new Set(westPlan.calls.map((c) => c.kubeconfigSha256).filter(Boolean))], [kubeconfigSha('west')])
  for (const r of [alone, withObserved]) {
    assert.equal(r.code, 0, r.stderr)
    assert.deepEqual([...new Set(r.calls.map((c) => c.kubeconfigSha256).filter(Boolean))], [kubeconfigSha('east')])
    assert.ok(!r.calls.some((c) => /west/.test(c.argv.join(' '))), r.commands.join('\n'))
  }
  // Alone, east cannot know west-staging: the canaries wait. With west's observation, east deploys its own canary.
  assertDeployed(alone, {}, head)
  assert.match(alone.stdout, /^wave 1 staging, soak 2d: open: west-staging not observed by this run \(cluster west\)$/m)
  assertDeployed(withObserved, { 'east-canary': 'east' }, head)
  assert.match(withObserved.stdout, /^ {2}west-canary +west +behind, eligible /m)
})

test('--observed: a plan made at another commit is left out, with a warning; a file that is not a plan is refused', { timeout: 60_000 }, async () => {
  const { repo, head } = fleetRepo()
  const dir = tempDir('deploy-observed-')
  fs.writeFileSync(path.join(dir, 'west.json'), JSON.stringify({ commit: '0'.repeat(40), clusters: ['west'], hubs: [{ hub: 'west-staging', cluster: 'west', wave: 'staging', state: 'current', since: new Date().toISOString() }] }))
  fs.writeFileSync(path.join(dir, 'junk.txt'), 'ignored: not .json')
  const bad = path.join(dir, 'bad.json.txt')
  fs.writeFileSync(bad, '{"not": "a plan"}')
  const [stale, refused] = await Promise.all([
    run(repo, ['--plan', '--cluster', 'east', '--observed', dir], staging(head, 3 * DAY)),
    run(repo, ['--plan', '--cluster', 'east', '--observed', bad], staging(head, 3 * DAY)),
  ])
  assert.equal(stale.code, 0, stale.stderr)
  assert.match(stale.stderr, new RegExp(`^WARNING: --observed ${dir}/west.json: observed at 000000000000, not at this commit ${head.slice(0, 12)}: left out$`, 'm'))
  assert.match(stale.stdout, /^ {2}west-staging +west +not observed /m)
  assert.equal(refused.code, 2, refused.stderr)
  assert.deepEqual(errors(refused), [`ERROR: --observed ${bad}: not the JSON of deploy.ts --plan --json (no commit, clusters and hubs); give the files the clusters' --plan jobs wrote`])
})

test('--plan reads and changes nothing; a release left pending or a history that cannot be read stops the change', { timeout: 60_000 }, async () => {
  const { repo, head } = fleetRepo()
  const [plan, pending, unread] = await Promise.all([
    run(repo, ['--plan'], staging(head, 3 * DAY)),
    run(repo, ['--waves', '--deploy'], [history('staginghub', [{ commit: head, status: 'pending-upgrade', ageMs: HOUR }]), history('west-staging', [{ commit: head, ageMs: 3 * DAY }])]),
    run(repo, ['--waves', '--deploy'], [{ tool: 'helm', match: '^history west-staging ', exit: 1, stderr: 'Error: Kubernetes cluster unreachable: the server has asked for the client to provide credentials\n' }, history('staginghub', [{ commit: head, ageMs: 3 * DAY }])]),
  ])
  assert.equal(plan.code, 0, plan.stderr)
  assert.ok(plan.commands.every((c) => /^helm (version|history) /.test(c)), plan.commands.join('\n'))
  assert.match(next(plan)!, /^wave canary is open: east-canary, west-canary can get [0-9a-f]{12} now$/)
  assert.equal(pending.code, 3, pending.stderr)
  assert.deepEqual(errors(pending), [`ERROR: the change ${head.slice(0, 12)} stops at wave staging: staginghub: revision 1 is pending-upgrade (a deploy is under way, or one was interrupted: deploy.ts --recover --deploy staginghub)`])
  assert.equal(unread.code, 3, unread.stderr)
  assert.match(errors(unread)[0], /^ERROR: the change [0-9a-f]{12} stops at wave staging: west-staging: could not read the history of west-staging \(the cluster of context west \(https:\/\/west\.k8s\.example\.org\) could not be reached for helm history/)
  for (const r of [pending, unread]) assertDeployed(r, {}, head)
})

test('a canary that runs the change but was rolled back after its rollout, or does not answer the health check, stops the change', { timeout: 60_000 }, async () => {
  const { repo, old, head } = fleetRepo()
  const short = head.slice(0, 12)
  const [sick, well] = await Promise.all([startServer([{ status: 503, body: 'upstream down' }]), startServer([{ body: { version: '5.2.1' } }])])
  const canaries = ['east-canary', 'west-canary'].map((h) => history(h, [{ commit: head, ageMs: 8 * DAY }]))
  // The upgrade succeeded (superseded now), its rollout did not: --rollback-on-failure went back to revision 1.
  const undone = history('east-canary', [{ commit: old, ageMs: 30 * DAY }, { commit: head, ageMs: DAY, status: 'superseded' }, { description: 'Rollback to 1', ageMs: DAY }])
  const urls = (east: string) => ({ HUB_URL_STAGINGHUB: well.origin, HUB_URL_WEST_STAGING: well.origin, HUB_URL_EAST_CANARY: east, HUB_URL_WEST_CANARY: well.origin })
  const [rolledBack, unhealthy, healthy] = await Promise.all([
    run(repo, ['--waves', '--deploy'], [...staging(head, 10 * DAY), undone, canaries[1]]),
    run(repo, ['--waves', '--deploy', '--plugin', 'health-check'], [...staging(head, 10 * DAY), ...canaries], urls(sick.origin)),
    run(repo, ['--waves', '--deploy', '--plugin', 'health-check'], [...staging(head, 10 * DAY), ...canaries], urls(well.origin)),
  ])
  assert.equal(rolledBack.code, 3, rolledBack.stderr)
  assert.deepEqual(errors(rolledBack), [`ERROR: the change ${short} stops at wave canary: east-canary: revision 2, deploying ${short}, was rolled back to revision 1`])
  assert.equal(unhealthy.code, 3, unhealthy.stderr)
  assert.deepEqual(errors(unhealthy), [`ERROR: the change ${short} stops at wave canary: east-canary: ${sick.origin}/hub/api did not answer with the hub's version (HTTP 503)`])
  assert.match(unhealthy.stdout, /^ {2}east-canary +east +unhealthy /m)
  for (const r of [rolledBack, unhealthy]) assertDeployed(r, {}, head)
  assert.equal(healthy.code, 0, healthy.stderr)
  assertDeployed(healthy, { 'ea-hub': 'east', 'west-hub': 'west' }, head)
  // Each of the four hubs that run the change was asked once by each of the two runs with the plugin.
  assert.equal((await well.received()).length + (await sick.received()).length, 4 + 4)
})

test('SIGINT while the clusters are read: the reads stop, every cluster\'s credentials directory is removed, exit 130', { timeout: 40_000 }, async () => {
  const { repo, head } = fleetRepo()
  const tmp = tempDir('deploy-tmp-')
  let sent = false
  const r = await runDeploy(repo, ['--plan', '--verbose'], {
    rules: [HELM3, history('staginghub', [{ commit: head }]), { tool: 'helm', match: '^history ', sleepMs: 60_000 }],
    env: { ...FLEET_ENV, TMPDIR: tmp },
    secrets: TOKENS,
    onSpawn: (child) => child.stderr!.on('data', (d: Buffer) => {
      if (!sent && d.toString().includes('helm history')) {
        sent = true
        setTimeout(() => process.kill(child.pid!, 'SIGINT'), 1500)
      }
    }),
  })
  assert.equal(r.code, 130, r.stderr)
  assert.match(r.stderr, /SIGINT received: stopping/)
  assert.ok(!/^next:/m.test(r.stdout), 'no plan from half the reads')
  // Each cluster's private directory (deploy-*, with its kubeconfig) is gone; tsx keeps its cache there too.
  assert.deepEqual(fs.readdirSync(tmp).filter((f) => f.startsWith('deploy-')), [], 'no credentials left behind')
  assert.ok(r.signals.length > 0 && r.signals.every((s) => s.tool === 'helm' && s.signal === 'SIGINT'), JSON.stringify(r.signals))
})

test('hubs on the upstream chart: a cluster\'s HUB_CHART_VERSION in the fleet file is part of the change, and the record names that version', { timeout: 60_000 }, async () => {
  const { repo, head: before } = fleetRepo()
  // Every hub moves to the upstream chart (hub-configs/<hub>.yaml); then west alone gets a newer chart.
  commit(repo, Object.fromEntries(Object.keys(SIX).map((h) => [`hub-configs/${h}.yaml`, `singleuser:\n  image:\n    tag: set-on-deployment\n# ${h}\n`])), 'upstream chart')
  const old = git(repo, 'rev-parse', 'HEAD')
  commit(repo, { 'fleet.yaml': fs.readFileSync(path.join(repo, 'fleet.yaml'), 'utf8').replace('    KUBECONFIG_FILE: secrets/west-kubeconfig.yaml\n', '    KUBECONFIG_FILE: secrets/west-kubeconfig.yaml\n    HUB_CHART_VERSION: 3.3.8\n') }, 'west: jupyterhub 3.3.8')
  const head = git(repo, 'rev-parse', 'HEAD')
  const all = Object.keys(SIX).map((h) => history(h, [{ commit: before, ageMs: 30 * DAY }, { commit: old, ageMs: 10 * DAY }]))
  const [r, changed] = await Promise.all([
    run(repo, ['--waves', '--deploy'], all),
    runDeploy(repo, ['--changed', `${old}..HEAD`, '--json']),
  ])
  assert.equal(r.code, 0, r.stderr)
  // East's hubs run what this commit deploys there; west's staging hub is the first to get 3.3.8.
  assertDeployed(r, { 'west-staging': 'west' }, head)
  const upgrade = upgrades(r).get('west-staging')!
  assert.match(upgrade.argv.join(' '), /^upgrade --install --namespace west-staging west-staging jupyterhub\/jupyterhub .* --version 3\.3\.8 -f hub-configs\/west-staging\.yaml /)
  assert.deepEqual({ chart: recorded(upgrade).chart, deps: recorded(upgrade).deps }, { chart: '3.3.8', deps: { jupyterhub: '3.3.8' } })
  assert.match(r.stdout, /^ {2}staginghub +east +runs it /m)
  assert.equal(changed.code, 0, changed.stderr)
  assert.deepEqual(JSON.parse(changed.stdout).map((e: { cluster: string; hubs: string[] }) => [e.cluster, e.hubs]), [['west', ['west-staging', 'west-canary', 'west-hub']]])
})

test('each cluster deploys at its own cap: east one hub at a time (parallel: 1 in the fleet file), west all three at once', { timeout: 60_000 }, async () => {
  const hubs: Record<string, [string, string]> = { e1: ['east', 'all'], e2: ['east', 'all'], e3: ['east', 'all'], w1: ['west', 'all'], w2: ['west', 'all'], w3: ['west', 'all'] }
  const { repo } = fleetRepo(hubs, [{ name: 'all' }])
  commit(repo, { 'fleet.yaml': fs.readFileSync(path.join(repo, 'fleet.yaml'), 'utf8').replace('    provider: kubeconfig\n', '    provider: kubeconfig\n    parallel: 1\n') }, 'east: one at a time')
  // No clock for west: its upgrades wait in a barrier until three run at once (standin.mjs).
  const r = await run(repo, ['--waves', '--deploy'], [{ tool: 'helm', match: '^upgrade --install --namespace e', sleepMs: 1500 }, { tool: 'helm', match: '^upgrade --install --namespace w', barrier: 3 }])
  assert.equal(r.code, 0, r.stderr)
  const calls = [...upgrades(r).values()]
  const west = calls.filter((c) => c.argv[3].startsWith('w'))
  const east = calls.filter((c) => c.argv[3].startsWith('e')).map((c) => c.startedAt).sort((a, b) => a - b)
  assert.deepEqual(west.map((c) => c.peak), [3, 3, 3], 'west: all three at once')
  assert.equal(east.length, 3)
  for (let i = 1; i < east.length; i++) assert.ok(east[i] - east[i - 1] >= 1500, `east: one after another (${east.join(', ')})`)
})
