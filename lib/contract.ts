/**
 * The contract between deploy.ts, its modules and its plugins: exit codes and errors, the
 * types a plugin sees, and the table of hook steps (docs/plugins.md). Plugins import these
 * from deploy.ts, which re-exports them.
 */
import type { Config } from './config.ts'

export const EXIT = { ok: 0, failed: 1, usage: 2, refused: 3, sigint: 130, sigterm: 143 } as const

export type Phase = 'verify' | 'setup' | 'build' | 'push' | 'validate' | 'diff' | 'deploy' | 'rollout'

interface DeployErrorDetails {
  /** The phase the run was in, when it is not the one the run recorded (a hook's). */
  phase?: Phase
  /** The failed command (redacted) and the last lines of its output, when a command failed. */
  command?: string
  output?: string
}

/** An error with the exit code it ends the run with; its message is one line. */
export class DeployError extends Error {
  phase?: Phase
  command?: string
  output?: string
  /** Already printed by the chart's run. */
  reported?: boolean
  constructor(message: string, readonly exitCode: number = EXIT.failed, details: DeployErrorDetails = {}) {
    super(message)
    Object.assign(this, details)
  }
}

/** A plugin's refusal (exit 3): thrown by `ctx.refuse(message)`, or by a plugin itself. */
export class RefusedError extends DeployError {
  constructor(message: string) {
    super(message, EXIT.refused)
  }
}

export const usageError = (message: string) => new DeployError(message, EXIT.usage)

/** A refusal: a RefusedError, or the older form, any error with `exitCode: 3`. */
export const isRefusal = (e: unknown) => e instanceof RefusedError || (e as { exitCode?: unknown })?.exitCode === EXIT.refused

/**
 * Where a chart comes from (ctx.chartSource; docs/adding-a-hub.md): a chart directory of the
 * repository (`hub-charts/<hub>/`, `monitoring/`), or the hub's values on a chart of a chart
 * repository (`hub-configs/<hub>.yaml` on HUB_CHART at HUB_CHART_VERSION).
 */
export interface ChartSource {
  layout: 'wrapper-chart' | 'upstream-chart'
  /** What `helm upgrade` installs: the chart's directory, or `<repository>/<chart>` (HUB_CHART). */
  chart: string
  /** upstream-chart: the repository `helm repo add` names (HUB_CHART's part before `/`, HUB_CHART_REPO). */
  repository?: { name: string; url: string }
  /** upstream-chart: the chart's exact version (HUB_CHART_VERSION, as given). */
  version?: string
  /** Values files passed with -f before secrets/<chart>.yaml, in order (upstream-chart: hub-configs/common.yaml when it exists, then hub-configs/<hub>.yaml). */
  valuesFiles: string[]
  /** Where the jupyterhub chart's values are: `jupyterhub.` in a wrapper chart (its dependency), `` on the upstream chart itself. */
  valuesPrefix: string
}

export interface ImageInfo {
  kind: 'user' | 'hub'
  dir: string
  name: string
  tag: string
  spec: string
  /** Set by the build phase: whether this run built it and pushed it. */
  built?: boolean
  pushed?: boolean
}

export interface Logger {
  info(message: string): void
  warn(message: string): void
  error(message: string): void
}

export interface CommandResult {
  stdout: string
  stderr: string
  exitCode: number
  /** Set when deploy.ts stopped the command because it outlived its `timeout`. */
  timedOut?: boolean
  /** How long it ran, in seconds. */
  seconds?: number
}

export interface ExecOptions {
  /** Return the output instead of streaming it (default: stream). */
  capture?: boolean
  /** Text fed to stdin (how secrets reach a command: never in argv). */
  input?: string
  cwd?: string
  /** Do not throw on a non-zero exit; the caller looks at exitCode. */
  nothrow?: boolean
  /** Prefix for every relayed output line (used when commands run concurrently). */
  prefix?: string
  /** Kill the command after this long: seconds, or a Go-style duration such as `90s`. */
  timeout?: number | string
  /** `announce` prints the original's `Executing ...` line; `probe` shows it only with --verbose. */
  show?: 'announce' | 'probe' | 'silent'
  /** Read-only commands also run under --dry-run; others are only announced. */
  readOnly?: boolean
  /** Runs even after SIGINT/SIGTERM, within its timeout (how a cancelled run releases the deploy lock). */
  cleanup?: boolean
  /** Stops the command (SIGTERM, SIGKILL 10 s later) when this aborts; `ctx.run` passes the hook's `ctx.signal`. */
  signal?: AbortSignal
  /** What the command waits for on the cluster (`helm upgrade`): a failure without the API server's answer then names the cluster and how long it waited. */
  cluster?: string
}

/** Runs one command: the only way deploy.ts and its plugins start a process. */
export type Exec = (tool: string, args: string[], options?: ExecOptions) => Promise<CommandResult>

export interface Phases {
  setup: boolean
  build: boolean
  push: boolean
  deploy: boolean
  /** --validate and --diff: read-only previews, after build and before deploy. */
  validate: boolean
  diff: boolean
}

export interface ReleaseRevision {
  revision: number
  /** Lower case with dashes (`deployed`, `pending-upgrade`) whatever the Helm version printed. */
  status: string
  description?: string
  chart?: string
  app_version?: string
  /** When the revision was deployed, as helm printed it (RFC 3339 with Helm 3 and 4). */
  updated?: string
}

/** The Helm versions deploy.ts works with. */
export type HelmMajor = 2 | 3 | 4

/** What differs between Helm 2, 3 and 4, in one place: flags, output formats, commands. */
export interface Helm {
  readonly major: HelmMajor
  /** Whether a release can be left pending-* and repaired by deploy.ts (--recover). */
  readonly tracksPending: boolean
  /** Commands setup runs for this version, after the cluster credentials (Helm 2: tiller). */
  readonly setup: readonly (readonly string[])[]
  /** `helm upgrade --install` of `chart` as `release`; `values` (the chart's --version, -f, --set-string, plugins' arguments) come last. */
  upgradeArgs(release: string, chart: string, timeoutSeconds: number, values: string[]): string[]
  statusArgs(release: string): string[]
  /** `helm template` of the chart as release `release` (values and namespace follow). */
  templateArgs(release: string, chartDir: string): string[]
  /** Whether `helm upgrade --install --dry-run=server` exists (--validate's server-side check, --diff). */
  readonly serverDryRun: boolean
  /** `helm rollback` to `revision` (waiting for it), or, with none deployed, uninstall. */
  repairArgs(release: string, revision: number | undefined, timeoutSeconds: number): string[]
  /** The release's revisions, oldest first, or why helm could not list them (`missing`: helm said the release does not exist). */
  history(release: string): Promise<{ revisions: ReleaseRevision[] } | { error: string; missing?: boolean }>
  /** The revision `helm upgrade` printed. */
  revision(upgradeOutput: string): number | undefined
  /** Whether a failed upgrade's output says another operation holds the release. */
  isPendingRefusal(output: string): boolean
}

/** One problem --validate found: `message` is one line naming the chart, and the file and values path when helm gave them. */
export interface ValidationProblem {
  /** The check that found it: fetching dependencies, `helm lint`, the render, the API server (dry run), or the images the render runs. */
  check: 'dependencies' | 'lint' | 'render' | 'server' | 'images'
  message: string
  /** Repository path of the file, with `:line` or `:line:column` when helm gave them. */
  file?: string
  /** Dotted path in the chart's values (e.g. `jupyterhub.hub.image`), when helm gave one. */
  valuesPath?: string
}

/** What --validate found for one chart (ctx.validation, and `validation` in --json). */
export interface ChartValidation {
  chart: string
  valid: boolean
  /** secrets/<chart>.yaml: used, or left out of the render because it is locked (git-crypt) or missing. */
  secrets: 'used' | 'locked' | 'missing'
  /** Whether the API server checked every object too (`helm upgrade --install --dry-run=server`). */
  serverSide: 'checked' | 'skipped'
  /** Why the server-side check was skipped: no cluster access, Helm 2, cluster unreachable, chart did not render. */
  serverSideNote?: string
  /** Objects the chart rendered to (0 when it did not render). */
  objects: number
  errors: ValidationProblem[]
  warnings: string[]
  /** The lines --validate printed for the chart, masked. */
  text: string
}

/** One object --diff found different. */
export interface ObjectChange {
  /** `Kind/namespace/name`, or `Kind/name` for a cluster-scoped object. */
  id: string
  kind: string
  /** '' for a cluster-scoped object. */
  namespace: string
  name: string
  change: 'added' | 'removed' | 'changed'
  /** `changed` only: a unified diff of the object's YAML (keys sorted; a Secret's data/stringData left out); '' otherwise. */
  diff: string
  /** Secrets only: which keys of data/stringData are added, removed or changed. Values are never shown. */
  secretKeys?: { added: string[]; removed: string[]; changed: string[] }
}

/** What --diff found for one chart (ctx.diff, and `diff` in --json). */
export interface ChartDiff {
  chart: string
  namespace: string
  /** The release revision compared against; absent when the chart is not installed (every object is added). */
  revision?: number
  /** `unchanged` counts the objects of the new manifest that stay as they are. */
  summary: { changed: number; added: number; removed: number; unchanged: number }
  /** Only the objects that differ: the new manifest's order, then the removed ones. */
  objects: ObjectChange[]
  /** What --diff printed for the chart: headers, unified diffs, the summary line; masked. */
  text: string
}


/** What every hook's context has: the chart's run as preflight planned it, and the tools to act on it. */
export interface BaseContext {
  chart: string
  phases: Phases
  config: Readonly<Config>
  /** Helm's flags and output formats (history, status, rollback) for plugins' own helm calls; `helm.major` is its version. */
  helm: Helm
  /** The chart's images; `built` and `pushed` say what the build phase did so far. */
  images: readonly ImageInfo[]
  /** Full hash of the commit being deployed. */
  commit: string
  /** The chart's directory: hub-charts/<chart>, or monitoring; hub-configs for a hub on the upstream-chart layout (see chartSource). */
  chartDir: string
  /** Where the chart comes from and the values files that go with it: the hub's layout. */
  chartSource: ChartSource
  /** Milliseconds spent in each finished phase. */
  timings: Partial<Record<Phase, number>>
  /** When this chart's run started (ms since the epoch, as Date.now()). */
  startedAt: number
  /** The CI run's web page (GitHub Actions, else Travis), when CI runs us. */
  ciRunUrl?: string
  /** Prints lines as deploy.ts does, each prefixed with the plugin's name (`INFO:root:<name>: ...`). */
  log: Logger
  run: Exec
  /** Aborted when the hook runs out of time and on SIGINT/SIGTERM: pass it to fetch and waits. */
  signal: AbortSignal
  /** When the hook's time is up (ms since the epoch): plan retries to end before it. */
  deadline: number
  /**
   * `signal`, also aborted (a TimeoutError) after `ms`: one request's bound. Use it rather than
   * `AbortSignal.any([ctx.signal, AbortSignal.timeout(ms)])`, whose timeout Node 20 may
   * garbage-collect before it fires (seen here: a hung request then outlived its bound).
   */
  within: (ms: number) => AbortSignal
  /** Waits `ms`; rejects with `signal`'s reason as soon as it aborts. */
  sleep: (ms: number) => Promise<void>
  /**
   * zx's retry(count, backoff, fn), stopping with `signal`: calls `fn` (with the attempt
   * number, from 1) up to `count` times until it resolves; between tries waits as `backoff` says.
   */
  retry: <T>(count: number, backoff: Backoff, fn: (attempt: number) => T | Promise<T>) => Promise<T>
  /** A yes/no value such as PROMOTION_OVERRIDE: 1/true/yes/on → true; unset, empty, 0/false/no/off → false; anything else undefined. */
  parseYesNo: (text: string | undefined) => boolean | undefined
  /** Refuses the run (exit 3) with this one-line reason; never returns. */
  refuse: (message: string) => never
  /** Masks every registered secret (webhook URLs, tokens, passwords, URL credentials) as ***: apply it to text sent elsewhere. With `max`, shortens the masked text to that many characters without leaving part of a secret at the cut. */
  redact: (text: string, max?: number) => string
  /** deploy.ts's duration parser (`600`, `90s`, `10m`, `1h30m` → seconds; NaN otherwise or past 7 days), for plugins' own keys. */
  parseDuration: (text: string) => number
  /**
   * A plugin's own duration key, in seconds: `config.env[key]`, or `fallback` when unset,
   * checked against `range` (seconds, default 1s to 24h). A bad value throws an error
   * naming the key, the range and the fix, which stops the run with exit 2.
   */
  duration: (key: string, fallback: string, range?: readonly [number, number]) => number
}

/** `verify`: the one hook a dry run calls too, so a plugin's checks can be tried without deploying. */
export interface VerifyContext extends BaseContext {
  /** --dry-run: check what can be checked here; `ctx.run` only announces commands that are not `readOnly`. */
  dryRun: boolean
}

/** What the run found and did so far: set from the phase that makes it on. */
export interface RunResults {
  /** Release revision after the deploy phase, read from helm's output. */
  revision?: number
  /** --validate: the chart's validation, from the end of the validate phase on (in `fail` too when it found problems). */
  validation?: ChartValidation
  /** --diff: what the deploy would change, from the end of the diff phase on. */
  diff?: ChartDiff
}

/** `afterDeploy`, `afterRollout`, `success`. */
export interface ResultContext extends BaseContext, RunResults {}

/** `fail`: what went wrong, secrets masked, and what --rollback-on-failure did about it. */
export interface FailContext extends BaseContext, RunResults {
  /** With the failed command and its last output lines when a command failed; `cancelled by SIGINT` on a signal. */
  error: DeployError
  failedPhase?: Phase
  reason: 'failed' | 'cancelled'
  /** With --rollback-on-failure: the revision the release was rolled back to. */
  rolledBackTo?: number
  /** The rollback was tried and failed (one line: what and why). */
  rollbackError?: string
}

/** Each hook's context. */
export interface HookContexts {
  verify: VerifyContext
  beforeSetup: BaseContext
  afterSetup: BaseContext
  beforeBuild: BaseContext
  afterBuild: BaseContext
  beforePush: BaseContext
  afterPush: BaseContext
  beforeDeploy: BaseContext
  afterDeploy: ResultContext
  afterRollout: ResultContext
  success: ResultContext
  fail: FailContext
}

/** Any hook's context: for a function that serves several hooks (each hook's own type is in HookContexts). */
export type HookContext = BaseContext & Partial<Omit<VerifyContext & FailContext, keyof BaseContext>>

/**
 * How long `ctx.retry` waits after a failed try: milliseconds; or an iterable of them, one
 * per retry (zx's `expBackoff(max, first)`); or a function of the try and its error. No
 * value (the iterable ended, the function returned undefined) rethrows the error at once.
 */
export type Backoff = number | Iterable<number> | ((attempt: number, error: unknown) => number | undefined)

type MaybePromise<T> = T | Promise<T>
type Hook<N extends HookName> = (ctx: HookContexts[N]) => MaybePromise<void>

/**
 * A plugin: the default export of plugins/<name>.ts. Every hook is optional and receives
 * the run's context; HOOK_STEPS says when each is called and what a throw means.
 */
export interface Plugin {
  name: string
  verify?: Hook<'verify'>
  beforeSetup?: Hook<'beforeSetup'>
  afterSetup?: Hook<'afterSetup'>
  beforeBuild?: Hook<'beforeBuild'>
  afterBuild?: Hook<'afterBuild'>
  beforePush?: Hook<'beforePush'>
  afterPush?: Hook<'afterPush'>
  /** May return extra arguments for `helm upgrade` (e.g. `--description`). */
  beforeDeploy?: (ctx: HookContexts['beforeDeploy']) => MaybePromise<void | { helmArgs?: string[] }>
  afterDeploy?: Hook<'afterDeploy'>
  afterRollout?: Hook<'afterRollout'>
  success?: Hook<'success'>
  fail?: Hook<'fail'>
}

export const HOOKS = [
  'verify', 'beforeSetup', 'afterSetup', 'beforeBuild', 'afterBuild', 'beforePush',
  'afterPush', 'beforeDeploy', 'afterDeploy', 'afterRollout', 'success', 'fail',
] as const
export type HookName = (typeof HOOKS)[number]

/** How long a best-effort hook may take, whatever HOOK_TIMEOUT says. */
const BEST_EFFORT_SECONDS = 10

/** One hook's contract. */
export interface HookStep {
  /** The phase a failure of the hook is reported in (`failedPhase`). */
  phase?: Phase
  /** Blocking: a throw stops the run and the `fail` hooks run. Best effort: a throw is one warning. */
  blocking: boolean
  /** Seconds the hook may take: HOOK_TIMEOUT, or the best-effort bound. */
  timeout: 'HOOK_TIMEOUT' | typeof BEST_EFFORT_SECONDS
  /** Exit code of a blocking hook's throw, and of a refusal (`ctx.refuse`, RefusedError, `exitCode: 3`). */
  throws?: number
  refusal?: number
  /** What the hook may return. */
  returns?: 'helmArgs'
  /** Called in a dry run too (with `ctx.dryRun`); every other hook is not. */
  dryRun?: boolean
}

const blocking = (phase: Phase, throws: number = EXIT.failed): HookStep =>
  ({ phase, blocking: true, timeout: 'HOOK_TIMEOUT', throws, refusal: EXIT.refused })
const bestEffort: HookStep = { blocking: false, timeout: BEST_EFFORT_SECONDS }

/** Every hook's step, in the order a run calls them (push hooks around each push). */
export const HOOK_STEPS: Record<HookName, HookStep> = {
  verify: { ...blocking('verify', EXIT.refused), dryRun: true },
  beforeSetup: blocking('setup'),
  afterSetup: blocking('setup'),
  beforeBuild: blocking('build'),
  afterBuild: blocking('build'),
  beforePush: blocking('push'),
  afterPush: blocking('push'),
  beforeDeploy: { ...blocking('deploy'), returns: 'helmArgs' },
  afterDeploy: blocking('deploy'),
  afterRollout: blocking('rollout'),
  success: bestEffort,
  fail: bestEffort,
}

// The masking rule (docs/reliability.md): a value is a secret when its key looks secret
// (any length, any type), or when it comes from a secret file and is not ordinary text
// (a boolean, a small number, a short word). Every form a secret commonly takes in output
// is masked too: its lines, base64 (also inside a longer base64 text), URL- and JSON-escaped.
