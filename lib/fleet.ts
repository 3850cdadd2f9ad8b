/**
 * The fleet file (docs/fleet.md): one YAML file at the repository root naming the clusters
 * (each with its provider and its own .env keys), the waves (each with its soak) and, for
 * every chart, its cluster and wave. It is read and checked before anything runs: each
 * mistake is named with the file, line, key path and fix (exit 2). Without the file there
 * is no fleet, and deploy.ts behaves as it always did.
 */
import process from 'node:process'
import fs from 'node:fs'
import path from 'node:path'
import type YAMLModule from 'yaml'
import { usageError, type Exec } from './contract.ts'
import { CHART_NAME, DEFAULTS, loadConfig, toolValueProblem, type Config } from './config.ts'
import { CLUSTERS } from './providers.ts'
import { closest } from './hooks.ts'
import { changedCharts, checkRange, type Watched } from './git.ts'
import { makeExec, writeResult, type Invocation } from './process.ts'
import { chartNames, type Args } from './cli.ts'
import { chartFiles, noChartsHere } from './plan.ts'
import { watchedWithLocal } from './localcharts.ts'

const FLEET_FILE = 'fleet.yaml'

export interface FleetCluster {
  readonly name: string
  /** A CLUSTER_PROVIDER value: gke, eks, aks, kubeconfig. */
  readonly provider: string
  /** Its own .env keys, which win over .env and the environment for its hubs. */
  readonly keys: Readonly<Record<string, string>>
  /** How many of its hubs deploy at once (--parallel wins). */
  readonly parallel?: number
}

export interface Wave {
  readonly name: string
  /** 1 for the first wave. */
  readonly number: number
  /** The soak as written (`2d`), and in seconds (0 when the wave has none: the last may omit it). */
  readonly soak?: string
  readonly soakSeconds: number
}

export interface FleetHub {
  readonly name: string
  readonly cluster: string
  readonly wave: string
}

export interface Fleet {
  readonly file: string
  readonly clusters: ReadonlyMap<string, FleetCluster>
  readonly waves: readonly Wave[]
  readonly hubs: ReadonlyMap<string, FleetHub>
}

/** The flags that only mean something with a fleet file. */
const FLEET_FLAGS = ['waves', 'plan', 'cluster', 'observed'] as const

/** .env keys a cluster may set: all but the provider (its own key) and the plugins (one set per run). */
const CLUSTER_KEYS = Object.keys(DEFAULTS).filter((k) => k !== 'CLUSTER_PROVIDER' && k !== 'DEPLOY_PLUGINS')
const TOP_KEYS = ['clusters', 'waves', 'hubs']
const WAVE_KEYS = ['name', 'soak']
const HUB_KEYS = ['cluster', 'wave']

/** A soak: `0`, seconds, or weeks, days, hours, minutes and seconds in that order (`1w`, `2d12h`, `90m`). */
const SOAK = /^(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$/
const MAX_SOAK_SECONDS = 365 * 24 * 3600

/** Seconds in a soak, or NaN when it is none or longer than a year. */
function soakSeconds(text: string): number {
  if (/^\d+$/.test(text)) return Number(text) <= MAX_SOAK_SECONDS ? Number(text) : NaN
  const m = SOAK.exec(text)
  if (!m || !text) return NaN
  const [w, d, h, min, s] = m.slice(1).map((v) => Number(v ?? 0))
  const seconds = (((w * 7 + d) * 24 + h) * 60 + min) * 60 + s
  return seconds <= MAX_SOAK_SECONDS ? seconds : NaN
}

type Node = { range?: [number, number, number] } | null | undefined
type Path = (string | number)[]

/** Collects the file's mistakes, each one line: `fleet.yaml:LINE: key.path: what is wrong; the fix`. */
class Mistakes {
  readonly lines: string[] = []
  constructor(private readonly doc: YAMLModule.Document, private readonly lineOf: (offset: number) => number) {}

  /** The line of the nearest key (or list item) on `path` that exists: a missing key's parent's. */
  private line(path: Path): string {
    for (let p = path; p.length; p = p.slice(0, -1)) {
      const parent = (p.length > 1 ? this.doc.getIn(p.slice(0, -1), true) : this.doc.contents) as { items?: unknown[] } | null
      const last = p[p.length - 1]
      const item = typeof last === 'number'
        ? parent?.items?.[last] as Node
        : (parent?.items as { key?: { value?: unknown } & Node }[] | undefined)?.find((i) => i?.key?.value === last)?.key
      if (item?.range) return `:${this.lineOf(item.range[0])}`
    }
    return ''
  }

  add(path: Path, shown: string, message: string) {
    this.lines.push(`${FLEET_FILE}${this.line(path)}: ${shown}${shown ? ': ' : ''}${message}`)
  }
}

const isMap = (v: unknown): v is Record<string, unknown> => !!v && typeof v === 'object' && !Array.isArray(v)
const keyList = (keys: string[]) => keys.join(', ')

/** A scalar as a .env value would be (YAML reads `600` as a number, `true` as a boolean). */
function scalar(v: unknown): string | undefined {
  return typeof v === 'string' ? v : typeof v === 'number' || typeof v === 'boolean' ? String(v) : undefined
}

/** The unknown keys of a map, each with the known key it most likely meant. */
function unknownKeys(m: Mistakes, path: Path, shown: string, value: Record<string, unknown>, known: string[], what: string) {
  for (const key of Object.keys(value).filter((k) => !known.includes(k))) {
    m.add([...path, key], `${shown}${shown ? '.' : ''}${key}`, `unknown key; did you mean ${closest(key, known)}? (${what})`)
  }
}

function readClusters(m: Mistakes, raw: unknown, envFile: string | undefined): Map<string, FleetCluster> {
  const clusters = new Map<string, FleetCluster>()
  if (!isMap(raw) || !Object.keys(raw).length) {
    m.add(['clusters'], 'clusters', 'give at least one cluster: a map of names to { provider: gke|eks|aks|kubeconfig, and its keys }')
    return clusters
  }
  const identities = new Map<string, string>()
  for (const [name, value] of Object.entries(raw)) {
    const at = ['clusters', name]
    const shown = `clusters.${name}`
    if (!CHART_NAME.test(name)) m.add(at, shown, 'not a cluster name; use lowercase letters, digits and - (it names CI jobs)')
    if (!isMap(value)) {
      m.add(at, shown, 'give the cluster as a map: { provider: ..., <its keys> }')
      continue
    }
    unknownKeys(m, at, shown, value, ['provider', 'parallel', ...CLUSTER_KEYS], 'a cluster has provider, parallel and the keys of docs/configuration.md')
    const provider = scalar(value.provider)
    if (provider === undefined) m.add(at, shown, `provider is missing; add provider: ${keyList(Object.keys(CLUSTERS)).replace(/, /g, '|')}`)
    else if (!Object.hasOwn(CLUSTERS, provider)) m.add([...at, 'provider'], `${shown}.provider`, `"${provider}" is not a cluster provider; use one of ${keyList(Object.keys(CLUSTERS))} (docs/clusters.md)`)
    const parallel = scalar(value.parallel)
    if (parallel !== undefined && !/^[1-9]\d*$/.test(parallel)) m.add([...at, 'parallel'], `${shown}.parallel`, `${parallel} is not a number of hubs; give a whole number, 1 or more`)
    const keys: Record<string, string> = {}
    for (const key of CLUSTER_KEYS.filter((k) => k in value)) {
      const text = scalar(value[key])
      const why = text === undefined ? 'not a single value' : text === '' ? 'empty' : toolValueProblem(key, text)
      if (why) m.add([...at, key], `${shown}.${key}`, `${why}; give the value, or leave the key out to use .env's`)
      else keys[key] = text!
    }
    // Known from here on, whatever else is wrong with it: its hubs are not "on an unknown cluster".
    clusters.set(name, { name, provider: provider ?? '', keys, parallel: parallel && /^[1-9]\d*$/.test(parallel) ? Number(parallel) : undefined })
    if (provider === undefined || !Object.hasOwn(CLUSTERS, provider)) continue
    // Each cluster names itself: two clusters sharing .env's GKE_CLUSTER would be one cluster deployed twice.
    const own = CLUSTERS[provider].keys
    const missing = own.filter((k) => !(k in value))
    if (missing.length) m.add(at, shown, `${missing.join(', ')} missing; a ${provider} cluster names itself with ${own.join(', ')} here`)
    const identity = `${provider}:${own.map((k) => keys[k]).join('/')}`
    if (!missing.length && identities.has(identity)) m.add(at, shown, `the same cluster as clusters.${identities.get(identity)} (same ${own.join(', ')}); give each cluster its own`)
    identities.set(identity, name)
    try {
      loadConfig(envFile, { ...process.env, ...keys, CLUSTER_PROVIDER: provider })
    } catch (e) {
      m.add(at, shown, (e as Error).message)
    }
  }
  return clusters
}

function readWaves(m: Mistakes, raw: unknown): Wave[] {
  if (!Array.isArray(raw) || !raw.length) {
    m.add(['waves'], 'waves', 'give the waves as a list, first to last: - { name: staging, soak: 2d }')
    return []
  }
  const waves: Wave[] = []
  raw.forEach((value, i) => {
    const at = ['waves', i]
    const label = isMap(value) && typeof value.name === 'string' ? ` (${value.name})` : ''
    const shown = `waves[${i}]${label}`
    if (!isMap(value)) return m.add(at, shown, 'give the wave as a map: { name: ..., soak: ... }')
    unknownKeys(m, at, shown, value, WAVE_KEYS, 'a wave has a name and a soak; its hubs say they are in it')
    const name = scalar(value.name)
    if (name === undefined || !CHART_NAME.test(name)) m.add(at, shown, 'name is missing or not a name; give it one: lowercase letters, digits and -')
    else if (waves.some((w) => w.name === name)) m.add(at, shown, `a second wave named ${name}; give each wave its own name`)
    const last = i === raw.length - 1
    const soak = scalar(value.soak)
    const seconds = soak === undefined ? 0 : soakSeconds(soak)
    if (soak === undefined && !last) m.add(at, shown, 'soak is missing: how long its hubs must run a change before the next wave gets it; add soak: 2d (or 0)')
    else if (Number.isNaN(seconds)) m.add([...at, 'soak'], `${shown}.soak`, `${soak} is not a soak; give one up to a year, such as 0, 12h, 2d, 1w or 1d12h`)
    if (name !== undefined) waves.push({ name, number: i + 1, soak, soakSeconds: Number.isNaN(seconds) ? 0 : seconds })
  })
  return waves
}

function readHubs(m: Mistakes, raw: unknown, charts: string[], clusters: Map<string, FleetCluster>, waves: Wave[]): Map<string, FleetHub> {
  const hubs = new Map<string, FleetHub>()
  if (!isMap(raw)) {
    m.add(['hubs'], 'hubs', 'give every chart its cluster and wave: hubs: { <chart>: { cluster: ..., wave: ... } }')
    return hubs
  }
  const waveNames = waves.map((w) => w.name)
  const clusterNames = [...clusters.keys()]
  for (const [name, value] of Object.entries(raw)) {
    const at = ['hubs', name]
    const shown = `hubs.${name}`
    if (!charts.includes(name)) m.add(at, shown, `no chart of that name (hub-charts/${name}/Chart.yaml or hub-configs/${name}.yaml); add the chart or remove the entry`)
    if (!isMap(value)) {
      m.add(at, shown, 'give the hub as { cluster: ..., wave: ... }')
      continue
    }
    unknownKeys(m, at, shown, value, HUB_KEYS, 'a hub has a cluster and a wave')
    const cluster = scalar(value.cluster)
    const wave = scalar(value.wave)
    if (cluster === undefined) m.add(at, shown, `cluster is missing; add cluster: one of ${keyList(clusterNames)}`)
    else if (!clusters.has(cluster) && clusterNames.length) m.add([...at, 'cluster'], `${shown}.cluster`, `${cluster} is not one of the clusters; did you mean ${closest(cluster, clusterNames)}? (clusters: ${keyList(clusterNames)})`)
    if (wave === undefined) m.add(at, shown, `wave is missing; add wave: one of ${keyList(waveNames)}`)
    else if (!waveNames.includes(wave) && waveNames.length) m.add([...at, 'wave'], `${shown}.wave`, `${wave} is not one of the waves; did you mean ${closest(wave, waveNames)}? (waves: ${keyList(waveNames)})`)
    if (cluster !== undefined && wave !== undefined) hubs.set(name, { name, cluster, wave })
  }
  for (const chart of charts.filter((c) => !(c in raw))) {
    m.add(['hubs'], 'hubs', `the chart ${chart} has no entry, so no wave would deploy it; add ${chart}: { cluster: ..., wave: ... }`)
  }
  // A hub in an unknown wave is one mistake, not also an empty wave.
  const placed = [...hubs.values()].every((h) => waveNames.includes(h.wave))
  for (const wave of waves.filter((w) => placed && ![...hubs.values()].some((h) => h.wave === w.name))) {
    m.add(['waves', wave.number - 1], `waves[${wave.number - 1}] (${wave.name})`, 'no hub is in this wave; put hubs in it (wave: ' + wave.name + ') or remove it')
  }
  for (const cluster of clusters.values()) {
    const staging = cluster.keys.STAGING_CHART
    if (staging && hubs.get(staging)?.cluster !== cluster.name) m.add(['clusters', cluster.name, 'STAGING_CHART'], `clusters.${cluster.name}.STAGING_CHART`, `${staging} is not a hub on this cluster; name one of its hubs, or leave the key out`)
  }
  return hubs
}

/**
 * The fleet file, read and checked against the repository's charts; undefined when there is
 * none. The first mistake stops the run (exit 2), saying how many more follow.
 */
function readFleet(charts: string[], YAML: typeof YAMLModule, envFile: string | undefined): Fleet | undefined {
  if (!fs.existsSync(FLEET_FILE)) return undefined
  if (!fs.statSync(FLEET_FILE).isFile()) throw usageError(`${FLEET_FILE}: not a file; make it the fleet file (docs/fleet.md) or remove it`)
  const counter = new YAML.LineCounter()
  const doc = YAML.parseDocument(fs.readFileSync(FLEET_FILE, 'utf8'), { lineCounter: counter })
  const error = doc.errors[0]
  if (error) {
    const line = error.linePos?.[0]?.line
    throw usageError(`${FLEET_FILE}${line ? `:${line}` : ''}: not valid YAML (${error.message.split('\n')[0].replace(/ at line \d+, column \d+:?$/, '')}); fix the file`)
  }
  const raw = doc.toJS()
  const m = new Mistakes(doc, (offset) => counter.linePos(offset).line)
  if (!isMap(raw)) throw usageError(`${FLEET_FILE}: give clusters, waves and hubs as a map (docs/fleet.md)`)
  unknownKeys(m, [], '', raw, TOP_KEYS, 'a fleet file has clusters, waves and hubs')
  const clusters = readClusters(m, raw.clusters, envFile)
  const waves = readWaves(m, raw.waves)
  const hubs = readHubs(m, raw.hubs, charts, clusters, waves)
  const [first, ...more] = m.lines
  if (first) throw usageError(more.length ? `${first} (and ${more.length} more mistake${more.length > 1 ? 's' : ''} in ${FLEET_FILE} after this one)` : first)
  return { file: FLEET_FILE, clusters, waves, hubs }
}

/** The fleet, checked against the flags: --waves, --plan, --cluster and --observed need one, and a --cluster it has. */
export function fleetFor(args: Args, charts: string[], YAML: typeof YAMLModule): Fleet | undefined {
  const fleet = readFleet(charts, YAML, args['env-file'])
  const flag = FLEET_FLAGS.find((f) => args[f] !== undefined && args[f] !== false)
  if (!fleet && flag) throw usageError(`--${flag} needs a fleet file: there is no ${FLEET_FILE} here (docs/fleet.md)`)
  if (fleet && args.cluster !== undefined && !fleet.clusters.has(args.cluster)) {
    throw usageError(`--cluster ${args.cluster}: not a cluster of ${FLEET_FILE}; clusters: ${keyList([...fleet.clusters.keys()])}`)
  }
  return fleet
}

/** The configuration of a cluster's hubs: its own keys over .env and the environment. */
export function clusterConfig(fleet: Fleet, name: string, envFile: string | undefined): Config {
  const cluster = fleet.clusters.get(name)!
  return loadConfig(envFile, { ...process.env, ...cluster.keys, CLUSTER_PROVIDER: cluster.provider })
}

/** Charts that run with one configuration: without a fleet, all of them; with one, a cluster's. */
export interface ChartGroup {
  readonly cluster?: string
  readonly config: Config
  /** The staging chart first (the others follow only when it succeeded). */
  readonly names: string[]
  readonly parallel?: number
}

/** The clusters the run reaches, each once: --cluster's, else those of `hubs`, in the file's order. */
function clustersOf(fleet: Fleet, hubs: string[]): string[] {
  return [...fleet.clusters.keys()].filter((c) => hubs.some((h) => fleet.hubs.get(h)?.cluster === c))
}

/**
 * The charts of the command line as groups: without a fleet one, the run's configuration;
 * with one, a group per cluster with that cluster's configuration and staging chart first.
 */
export function chartGroups(args: Args, config: Config, charts: string[], fleet: Fleet | undefined): ChartGroup[] {
  const names = chartNames(args, config, charts)
  if (!fleet) return [{ config, names }]
  const elsewhere = args.cluster === undefined ? undefined : names.find((n) => fleet.hubs.get(n)!.cluster !== args.cluster)
  if (elsewhere) throw usageError(`${elsewhere} is on cluster ${fleet.hubs.get(elsewhere)!.cluster}, not ${args.cluster} (${FLEET_FILE}); drop it or run with --cluster ${fleet.hubs.get(elsewhere)!.cluster}`)
  return groupByCluster(fleet, names, args)
}

/** `names` by cluster, each group with its cluster's configuration, its staging chart first. */
export function groupByCluster(fleet: Fleet, names: string[], args: Args): ChartGroup[] {
  const clusters = clustersOf(fleet, names)
  checkOneKubeconfig(args, clusters)
  return clusters.map((cluster) => {
    const config = clusterConfig(fleet, cluster, args['env-file'])
    const own = names.filter((n) => fleet.hubs.get(n)!.cluster === cluster)
    const staging = own.filter((n) => n === config.STAGING_CHART)
    return { cluster, config, names: [...staging, ...own.filter((n) => n !== config.STAGING_CHART)], parallel: fleet.clusters.get(cluster)!.parallel }
  })
}

/**
 * --no-setup uses the caller's own kubeconfig, which reaches one cluster: refused for what
 * must reach each hub's own (a deploy, a diff, the waves); a validation only uses it for its
 * optional server-side check.
 */
export function checkOneKubeconfig(args: Args, clusters: string[]) {
  if (args.setup || clusters.length < 2 || !(args.deploy || args.diff || args.plan || args.waves)) return
  throw usageError(`--no-setup uses your own kubeconfig, which reaches one cluster, and this run needs ${keyList(clusters)}: add --cluster NAME (one cluster a run), or drop --no-setup`)
}

/** One CI job: a cluster, its hubs in wave order, and the same hubs wave by wave. */
export interface MatrixEntry {
  cluster: string
  hubs: string[]
  waves: { wave: string; hubs: string[] }[]
}

/** The CI matrix of `hubs`: one entry per cluster that has any of them (so one job per cluster). */
function fleetMatrix(fleet: Fleet, hubs: string[]): MatrixEntry[] {
  return clustersOf(fleet, hubs).map((cluster) => {
    const waves = fleet.waves
      .map((w) => ({ wave: w.name, hubs: hubs.filter((h) => fleet.hubs.get(h)?.cluster === cluster && fleet.hubs.get(h)?.wave === w.name).sort() }))
      .filter((w) => w.hubs.length)
    return { cluster, hubs: waves.flatMap((w) => w.hubs), waves }
  })
}

/** The env file as git names it: a path from the repository root, where deploy.ts runs. */
export function envFileOf(args: Args): string {
  return path.relative(process.cwd(), path.resolve(args['env-file'] ?? '.env')).split(path.sep).join('/')
}

/** What changes each chart (lib/git.ts changedCharts): with a fleet, each as its cluster configures it. */
export function watchedCharts(charts: string[], config: Config, fleet: Fleet | undefined, envFile: string | undefined, YAML: typeof YAMLModule): Watched[] {
  const configs = new Map(fleet ? [...fleet.clusters.keys()].map((c) => [c, clusterConfig(fleet, c, envFile)]) : [])
  return charts.map((chart) => {
    const files = chartFiles(chart, configs.get(fleet?.hubs.get(chart)?.cluster ?? '') ?? config)
    return { chart, watched: watchedWithLocal(files, YAML), keys: files.keys }
  })
}

/**
 * The hubs whose deploy the fleet file changed since commit `base`: their cluster's provider
 * or keys (its `parallel` changes no deploy), or their cluster. With no fleet file then, all.
 */
export async function fleetChanges(exec: Exec, fleet: Fleet, base: string, YAML: typeof YAMLModule): Promise<Set<string>> {
  const all = new Set(fleet.hubs.keys())
  const r = await exec('git', ['show', `${base}:${FLEET_FILE}`], { capture: true, nothrow: true, show: 'silent', readOnly: true, timeout: 120 })
  let old: unknown
  try {
    old = r.exitCode === 0 ? YAML.parse(r.stdout) : undefined
  } catch {
    old = undefined
  }
  if (!isMap(old)) return all
  const entry = (section: unknown, name: string) => (isMap(section) && isMap(section[name]) ? section[name] : undefined)
  const settings = (m: Record<string, unknown>) => JSON.stringify(Object.entries(m).filter(([k]) => k !== 'parallel').map(([k, v]) => [k, scalar(v)]).sort())
  const unchanged = (name: string) => {
    const before = entry(old.clusters, name)
    const now = fleet.clusters.get(name)!
    return !!before && settings(before) === settings({ provider: now.provider, ...now.keys })
  }
  return new Set([...fleet.hubs.values()].filter((h) => !unchanged(h.cluster) || scalar(entry(old.hubs, h.name)?.cluster) !== h.cluster).map((h) => h.name))
}

/** The commit a range starts from, as git diff compares it: `a` of `a..b`, the merge base of `a...b`, a single revision itself. */
async function rangeBase(exec: Exec, range: string): Promise<string> {
  const [a, b] = range.split(/\.{2,3}/)
  if (!range.includes('...')) return a || 'HEAD'
  const r = await exec('git', ['merge-base', a || 'HEAD', b || 'HEAD'], { capture: true, nothrow: true, show: 'silent', readOnly: true, timeout: 120 })
  return r.stdout.trim() || a
}

/**
 * `--list` and `--changed RANGE`: the charts, one a line; with --json a JSON array, or with
 * a fleet file the CI matrix (fleetMatrix: one entry per cluster). With a fleet file, a hub
 * whose cluster the range changed in it counts as changed too.
 */
export async function printCharts(invocation: Invocation, args: Args, config: Config, charts: string[], fleet: Fleet | undefined) {
  const { log } = invocation
  let names = charts
  if (args.changed !== undefined) {
    const exec = makeExec({ env: config.env, dryRun: false, out: log, heartbeatSeconds: 0, invocation })
    const range = checkRange(args.changed, '--changed')
    const changed = new Set(await changedCharts(exec, log, range, watchedCharts(charts, config, fleet, args['env-file'], invocation.runtime.YAML), envFileOf(args)))
    if (fleet) for (const hub of await fleetChanges(exec, fleet, await rangeBase(exec, range), invocation.runtime.YAML)) changed.add(hub)
    names = charts.filter((c) => changed.has(c))
  } else if (!charts.length) log.warn(noChartsHere())
  await writeResult(args.json ? JSON.stringify(fleet ? fleetMatrix(fleet, names) : names) + '\n' : names.map((c) => c + '\n').join(''))
}
