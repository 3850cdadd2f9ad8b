// End-to-end: a fleet of 6 hubs on 2 clusters in 3 waves, each cluster a simulated Kubernetes
// API of its own, the REAL helm and kubectl of each toolchain (helm 3.17 + kubectl 1.32, helm 4.1 +
// kubectl 1.35). Release histories are seeded with
// records of chosen ages; `deploy.ts --waves --deploy` reads them with each cluster's own
// kubeconfig (setup's kubeconfig provider), deploys the wave that opened to the right
// cluster, records the change in each new revision, and a later run picks up from there.
// Run: node --import tsx --test test/e2e/fleet.test.ts
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { deploymentsTemplate } from '../support/charts.ts'
import { commit, git, makeRepo } from '../support/harness.ts'
import type { KubeApi } from '../support/kube-api.ts'
import { cluster, forEachToolchain, show } from '../support/e2e.ts'
import { DAY, SIX, WAVES, fleetYaml, recordOf } from '../support/fleet.ts'


/** The six hubs' repository: each chart one Deployment running its user image; the fleet's clusters are the two APIs. */
function fleetRepo(kubeconfigs: Record<string, string>): { repo: string; old: string; head: string } {
  const repo = makeRepo({ hubs: Object.keys(SIX), noSetupSecrets: true })
  const template = deploymentsTemplate({ images: { 'user-placeholder': '(printf "example/user:%s" $.Values.jupyterhub.singleuser.image.tag)' } })
  const fleet = fleetYaml().replace(/KUBECONFIG_FILE: secrets\/(\w+)-kubeconfig\.yaml/g, (_, c: string) => `KUBECONFIG_FILE: ${kubeconfigs[c]}`)
  commit(repo, {
    'fleet.yaml': fleet,
    '.gitignore': 'hub-charts/*/charts/\nhub-charts/*/Chart.lock\n',
    ...Object.fromEntries(Object.keys(SIX).map((h) => [`hub-charts/${h}/templates/deployments.yaml`, template])),
  }, 'the fleet')
  const old = git(repo, 'rev-parse', 'HEAD')
  commit(repo, Object.fromEntries(Object.keys(SIX).map((h) => [`hub-charts/${h}/values.yaml`, `jupyterhub:\n  singleuser:\n    image:\n      tag: set-on-deployment\n# the change\n`])), 'the change: every hub')
  return { repo, old, head: git(repo, 'rev-parse', 'HEAD') }
}

const ago = (ms: number) => new Date(Date.now() - ms).toISOString()
/** A revision of `hub` as a fleet deploy of `commit` would have left it, deployed `ageMs` ago. */
const seed = (api: KubeApi, hub: string, commit: string, ageMs: number) =>
  api.seedHelmRelease({ name: hub, namespace: hub, status: 'deployed', description: recordOf(commit), deployedAt: ago(ageMs) })
const revisions = (api: KubeApi, hub: string) => api.helmReleases(hub, hub).map((r) => ({ status: r.info.status, record: JSON.parse(r.info.description?.startsWith('{') ? r.info.description : '{}') }))

await forEachToolchain('a fleet in waves on two clusters with real helm and kubectl', (tools) => {
  test('a fleet in waves on two simulated clusters: the open wave goes to each hub\'s own cluster, recorded; the next run picks up from there', { timeout: 90_000 }, async (t) => {
    const [east, west] = await Promise.all([cluster(t, { tools }), cluster(t, { tools })])
    const { repo, old, head } = fleetRepo({ east: east.kubeconfig, west: west.kubeconfig })
    const short = head.slice(0, 12)
    const env = { REGISTRY_PROVIDER: 'none', HELM_TIMEOUT: '60', ROLLOUT_TIMEOUT: '60s' }
    // Staging runs the change for 3 days (soak 2d); ea-hub runs the commit before it.
    seed(east.api, 'staginghub', head, 3 * DAY)
    seed(west.api, 'west-staging', head, 3 * DAY)
    seed(east.api, 'ea-hub', old, 30 * DAY)

    const first = await east.deploy(repo, ['--waves', '--deploy'], env)
    assert.equal(first.code, 0, show(first))
    assert.match(first.stdout, new RegExp(`^next: wave canary is open: east-canary, west-canary can get ${short} now$`, 'm'))
    // Each canary on its own cluster, installed by real helm, with the change's record; nothing else moved.
    for (const [api, hub] of [[east.api, 'east-canary'], [west.api, 'west-canary']] as const) {
      assert.deepEqual(revisions(api, hub).map((r) => [r.status, r.record.commit]), [['deployed', short]], hub)
      assert.equal(api.get('deployments', hub, 'user-placeholder')?.status?.readyReplicas, 1, `${hub}: its rollout was waited for`)
    }
    assert.deepEqual(east.api.helmReleases('west-canary', 'west-canary'), [], 'west-canary is not on east')
    assert.deepEqual(west.api.helmReleases('east-canary', 'east-canary'), [], 'east-canary is not on west')
    assert.equal(revisions(east.api, 'staginghub').length, 1, 'staging runs the change already')
    assert.deepEqual(revisions(east.api, 'ea-hub').map((r) => r.record.commit), [old.slice(0, 12)], 'the rest waits for the canaries')
    assert.deepEqual(west.api.helmReleases('west-hub', 'west-hub'), [])

    // An hour later: the canaries soak (7d); --plan says until when, and deploys nothing.
    const plan = await east.deploy(repo, ['--plan'], env)
    assert.equal(plan.code, 0, show(plan))
    assert.match(plan.stdout, /^next: nothing to deploy now: wave rest waits for wave canary to soak, until .* \(in 6d 23h\)$/m)
    assert.match(plan.stdout, /^ {2}east-canary +east +runs it +[0-9a-f]{12} +1 /m)

    // A week later (the canaries' revisions as old as that): the rest gets the change, each on its cluster.
    for (const [api, hub] of [[east.api, 'east-canary'], [west.api, 'west-canary']] as const) seed(api, hub, head, 8 * DAY)
    const later = await east.deploy(repo, ['--waves', '--deploy'], env)
    assert.equal(later.code, 0, show(later))
    assert.deepEqual(revisions(east.api, 'ea-hub').map((r) => [r.status, r.record.commit]), [['superseded', old.slice(0, 12)], ['deployed', short]])
    assert.deepEqual(revisions(west.api, 'west-hub').map((r) => [r.status, r.record.commit]), [['deployed', short]])
    const done = await east.deploy(repo, ['--plan'], env)
    assert.match(done.stdout, new RegExp(`^next: every hub runs ${short}, soaked: the rollout is complete$`, 'm'))
  })
})
