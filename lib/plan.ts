/**
 * A chart's run: what the command line asks (Request), what preflight fixed (ChartPlan),
 * what changes as it goes (ChartState), and preflight itself: bad input stops here with
 * exit 2, before any command with an effect runs.
 */
import process from 'node:process'
import fs from 'node:fs'
import type YAMLModule from 'yaml'
import os from 'node:os'
import path from 'node:path'
import { DeployError, usageError, type HelmMajor, type ChartDiff, type ChartSource, type ChartValidation, type Exec, type Helm, type ImageInfo, type Phase, type Phases, type Plugin } from './contract.ts'
import type { Config } from './config.ts'
import { checkSecretsYaml, notAFile, readIfPlain, readSecretFile, secretFileFor, type Secrets } from './secrets.ts'
import { INSTALL_HINTS, onPath, type Invocation, type Output } from './process.ts'
import { HELM_VERSIONS, helmVersion, unsupportedHelm } from './helm.ts'
import { checkGit, commitRange, dirtyFiles, gitModified, refuseClearSecrets } from './git.ts'
import { CLUSTERS, LOGINS, REGISTRIES, pickProvider, planSetup, setupSteps, type SetupPlan } from './providers.ts'
import type { HeldLease } from './lock.ts'
import { LAYOUTS, hubsFound, layoutOf, unusedLayout, unusedNote } from './layout.ts'
import type { Preview } from './preview.ts'

/**
 * Registers every secret the charts' run can meet, before a plugin loads or a command
 * starts: every provider's credential files (by their own masks) and the charts' values.
 */
export function collectFileSecrets(secrets: Secrets, config: Config, charts: string[], YAML: typeof YAMLModule) {
  const files = [...Object.values(CLUSTERS), ...Object.values(REGISTRIES), ...Object.values(LOGINS).flat()].flatMap((p) => p.files)
  for (const file of new Set(files)) {
    const text = config[file.key] ? readIfPlain(config[file.key])?.trim() : undefined
    if (!text) continue
    let parts: Array<string | undefined> | undefined
    try {
      parts = file.masks?.(text, YAML) ?? [text]
    } catch {
      parts = undefined
    }
    for (const part of parts ?? []) secrets.add(part)
    // A credential file that does not parse (JSON is YAML too): its lines, by the masking rule.
    if (file.masks && YAML.parseDocument(text, { logLevel: 'silent' }).errors.length) secrets.addLines(text)
  }
  for (const chart of charts) {
    const values = readIfPlain(chartFiles(chart, config).secretsFile)
    if (values) secrets.addYaml(values, YAML)
  }
}

/** What the command line asks of every chart. */
export interface Request {
  readonly phases: Readonly<Phases>
  readonly config: Config
  readonly dryRun: boolean
  readonly recover: boolean
  /** --rollback-on-failure or ROLLBACK_ON_FAILURE=true. */
  readonly rollbackOnFailure: boolean
  readonly plugins: readonly Plugin[]
  /** With a fleet file: `helm upgrade --description` records what the deploy deployed (lib/record.ts). */
  readonly record?: boolean
}

/** What every chart of one invocation shares, checked once by preflight. */
interface RepositoryFacts {
  readonly commit: string
  readonly helmMajor: HelmMajor
  /** Setup's providers, checked, with their secrets in memory. */
  readonly setupPlan?: SetupPlan
}

/** One chart's run as preflight fixed it: read-only from then on. */
export interface ChartPlan extends Request, RepositoryFacts {
  readonly chart: string
  readonly files: ChartFiles
  /** files.chartDir, as plugins read it (ctx.chartDir). */
  readonly chartDir: string
  /** What the build phase did to them is in the state (ChartState.images). */
  readonly images: readonly Readonly<ImageInfo>[]
  /** Each image dir's last five commits, newest first (tags and cache candidates). */
  readonly history: ReadonlyMap<string, string[]>
  /** secrets/<chart>.yaml: read (always for a deploy or a diff), or left out of a validation. */
  readonly secretsFile?: ChartValidation['secrets']
}

/** What changes while a chart's run goes on. */
export interface ChartState {
  phase?: Phase
  timings: Partial<Record<Phase, number>>
  revision?: number
  /** With --rollback-on-failure, read just before the upgrade: the deployed revision (none on a first install) and the newest. */
  before?: { live?: number; newest: number }
  rolledBackTo?: number
  rollbackError?: string
  privateDir?: string
  /** What the build phase did to each image, by its dir (the plan's images stay as preflight made them). */
  images: Map<string, { built?: boolean; pushed?: boolean }>
  /** How the run ended, for the multi-chart summary. */
  result?: 'ok' | 'failed' | 'skipped'
  error?: DeployError
  /** When the run started (ms since the epoch) and how long it took. */
  startedAt?: number
  seconds?: number
  validation?: ChartValidation
  diff?: ChartDiff
}

/** Where a chart's run writes and what it runs commands with. */
export interface Tools {
  readonly exec: Exec
  readonly out: Output
  /** The children's environment: setup points it at the run's private config directory. */
  readonly env: NodeJS.ProcessEnv
  readonly invocation: Invocation
}

export interface ChartRun extends Tools {
  readonly plan: ChartPlan
  readonly state: ChartState
  readonly helm: Helm
  /** The deploy lock's lease while this run holds it (lib/lock.ts). */
  readonly lock: { lease?: HeldLease }
  /** Shared by --validate and --diff (lib/preview.ts): the chart they render (its dependencies fetched, or pulled) once, the server-side dry run. */
  readonly preview: { chart?: Promise<string>; upgrade?: Promise<Preview> }
}

/** A chart's run, ready to execute: its plan, and state, lock and preview not yet touched. */
export function chartRun(tools: Tools, plan: ChartPlan, helm: Helm): ChartRun {
  return { ...tools, plan, helm, state: { timings: {}, images: new Map() }, lock: {}, preview: {} }
}

/** Where a chart's files are, for every phase: the one place that builds these paths (the layouts are lib/layout.ts). */
export interface ChartFiles {
  /** Where the chart comes from, and the values files that go with it (ctx.chartSource). */
  readonly source: ChartSource
  /** The chart's directory (ctx.chartDir): hub-charts/<chart>, or monitoring; hub-configs on the upstream-chart layout. */
  readonly chartDir: string
  /** The chart's secret values (git-crypt), passed to helm with -f after source.valuesFiles. */
  readonly secretsFile: string
  /** Where each image's Dockerfile is (the image is built only when its directory exists). */
  readonly imageDirs: Readonly<Record<ImageInfo['kind'], string>>
  /** What a deploy reads from the working tree: the chart's directory, or its values files; then the secrets file. */
  readonly deployed: readonly string[]
  /** Paths whose change changes the chart (--changed): a dir ends in `/`. */
  readonly watched: readonly string[]
  /** Configuration keys whose change changes the chart (--changed). */
  readonly keys: readonly string[]
  /** A wrapper chart the hub also has but does not use (the values file wins); the plan says so. */
  readonly unused?: string
}

export function chartFiles(chart: string, config: Config): ChartFiles {
  const layout = LAYOUTS[layoutOf(chart)]
  const source = layout.source(chart, config)
  const secretsFile = `secrets/${chart}.yaml`
  const imageDirs = { user: `user-images/${chart}`, hub: `hub-images/${chart}` }
  return {
    source,
    chartDir: source.layout === 'wrapper-chart' ? source.chart : path.dirname(layout.where(chart)),
    secretsFile,
    imageDirs,
    deployed: [...(source.layout === 'wrapper-chart' ? [source.chart] : source.valuesFiles), secretsFile],
    watched: [...layout.watched(chart), secretsFile, ...Object.values(imageDirs).map((d) => `${d}/`)],
    keys: layout.keys,
    unused: unusedLayout(chart),
  }
}

/** Every chart the repository has: hub-charts/<name>/ with a Chart.yaml, hub-configs/<name>.yaml, and monitoring. */
export function discoverCharts(): string[] {
  const hubs = hubsFound()
  return fs.existsSync('monitoring/Chart.yaml') && !hubs.includes('monitoring') ? [...hubs, 'monitoring'] : hubs
}

/** Why no chart was found here: most often deploy.ts runs in a subdirectory of the repository. */
export function noChartsHere(): string {
  for (let dir = path.resolve('..'); ; dir = path.dirname(dir)) {
    if (['hub-charts', 'hub-configs'].some((d) => fs.existsSync(path.join(dir, d)))) return `no charts in ${process.cwd()}: run deploy.ts from the repository root, ${dir}`
    if (dir === path.dirname(dir)) break
  }
  return `no charts in ${process.cwd()} (no hub-charts/<hub>/Chart.yaml, no hub-configs/<hub>.yaml, no monitoring/Chart.yaml): run deploy.ts from the root of the ops repository`
}

function checkChartYaml(files: ChartFiles, YAML: typeof YAMLModule) {
  if (files.source.layout !== 'wrapper-chart') return
  const file = `${files.chartDir}/Chart.yaml`
  let doc: { name?: unknown; version?: unknown } | undefined
  if (!fs.statSync(file).isFile()) throw usageError(`${file}: not a file; fix the chart`)
  try {
    doc = YAML.parse(fs.readFileSync(file, 'utf8'))
  } catch (e) {
    throw usageError(`${file}: not valid YAML (${String((e as Error).message).split('\n')[0]}); fix the chart`)
  }
  if (!doc || typeof doc !== 'object' || !doc.name || !doc.version) {
    throw usageError(`${file}: needs at least a name and a version; fix the chart`)
  }
}

/** Every tool the run's phases need is on PATH (a dry run needs none). */
function checkTools({ phases, config }: Request, env: NodeJS.ProcessEnv, setupPlan: SetupPlan | undefined) {
  const needed = new Set<string>()
  if (setupPlan) [...setupSteps(setupPlan, config, []).map((step) => step.tool), 'kubectl', 'helm'].forEach((t) => needed.add(t))
  if (phases.build) needed.add('docker')
  if (phases.deploy) ['helm', 'kubectl'].forEach((t) => needed.add(t))
  if (phases.validate || phases.diff) needed.add('helm')
  for (const tool of needed) if (!onPath(tool, env)) throw usageError(`${tool} not found on PATH: ${INSTALL_HINTS[tool]}`)
}

/** Checks that hold for the whole invocation: git and the repository (no secret committed in clear), setup's providers and files, the tools, Helm's version. */
export async function checkRepository(request: Request, tools: Tools): Promise<RepositoryFacts> {
  const commit = await checkGit(request, tools)
  await refuseClearSecrets(request, tools)
  pickProvider(CLUSTERS, 'CLUSTER_PROVIDER', request.config)
  pickProvider(REGISTRIES, 'REGISTRY_PROVIDER', request.config)
  if (request.phases.build) commitRange(tools.env, tools.out)
  const setupPlan = request.phases.setup ? planSetup(request, tools) : undefined
  if (!request.dryRun) checkTools(request, tools.env, setupPlan)
  const version = await helmVersion(tools.exec, tools.env)
  const major = version?.major
  const { phases } = request
  if (!major) {
    const why = version ? version.problem ?? unsupportedHelm(version.said) : 'helm not found'
    if (request.dryRun) tools.out.print(`# ${why}: planning for Helm 3`)
    else if (phases.setup || phases.deploy || phases.validate || phases.diff) throw usageError(why)
  }
  if (major === 2 && setupPlan && !setupPlan.cluster.helm2) {
    throw usageError(`CLUSTER_PROVIDER=${request.config.CLUSTER_PROVIDER} needs Helm 3: Helm 2's tiller is set up only on gke, as the original did (https://helm.sh/docs/intro/install/)`)
  }
  if (request.recover && major === 2 && !request.dryRun) throw usageError('--recover needs Helm 3 (Helm 2 releases are repaired through tiller): drop --recover')
  if (phases.diff && major && !HELM_VERSIONS[major].serverDryRun) throw usageError('--diff needs Helm 3 (it reads the release with `helm status -o json` and a server-side dry run): install Helm 3, or use --validate')
  if (phases.diff && !request.dryRun && noClusterAccess(phases, tools.env)) throw usageError('--diff needs read access to the cluster: drop --no-setup, or point KUBECONFIG at a kubeconfig')
  return { commit, helmMajor: major ?? 3, setupPlan }
}

/** A path in `dir` (links to dirs not followed) that is not a file nor a directory, with what it is. */
function oddFile(dir: string): string | undefined {
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, entry.name)
    const kind = entry.name === '.git' ? undefined : notAFile(p)
    if (kind === 'a directory') {
      const inner = entry.isSymbolicLink() ? undefined : oddFile(p)
      if (inner) return inner
    } else if (kind) return `${p} is ${kind}`
  }
  return undefined
}

/** The chart's own checks (its Chart.yaml, its files, its secret values, its image tags), giving its plan. */
export async function planChart(chart: string, request: Request, facts: RepositoryFacts, tools: Tools): Promise<ChartPlan> {
  const files = chartFiles(chart, request.config)
  checkChartYaml(files, tools.invocation.runtime.YAML)
  const { phases } = request
  // helm (and plugins) read every file of the chart: a FIFO would keep them waiting for a writer.
  const odd = phases.deploy || phases.validate || phases.diff ? oddFile(files.chartDir) : undefined
  if (odd) {
    const error = usageError(`${odd}, not a file: helm reads every file of the chart and would wait on it for ever; remove it`)
    if (!request.dryRun) throw error
    tools.out.print(`# ${error.message} (a real run stops here, exit 2)`)
  }
  // Its values were registered as secrets before anything ran (collectFileSecrets); here it is checked.
  const { secretsFile } = chartSecrets(files, request, tools)
  const needsImages = phases.build || phases.deploy || phases.validate || phases.diff
  const { images, history } = needsImages ? await chartImages(tools.exec, chart, files, request.config) : { images: [], history: new Map() }
  await checkCommitted(files, request, images, tools)
  // Nowhere does one chart silently shadow another (a dry run's plan says it in its header).
  if (files.unused && !request.dryRun) tools.out.warn(unusedNote(chart, files.source, files.unused))
  return { ...request, ...facts, chart, files, chartDir: files.chartDir, images, history, secretsFile }
}

/**
 * secrets/<chart>.yaml as the run needs it: required for a deploy and a diff (which would
 * otherwise compare against a release rendered with it), optional for a validation.
 */
function chartSecrets(files: ChartFiles, request: Request, { out, invocation }: Tools): { secretsFile?: ChartValidation['secrets'] } {
  const { YAML } = invocation.runtime
  const file = files.secretsFile
  const what = 'the chart\'s secret values file'
  const fix = `create it with the chart's secret values and encrypt it with git-crypt (docs/adding-a-hub.md, step 3)`
  const check = (text: string) => checkSecretsYaml(file, text, YAML)
  const { phases } = request
  if (phases.deploy || phases.diff) {
    secretFileFor(request, out, file, what, fix, check)
    return { secretsFile: 'used' }
  }
  if (!phases.validate) return {}
  let text: string
  try {
    text = readSecretFile(file, what, fix)
  } catch {
    return { secretsFile: fs.existsSync(file) ? 'locked' : 'missing' }
  }
  check(text)
  return { secretsFile: 'used' }
}

/** Links and submodules a run cannot vouch for, with the fix, or undefined. */
function unseenDir(dir: string, what: string): string | undefined {
  if (fs.lstatSync(dir).isSymbolicLink()) {
    const kind = fs.statSync(dir).isDirectory() ? 'directory' : 'file'
    return `${dir} is a link to ${fs.readlinkSync(dir)}: --changed and the image tags follow ${dir}'s own history, not its target's, so a change there would go unseen; make it a ${kind} (git mv the target to ${dir})`
  }
  if (fs.existsSync(path.join(dir, '.git'))) {
    return `${dir} is a git submodule: its changes are not in this repository's history, so ${what} would not follow them; vendor it (git rm --cached ${dir}, then commit its files)`
  }
  return undefined
}

/**
 * What a chart pulls in beside its own files: the targets of its links and the directories
 * of its `file://` dependencies (theirs too), as repository paths; a link or a dependency
 * outside the repository is a problem, as git cannot vouch for it.
 */
function pulledIn(dir: string, YAML: typeof YAMLModule, found: { paths: Set<string>; problem?: string }) {
  const inRepo = (p: string) => {
    const rel = path.relative(process.cwd(), p)
    return rel.startsWith('..') || path.isAbsolute(rel) ? undefined : rel
  }
  const walk = (at: string) => {
    for (const entry of fs.readdirSync(at, { withFileTypes: true })) {
      const p = path.join(at, entry.name)
      if (entry.name === '.git' || (entry.isFile() && /\/charts\/[^/]+\.tgz$/.test(p))) continue
      if (entry.isSymbolicLink()) {
        const target = inRepo(fs.realpathSync(p))
        if (target === undefined) return (found.problem ??= `${p} is a link to ${fs.realpathSync(p)}, outside the repository: what is deployed would not be what the commit says; copy it into the repository`)
        if (!found.paths.has(target)) {
          found.paths.add(target)
          if (fs.statSync(p).isDirectory()) walk(target)
        }
      } else if (entry.isDirectory()) walk(p)
    }
  }
  walk(dir)
  // A file that does not say its dependencies as a list is reported by helm and the plugins that read it.
  const listed = (file: string): unknown[] => {
    try {
      const deps = fs.existsSync(path.join(dir, file)) && !notAFile(path.join(dir, file)) ? YAML.parse(fs.readFileSync(path.join(dir, file), 'utf8'))?.dependencies : undefined
      return Array.isArray(deps) ? deps : []
    } catch {
      return []
    }
  }
  for (const dependency of [...listed('Chart.yaml'), ...listed('requirements.yaml')]) {
    const repository = (dependency as { repository?: unknown } | null)?.repository
    if (typeof repository !== 'string' || !repository.startsWith('file://')) continue
    const target = inRepo(path.resolve(dir, repository.slice('file://'.length)))
    if (target === undefined) found.problem ??= `${dir}: the dependency ${repository} is outside the repository: what is deployed would not be what the commit says; move it into the repository`
    else if (!found.paths.has(target)) {
      found.paths.add(target)
      pulledIn(target, YAML, found)
    }
  }
}

/**
 * What the run builds (image dirs) and deploys (the chart dir, what it pulls in, its secret
 * values) must be what the commit says: uncommitted or untracked files there, a link or a
 * dependency outside the repository, a linked or submodule directory stop the run (exit 2;
 * a dry run notes them).
 */
async function checkCommitted(files: ChartFiles, request: Request, images: ImageInfo[], { exec, out, invocation }: Tools) {
  const found: { paths: Set<string>; problem?: string } = { paths: new Set() }
  if (request.phases.build) for (const i of images) found.problem ??= unseenDir(i.dir, 'the image tag')
  if (request.phases.deploy) {
    const read = files.deployed.slice(0, -1)
    for (const p of read) found.problem ??= unseenDir(p, '--changed')
    if (!found.problem && files.source.layout === 'wrapper-chart') pulledIn(files.chartDir, invocation.runtime.YAML, found)
  }
  const dirs = [
    ...(request.phases.build ? images.map((i) => i.dir) : []),
    ...(request.phases.deploy ? [...files.deployed, ...found.paths] : []),
  ]
  // helm dep up downloads dependency archives into charts/ and writes Chart.lock: not a change of
  // ours. A committed subchart's own files under charts/ are.
  const generated = new RegExp(`/(charts/[^/]+\\.tgz|Chart\\.lock|requirements\\.lock)$`)
  const [dirty] = found.problem ? [] : await dirtyFiles(exec, dirs, generated)
  if (!dirty && !found.problem) return
  const image = images.some((i) => dirty?.startsWith(`${i.dir}/`))
  const what = image ? `${request.phases.push ? 'built and pushed' : 'built'} under the committed tag` : 'deployed as if committed'
  const error = usageError(found.problem ?? `${dirty} has uncommitted or untracked changes that would be ${what}: commit or stash them first`)
  if (!request.dryRun) throw error
  out.print(`# ${error.message} (a real run stops here, exit 2)`)
}

/** The images a chart has (its user image and hub image, when their dirs exist) and their dirs' history. */
async function chartImages(exec: Exec, chart: string, files: ChartFiles, config: Config) {
  const kinds = [['user', config.USER_IMAGE_PREFIX], ['hub', config.HUB_IMAGE_PREFIX]] as const
  const present = kinds.filter(([kind]) => fs.existsSync(files.imageDirs[kind]))
  const history = await gitModified(exec, present.map(([kind]) => files.imageDirs[kind]))
  const images = present.map(([kind, prefix]): ImageInfo => {
    const dir = files.imageDirs[kind]
    const tag = history.get(dir)![0]
    if (!tag) throw usageError(`${dir} has no commits: commit it before building or deploying`)
    const name = `${prefix}${chart}`
    return { kind, dir, name, tag, spec: `${name}:${tag}` }
  })
  return { images, history }
}

/** Where the chart takes an image from: `jupyterhub.singleuser.image` in a wrapper chart, `singleuser.image` on the upstream chart. */
export function imageValuesPath(image: Pick<ImageInfo, 'kind'>, source: ChartSource): string {
  return `${source.valuesPrefix}${image.kind === 'user' ? 'singleuser' : 'hub'}.image`
}

/**
 * The values one image sets: its tag, as the original; and its name first when its prefix
 * (USER_IMAGE_PREFIX, HUB_IMAGE_PREFIX) is configured, so the chart runs the image built
 * rather than the name in its values.
 */
export function imageValues(image: ImageInfo, { files, config }: Pick<ChartPlan, 'files' | 'config'>): [path: string, value: string][] {
  const at = imageValuesPath(image, files.source)
  const prefixKey = image.kind === 'user' ? 'USER_IMAGE_PREFIX' : 'HUB_IMAGE_PREFIX'
  return [...(config.env[prefixKey] ? [[`${at}.name`, image.name] as [string, string]] : []), [`${at}.tag`, image.tag]]
}

/** The `--set-string` arguments of one image (`--set-string` keeps an all-digit hash from turning into a number). */
export function imageSetArgs(image: ImageInfo, plan: Pick<ChartPlan, 'files' | 'config'>): string[] {
  return imageValues(image, plan).flatMap(([at, value]) => ['--set-string', `${at}=${value}`])
}

/** The values exactly as the deploy passes them: the values files, the secrets file when the run has it, then the images. */
export function valuesArgs({ plan }: Pick<ChartRun, 'plan'>): string[] {
  const files = [...plan.files.source.valuesFiles, ...(plan.secretsFile === 'used' ? [plan.files.secretsFile] : [])]
  return [...files.flatMap((f) => ['-f', f]), ...plan.images.flatMap((image) => imageSetArgs(image, plan))]
}

/** Why the run cannot reach a cluster, or undefined when it can: setup runs, or a kubeconfig exists. */
export function noClusterAccess(phases: Phases, env: NodeJS.ProcessEnv): string | undefined {
  if (phases.setup) return undefined
  const files = (env.KUBECONFIG || path.join(env.HOME ?? os.homedir(), '.kube', 'config')).split(path.delimiter)
  return files.some((f) => f && fs.existsSync(f)) ? undefined : 'no cluster access (--no-setup and no kubeconfig)'
}
