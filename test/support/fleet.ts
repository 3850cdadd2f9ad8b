// A fleet fixture built by code: an ops repository with a fleet file (6 hubs on 2 clusters in
// 3 waves by default), each cluster a kubeconfig of its own, and helm history output seeded
// per hub with records of chosen ages, for the recording stand-ins.
import crypto from 'node:crypto'
import { commit, git, makeRepo, type Rule, type RunResult } from './harness.ts'

export const DAY = 24 * 3600 * 1000

/** hub → [cluster, wave]: two staging hubs, two canaries, two of the rest. */
export const SIX: Record<string, [string, string]> = {
  'staginghub': ['east', 'staging'],
  'west-staging': ['west', 'staging'],
  'east-canary': ['east', 'canary'],
  'west-canary': ['west', 'canary'],
  'ea-hub': ['east', 'rest'],
  'west-hub': ['west', 'rest'],
}

export const WAVES = [{ name: 'staging', soak: '2d' }, { name: 'canary', soak: '7d' }, { name: 'rest' }]

/** A cluster's kubeconfig: its own server and token (the token is a secret no run may show). */
export const kubeconfigOf = (cluster: string) => `apiVersion: v1
kind: Config
clusters:
  - name: ${cluster}
    cluster: { server: 'https://${cluster}.k8s.example.org' }
users:
  - name: deployer
    user: { token: ${cluster}-kubeconfig-token-0123456789 }
contexts:
  - name: ${cluster}
    context: { cluster: ${cluster}, user: deployer }
current-context: ${cluster}
`

/** The sha256 of the private kubeconfig setup writes for a cluster (the file's trimmed text): how a call names its cluster. */
export const kubeconfigSha = (cluster: string) => crypto.createHash('sha256').update(kubeconfigOf(cluster).trim()).digest('hex')

export const TOKENS = ['east', 'west'].map((c) => `${c}-kubeconfig-token-0123456789`)

/** The fleet file for `hubs` on kubeconfig clusters. */
export function fleetYaml(hubs: Record<string, [string, string]> = SIX, waves: { name: string; soak?: string }[] = WAVES): string {
  const clusters = [...new Set(Object.values(hubs).map(([c]) => c))]
  return [
    '# which cluster each hub is on, and in which wave a change reaches it (docs/fleet.md)',
    'clusters:',
    ...clusters.flatMap((c) => [`  ${c}:`, '    provider: kubeconfig', `    KUBECONFIG_FILE: secrets/${c}-kubeconfig.yaml`]),
    'waves:',
    ...waves.map((w) => `  - { name: ${w.name}${w.soak ? `, soak: ${w.soak}` : ''} }`),
    'hubs:',
    ...Object.entries(hubs).map(([hub, [cluster, wave]]) => `  ${hub}: { cluster: ${cluster}, wave: ${wave} }`),
    '',
  ].join('\n')
}

/**
 * A repository with the fleet's charts, kubeconfigs and fleet file (commit `old`), then the
 * change being rolled out: a new value for every hub (`head`).
 */
export function fleetRepo(hubs: Record<string, [string, string]> = SIX, waves = WAVES): { repo: string; old: string; head: string } {
  const repo = makeRepo({ hubs: Object.keys(hubs) })
  const clusters = [...new Set(Object.values(hubs).map(([c]) => c))]
  commit(repo, {
    'fleet.yaml': fleetYaml(hubs, waves),
    ...Object.fromEntries(clusters.map((c) => [`secrets/${c}-kubeconfig.yaml`, kubeconfigOf(c)])),
  }, 'the fleet')
  const old = git(repo, 'rev-parse', 'HEAD')
  const values = (hub: string) => `jupyterhub:\n  singleuser:\n    image:\n      tag: set-on-deployment\n  hub:\n    extraEnv: { CHANGE: "2" }\n# ${hub}\n`
  commit(repo, Object.fromEntries(Object.keys(hubs).map((h) => [`hub-charts/${h}/values.yaml`, values(h)])), 'the change: every hub')
  return { repo, old, head: git(repo, 'rev-parse', 'HEAD') }
}

/** What a fleet deploy records (lib/record.ts). */
export const recordOf = (commit: string) => JSON.stringify({ commit: commit.slice(0, 12), chart: '0.1.0', images: { user: 'abc1234' }, deps: {} })

export interface Revision {
  status?: string
  /** The commit its record names; a description of its own instead. */
  commit?: string
  description?: string
  /** How long ago it was deployed. */
  ageMs?: number
}

/** `helm history <hub> -o json` answering these revisions (1, 2, ...), oldest first. */
export function history(hub: string, revisions: Revision[]): Rule {
  const now = Date.now()
  return {
    tool: 'helm',
    match: `^history ${hub} `,
    stdout: JSON.stringify(revisions.map((r, i) => ({
      revision: i + 1,
      updated: new Date(now - (r.ageMs ?? DAY)).toISOString(),
      status: r.status ?? (i === revisions.length - 1 ? 'deployed' : 'superseded'),
      chart: `${hub}-0.1.0`,
      app_version: '',
      description: r.description ?? (r.commit ? recordOf(r.commit) : 'Install complete'),
    }))),
  }
}

/** The `helm upgrade` calls of a run, by release. */
export function upgrades(r: RunResult): Map<string, RunResult['calls'][number]> {
  return new Map(r.calls.filter((c) => c.tool === 'helm' && c.argv[0] === 'upgrade').map((c) => [c.argv[3], c]))
}

/** The record an upgrade was given. */
export function recorded(call: RunResult['calls'][number]): Record<string, unknown> {
  const i = call.argv.lastIndexOf('--description')
  return i < 0 ? {} : JSON.parse(call.argv[i + 1])
}

/** Settings of every fleet run: no registry login (nothing is pushed). */
export const FLEET_ENV = { REGISTRY_PROVIDER: 'none' }
