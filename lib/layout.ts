/**
 * The two layouts a hub can have (docs/adding-a-hub.md), as data: a wrapper chart of its own
 * in hub-charts/<hub>/ (what the original deploys), or its values on an upstream chart,
 * hub-configs/<hub>.yaml on HUB_CHART at HUB_CHART_VERSION (what the upstream deploy.py,
 * Zero to JupyterHub and mybinder.org-deploy do). Which one a hub has, where its chart comes
 * from, what a deploy runs before the upgrade, and the chart --validate and --diff render.
 */
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import process from 'node:process'
import { createHash } from 'node:crypto'
import { DeployError, type ChartSource } from './contract.ts'
import { CHART_NAME, type Config } from './config.ts'
import { wholeReason } from './process.ts'
import { HELM_VERSIONS } from './helm.ts'
import { fetchedFirst } from './localcharts.ts'
import type { ChartRun } from './plan.ts'

type Layout = ChartSource['layout']

/** The values file every hub of the upstream-chart layout gets first: never a hub itself. */
export const COMMON_VALUES = 'hub-configs/common.yaml'

const isFile = (file: string) => fs.existsSync(file) && fs.statSync(file).isFile()

/** What differs between the layouts: where a hub is, its chart source, what runs before the upgrade. */
export const LAYOUTS: Record<Layout, {
  /** The chart's directory or the hub's values file. */
  where: (hub: string) => string
  /** Whether the hub has this layout in the working tree. */
  present: (hub: string) => boolean
  source: (hub: string, config: Config) => ChartSource
  /** Paths whose change changes the hub (--changed), besides its secrets and image dirs; a dir ends in `/`. */
  watched: (hub: string) => string[]
  /** Configuration keys whose change (in the committed env file) changes every hub of the layout. */
  keys: readonly (keyof Config)[]
  /** Runs before `helm upgrade`: the original's `helm dep up` in the chart; the upstream deploy.py's `helm repo add`. */
  prepare: (source: ChartSource) => { args: string[]; cwd?: string }
}> = {
  'wrapper-chart': {
    where: (hub) => (hub === 'monitoring' ? 'monitoring' : `hub-charts/${hub}`),
    present: (hub) => fs.existsSync(`${LAYOUTS['wrapper-chart'].where(hub)}/Chart.yaml`),
    source: (hub) => ({ layout: 'wrapper-chart', chart: LAYOUTS['wrapper-chart'].where(hub), valuesFiles: [], valuesPrefix: 'jupyterhub.' }),
    watched: (hub) => [`${LAYOUTS['wrapper-chart'].where(hub)}/`],
    keys: [],
    prepare: (source) => ({ args: ['dep', 'up'], cwd: source.chart }),
  },
  'upstream-chart': {
    where: (hub) => `hub-configs/${hub}.yaml`,
    present: (hub) => isFile(`hub-configs/${hub}.yaml`),
    source: (hub, config) => ({
      layout: 'upstream-chart',
      chart: config.HUB_CHART,
      repository: { name: config.HUB_CHART.split('/')[0], url: config.HUB_CHART_REPO },
      version: config.HUB_CHART_VERSION,
      valuesFiles: [...(isFile(COMMON_VALUES) ? [COMMON_VALUES] : []), `hub-configs/${hub}.yaml`],
      valuesPrefix: '',
    }),
    watched: (hub) => [COMMON_VALUES, `hub-configs/${hub}.yaml`],
    keys: ['HUB_CHART', 'HUB_CHART_REPO', 'HUB_CHART_VERSION'],
    prepare: (source) => ({ args: ['repo', 'add', source.repository!.name, source.repository!.url] }),
  },
}

/** A hub's layout: where both are present, the values file wins (and the plan says so: unusedLayout). */
export function layoutOf(hub: string): Layout {
  return LAYOUTS['upstream-chart'].present(hub) ? 'upstream-chart' : 'wrapper-chart'
}

/** The wrapper chart a hub also has but does not use, as a path, or undefined. */
export function unusedLayout(hub: string): string | undefined {
  return layoutOf(hub) === 'upstream-chart' && LAYOUTS['wrapper-chart'].present(hub) ? `${LAYOUTS['wrapper-chart'].where(hub)}/` : undefined
}

/** The hubs each layout finds in the working tree, by name. */
export function hubsFound(): string[] {
  const names = (dir: string, pattern: RegExp) => (fs.existsSync(dir) && fs.statSync(dir).isDirectory() ? fs.readdirSync(dir) : [])
    .map((entry) => pattern.exec(entry)?.[1]).filter((name): name is string => !!name && CHART_NAME.test(name))
  const wrapped = names('hub-charts', /^(.+)$/).filter((hub) => LAYOUTS['wrapper-chart'].present(hub))
  const valued = names('hub-configs', /^(.+)\.yaml$/).filter((hub) => `hub-configs/${hub}.yaml` !== COMMON_VALUES && LAYOUTS['upstream-chart'].present(hub))
  return [...new Set([...wrapped, ...valued])].sort()
}

/** The chart source in a few words: `hub-charts/x`, or `jupyterhub/jupyterhub 0.10.6 (URL) with hub-configs/x.yaml`. */
export function describeSource(source: ChartSource): string {
  if (source.layout === 'wrapper-chart') return source.chart
  return `${source.chart} ${source.version} (${source.repository!.url}) with ${source.valuesFiles.join(', ')}`
}

/** What a plan says of a hub that has both layouts: which one is used, which not. */
export function unusedNote(hub: string, source: ChartSource, unused: string): string {
  return `${hub}: ${source.valuesFiles.at(-1)} on ${source.chart} ${source.version} is used; ${unused} is not (where both exist the values file wins: remove the one you do not mean)`
}

/** A chart version as helm resolves it: `v0.10.6` is 0.10.6. */
export function resolvedVersion(version: string): string {
  return version.replace(/^v(?=\d)/, '')
}

/** helm's own cache directory, as helm finds it (HELM_CACHE_HOME, XDG_CACHE_HOME, the platform's default). */
function helmCacheHome(env: NodeJS.ProcessEnv): string {
  if (env.HELM_CACHE_HOME) return env.HELM_CACHE_HOME
  if (env.XDG_CACHE_HOME) return path.join(env.XDG_CACHE_HOME, 'helm')
  const home = env.HOME || os.homedir()
  return process.platform === 'darwin' ? path.join(home, 'Library', 'Caches', 'helm') : path.join(home, '.cache', 'helm')
}

/**
 * Where a pulled chart archive is kept between runs: <helm's cache>/deploy.ts/charts/<the
 * repository URL's hash>/<chart>-<version>.tgz. A CI cache of helm's cache directory keeps it.
 */
export function cachedChart(env: NodeJS.ProcessEnv, source: ChartSource): string {
  const repository = createHash('sha256').update(source.repository!.url).digest('hex').slice(0, 16)
  const name = source.chart.split('/')[1]
  return path.join(helmCacheHome(env), 'deploy.ts', 'charts', repository, `${name}-${resolvedVersion(source.version!)}.tgz`)
}

/**
 * The upstream chart's archive, for --validate and --diff: from the cache when an earlier run
 * pulled it (no network then), else `helm pull` into the cache. Read-only for the cluster and
 * the repository configuration (--repo: no `helm repo add`).
 */
export async function pulledChart({ plan, exec, env, out }: ChartRun): Promise<string> {
  const { source } = plan.files
  const file = cachedChart(env, source)
  if (isFile(file)) {
    out.info(`${source.chart} ${source.version}: cached in ${file}`)
    return file
  }
  const [repository, name] = [source.repository!.url, source.chart.split('/')[1]]
  // Pulled into a directory of its own, then renamed: a run that stops halfway leaves no archive.
  const dir = plan.dryRun ? path.dirname(file) : fs.mkdtempSync(ensureDir(path.dirname(file)) + path.sep + '.pull-')
  try {
    const args = [...HELM_VERSIONS[plan.helmMajor].pull, name, '--repo', repository, '--version', source.version!, '--destination', dir]
    const pulled = await exec('helm', args, { capture: true, nothrow: true, timeout: 300 })
    if (plan.dryRun) return file
    if (pulled.exitCode !== 0) {
      throw new DeployError(`${plan.chart}: could not fetch ${source.chart} ${source.version} from ${repository}: ${wholeReason(pulled.stderr || pulled.stdout) || `helm exited with ${pulled.exitCode}`}`)
    }
    const archive = fs.readdirSync(dir).find((f) => f.endsWith('.tgz'))
    if (!archive) throw new DeployError(`${plan.chart}: helm pull of ${source.chart} ${source.version} left no chart archive in ${dir}`)
    fs.renameSync(path.join(dir, archive), file)
    return file
  } finally {
    if (!plan.dryRun) fs.rmSync(dir, { recursive: true, force: true })
  }
}

function ensureDir(dir: string): string {
  fs.mkdirSync(dir, { recursive: true })
  return dir
}

/**
 * What runs before `helm upgrade`: `helm dep up` in the wrapper chart (first `helm dep up <dir>`
 * in each local dependency with dependencies of its own: lib/localcharts.ts), or deploy.py's
 * `helm repo add`.
 */
export async function prepareChart({ plan, exec, invocation }: ChartRun) {
  const { source } = plan.files
  const first = source.layout === 'wrapper-chart' ? fetchedFirst(source.chart, invocation.runtime.YAML) : []
  for (const dir of first) await exec('helm', ['dep', 'up', dir], { timeout: 300 })
  const step = LAYOUTS[source.layout].prepare(source)
  await exec('helm', step.args, { cwd: step.cwd, timeout: 300 })
}

/** The chart's own arguments of `helm upgrade`, before the values: the upstream chart's pinned version. */
export function versionArgs(source: ChartSource): string[] {
  return source.version ? ['--version', source.version] : []
}
