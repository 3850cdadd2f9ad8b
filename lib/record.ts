/**
 * What a deploy records in its release: short JSON in `helm upgrade --description`,
 * `{"commit":…,"chart":…,"images":{kind:tag},"deps":{name:version}}`, the format
 * promote-from-staging began (`chart`, the chart's own version, came with the fleet).
 * `helm history` reads it back, from any machine: promote-from-staging compares staging's
 * `deps`, the fleet's waves (lib/waves.ts) compare each hub's `commit`.
 */
import fs from 'node:fs'
import type YAMLModule from 'yaml'
import { usageError, type ChartSource, type ImageInfo } from './contract.ts'
import type { ChartRun } from './plan.ts'
import { resolvedVersion } from './layout.ts'

export interface DeployRecord {
  /** The commit deployed, abbreviated to 12 hex digits. */
  commit: string
  /** The chart's own version (a wrapper chart's Chart.yaml, or HUB_CHART_VERSION); absent from records written before the fleet. */
  chart?: string
  images: Record<string, string>
  deps: Record<string, string>
  /** promote-from-staging: deployed with PROMOTION_OVERRIDE despite its check. */
  override?: true
}

/** A chart's YAML file, parsed; a file that does not parse is a configuration error naming it and its line. */
function chartFile(full: string, YAML: typeof YAMLModule): unknown {
  // A FIFO would wait for a writer for ever.
  if (!fs.statSync(full).isFile()) throw usageError(`${full}: not a file; fix the chart`)
  try {
    return YAML.parse(fs.readFileSync(full, 'utf8'))
  } catch (e) {
    const line = (e as { linePos?: { line: number }[] }).linePos?.[0]?.line
    throw usageError(`${full}${line ? `:${line}` : ''}: not valid YAML; fix the chart`)
  }
}

/** The chart's dependencies, name → version: Chart.yaml (Helm 3) or requirements.yaml (Helm 2 charts). */
function chartDependencies(chartDir: string, YAML: typeof YAMLModule): Record<string, string> {
  const deps: Record<string, string> = {}
  for (const file of ['Chart.yaml', 'requirements.yaml']) {
    const full = `${chartDir}/${file}`
    if (!fs.existsSync(full)) continue
    const doc = chartFile(full, YAML) as { dependencies?: unknown } | null
    const list = doc && typeof doc === 'object' ? doc.dependencies : undefined
    if (list === undefined || list === null) continue
    if (!Array.isArray(list)) {
      throw usageError(`${full}: dependencies must be a list of entries (- name: …, version: …, repository: …), not a ${typeof list === 'object' ? 'map' : typeof list}; fix the chart`)
    }
    for (const dep of list as { name?: unknown; version?: unknown; alias?: unknown }[]) {
      if (typeof dep?.name === 'string') deps[typeof dep.alias === 'string' ? dep.alias : dep.name] = String(dep.version ?? '')
    }
  }
  return deps
}

/** Where a deploy's chart comes from: its directory and its source (lib/layout.ts). */
interface ChartFacts {
  chartDir: string
  chartSource: ChartSource
}

/**
 * The chart versions a deploy brings, name → version as helm resolves it (`v0.10.6` is
 * 0.10.6): the upstream chart itself, or the wrapper chart's dependencies.
 */
export function chartVersions({ chartDir, chartSource: source }: ChartFacts, YAML: typeof YAMLModule): Record<string, string> {
  const found = source.layout === 'upstream-chart' ? { [source.chart.split('/')[1]]: source.version ?? '' } : chartDependencies(chartDir, YAML)
  return Object.fromEntries(Object.entries(found).map(([name, version]) => [name, resolvedVersion(version)]))
}

/** What this deploy of the chart records. */
export function deployRecord(facts: ChartFacts & { commit: string; images: readonly ImageInfo[] }, YAML: typeof YAMLModule): DeployRecord {
  const { chartSource: source } = facts
  const version = source.layout === 'upstream-chart'
    ? resolvedVersion(source.version ?? '')
    : (chartFile(`${facts.chartDir}/Chart.yaml`, YAML) as { version?: unknown } | null)?.version
  return {
    commit: facts.commit.slice(0, 12),
    ...(version === undefined ? {} : { chart: String(version) }),
    images: Object.fromEntries(facts.images.map((i) => [i.kind, i.tag])),
    deps: chartVersions(facts, YAML),
  }
}

/** A revision's description as a record, or undefined when it is none (`Upgrade complete`, `Rollback to 3`). */
export function parseRecord(description: string | undefined): DeployRecord | undefined {
  try {
    const r = JSON.parse(description ?? '')
    return r && typeof r === 'object' && r.deps && typeof r.deps === 'object' ? r : undefined
  } catch {
    return undefined
  }
}

/**
 * The commit a record names, when it looks like one: the history is the cluster's
 * output, and this value reaches git.
 */
export function recordedCommit(record: DeployRecord | undefined): string | undefined {
  return typeof record?.commit === 'string' && /^[0-9a-f]{7,40}$/.test(record.commit) ? record.commit : undefined
}

/**
 * `--description <record>` for the upgrade of a run that records (a fleet's), unless a plugin
 * gives its own: promote-from-staging's is this record (with its override mark).
 */
export function recordArgs({ plan, invocation }: ChartRun, pluginArgs: string[]): string[] {
  if (!plan.record || pluginArgs.includes('--description')) return []
  return ['--description', JSON.stringify(deployRecord({ ...plan, chartSource: plan.files.source }, invocation.runtime.YAML))]
}
