/**
 * Waves (docs/fleet.md): where a change stands in the fleet, and which hubs it may reach
 * now. The change is the checked-out commit. It reaches wave N+1 only when every hub of
 * wave N runs it, deployed, for wave N's soak. The state is where it already is: each
 * release's history in its cluster (the record lib/record.ts writes with every fleet deploy),
 * read with that cluster's credentials only. `--plan` prints where things stand; `--waves`
 * deploys the hubs that became eligible, then stops: a scheduled run picks up from there.
 */
import process from 'node:process'
import fs from 'node:fs'
import path from 'node:path'
import type YAMLModule from 'yaml'
import { DeployError, EXIT, usageError, type Exec, type HelmMajor, type ReleaseRevision } from './contract.ts'
import { DEFAULT_PARALLEL, pluginNames, type Args } from './cli.ts'
import { chartFiles } from './plan.ts'
import type { Config } from './config.ts'
import { notAFile } from './secrets.ts'
import { INSTALL_HINTS, makeExec, writeResult, type Invocation, type Output } from './process.ts'
import { changedCharts, type Watched } from './git.ts'
import { helmVersion, makeHelm, unsupportedHelm } from './helm.ts'
import { planSetup, privateConfigDir, quietly, setupSteps } from './providers.ts'
import { parseRecord, recordedCommit, type DeployRecord } from './record.ts'
import { checkOneKubeconfig, clusterConfig, envFileOf, fleetChanges, groupByCluster, watchedCharts, type ChartGroup, type Fleet, type Wave } from './fleet.ts'

/**
 * Where a hub stands with the change: it runs it (`current`), runs an older commit
 * (`behind`) or nothing (`absent`); or the change cannot go on past it: it `failed` there
 * (or was rolled back), runs it but does not answer the health check (`unhealthy`), a deploy
 * is `pending`, the hub runs a commit this checkout lacks (`ahead`), its history is `unread`;
 * or this run does not reach its cluster (`unobserved`).
 */
export type HubState = 'current' | 'behind' | 'absent' | 'failed' | 'unhealthy' | 'pending' | 'ahead' | 'unread' | 'unobserved'

/** States that stop the change at the hub's wave. */
const STOPS: readonly HubState[] = ['failed', 'unhealthy', 'pending', 'ahead', 'unread']

export interface HubView {
  hub: string
  cluster: string
  wave: string
  state: HubState
  /** The revision deployed now, and the commit its record names. */
  revision?: number
  runs?: string
  /** When that revision was deployed (ISO 8601): the soak counts from here. */
  since?: string
  /** Why, for a state that is not `current`. */
  reason?: string
}

/**
 * `open`: its hubs may get the change now; `stopped`: open, but the change goes no further
 * (a hub failed, is pending, ahead or unread); `soaking`: every hub runs the change, not
 * yet for the soak; `done`: every hub runs it and has soaked; `waiting`: an earlier wave is
 * not through.
 */
export type WaveState = 'open' | 'stopped' | 'soaking' | 'done' | 'waiting'

export interface WaveView {
  wave: Wave
  hubs: HubView[]
  state: WaveState
  /** What the state means here, one line. */
  note: string
  /** When it opens (waiting for a soak) or has soaked (soaking, done), ms since the epoch. */
  at?: number
}

export interface FleetPlan {
  /** The change: the commit checked out. */
  commit: string
  now: number
  waves: WaveView[]
  /** Hubs the change may reach now (every cluster's; a run deploys those of its clusters). */
  eligible: HubView[]
  /** Why the change does not go on, when a hub stops it. */
  stop?: string
  /** What happens next, one line. */
  next: string
}

/** How a recorded commit relates to the checkout: the same, an ancestor (and the charts changed since), or neither. */
type Relation = { kind: 'same' } | { kind: 'ancestor'; changed: Set<string> } | { kind: 'ahead' } | { kind: 'unknown' }

/** Git runs locally: this bounds a stuck one. */
const GIT_SECONDS = 120

/** The checked-out commit; a shallow clone cannot tell which commits a hub runs. */
async function headCommit(exec: Exec): Promise<string> {
  const r = await exec('git', ['rev-parse', '--is-shallow-repository', 'HEAD'], { capture: true, nothrow: true, show: 'silent', readOnly: true, timeout: GIT_SECONDS })
  const [shallow, head] = r.stdout.trim().split('\n')
  if (r.exitCode !== 0 || !head) throw usageError(`git cannot read the repository here (${r.stderr.trim().split('\n')[0]}): run deploy.ts from the root of the ops repository`)
  if (shallow === 'true') throw usageError('this is a shallow clone, so the commits the hubs run cannot be compared with this one: run `git fetch --unshallow` (in CI, clone with full depth)')
  return head
}

/** What relations() compares with: the charts, each with what changes it, the env file, the fleet. */
interface Changes {
  watched: Watched[]
  envFile: string
  fleet: Fleet
  YAML: typeof YAMLModule
}

/**
 * How each recorded commit relates to `head`, and for an ancestor which hubs changed since:
 * their files (lib/git.ts changedCharts) or their cluster in the fleet file. A few git
 * commands per distinct commit, whatever the number of hubs.
 */
async function relations(exec: Exec, out: Output, head: string, commits: Set<string>, changes: Changes): Promise<Map<string, Relation>> {
  const found = await Promise.all([...commits].map(async (commit): Promise<[string, Relation]> => {
    if (head.startsWith(commit)) return [commit, { kind: 'same' }]
    const r = await exec('git', ['merge-base', '--is-ancestor', commit, 'HEAD'], { capture: true, nothrow: true, show: 'silent', readOnly: true, timeout: GIT_SECONDS })
    if (r.exitCode === 1) return [commit, { kind: 'ahead' }]
    if (r.exitCode !== 0) return [commit, { kind: 'unknown' }]
    const [files, fleet] = await Promise.all([
      changedCharts(exec, out, `${commit}..HEAD`, changes.watched, changes.envFile),
      fleetChanges(exec, changes.fleet, commit, changes.YAML),
    ])
    return [commit, { kind: 'ancestor', changed: new Set([...files, ...fleet]) }]
  }))
  return new Map(found)
}

/** Whether `hub` at `commit` is what the checkout would deploy: `current`, `older`, `ahead`. */
function currency(rel: Relation | undefined, hub: string): 'current' | 'older' | 'ahead' {
  if (rel?.kind === 'same' || (rel?.kind === 'ancestor' && !rel.changed.has(hub))) return 'current'
  return rel?.kind === 'ahead' ? 'ahead' : 'older'
}

type History = { revisions: ReleaseRevision[] } | { error: string }

/** A revision's record; a rollback's (`Rollback to 3`) is the record of the revision it went back to. */
function recordOf(rev: ReleaseRevision | undefined, revisions: ReleaseRevision[]): DeployRecord | undefined {
  const back = /^Rollback to (\d+)$/.exec(rev?.description ?? '')?.[1]
  return back ? parseRecord(revisions.find((r) => r.revision === Number(back))?.description) : parseRecord(rev?.description)
}

/** The commits the histories record (every revision's), for relations(). */
function recordedCommits(histories: History[]): Set<string> {
  const all = histories.flatMap((h) => ('revisions' in h ? h.revisions.map((r) => recordedCommit(recordOf(r, h.revisions))) : []))
  return new Set(all.filter((c): c is string => !!c))
}

/** Where a hub stands, from its release history. */
function classify(base: Pick<HubView, 'hub' | 'cluster' | 'wave'>, history: History, rels: Map<string, Relation>): HubView {
  const { hub } = base
  if ('error' in history) {
    if (/not found/i.test(history.error)) return { ...base, state: 'absent', reason: 'never deployed' }
    return { ...base, state: 'unread', reason: history.error }
  }
  const { revisions } = history
  const newest = revisions.at(-1)
  if (!newest) return { ...base, state: 'absent', reason: 'never deployed' }
  if (newest.status.startsWith('pending-')) {
    return { ...base, state: 'pending', revision: newest.revision, reason: `revision ${newest.revision} is ${newest.status} (a deploy is under way, or one was interrupted: deploy.ts --recover --deploy ${hub})` }
  }
  const commitOf = (rev: ReleaseRevision | undefined) => recordedCommit(recordOf(rev, revisions))
  const standing = (rev: ReleaseRevision | undefined) => {
    const commit = commitOf(rev)
    return commit ? currency(rels.get(commit), hub) : 'older'
  }
  const live = [...revisions].reverse().find((r) => r.status === 'deployed')
  const seen = live && { revision: live.revision, runs: commitOf(live), since: live.updated }
  if (live && standing(live) === 'current') return { ...base, ...seen, state: 'current' }
  if (live && standing(live) === 'ahead') {
    return { ...base, ...seen, state: 'ahead', reason: `runs ${seen!.runs}, which is not in this checkout's history (a newer commit, or another branch): run from the newest commit` }
  }
  const failed = [...revisions].reverse().find((r) => r.status === 'failed' && standing(r) === 'current')
  if (failed) return { ...base, ...seen, state: 'failed', reason: `revision ${failed.revision} failed deploying ${commitOf(failed)}` }
  // --rollback-on-failure after a failed rollout or check: the upgrade itself succeeded, then was undone.
  const back = Number(/^Rollback to (\d+)$/.exec(live?.description ?? '')?.[1])
  const undone = live && back ? revisions.find((r) => r.revision > back && r.revision < live.revision && standing(r) === 'current') : undefined
  if (undone) return { ...base, ...seen, state: 'failed', reason: `revision ${undone.revision}, deploying ${commitOf(undone)}, was rolled back to revision ${back}` }
  if (!live) return { ...base, state: 'absent', reason: 'no revision deployed' }
  const why = seen!.runs ? (rels.get(seen!.runs)?.kind === 'unknown' ? `runs ${seen!.runs}, which this repository does not have` : `runs ${seen!.runs}`) : `revision ${live.revision} records no commit (deployed without a fleet file)`
  return { ...base, ...seen, state: 'behind', reason: why }
}

/** `2025-01-02 12:00 UTC`. */
function when(ms: number): string {
  return new Date(ms).toISOString().replace('T', ' ').replace(/:\d\d\.\d+Z$/, ' UTC')
}

/** `2d 3h`, `5h`, `12m`: a span, to the two largest units. */
function span(ms: number): string {
  const units: [string, number][] = [['d', 86_400_000], ['h', 3_600_000], ['m', 60_000]]
  const parts: string[] = []
  let rest = Math.abs(ms)
  for (const [unit, size] of units) {
    if (rest >= size && parts.length < 2) {
      parts.push(`${Math.floor(rest / size)}${unit}`)
      rest %= size
    }
  }
  return parts.join(' ') || 'less than a minute'
}

const relative = (ms: number, now: number) => (ms > now ? `in ${span(ms - now)}` : `${span(now - ms)} ago`)

/** The hubs' names, for a line. */
const names = (hubs: HubView[]) => hubs.map((h) => h.hub).join(', ')

/**
 * Where the change stands, wave by wave, and which hubs it may reach now: a wave opens when
 * the one before is `done` (every hub runs the change, deployed, for that wave's soak).
 */
export function evaluate(fleet: Fleet, views: ReadonlyMap<string, HubView>, commit: string, now: number): FleetPlan {
  const waves: WaveView[] = []
  const eligible: HubView[] = []
  let closed: { why: string; at?: number } | undefined
  let stop: string | undefined
  const short = commit.slice(0, 12)
  for (const wave of fleet.waves) {
    const hubs = [...views.values()].filter((h) => h.wave === wave.name).sort((a, b) => a.hub.localeCompare(b.hub))
    if (closed) {
      waves.push({ wave, hubs, state: 'waiting', note: closed.why, at: closed.at })
      continue
    }
    eligible.push(...hubs.filter((h) => h.state === 'behind' || h.state === 'absent'))
    const stopper = hubs.find((h) => STOPS.includes(h.state))
    const notYet = hubs.filter((h) => h.state !== 'current')
    if (stopper) {
      stop = `the change ${short} stops at wave ${wave.name}: ${stopper.hub}: ${stopper.reason}`
      waves.push({ wave, hubs, state: 'stopped', note: `${stopper.hub}: ${stopper.reason}` })
      closed = { why: `the change stopped at wave ${wave.name}` }
    } else if (notYet.length) {
      const unobserved = notYet.filter((h) => h.state === 'unobserved')
      const note = unobserved.length && unobserved.length === notYet.length
        ? `${names(unobserved)} not observed by this run (cluster ${[...new Set(unobserved.map((h) => h.cluster))].join(', ')})`
        : `${names(notYet)} ${notYet.length > 1 ? 'do' : 'does'} not run it yet`
      waves.push({ wave, hubs, state: 'open', note })
      closed = { why: `waits for wave ${wave.name}: ${note}` }
    } else {
      const since = Math.max(...hubs.map((h) => Date.parse(h.since ?? '')))
      const at = since + wave.soakSeconds * 1000
      if (Number.isNaN(at)) {
        waves.push({ wave, hubs, state: 'soaking', note: 'every hub runs it, but a revision has no deploy time: the soak cannot be measured' })
        closed = { why: `waits for wave ${wave.name}, whose deploy times cannot be read` }
      } else if (now < at) {
        waves.push({ wave, hubs, state: 'soaking', note: `every hub runs it; soaking until ${when(at)} (${relative(at, now)})`, at })
        closed = { why: `waits for wave ${wave.name} to soak, until ${when(at)} (${relative(at, now)})`, at }
      } else {
        waves.push({ wave, hubs, state: 'done', note: wave.soak ? `every hub runs it; soaked since ${when(at)}` : 'every hub runs it', at })
      }
    }
  }
  return { commit, now, waves, eligible, stop, next: nextStep(waves, eligible, stop, short) }
}

function nextStep(waves: WaveView[], eligible: HubView[], stop: string | undefined, short: string): string {
  const parts: string[] = []
  const open = waves.find((w) => w.state === 'open' || w.state === 'stopped')
  if (eligible.length) parts.push(`wave ${open!.wave.name} is open: ${names(eligible)} can get ${short} now`)
  if (stop) parts.push(`${stop}; fix it and push a new commit, or deploy the hub by hand (deploy.ts --deploy <hub>)`)
  if (parts.length) return parts.join('; ')
  const waiting = waves.find((w) => w.state === 'waiting')
  if (waiting) return `nothing to deploy now: wave ${waiting.wave.name} ${waiting.note}`
  const last = waves.find((w) => w.state !== 'done')
  if (last) return `nothing to deploy now: wave ${last.wave.name}: ${last.note}`
  return `every hub runs ${short}, soaked: the rollout is complete`
}

const STATE_WORDS: Record<HubState, string> = {
  current: 'runs it', behind: 'behind', absent: 'not installed', failed: 'failed', unhealthy: 'unhealthy', pending: 'pending',
  ahead: 'ahead', unread: 'unreadable', unobserved: 'not observed',
}

/** The plan as text: a header, each wave with its hubs, and what happens next. */
export function planText(fleet: Fleet, plan: FleetPlan): string {
  const short = plan.commit.slice(0, 12)
  const eligible = new Set(plan.eligible.map((h) => h.hub))
  const rows = [['hub', 'cluster', 'state', 'runs', 'revision', 'deployed']]
  const lines: string[] = []
  for (const w of plan.waves) {
    for (const h of w.hubs) {
      const deployed = Date.parse(h.since ?? '')
      rows.push([
        h.hub, h.cluster, `${STATE_WORDS[h.state]}${eligible.has(h.hub) ? ', eligible' : ''}`, h.runs ?? '-',
        h.revision === undefined ? '-' : String(h.revision), Number.isNaN(deployed) ? '-' : `${when(deployed)} (${relative(deployed, plan.now)})`,
      ])
    }
  }
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)))
  const row = (r: string[]) => `  ${r.map((c, i) => c.padEnd(widths[i])).join('  ')}`.trimEnd()
  let at = 1
  lines.push(`${fleet.file}: the change ${short}, ${fleet.hubs.size} hubs on ${fleet.clusters.size} clusters in ${fleet.waves.length} waves, at ${when(plan.now)}`)
  lines.push(row(rows[0]))
  for (const w of plan.waves) {
    lines.push(`wave ${w.wave.number} ${w.wave.name}${w.wave.soak ? `, soak ${w.wave.soak}` : ''}: ${w.state}: ${w.note}`)
    for (const _ of w.hubs) lines.push(row(rows[at++]))
  }
  lines.push(`next: ${plan.next}`)
  return lines.join('\n')
}

/** The plan as `--plan --json` prints it: what another cluster's job reads back with --observed. */
function planJson(fleet: Fleet, plan: FleetPlan, clusters: string[]) {
  return {
    fleet: fleet.file,
    commit: plan.commit,
    observedAt: new Date(plan.now).toISOString(),
    clusters,
    waves: plan.waves.map((w) => ({
      wave: w.wave.name, number: w.wave.number, soak: w.wave.soak ?? null, state: w.state, note: w.note,
      ...(w.at === undefined ? {} : { at: new Date(w.at).toISOString() }),
    })),
    hubs: plan.waves.flatMap((w) => w.hubs),
    eligible: plan.eligible.map((h) => h.hub),
    stop: plan.stop ?? null,
    next: plan.next,
  }
}

/**
 * The hubs of clusters this run does not reach, as their own clusters' jobs observed them
 * (`--plan --cluster X --json`, files or a directory of them): only at the same commit, and
 * only for the clusters each job read.
 */
function readObserved(where: string, fleet: Fleet, commit: string, scope: string[], out: Output): Map<string, HubView> {
  if (!fs.existsSync(where)) throw usageError(`--observed ${where}: no such file or directory; give the JSON a cluster's deploy.ts --plan --json wrote, or a directory of them`)
  const files = fs.existsSync(where) && fs.statSync(where).isDirectory()
    ? fs.readdirSync(where).filter((f) => f.endsWith('.json')).sort().map((f) => path.join(where, f))
    : [where]
  const found = new Map<string, HubView>()
  for (const file of files) {
    let doc: { commit?: unknown; clusters?: unknown; hubs?: unknown }
    // A FIFO would wait for a writer for ever.
    const odd = notAFile(file)
    if (odd) throw usageError(`--observed ${file} is ${odd}, not a file; give the JSON files the clusters' --plan jobs wrote`)
    try {
      doc = JSON.parse(fs.readFileSync(file, 'utf8'))
    } catch (e) {
      throw usageError(`--observed ${file}: not the JSON of deploy.ts --plan --json (${(e as Error).message.split('\n')[0]}); give the files the clusters' --plan jobs wrote`)
    }
    if (!doc || typeof doc !== 'object' || !Array.isArray(doc.clusters) || !Array.isArray(doc.hubs) || typeof doc.commit !== 'string') {
      throw usageError(`--observed ${file}: not the JSON of deploy.ts --plan --json (no commit, clusters and hubs); give the files the clusters' --plan jobs wrote`)
    }
    if (doc.commit !== commit) {
      out.warn(`--observed ${file}: observed at ${doc.commit.slice(0, 12)}, not at this commit ${commit.slice(0, 12)}: left out`)
      continue
    }
    const clusters = doc.clusters as unknown[]
    for (const h of doc.hubs as HubView[]) {
      const hub = fleet.hubs.get(h?.hub)
      if (!hub || hub.cluster !== h.cluster || scope.includes(hub.cluster) || !clusters.includes(hub.cluster)) continue
      if (!Object.hasOwn(STATE_WORDS, h.state)) continue
      found.set(hub.name, { hub: hub.name, cluster: hub.cluster, wave: hub.wave, state: h.state, revision: h.revision, runs: h.runs, since: h.since, reason: h.reason })
    }
  }
  return found
}

/** Runs `fn` on every item, at most `cap` at once, keeping their order. */
async function atMost<T, R>(items: T[], cap: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const results: R[] = []
  let next = 0
  const worker = async () => {
    for (let i = next++; i < items.length; i = next++) results[i] = await fn(items[i])
  }
  await Promise.all(Array.from({ length: Math.min(cap, items.length) }, worker))
  return results
}

/**
 * Read-only access to one cluster: setup's cluster steps (its login and credentials), into a
 * private directory, without the registry login or Helm 2's tiller. Returns that directory.
 */
async function clusterAccess(config: Config, dryRun: boolean, { exec, env, out, invocation }: { exec: Exec; env: NodeJS.ProcessEnv; out: Output; invocation: Invocation }): Promise<string> {
  const clusterOnly = { ...config, REGISTRY_PROVIDER: 'none' }
  const plan = planSetup({ config: clusterOnly, dryRun }, { out, invocation })
  const dir = privateConfigDir(env)
  invocation.privateDirs.add(dir)
  const facts = { config: clusterOnly, kubeconfig: env.KUBECONFIG!, host: '' }
  const from = plan.cluster.kubeconfigFrom
  if (from && !dryRun) fs.writeFileSync(facts.kubeconfig, plan.secrets[from] ?? '', { mode: 0o600 })
  for (const step of setupSteps(plan, clusterOnly, [])) {
    await exec(step.tool, step.args(facts), { ...quietly, capture: step.capture, input: step.stdin && (plan.secrets[step.stdin] ?? '') })
  }
  return dir
}

/** What a run reads of one cluster: the release history of each of its hubs, with that cluster's credentials only. */
async function observeCluster(invocation: Invocation, args: Args, fleet: Fleet, cluster: string, out: Output, major: HelmMajor): Promise<Map<string, History>> {
  const config = clusterConfig(fleet, cluster, args['env-file'])
  const env: NodeJS.ProcessEnv = { ...config.env }
  const clusterOut = invocation.output({ prefix: `[${cluster}] `, groups: false, stdout: out.stdout })
  const exec = makeExec({ env, dryRun: args['dry-run'], out: clusterOut, heartbeatSeconds: 0, invocation })
  const hubs = [...fleet.hubs.values()].filter((h) => h.cluster === cluster).map((h) => h.name)
  const dir = args.setup ? await clusterAccess(config, args['dry-run'], { exec, env, out: clusterOut, invocation }) : undefined
  try {
    // A dry run only announced the login: without credentials there is nothing to read.
    if (dir && args['dry-run']) return new Map()
    const helm = makeHelm(major, { exec, env, invocation })
    const cap = Number(args.parallel ?? fleet.clusters.get(cluster)!.parallel ?? DEFAULT_PARALLEL)
    const histories = await atMost(hubs, cap, (hub) => helm.history(hub))
    return new Map(hubs.map((hub, i) => [hub, histories[i]]))
  } finally {
    if (dir) {
      fs.rmSync(dir, { recursive: true, force: true })
      invocation.privateDirs.delete(dir)
    }
  }
}

/**
 * With the health-check plugin, a hub that runs the change must also answer now (one probe
 * each, the cluster's cap at once): one that does not is `unhealthy`, and stops the change.
 */
async function checkHealth(invocation: Invocation, args: Args, fleet: Fleet, hubs: HubView[]) {
  // The shipped plugin's own probe, loaded only here: it brings yaml, which a run loads late.
  const { hubProblem } = await import('../plugins/health-check.ts')
  const configs = new Map([...fleet.clusters.keys()].map((c) => [c, clusterConfig(fleet, c, args['env-file'])]))
  await atMost(hubs, Number(args.parallel ?? DEFAULT_PARALLEL), async (view) => {
    const config = configs.get(view.cluster)!
    const files = chartFiles(view.hub, config)
    const hub = { chart: view.hub, chartDir: files.chartDir, chartSource: files.source, config }
    const problem = await hubProblem(hub, invocation.signal)
    if (problem) Object.assign(view, { state: 'unhealthy', reason: problem })
  })
}

/** Deploys groups of charts as deploy.ts does (deployCharts), the record written; returns the exit code. */
type DeployGroups = (groups: ChartGroup[]) => Promise<number>

/**
 * `--plan` and `--waves`: reads where the change stands in the clusters this run reaches
 * (all, or --cluster's; the others' from --observed), prints it, and with --waves deploys
 * the hubs of those clusters that became eligible. A hub that stops the change ends the run
 * with exit 3, saying why, after what was eligible deployed.
 */
export async function runWaves(invocation: Invocation, args: Args, config: Config, charts: string[], fleet: Fleet, deploy: DeployGroups): Promise<number> {
  const scope = args.cluster === undefined ? [...fleet.clusters.keys()] : [args.cluster as string]
  checkOneKubeconfig(args, scope)
  const json = args.plan && args.json
  const out = json ? invocation.output({ stdout: 'stderr' }) : invocation.log
  const exec = makeExec({ env: config.env, dryRun: false, out, heartbeatSeconds: 0, invocation })
  const commit = await headCommit(exec)
  // The same helm reads every cluster: asked once.
  const version = await helmVersion(exec, config.env)
  if (!version?.major) throw usageError(version ? unsupportedHelm(version.said) : `helm not found on PATH: ${INSTALL_HINTS.helm}`)
  const observed = args.observed === undefined ? new Map<string, HubView>() : readObserved(args.observed, fleet, commit, scope, out)
  // A signal stops the reads, and each cluster's credentials directory is removed as they end.
  const untrap = invocation.trapSignals()
  const read = await Promise.all(scope.map((cluster) => observeCluster(invocation, args, fleet, cluster, out, version.major!)))
    .catch((e) => {
      if (!invocation.cancelled) throw e
      return undefined
    })
    .finally(untrap)
  if (!read || invocation.cancelled) return invocation.cancelled === 'SIGINT' ? EXIT.sigint : EXIT.sigterm
  const histories = new Map(read.flatMap((m) => [...m]))
  const changes = { watched: watchedCharts(charts, config, fleet, args['env-file'], invocation.runtime.YAML), envFile: envFileOf(args), fleet, YAML: invocation.runtime.YAML }
  const rels = await relations(exec, out, commit, recordedCommits([...histories.values()]), changes)
  const views = new Map([...fleet.hubs.values()].map((h): [string, HubView] => {
    const base = { hub: h.name, cluster: h.cluster, wave: h.wave }
    const history = histories.get(h.name)
    const why = scope.includes(h.cluster) ? 'a dry run does not log in to its cluster (with --no-setup it reads your own kubeconfig\'s)' : `cluster ${h.cluster} is not reached by this run`
    return [h.name, history ? classify(base, history, rels) : observed.get(h.name) ?? { ...base, state: 'unobserved', reason: why }]
  }))
  if (pluginNames(args, config).includes('health-check')) await checkHealth(invocation, args, fleet, [...views.values()].filter((v) => v.state === 'current' && scope.includes(v.cluster)))
  const plan = evaluate(fleet, views, commit, Date.now())
  if (json) {
    await writeResult(JSON.stringify(planJson(fleet, plan, scope), null, 2) + '\n')
    return EXIT.ok
  }
  out.print(planText(fleet, plan))
  if (args.plan) return EXIT.ok
  const mine = plan.eligible.filter((h) => scope.includes(h.cluster)).map((h) => h.hub)
  const code = mine.length ? await deploy(groupByCluster(fleet, mine, args)) : EXIT.ok
  if (code !== EXIT.ok || !plan.stop) return code
  throw new DeployError(plan.stop, EXIT.refused)
}
