#!/usr/bin/env -S npx tsx
/**
 * deploy.ts — builds the images of a JupyterHub hub and deploys its chart with helm.
 *
 * A port of the Python deploy.py: same flags, same phases in the same order, same
 * external commands and announcements (see docs/ and README.md). Runs unchanged under
 * `tsx deploy.ts ...` (Node 20) and `deno run -A deploy.ts ...` (Deno 2).
 *
 * Reads top to bottom: errors, config, plugin contract and hook table, secrets and
 * logging, the invocation, exec (the one process primitive), helm adapter, git,
 * plan and state, preflight, setup, build and push, deploy, rollout, plugins and hooks,
 * orchestration, CLI and main.
 */
import process from 'node:process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import type YAMLModule from 'yaml'
import minimist from 'minimist'
import dotenv from 'dotenv'
// zx and yaml are imported on first use, so --help, --version and --list start without them
// (they are most of deploy.ts's own start-up: docs/performance.md, P3).
let zx: typeof import('zx/core') | undefined
let YAML: typeof YAMLModule

// ---------------------------------------------------------------------------------------
// Errors and exit codes

export const EXIT = { ok: 0, failed: 1, usage: 2, refused: 3, sigint: 130, sigterm: 143 } as const

export type Phase = 'verify' | 'setup' | 'build' | 'push' | 'deploy' | 'rollout'

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

const usageError = (message: string) => new DeployError(message, EXIT.usage)

/** A refusal: a RefusedError, or the older form, any error with `exitCode: 3`. */
const isRefusal = (e: unknown) => e instanceof RefusedError || (e as { exitCode?: unknown })?.exitCode === EXIT.refused

// ---------------------------------------------------------------------------------------
// Configuration: .env, then the environment (which wins); defaults are the original's values.

export const DEFAULTS = {
  GCLOUD_KEY_FILE: 'secrets/gke-auth-key.json',
  GKE_CLUSTER: 'jhub',
  GKE_ZONE: 'us-central1-b',
  GCP_PROJECT: 'ea-jupyter',
  // Other clusters and registries (docs/clusters.md); the defaults are the original's.
  CLUSTER_PROVIDER: 'gke',
  REGISTRY_PROVIDER: 'dockerhub',
  AWS_REGION: '',
  EKS_CLUSTER: '',
  AZURE_CLIENT_ID: '',
  AZURE_TENANT_ID: '',
  AZURE_FEDERATED_TOKEN_FILE: '',
  AZURE_CLIENT_CERTIFICATE_PATH: '',
  AKS_RESOURCE_GROUP: '',
  AKS_CLUSTER: '',
  AKS_KUBELOGIN: '',
  ACR_NAME: '',
  KUBECONFIG_FILE: 'secrets/kubeconfig.yaml',
  DOCKER_USERNAME: 'earthlabcu',
  DOCKER_PASSWORD_FILE: 'secrets/dockerhub',
  DOCKER_REGISTRY: '',
  USER_IMAGE_PREFIX: 'earthlabhubops/ea-k8s-user-',
  HUB_IMAGE_PREFIX: 'earthlabhubops/ea-k8s-hub-',
  HELM_TIMEOUT: '600',
  ROLLOUT_TIMEOUT: '10m',
  HEARTBEAT_INTERVAL: '60s',
  BUILD_TIMEOUT: '60m',
  HOOK_TIMEOUT: '15m',
  STAGING_CHART: 'staginghub',
  ROLLBACK_ON_FAILURE: 'false',
  DEPLOY_PLUGINS: '',
}

export type Config = typeof DEFAULTS & {
  /** HELM_TIMEOUT and ROLLOUT_TIMEOUT in seconds. */
  helmTimeoutSeconds: number
  rolloutTimeoutSeconds: number
  heartbeatSeconds: number
  buildTimeoutSeconds: number
  hookTimeoutSeconds: number
  /** ROLLBACK_ON_FAILURE (also --rollback-on-failure). */
  rollbackOnFailure: boolean
  /** Everything from .env and the environment, for plugins' own keys. */
  env: Record<string, string | undefined>
}

/** Seconds in a duration such as `600`, `90s`, `10m`, `1h30m`; NaN when it does not parse. */
export function parseDuration(text: string): number {
  const match = /^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$/.exec(text.trim())
  if (/^\d+$/.test(text.trim())) return Number(text.trim())
  if (!match || !text.trim()) return NaN
  const [, h = '0', m = '0', s = '0'] = match
  return Number(h) * 3600 + Number(m) * 60 + Number(s)
}

/** Reads a .env file strictly: dotenv skips lines it cannot parse, we name them instead. */
function readEnvFile(file: string, required: boolean): Record<string, string> {
  if (!fs.existsSync(file)) {
    if (required) throw usageError(`${file}: no such env file (check --env-file)`)
    return {}
  }
  const text = fs.readFileSync(file, 'utf8')
  let quote = ''
  text.split('\n').forEach((line, i) => {
    if (quote) {
      if (line.includes(quote)) quote = ''
      return
    }
    if (/^\s*(#.*)?$/.test(line)) return
    const m = /^\s*(?:export\s+)?[A-Za-z_][A-Za-z0-9_.-]*\s*=\s*(["'`]?)(.*)$/.exec(line)
    if (!m) throw usageError(`${file}:${i + 1}: not a KEY=VALUE line; fix or remove it`)
    if (m[1] && !m[2].includes(m[1])) quote = m[1]
  })
  if (quote) throw usageError(`${file}: unterminated ${quote}-quoted value; close the quote`)
  return dotenv.parse(text)
}

export function loadConfig(envFile: string | undefined, environment = process.env): Config {
  const fromFile = readEnvFile(envFile ?? '.env', envFile !== undefined)
  const env = { ...fromFile, ...environment }
  const values = { ...DEFAULTS }
  for (const key of Object.keys(DEFAULTS) as (keyof typeof DEFAULTS)[]) {
    if (env[key] !== undefined && env[key] !== '') values[key] = env[key]!
  }
  const seconds = (key: 'HELM_TIMEOUT' | 'ROLLOUT_TIMEOUT' | 'HEARTBEAT_INTERVAL' | 'BUILD_TIMEOUT' | 'HOOK_TIMEOUT') => {
    const s = parseDuration(values[key])
    if (!(s > 0)) throw usageError(`${key}=${values[key]}: not a duration; use seconds or e.g. 90s, 10m, 1h`)
    return s
  }
  const flag = (key: 'ROLLBACK_ON_FAILURE') => {
    if (/^(true|1|yes|on)$/i.test(values[key])) return true
    if (/^(false|0|no|off)$/i.test(values[key])) return false
    throw usageError(`${key}=${values[key]}: use true or false`)
  }
  return {
    ...values,
    helmTimeoutSeconds: seconds('HELM_TIMEOUT'),
    rolloutTimeoutSeconds: seconds('ROLLOUT_TIMEOUT'),
    heartbeatSeconds: seconds('HEARTBEAT_INTERVAL'),
    buildTimeoutSeconds: seconds('BUILD_TIMEOUT'),
    hookTimeoutSeconds: seconds('HOOK_TIMEOUT'),
    rollbackOnFailure: flag('ROLLBACK_ON_FAILURE'),
    env,
  }
}

// ---------------------------------------------------------------------------------------
// Plugin contract (docs/plugins.md) and the table of hook steps

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
  /** Kill the command after this long (a Go-style duration such as `90s`). */
  timeout?: string
  /** `announce` prints the original's `Executing ...` line; `probe` shows it only with --verbose. */
  show?: 'announce' | 'probe' | 'silent'
  /** Read-only commands also run under --dry-run; others are only announced. */
  readOnly?: boolean
}

/** Runs one command: the only way deploy.ts and its plugins start a process. */
export type Exec = (tool: string, args: string[], options?: ExecOptions) => Promise<CommandResult>

export interface Phases {
  setup: boolean
  build: boolean
  push: boolean
  deploy: boolean
}

export interface ReleaseRevision {
  revision: number
  /** Lower case with dashes (`deployed`, `pending-upgrade`) whatever the Helm version printed. */
  status: string
  description?: string
  chart?: string
  app_version?: string
}

/** What differs between Helm 2 and Helm 3, in one place: flags, output formats, commands. */
export interface Helm {
  readonly major: 2 | 3
  /** Whether a release can be left pending-* and repaired by deploy.ts (--recover). */
  readonly tracksPending: boolean
  /** Commands setup runs for this version, after the cluster credentials (Helm 2: tiller). */
  readonly setup: readonly (readonly string[])[]
  upgradeArgs(release: string, chartDir: string, timeoutSeconds: number, extra: string[]): string[]
  statusArgs(release: string): string[]
  /** `helm rollback` to `revision` (waiting for it), or, with none deployed, uninstall. */
  repairArgs(release: string, revision: number | undefined, timeoutSeconds: number): string[]
  /** The release's revisions, oldest first, or why helm could not list them. */
  history(release: string): Promise<{ revisions: ReleaseRevision[] } | { error: string }>
  /** The revision `helm upgrade` printed. */
  revision(upgradeOutput: string): number | undefined
  /** Whether a failed upgrade's output says another operation holds the release. */
  isPendingRefusal(output: string): boolean
}

export interface HookContext {
  chart: string
  phases: Phases
  config: Readonly<Config>
  helmMajor: 2 | 3
  /** Helm 2/3 flags and output formats (history, status, rollback) for plugins' own helm calls. */
  helm: Helm
  images: ImageInfo[]
  /** Full hash of the commit being deployed. */
  commit: string
  /** The chart's directory: hub-charts/<chart>, or monitoring. */
  chartDir: string
  dryRun: boolean
  /** Milliseconds spent in each finished phase. */
  timings: Partial<Record<Phase, number>>
  /** When this chart's run started (ms since the epoch, as Date.now()). */
  startedAt: number
  /** Prints lines as deploy.ts does, each prefixed with the plugin's name (`INFO:root:<name>: ...`). */
  log: Logger
  run: Exec
  /** Aborted when the hook runs out of time and on SIGINT/SIGTERM: pass it to fetch and waits. */
  signal: AbortSignal
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
  /** Masks every registered secret (webhook URLs, tokens, passwords) as ***: apply it to text sent elsewhere. */
  redact: (text: string) => string
  /** deploy.ts's duration parser (`600`, `90s`, `10m`, `1h30m` → seconds; NaN otherwise), for plugins' own keys. */
  parseDuration: (text: string) => number
  /** Release revision after the deploy phase, read from helm's output. */
  revision?: number
  /** `fail` only: what went wrong (with the failed command and its last output lines when a command failed) and in which phase; `cancelled` on SIGINT/SIGTERM. */
  error?: DeployError
  failedPhase?: Phase
  reason?: 'failed' | 'cancelled'
  /** `fail` only, with --rollback-on-failure: the revision the release was rolled back to. */
  rolledBackTo?: number
  /** `fail` only: the rollback was tried and failed (one line: what and why). */
  rollbackError?: string
}

/**
 * How long `ctx.retry` waits after a failed try: milliseconds; or an iterable of them, one
 * per retry (zx's `expBackoff(max, first)`); or a function of the try and its error. No
 * value (the iterable ended, the function returned undefined) rethrows the error at once.
 */
export type Backoff = number | Iterable<number> | ((attempt: number, error: unknown) => number | undefined)

type MaybePromise<T> = T | Promise<T>
type Hook = (ctx: HookContext) => MaybePromise<void>

/**
 * A plugin: the default export of plugins/<name>.ts. Every hook is optional and receives
 * the run's context; HOOK_STEPS says when each is called and what a throw means.
 */
export interface Plugin {
  name: string
  verify?: Hook
  beforeSetup?: Hook
  afterSetup?: Hook
  beforeBuild?: Hook
  afterBuild?: Hook
  beforePush?: Hook
  afterPush?: Hook
  /** May return extra arguments for `helm upgrade` (e.g. `--description`). */
  beforeDeploy?: (ctx: HookContext) => MaybePromise<void | { helmArgs?: string[] }>
  afterDeploy?: Hook
  afterRollout?: Hook
  success?: Hook
  fail?: Hook
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
}

const blocking = (phase: Phase, throws: number = EXIT.failed): HookStep =>
  ({ phase, blocking: true, timeout: 'HOOK_TIMEOUT', throws, refusal: EXIT.refused })
const bestEffort: HookStep = { blocking: false, timeout: BEST_EFFORT_SECONDS }

/** Every hook's step, in the order a run calls them (push hooks around each push). */
export const HOOK_STEPS: Record<HookName, HookStep> = {
  verify: blocking('verify', EXIT.refused),
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

// ---------------------------------------------------------------------------------------
// Secrets and logging: every line we print or relay passes through redact().

/** The secret values of one invocation: each is printed as ***. */
export class Secrets {
  private readonly values = new Set<string>()

  /** Registers a secret value: from now on it is printed as ***. */
  add(value: string | undefined) {
    const v = value?.trim()
    if (!v || v.length < 4) return
    this.values.add(v)
    // Multi-line secrets (private keys) may be relayed line by line.
    for (const line of v.split(/\\n|\n/)) if (line.trim().length >= 16) this.values.add(line.trim())
  }

  redact = (text: string): string => {
    let out = text
    for (const s of [...this.values].sort((a, b) => b.length - a.length)) out = out.split(s).join('***')
    return out
  }

  /** Registers the values of .env and environment keys that name secrets. */
  addFromEnv(env: Record<string, string | undefined>) {
    for (const [key, value] of Object.entries(env)) if (SECRET_KEY.test(key)) this.add(value)
  }

  /** Registers every leaf of a secrets/<chart>.yaml. */
  addLeaves(yamlText: string) {
    const leaves = (v: unknown): string[] =>
      v && typeof v === 'object' ? Object.values(v).flatMap(leaves) : v === null || v === undefined ? [] : [String(v)]
    for (const leaf of leaves(YAML.parse(yamlText))) this.add(leaf)
  }
}

/** Keys of .env and the environment whose values are secrets: webhook URLs, tokens, keys, passwords. */
const SECRET_KEY = /(WEBHOOK_URL|TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|CRYPT_KEY)$/i

/** Reads a secret file, refusing one that git-crypt has not unlocked. */
function readSecretFile(file: string, what: string): string {
  if (!fs.existsSync(file)) throw usageError(`${file}: ${what} not found; create it or set the key that names it in .env`)
  const bytes = fs.readFileSync(file)
  if (bytes.subarray(0, 9).toString('latin1') === '\0GITCRYPT') {
    throw usageError(`${file} is encrypted: run \`git-crypt unlock\` first`)
  }
  return bytes.toString('utf8')
}

const CI = {
  travis: process.env.TRAVIS === 'true',
  github: process.env.GITHUB_ACTIONS === 'true',
}

/**
 * Where one chart's lines go: redacted, each line prefixed (`[ea-hub] ` when several charts
 * run), and, for a chart deployed alongside others, held back and printed as one block
 * when it finishes. Heartbeats bypass the hold: CI must see output while it waits.
 */
export class Output implements Logger {
  private held: Array<['stdout' | 'stderr', string]> | undefined
  constructor(readonly secrets: Secrets, readonly prefix = '', hold = false, readonly ciGroups = true) {
    if (hold) this.held = []
  }

  write(stream: 'stdout' | 'stderr', text: string, prefix = '') {
    const lines = this.secrets.redact(text).split('\n')
    const last = lines.pop()
    const out = lines.map((l) => `${this.prefix}${prefix}${l}\n`).join('') + (last ? `${this.prefix}${prefix}${last}` : '')
    if (this.held) this.held.push([stream, out])
    else process[stream].write(out)
  }

  print(text: string) {
    this.write('stdout', text.endsWith('\n') ? text : text + '\n')
  }

  info(m: string) {
    this.write('stderr', `INFO:root:${m}\n`)
  }

  warn(m: string) {
    this.write('stderr', `WARNING: ${m}\n`)
  }

  error(m: string) {
    this.write('stderr', `ERROR: ${m}\n`)
  }

  live(text: string) {
    process.stdout.write(this.secrets.redact(`${this.prefix}${text}\n`))
  }

  /** Prints what was held, as one collapsible group in CI logs. */
  flush(title: string) {
    const held = this.held
    if (!held) return
    this.held = undefined
    groupMarkers('start', title.replace(/\W+/g, '-'), title)
    for (const [stream, text] of held) process[stream].write(text)
    groupMarkers('end', title.replace(/\W+/g, '-'), title)
  }
}

/** Collapsible sections: travis_fold on Travis, ::group:: on GitHub Actions. */
function groupMarkers(edge: 'start' | 'end', id: string, title: string) {
  if (CI.travis) process.stdout.write(`travis_fold:${edge}:${id}\n`)
  if (CI.github) process.stdout.write(edge === 'start' ? `::group::${title}\n` : '::endgroup::\n')
}

/** Prints a phase header, runs it, prints its duration; a collapsible group in CI logs. */
async function inGroup<T>(out: Output, id: string, title: string, fn: () => Promise<T>): Promise<T> {
  const start = Date.now()
  if (out.ciGroups) groupMarkers('start', id, title)
  out.print(`==> ${title}`)
  try {
    return await fn()
  } finally {
    out.print(`<== ${title} (${((Date.now() - start) / 1000).toFixed(1)}s)`)
    if (out.ciGroups) groupMarkers('end', id, title)
  }
}

// ---------------------------------------------------------------------------------------
// The invocation: what one `deploy.ts ...` owns, from its secrets to its cancellation.

export class Invocation {
  readonly secrets = new Secrets()
  /** Messages that belong to no chart (bad input, the multi-chart summary). */
  readonly log = new Output(this.secrets)
  /** Aborted on SIGINT/SIGTERM: running commands are stopped, waits and hooks end. */
  private readonly controller = new AbortController()
  readonly signal = this.controller.signal
  /** Whether read-only probes are announced (--verbose). */
  verbose = false
  /** The signal that cancelled the run. */
  cancelled: NodeJS.Signals | undefined

  cancel(signal: NodeJS.Signals) {
    if (this.cancelled) return
    this.cancelled = signal
    this.log.error(`${signal} received: stopping`)
    this.controller.abort(new DeployError(`cancelled by ${signal}`))
  }

  /** Cancels on SIGINT and SIGTERM until the returned function is called. */
  trapSignals(): () => void {
    const handlers = (['SIGINT', 'SIGTERM'] as const).map((signal) => [signal, () => this.cancel(signal)] as const)
    for (const [signal, handler] of handlers) process.on(signal, handler)
    return () => {
      for (const [signal, handler] of handlers) process.off(signal, handler)
    }
  }
}

// ---------------------------------------------------------------------------------------
// Exec: the one place that starts processes.

/** zx log sink: relays a child's output line by line (so redaction sees whole lines). */
function relay(out: Output, prefix: string, onOutput: () => void) {
  const pending: Record<'stdout' | 'stderr', string> = { stdout: '', stderr: '' }
  const flush = (stream: 'stdout' | 'stderr', all: boolean) => {
    const cut = all ? pending[stream].length : pending[stream].lastIndexOf('\n') + 1
    const text = pending[stream].slice(0, cut)
    pending[stream] = pending[stream].slice(cut)
    if (text) out.write(stream, text.endsWith('\n') ? text : text + '\n', prefix)
  }
  return (entry: { kind: string; verbose?: boolean; data?: Buffer | string }) => {
    if (entry.kind === 'stdout' || entry.kind === 'stderr') {
      if (!entry.verbose) return
      onOutput()
      pending[entry.kind] += entry.data!.toString()
      flush(entry.kind, false)
    } else if (entry.kind === 'end') {
      flush('stdout', true)
      flush('stderr', true)
    }
  }
}

/** Every `seconds` of silence, says what a long command is still waiting for. */
function heartbeat(out: Output, what: string, seconds: number) {
  const start = Date.now()
  let timer: NodeJS.Timeout | undefined
  const arm = () => {
    clearTimeout(timer)
    if (seconds > 0) timer = setTimeout(beat, seconds * 1000)
  }
  const beat = () => {
    out.live(`... still waiting for ${what} (${Math.round((Date.now() - start) / 1000)}s)`)
    arm()
  }
  arm()
  return { reset: arm, stop: () => clearTimeout(timer) }
}

/**
 * On cancellation, passes the signal on to the child, and kills it if it is still there
 * 30 s later. The shell zx starts execs the tool, so the child's pid is the tool's; zx's
 * own kill signals a process group, which under Deno takes this process down too.
 */
function stopOnCancel(invocation: Invocation, pid: number | undefined): () => void {
  let timer: NodeJS.Timeout | undefined
  const send = (sig: NodeJS.Signals) => {
    try {
      if (pid) process.kill(pid, sig)
    } catch {
      // Already gone.
    }
  }
  const stop = () => {
    send(invocation.cancelled ?? 'SIGTERM')
    timer = setTimeout(() => send('SIGKILL'), 30_000).unref()
  }
  if (invocation.signal.aborted) stop()
  else invocation.signal.addEventListener('abort', stop, { once: true })
  return () => {
    invocation.signal.removeEventListener('abort', stop)
    clearTimeout(timer)
  }
}

/** Last lines of a failed command's output, for the error message and notifications. */
function tail(text: string, n = 5): string {
  return text.trim().split('\n').slice(-n).join('\n')
}

export interface ExecSettings {
  env: NodeJS.ProcessEnv
  dryRun: boolean
  out: Output
  /** Silence after which a streamed command gets a heartbeat line; 0 turns them off. */
  heartbeatSeconds: number
  invocation: Invocation
}

export function makeExec({ env, dryRun, out, heartbeatSeconds, invocation }: ExecSettings): Exec {
  const { redact } = invocation.secrets
  return async (tool, args, options = {}) => {
    const { capture = false, show = 'announce', prefix = '' } = options
    const line = `${tool} ${args.join(' ')}`
    // A dry run announces every command it skips exactly as a real run announces the ones it runs.
    const announce = () => out.info(`${capture ? 'Executing and capturing' : 'Executing'} ${line}`)
    if (dryRun && !options.readOnly) {
      announce()
      return { stdout: '', stderr: '', exitCode: 0 }
    }
    if (invocation.signal.aborted) throw invocation.signal.reason
    if (show === 'announce' || (show === 'probe' && invocation.verbose)) announce()
    const beat = heartbeat(out, `${prefix}${tool} ${args.slice(0, 2).join(' ')}`, capture ? 0 : heartbeatSeconds)
    zx ??= await import('zx/core')
    const p = zx.$({
      cwd: options.cwd,
      env,
      input: options.input,
      // A child that reads stdin must not wait on ours: it gets stdin only when we feed it.
      stdio: options.input === undefined ? ['ignore', 'pipe', 'pipe'] : 'pipe',
      quiet: capture,
      verbose: !capture,
      nothrow: true,
      timeout: options.timeout as `${number}s`,
      log: relay(out, prefix, beat.reset) as never,
    })`${tool} ${args}`
    const release = stopOnCancel(invocation, p.pid)
    const done = await p.finally(() => {
      release()
      beat.stop()
    })
    const result = { stdout: done.stdout, stderr: done.stderr, exitCode: done.exitCode ?? 1 }
    if (result.exitCode !== 0 && !options.nothrow) throw commandError(line, { ...result, signal: done.signal }, options, redact)
    return result
  }
}

/** A failed command as one line (what, how it ended, with captured output its last line), plus its output's tail. */
function commandError(line: string, done: CommandResult & { signal: NodeJS.Signals | null }, options: ExecOptions, redact: Secrets['redact']): DeployError {
  const why = done.signal ? `was stopped by ${done.signal}${options.timeout ? ` (limit ${options.timeout})` : ''}` : `exited with ${done.exitCode}`
  const detail = options.capture ? `: ${tail(done.stderr || done.stdout, 1)}` : ''
  const shown = line.length > 100 ? `${line.slice(0, 99)}…` : line
  return new DeployError(redact(`${shown} ${why}${detail}`), EXIT.failed, {
    command: redact(line),
    output: redact(tail(done.stdout + done.stderr, 20)),
  })
}

/** Whether `tool` is an executable in one of the PATH directories. */
function onPath(tool: string, env: NodeJS.ProcessEnv): boolean {
  return (env.PATH ?? '').split(path.delimiter).some((dir) => {
    try {
      fs.accessSync(path.join(dir, tool), fs.constants.X_OK)
      return true
    } catch {
      return false
    }
  })
}

const INSTALL_HINTS: Record<string, string> = {
  git: 'install git (apt-get install git)',
  docker: 'install Docker (https://docs.docker.com/engine/install/)',
  helm: 'install Helm 3 (https://helm.sh/docs/intro/install/)',
  kubectl: 'install kubectl (https://kubernetes.io/docs/tasks/tools/) or `gcloud components install kubectl`',
  gcloud: 'install the Google Cloud SDK (https://cloud.google.com/sdk/docs/install)',
  aws: 'install the AWS CLI v2 (https://docs.aws.amazon.com/cli/latest/userguide/getting-started-install.html)',
  az: 'install the Azure CLI 2.67 or later (https://learn.microsoft.com/cli/azure/install-azure-cli)',
  kubelogin: 'install kubelogin (`az aks install-cli`, or https://azure.github.io/kubelogin/install.html)',
}

// ---------------------------------------------------------------------------------------
// Helm adapter: what differs between Helm 2 and Helm 3, as data.

/** What each Helm version does its own way. */
const HELM_VERSIONS = {
  2: {
    // Releases live in tiller: no --namespace for them.
    namespaced: false,
    upgradeFlags: ['--force'],
    createNamespace: [],
    seconds: (s: number) => String(s),
    uninstall: ['delete', '--purge'],
    // Setup installs or upgrades tiller, then waits for it.
    setup: [
      ['helm', 'init', '--upgrade'],
      ['kubectl', 'rollout', 'status', '--namespace', 'kube-system', '--watch', 'deployment', 'tiller-deploy'],
    ],
    pendingRefusal: undefined,
  },
  3: {
    namespaced: true,
    upgradeFlags: [],
    createNamespace: ['--create-namespace'],
    seconds: (s: number) => `${s}s`,
    uninstall: ['uninstall'],
    setup: [],
    // How helm refuses to upgrade a release that is pending-install/upgrade/rollback.
    pendingRefusal: /another operation \(install\/upgrade\/rollback\) is in progress/,
  },
} as const

function makeHelm(major: 2 | 3, exec: Exec): Helm {
  const v = HELM_VERSIONS[major]
  const ns = (release: string) => (v.namespaced ? ['--namespace', release] : [])
  return {
    major,
    tracksPending: v.pendingRefusal !== undefined,
    setup: v.setup,
    upgradeArgs: (release, chartDir, timeoutSeconds, extra) => [
      'upgrade', '--install', '--namespace', release, release, chartDir, ...v.upgradeFlags,
      '--wait', '--timeout', v.seconds(timeoutSeconds), '--cleanup-on-fail', ...v.createNamespace,
      '-f', `secrets/${release}.yaml`, ...extra,
    ],
    statusArgs: (release) => ['status', release, ...ns(release)],
    repairArgs: (release, revision, timeoutSeconds) => revision === undefined
      ? [...v.uninstall, release, ...ns(release)]
      : ['rollback', release, String(revision), ...ns(release), '--wait', '--timeout', v.seconds(timeoutSeconds)],
    history: (release) => releaseHistory(exec, ['history', release, ...ns(release), '-o', 'json'], release),
    revision: (output) => {
      const found = /^REVISION: (\d+)$/m.exec(output)?.[1]
      return found ? Number(found) : undefined
    },
    isPendingRefusal: (output) => v.pendingRefusal?.test(output) ?? false,
  }
}

/** `helm history -o json` of either version, oldest first, statuses as Helm 3 spells them. */
async function releaseHistory(exec: Exec, args: string[], release: string): ReturnType<Helm['history']> {
  const r = await exec('helm', args, { capture: true, nothrow: true, show: 'probe', readOnly: true, timeout: '60s' })
  if (r.exitCode !== 0) {
    const why = (r.stderr || r.stdout).trim().split('\n').at(-1) || `exit ${r.exitCode}`
    return { error: `could not read the history of ${release} (${why})` }
  }
  let list: unknown
  try {
    list = JSON.parse(r.stdout || '[]')
  } catch {
    list = undefined
  }
  if (!Array.isArray(list)) return { error: `\`helm ${args.join(' ')}\` did not print a JSON list` }
  const revisions = (list as ReleaseRevision[]).map((rev) => ({ ...rev, revision: Number(rev.revision), status: String(rev.status).toLowerCase().replace(/_/g, '-') }))
  return { revisions: revisions.sort((a, b) => a.revision - b.revision) }
}

/** Helm's major version from the client alone (Helm 2 would ask tiller without --client). */
async function helmMajorVersion(exec: Exec, env: NodeJS.ProcessEnv): Promise<2 | 3 | undefined> {
  if (!onPath('helm', env)) return undefined
  const r = await exec('helm', ['version', '--client', '--short'], { capture: true, nothrow: true, show: 'probe', readOnly: true })
  const major = /v(\d+)\./.exec(r.stdout)?.[1]
  return major === '2' ? 2 : major === '3' ? 3 : undefined
}

// ---------------------------------------------------------------------------------------
// Git: image tags and the commit range

/**
 * For each dir, the abbreviated hashes of the last five commits that touched it, newest
 * first, from one `git log` for all dirs: element n-1 is the original's
 * last_git_modified(dir, n) (`git log -n n --pretty=format:%h dir`, last line).
 */
export async function gitModified(exec: Exec, dirs: string[]): Promise<Map<string, string[]>> {
  const found = new Map(dirs.map((dir) => [dir, [] as string[]]))
  if (dirs.length === 0) return found
  // --cc: a merge git lists (one that differs from every parent) names the files it resolved.
  const args = ['log', '--pretty=format:%x00%h', '--name-only', '--cc', '--', ...dirs]
  const { stdout } = await exec('git', args, { capture: true, show: 'silent', readOnly: true })
  for (const commit of stdout.split('\0').slice(1)) {
    const [hash, ...files] = commit.split('\n').filter(Boolean)
    for (const [dir, hashes] of found) {
      if (hashes.length < 5 && files.some((f) => f.startsWith(`${dir}/`))) hashes.push(hash)
    }
  }
  return found
}

/** The commit range CI built: Travis's variable, or the before..after of a GitHub push. */
function commitRange(env: NodeJS.ProcessEnv): string | undefined {
  if (env.TRAVIS_COMMIT_RANGE) return env.TRAVIS_COMMIT_RANGE
  if (env.GITHUB_EVENT_NAME === 'push' && env.GITHUB_EVENT_PATH) {
    try {
      const event = JSON.parse(fs.readFileSync(env.GITHUB_EVENT_PATH, 'utf8'))
      if (event.before && event.after) return `${event.before}..${event.after}`
    } catch {
      return undefined
    }
  }
  return undefined
}

/**
 * The files `range` changed (below `paths`, if given); undefined, after a warning ending
 * in `fallback`, when git cannot read the range (a force push or a first build).
 */
async function changedFiles(exec: Exec, out: Output, range: string, fallback: string, paths: string[] = []): Promise<string[] | undefined> {
  const only = paths.length ? ['--', ...paths] : []
  const diff = await exec('git', ['diff', '--name-only', range, ...only], { capture: true, nothrow: true, show: 'silent', readOnly: true })
  if (diff.exitCode === 0) return diff.stdout.split('\n').filter(Boolean)
  out.warn(`commit range ${range} is not valid here (force push or first build?): ${fallback}`)
  return undefined
}

/** The dirs the commit range touched; a range git cannot read touched them all. */
async function touchedDirs(exec: Exec, out: Output, range: string, dirs: string[]): Promise<Set<string>> {
  const files = await changedFiles(exec, out, range, `treating ${dirs.join(', ')} as changed`, dirs)
  if (!files) return new Set(dirs)
  return new Set(dirs.filter((dir) => files.some((f) => f.startsWith(`${dir}/`))))
}

/** Charts whose files the commit range changed; deploy.ts, plugins/ or package.json mean all. */
async function changedCharts(exec: Exec, out: Output, range: string, charts: string[]): Promise<string[]> {
  const files = await changedFiles(exec, out, range, 'every chart counts as changed')
  if (!files) return charts
  const changed = new Set<string>()
  for (const file of files) {
    if (file === 'deploy.ts' || file.startsWith('plugins/') || file === 'package.json' || file === 'package-lock.json') return charts
    const hub = /^(?:hub-charts|user-images|hub-images)\/([^/]+)\//.exec(file)?.[1] ?? /^secrets\/([^/]+)\.yaml$/.exec(file)?.[1]
    if (hub) changed.add(hub)
    if (file.startsWith('monitoring/')) changed.add('monitoring')
  }
  return charts.filter((c) => changed.has(c))
}

// ---------------------------------------------------------------------------------------
// Plan and state of a chart's run

/** What the command line asks of every chart. */
interface Request {
  readonly phases: Readonly<Phases>
  readonly config: Config
  readonly dryRun: boolean
  readonly recover: boolean
  /** --rollback-on-failure or ROLLBACK_ON_FAILURE=true. */
  readonly rollbackOnFailure: boolean
  readonly plugins: readonly Plugin[]
}

/** What every chart of one invocation shares, checked once by preflight. */
interface RepositoryFacts {
  readonly commit: string
  readonly helmMajor: 2 | 3
  /** Setup's providers, checked, with their secrets in memory. */
  readonly setupPlan?: SetupPlan
}

/** One chart's run as preflight fixed it: read-only from then on. */
interface ChartPlan extends Request, RepositoryFacts {
  readonly chart: string
  readonly chartDir: string
  /** The build phase marks each image built and pushed. */
  readonly images: readonly ImageInfo[]
  /** Each image dir's last five commits, newest first (tags and cache candidates). */
  readonly history: ReadonlyMap<string, string[]>
}

/** What changes while a chart's run goes on. */
interface ChartState {
  phase?: Phase
  timings: Partial<Record<Phase, number>>
  revision?: number
  /** With --rollback-on-failure, read just before the upgrade: the deployed revision (none on a first install) and the newest. */
  before?: { live?: number; newest: number }
  rolledBackTo?: number
  rollbackError?: string
  privateDir?: string
  /** How the run ended, for the multi-chart summary. */
  result?: 'ok' | 'failed' | 'skipped'
  error?: DeployError
  /** When the run started (ms since the epoch) and how long it took. */
  startedAt?: number
  seconds?: number
}

/** Where a chart's run writes and what it runs commands with. */
interface Tools {
  readonly exec: Exec
  readonly out: Output
  /** The children's environment: setup points it at the run's private config directory. */
  readonly env: NodeJS.ProcessEnv
  readonly invocation: Invocation
}

interface ChartRun extends Tools {
  readonly plan: ChartPlan
  readonly state: ChartState
  readonly helm: Helm
}

function chartDir(chart: string): string {
  return chart === 'monitoring' ? 'monitoring' : `hub-charts/${chart}`
}

// ---------------------------------------------------------------------------------------
// Preflight: bad input stops here with exit 2, before any command with an effect runs.

/** Every chart the repository has: hub-charts/<name>/ with a Chart.yaml, and monitoring. */
function discoverCharts(): string[] {
  const hubs = fs.existsSync('hub-charts')
    ? fs.readdirSync('hub-charts').filter((d) => fs.existsSync(`hub-charts/${d}/Chart.yaml`)).sort()
    : []
  return fs.existsSync('monitoring/Chart.yaml') ? [...hubs, 'monitoring'] : hubs
}

function checkChartYaml(chart: string) {
  const file = `${chartDir(chart)}/Chart.yaml`
  let doc: { name?: unknown; version?: unknown } | undefined
  try {
    doc = YAML.parse(fs.readFileSync(file, 'utf8'))
  } catch (e) {
    throw usageError(`${file}: not valid YAML (${String((e as Error).message).split('\n')[0]}); fix the chart`)
  }
  if (!doc || typeof doc !== 'object' || !doc.name || !doc.version) {
    throw usageError(`${file}: needs at least a name and a version; fix the chart`)
  }
}

/** Reads a secret file the run needs; a dry run notes a missing or locked one and goes on. */
function secretFileFor(request: Request, out: Output, file: string, what: string): string | undefined {
  try {
    return readSecretFile(file, what)
  } catch (e) {
    if (!request.dryRun) throw e
    out.print(`# ${(e as Error).message} (a real run stops here, exit 2)`)
    return undefined
  }
}

/** The git repository and its commit; a shallow clone would give wrong image tags. */
async function checkGit(request: Request, { exec, env }: Tools): Promise<string> {
  if (!onPath('git', env)) throw usageError(`git not found on PATH: ${INSTALL_HINTS.git}`)
  const rev = await exec('git', ['rev-parse', '--is-shallow-repository', 'HEAD'], { capture: true, nothrow: true, show: 'silent', readOnly: true })
  if (rev.exitCode !== 0) throw usageError(`${process.cwd()} is not a git repository with commits: run deploy.ts from the root of the ops repository`)
  const [shallow, commit] = rev.stdout.trim().split('\n')
  if (shallow === 'true' && (request.phases.build || request.phases.deploy)) {
    throw usageError('this is a shallow clone, so image tags would be wrong: run `git fetch --unshallow` (in CI, clone with full depth)')
  }
  return commit
}

/** Every tool the run's phases need is on PATH (a dry run needs none). */
function checkTools({ phases, config }: Request, env: NodeJS.ProcessEnv, setupPlan: SetupPlan | undefined) {
  const needed = new Set<string>()
  if (setupPlan) [...setupSteps(setupPlan, config, []).map((step) => step.tool), 'kubectl', 'helm'].forEach((t) => needed.add(t))
  if (phases.build) needed.add('docker')
  if (phases.deploy) ['helm', 'kubectl'].forEach((t) => needed.add(t))
  for (const tool of needed) if (!onPath(tool, env)) throw usageError(`${tool} not found on PATH: ${INSTALL_HINTS[tool]}`)
}

/** Checks that hold for the whole invocation: git and the repository, setup's providers and files, the tools, Helm's version. */
async function checkRepository(request: Request, tools: Tools): Promise<RepositoryFacts> {
  YAML ??= (await import('yaml')).default
  const commit = await checkGit(request, tools)
  pickProvider(CLUSTERS, 'CLUSTER_PROVIDER', request.config)
  pickProvider(REGISTRIES, 'REGISTRY_PROVIDER', request.config)
  const setupPlan = request.phases.setup ? planSetup(request, tools) : undefined
  tools.invocation.secrets.addFromEnv(request.config.env)
  if (!request.dryRun) checkTools(request, tools.env, setupPlan)
  const major = await helmMajorVersion(tools.exec, tools.env)
  if (!major) {
    if (request.dryRun) tools.out.print('# helm not found: planning for Helm 3')
    else if (request.phases.setup || request.phases.deploy) throw usageError('could not tell the Helm version from `helm version`: install Helm 2 or 3')
  }
  if (major === 2 && setupPlan && !setupPlan.cluster.helm2) {
    throw usageError(`CLUSTER_PROVIDER=${request.config.CLUSTER_PROVIDER} needs Helm 3: Helm 2's tiller is set up only on gke, as the original did (https://helm.sh/docs/intro/install/)`)
  }
  return { commit, helmMajor: major ?? 3, setupPlan }
}

/** The chart's own checks (its Chart.yaml, its secret values, its image tags), giving its plan. */
async function planChart(chart: string, request: Request, facts: RepositoryFacts, tools: Tools): Promise<ChartPlan> {
  checkChartYaml(chart)
  if (request.phases.deploy) {
    const values = secretFileFor(request, tools.out, `secrets/${chart}.yaml`, 'the chart\'s secret values file')
    if (values) tools.invocation.secrets.addLeaves(values)
  }
  const needsImages = request.phases.build || request.phases.deploy
  const { images, history } = needsImages ? await chartImages(tools.exec, chart, request.config) : { images: [], history: new Map() }
  return { ...request, ...facts, chart, chartDir: chartDir(chart), images, history }
}

/** The images a chart has (its user image and hub image, when their dirs exist) and their dirs' history. */
async function chartImages(exec: Exec, chart: string, config: Config) {
  const kinds = [['user', 'user-images', config.USER_IMAGE_PREFIX], ['hub', 'hub-images', config.HUB_IMAGE_PREFIX]] as const
  const present = kinds.filter(([, root]) => fs.existsSync(`${root}/${chart}`))
  const history = await gitModified(exec, present.map(([, root]) => `${root}/${chart}`))
  const images = present.map(([kind, root, prefix]): ImageInfo => {
    const dir = `${root}/${chart}`
    const tag = history.get(dir)![0]
    if (!tag) throw usageError(`${dir} has no commits: commit it before building or deploying`)
    const name = `${prefix}${chart}`
    return { kind, dir, name, tag, spec: `${name}:${tag}` }
  })
  return { images, history }
}

// ---------------------------------------------------------------------------------------
// Setup: credentials for the cluster and the registry, in a private per-run directory.
// Each provider is a row of data (docs/clusters.md); one function plans them, one runs them.

type Key = keyof typeof DEFAULTS

/** What a setup step's arguments are made of. */
interface StepFacts {
  config: Config
  /** The run's private kubeconfig, which every later command uses. */
  kubeconfig: string
  /** The registry docker logs in to: DOCKER_REGISTRY, else the host of USER_IMAGE_PREFIX. */
  host: string
}

/**
 * One setup command. Secrets never enter its argv: `stdin` feeds it a value held in memory
 * (the contents of the file a key names, or the token an earlier step printed), and
 * `yields` takes its captured output as that token, masked from then on.
 */
interface SetupStep {
  tool: string
  args: (f: StepFacts) => string[]
  /** Output captured, not streamed (logins print account details). */
  capture?: boolean
  stdin?: Key | 'token'
  yields?: 'token'
  /** The token in the captured output (default: all of it). */
  parse?: (stdout: string) => string | undefined
  /** Runs only when this holds. */
  when?: (config: Config) => boolean
}

/** A secret file setup needs: read before anything runs (refused while git-crypt-locked), masked, kept in memory. */
interface SecretFile {
  key: Key
  what: string
  /** The secret parts of its text (default: all of it). */
  masks?: (text: string) => Array<string | undefined>
}

/** One way to log a cloud CLI in: the first form whose keys are set and whose `when` holds is used. */
interface LoginForm {
  name: string
  keys: Key[]
  files: SecretFile[]
  when?: (files: Record<string, string | undefined>) => boolean
  steps: SetupStep[]
}

interface Provider {
  /** The cloud CLI it needs logged in (once per run, whichever provider needs it first). */
  cli?: CloudCli
  /** Keys that must be set. */
  keys: Key[]
  files: SecretFile[]
  steps: SetupStep[]
}

interface ClusterProvider extends Provider {
  /** The kubeconfig comes from this file of the repository instead of a CLI. */
  kubeconfigFrom?: Key
  /** Helm 2 (and its tiller setup) is allowed here; elsewhere it is refused (see CLUSTERS). */
  helm2?: boolean
}

interface RegistryProvider extends Provider {
  /** Logs in to a registry host, which the image prefixes must name. */
  needsHost?: boolean
}

type CloudCli = 'gcloud' | 'aws' | 'az'

const quietly = { show: 'silent', timeout: '5m' } as const

/** The type of a Google credential file: `service_account` (a key) or `external_account` (keyless). */
function credentialType(text: string | undefined): string | undefined {
  try {
    return JSON.parse(text ?? '{}').type
  } catch {
    return undefined // gcloud names a file it cannot read
  }
}

/** A Google credential file's secrets: a key's private key; an OIDC file's request headers. */
function googleCredentialSecrets(text: string): string[] {
  try {
    const doc = JSON.parse(text)
    const headers = Object.values(doc.credential_source?.headers ?? {}).map(String)
    return [doc.private_key, ...headers, ...headers.map((h) => h.replace(/^Bearer\s+/i, ''))].filter(Boolean)
  } catch {
    return []
  }
}

/** The key of a PEM file (certificate plus private key). */
const pemPrivateKey = (text: string) => [/-----BEGIN [A-Z ]*PRIVATE KEY-----([\s\S]*?)-----END/.exec(text)?.[1]]

/** The credentials in a kubeconfig: tokens, client keys, passwords; never server names or users. */
function kubeconfigSecrets(text: string): string[] {
  const found: string[] = []
  const walk = (v: unknown) => {
    if (!v || typeof v !== 'object') return
    for (const [k, child] of Object.entries(v)) {
      if (/^(token|client-key-data|password|id-token|refresh-token|client-secret|access-token)$/.test(k) && typeof child === 'string') found.push(child)
      else walk(child)
    }
  }
  try {
    for (const doc of YAML.parseAllDocuments(text)) walk(doc.toJS())
  } catch {
    // kubectl names a kubeconfig it cannot read
  }
  return found
}

const GCLOUD_KEY: SecretFile = { key: 'GCLOUD_KEY_FILE', what: 'the Google Cloud credential file', masks: googleCredentialSecrets }

/** How each cloud CLI logs in, without a secret in argv. */
const LOGINS: Record<CloudCli, LoginForm[]> = {
  gcloud: [
    {
      // Workload identity federation (GitHub's OIDC setup for Google Cloud writes this file): no key at all.
      name: 'workload identity federation',
      keys: ['GCLOUD_KEY_FILE'],
      files: [GCLOUD_KEY],
      when: (files) => credentialType(files.GCLOUD_KEY_FILE) === 'external_account',
      steps: [{ tool: 'gcloud', args: (f) => ['auth', 'login', `--cred-file=${f.config.GCLOUD_KEY_FILE}`], capture: true }],
    },
    {
      name: 'service account key',
      keys: ['GCLOUD_KEY_FILE'],
      files: [GCLOUD_KEY],
      steps: [{ tool: 'gcloud', args: (f) => ['auth', 'activate-service-account', `--key-file=${f.config.GCLOUD_KEY_FILE}`], capture: true }],
    },
  ],
  // The AWS CLI reads its credentials from the environment (AWS_PROFILE, the keys, or the role GitHub's OIDC action assumed).
  aws: [{ name: 'the environment', keys: [], files: [], steps: [] }],
  az: [
    {
      // `@-` makes az read the value from stdin: the token never enters argv.
      name: 'federated token',
      keys: ['AZURE_CLIENT_ID', 'AZURE_TENANT_ID', 'AZURE_FEDERATED_TOKEN_FILE'],
      files: [{ key: 'AZURE_FEDERATED_TOKEN_FILE', what: 'the federated (OIDC) token' }],
      steps: [{
        tool: 'az',
        args: (f) => ['login', '--service-principal', '--username', f.config.AZURE_CLIENT_ID, '--tenant', f.config.AZURE_TENANT_ID, '--federated-token', '@-'],
        capture: true,
        stdin: 'AZURE_FEDERATED_TOKEN_FILE',
      }],
    },
    {
      name: 'certificate',
      keys: ['AZURE_CLIENT_ID', 'AZURE_TENANT_ID', 'AZURE_CLIENT_CERTIFICATE_PATH'],
      files: [{ key: 'AZURE_CLIENT_CERTIFICATE_PATH', what: 'the service principal certificate (PEM with its private key)', masks: pemPrivateKey }],
      steps: [{
        tool: 'az',
        args: (f) => ['login', '--service-principal', '--username', f.config.AZURE_CLIENT_ID, '--tenant', f.config.AZURE_TENANT_ID, '--certificate', f.config.AZURE_CLIENT_CERTIFICATE_PATH],
        capture: true,
      }],
    },
  ],
}

/**
 * Cluster providers (CLUSTER_PROVIDER). Helm 2 stays GKE-only: tiller's manifests use
 * APIs that Kubernetes 1.16 removed, so `helm init` fails on any EKS or AKS cluster one
 * can create today; the original's GKE setup keeps it for the parity.
 */
const CLUSTERS: Record<string, ClusterProvider> = {
  gke: {
    cli: 'gcloud',
    keys: ['GKE_CLUSTER', 'GKE_ZONE', 'GCP_PROJECT'],
    files: [],
    helm2: true,
    steps: [{ tool: 'gcloud', args: ({ config: c }) => ['container', 'clusters', 'get-credentials', c.GKE_CLUSTER, `--zone=${c.GKE_ZONE}`, `--project=${c.GCP_PROJECT}`] }],
  },
  eks: {
    cli: 'aws',
    keys: ['EKS_CLUSTER', 'AWS_REGION'],
    files: [],
    // Writes the KUBECONFIG of the environment: the private one.
    steps: [{ tool: 'aws', args: ({ config: c }) => ['eks', 'update-kubeconfig', '--name', c.EKS_CLUSTER, '--region', c.AWS_REGION] }],
  },
  aks: {
    cli: 'az',
    keys: ['AKS_RESOURCE_GROUP', 'AKS_CLUSTER'],
    files: [],
    steps: [
      // Older az versions ignore KUBECONFIG and write ~/.kube/config: name the private file.
      { tool: 'az', args: ({ config: c, kubeconfig }) => ['aks', 'get-credentials', '--resource-group', c.AKS_RESOURCE_GROUP, '--name', c.AKS_CLUSTER, '--file', kubeconfig] },
      // Entra ID clusters: kubectl gets its token from the az login above instead of a browser.
      { tool: 'kubelogin', args: ({ config: c, kubeconfig }) => ['convert-kubeconfig', '--login', c.AKS_KUBELOGIN, '--kubeconfig', kubeconfig], when: (c) => !!c.AKS_KUBELOGIN },
    ],
  },
  kubeconfig: {
    keys: ['KUBECONFIG_FILE'],
    files: [{ key: 'KUBECONFIG_FILE', what: 'the cluster\'s kubeconfig', masks: kubeconfigSecrets }],
    kubeconfigFrom: 'KUBECONFIG_FILE',
    steps: [],
  },
}

/** `docker login` with a token from `yields`, on stdin. */
const tokenLogin = (user: string): SetupStep => ({ tool: 'docker', args: (f) => ['login', '--username', user, '--password-stdin', f.host], capture: true, stdin: 'token' })

/** Registry providers (REGISTRY_PROVIDER): tokens pass from the cloud CLI to docker on stdin. */
const REGISTRIES: Record<string, RegistryProvider> = {
  dockerhub: {
    keys: ['DOCKER_USERNAME'],
    files: [{ key: 'DOCKER_PASSWORD_FILE', what: 'the Docker Hub password' }],
    steps: [{
      tool: 'docker',
      args: ({ config: c }) => ['login', '-u', c.DOCKER_USERNAME, '--password-stdin', ...(c.DOCKER_REGISTRY ? [c.DOCKER_REGISTRY] : [])],
      capture: true,
      stdin: 'DOCKER_PASSWORD_FILE',
    }],
  },
  gar: {
    cli: 'gcloud',
    keys: [],
    files: [],
    needsHost: true,
    steps: [
      { tool: 'gcloud', args: () => ['auth', 'print-access-token'], capture: true, yields: 'token' },
      tokenLogin('oauth2accesstoken'),
    ],
  },
  ecr: {
    cli: 'aws',
    keys: ['AWS_REGION'],
    files: [],
    needsHost: true,
    steps: [
      { tool: 'aws', args: ({ config: c }) => ['ecr', 'get-login-password', '--region', c.AWS_REGION], capture: true, yields: 'token' },
      tokenLogin('AWS'),
    ],
  },
  acr: {
    cli: 'az',
    keys: ['ACR_NAME'],
    files: [],
    needsHost: true,
    steps: [
      {
        tool: 'az',
        args: ({ config: c }) => ['acr', 'login', '--name', c.ACR_NAME, '--expose-token', '--output', 'json'],
        capture: true,
        yields: 'token',
        parse: (stdout) => JSON.parse(stdout).accessToken,
      },
      // ACR's token login takes this fixed user name.
      tokenLogin('00000000-0000-0000-0000-000000000000'),
    ],
  },
  none: { keys: [], files: [], steps: [] },
}

/** The registry host in an image prefix (`us-docker.pkg.dev/p/r/user-` → `us-docker.pkg.dev`); Docker Hub names have none. */
function registryHost(config: Config): string | undefined {
  if (config.DOCKER_REGISTRY) return config.DOCKER_REGISTRY
  const first = config.USER_IMAGE_PREFIX.split('/')[0]
  return config.USER_IMAGE_PREFIX.includes('/') && /[.:]|^localhost$/.test(first) ? first : undefined
}

/** The chosen providers, checked, with their secrets in memory: what setup needs and nothing else. */
interface SetupPlan {
  readonly cluster: ClusterProvider
  readonly registry: RegistryProvider
  readonly logins: Partial<Record<CloudCli, LoginForm>>
  /** Secret files' contents by the key that names them. */
  readonly secrets: Readonly<Record<string, string | undefined>>
  readonly host: string
}

/** Where each provider's keys are explained. */
const CLUSTERS_DOC = 'see docs/clusters.md'

/** Picks a provider row by its key's value; an unknown name is a usage error listing the known ones. */
function pickProvider<T>(table: Record<string, T>, key: 'CLUSTER_PROVIDER' | 'REGISTRY_PROVIDER', config: Config): T {
  const name = config[key]
  if (!Object.hasOwn(table, name)) throw usageError(`${key}=${name}: unknown provider; use one of ${Object.keys(table).join(', ')}`)
  return table[name]
}

/**
 * Setup's preflight: the providers exist, their keys are set, their secret files readable
 * (and masked from now on). Runs before any command; bad input is one line, exit 2.
 */
function planSetup(request: Request, { out, invocation }: Tools): SetupPlan {
  const { config } = request
  const cluster = pickProvider(CLUSTERS, 'CLUSTER_PROVIDER', config)
  const registry = pickProvider(REGISTRIES, 'REGISTRY_PROVIDER', config)
  const secrets: Record<string, string | undefined> = {}
  const read = (file: SecretFile) => {
    if (file.key in secrets) return
    const text = secretFileFor(request, out, config[file.key], `${file.key} (${file.what})`)?.trim()
    for (const s of text === undefined ? [] : file.masks?.(text) ?? [text]) invocation.secrets.add(s)
    secrets[file.key] = text
  }
  const logins: SetupPlan['logins'] = {}
  for (const [key, provider] of [['CLUSTER_PROVIDER', cluster], ['REGISTRY_PROVIDER', registry]] as const) {
    const missing = provider.keys.find((k) => !config[k])
    if (missing) throw usageError(`${missing} is not set: ${key}=${config[key]} needs it; set it in .env (${CLUSTERS_DOC})`)
    provider.files.forEach(read)
    if (provider.cli && !logins[provider.cli]) logins[provider.cli] = pickLogin(provider.cli, key, config, read, secrets)
  }
  const host = registryHost(config)
  if (registry.needsHost && !host) {
    throw usageError(`USER_IMAGE_PREFIX=${config.USER_IMAGE_PREFIX} names no registry host, which REGISTRY_PROVIDER=${config.REGISTRY_PROVIDER} logs in to: begin both image prefixes with it (or set DOCKER_REGISTRY)`)
  }
  return { cluster, registry, logins, secrets, host: host ?? '' }
}

/** The first login form of `cli` whose keys are set; none is a usage error naming what to set. */
function pickLogin(cli: CloudCli, by: 'CLUSTER_PROVIDER' | 'REGISTRY_PROVIDER', config: Config, read: (f: SecretFile) => void, secrets: SetupPlan['secrets']): LoginForm {
  const forms = LOGINS[cli]
  for (const form of forms.filter((f) => f.keys.every((k) => config[k]))) {
    form.files.forEach(read)
    if (!form.when || form.when(secrets)) return form
  }
  const closest = [...forms].sort((a, b) => a.keys.filter((k) => !config[k]).length - b.keys.filter((k) => !config[k]).length)[0]
  const ways = forms.map((f) => `${f.name} (${f.keys.join(', ')})`).join(' or ')
  throw usageError(`${closest.keys.find((k) => !config[k])} is not set: ${by}=${config[by]} logs ${cli} in by ${ways}; set it in .env (${CLUSTERS_DOC})`)
}

/** The plan's commands in the original's order: cluster login and credentials, Helm's own (tiller), registry login. */
function setupSteps(plan: SetupPlan, config: Config, helmSetup: Helm['setup']): SetupStep[] {
  const { cluster, registry, logins } = plan
  const login = (cli?: CloudCli) => (cli ? logins[cli]!.steps : [])
  return [
    ...login(cluster.cli),
    ...cluster.steps,
    ...helmSetup.map(([tool, ...args]): SetupStep => ({ tool, args: () => args })),
    ...(registry.cli === cluster.cli ? [] : login(registry.cli)),
    ...registry.steps,
  ].filter((step) => !step.when || step.when(config))
}

/** Points kubectl, helm, gcloud, az and docker at a fresh private directory for this run. */
function privateConfigDir(env: NodeJS.ProcessEnv): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'deploy-'))
  fs.chmodSync(dir, 0o700)
  const docker = path.join(dir, 'docker')
  fs.mkdirSync(docker)
  // Docker finds CLI plugins (buildx) under DOCKER_CONFIG: keep the user's reachable.
  const plugins = path.join(env.DOCKER_CONFIG ?? path.join(os.homedir(), '.docker'), 'cli-plugins')
  if (fs.existsSync(plugins)) fs.symlinkSync(plugins, path.join(docker, 'cli-plugins'))
  Object.assign(env, {
    KUBECONFIG: path.join(dir, 'kubeconfig'),
    CLOUDSDK_CONFIG: path.join(dir, 'gcloud'),
    AZURE_CONFIG_DIR: path.join(dir, 'azure'),
    DOCKER_CONFIG: docker,
  })
  return dir
}

/**
 * Runs the plan's commands. Credentials land in the private directory the run's state
 * holds (removed in one place, when the run ends); tokens stay in this call's memory.
 */
async function setup({ plan, state, exec, env, helm, out, invocation }: ChartRun) {
  const setupPlan = plan.setupPlan!
  const { config } = plan
  state.privateDir = privateConfigDir(env)
  const facts: StepFacts = { config, kubeconfig: env.KUBECONFIG!, host: setupPlan.host }
  const from = setupPlan.cluster.kubeconfigFrom
  if (from) {
    if (plan.dryRun) out.print(`# KUBECONFIG: a private copy of ${config[from]}`)
    else fs.writeFileSync(facts.kubeconfig, setupPlan.secrets[from] ?? '', { mode: 0o600 })
  }
  const held: Record<string, string | undefined> = { ...setupPlan.secrets }
  for (const step of setupSteps(setupPlan, config, helm.setup)) {
    const input = step.stdin && (held[step.stdin] ?? '')
    const r = await exec(step.tool, step.args(facts), { ...quietly, capture: step.capture, input })
    if (step.yields && !plan.dryRun) {
      let token: string | undefined
      try {
        token = (step.parse ?? ((text: string) => text))(r.stdout)?.trim()
      } catch {
        token = undefined
      }
      if (!token) throw new DeployError(`${step.tool} ${step.args(facts).slice(0, 2).join(' ')} printed no token: check its login and permissions (${CLUSTERS_DOC})`)
      invocation.secrets.add(token)
      held[step.yields] = token
    }
  }
}

// ---------------------------------------------------------------------------------------
// Build and push

/** A registry on this machine speaks plain HTTP; docker manifest needs --insecure for it. */
function insecureFlag(name: string): string[] {
  return /^(127\.\d+\.\d+\.\d+|localhost)(:\d+)?\//.test(name) ? ['--insecure'] : []
}

/** Whether the registry has `spec`, asked without pulling it; a registry that cannot be asked says no. */
async function imageExists({ exec, out }: ChartRun, name: string, tag: string): Promise<boolean> {
  const r = await exec('docker', ['manifest', 'inspect', ...insecureFlag(name), `${name}:${tag}`], { capture: true, nothrow: true, show: 'probe', readOnly: false, timeout: '60s' })
  if (r.exitCode !== 0 && !/no such manifest|manifest unknown|not found/i.test(r.stderr)) {
    out.warn(`could not ask the registry about ${name}:${tag} (${tail(r.stderr, 1)}): treating it as missing`)
  }
  return r.exitCode === 0
}

async function needsRebuild(r: ChartRun, image: ImageInfo, touched: Set<string> | undefined): Promise<boolean> {
  if (touched?.has(image.dir)) return true
  if (r.plan.dryRun) {
    r.out.print(`# ${image.spec}: built only if the registry lacks it`)
    await imageExists(r, image.name, image.tag)
    return true
  }
  if (await imageExists(r, image.name, image.tag)) return false
  r.out.info(`${image.spec} is not in the registry: building it`)
  return true
}

/** BuildKit reads --cache-from straight from the registry when images carry inline cache. */
function buildKit(r: ChartRun): boolean {
  return r.env.DOCKER_BUILDKIT === '1'
}

/**
 * The newest of the dir's last five tags that the registry has, for --cache-from: pulled
 * for the legacy builder (which ignores an image it does not have), not for BuildKit.
 */
async function findCacheImage(r: ChartRun, image: ImageInfo): Promise<string | undefined> {
  const candidates = r.plan.history.get(image.dir) ?? []
  // All lookups at once: each costs a registry round trip, whatever the image's size.
  const found = r.plan.dryRun ? candidates.map(() => true) : await Promise.all(candidates.map((tag) => imageExists(r, image.name, tag)))
  const tag = candidates[found.indexOf(true)]
  if (!tag) return undefined
  const spec = `${image.name}:${tag}`
  if (buildKit(r)) return spec
  const pull = await r.exec('docker', ['pull', spec], { nothrow: true, timeout: `${r.plan.config.buildTimeoutSeconds}s` })
  if (pull.exitCode === 0) return spec
  r.out.warn(`could not pull ${spec}: building without a cache`)
  return undefined
}

/** Fires the push hooks around each push. */
type FireHook = (hook: 'beforePush' | 'afterPush') => Promise<unknown>

async function buildImage(r: ChartRun, image: ImageInfo, touched: Set<string> | undefined, fire: FireHook) {
  const label = image.kind === 'hub' ? 'hub image' : 'image'
  if (!(await needsRebuild(r, image, touched))) {
    r.out.print(`Do not need to rebuild ${label}, using ${image.spec}`)
    return
  }
  const cache = await findCacheImage(r, image)
  const cacheArgs = cache ? ['--cache-from', cache] : []
  const inlineCache = buildKit(r) ? ['--build-arg', 'BUILDKIT_INLINE_CACHE=1'] : []
  await r.exec('docker', ['build', ...cacheArgs, ...inlineCache, '-t', image.spec, image.dir], { timeout: `${r.plan.config.buildTimeoutSeconds}s` })
  image.built = true
  if (r.plan.phases.push) await pushImage(r, image, fire)
  r.out.print(`build completed for ${label} ${image.spec}`)
}

async function pushImage(r: ChartRun, image: ImageInfo, fire: FireHook) {
  await fire('beforePush')
  const pushed = await r.exec('docker', ['push', image.spec], { nothrow: true, timeout: `${r.plan.config.buildTimeoutSeconds}s` })
  if (pushed.exitCode !== 0) {
    throw new DeployError(`docker push ${image.spec} failed (exit ${pushed.exitCode}): is the registry reachable and are you logged in?`)
  }
  image.pushed = true
  await fire('afterPush')
}

/** The original's build_user_image and build_hub_image, in that order; push follows each build. */
async function build(r: ChartRun, fire: FireHook) {
  const range = commitRange(r.env)
  const dirs = r.plan.images.map((i) => i.dir)
  const touched = range && dirs.length ? await touchedDirs(r.exec, r.out, range, dirs) : undefined
  for (const image of r.plan.images) await buildImage(r, image, touched, fire)
}

// ---------------------------------------------------------------------------------------
// Deploy

/** The --set-string arguments that point the chart at this commit's images. */
function imageArgs({ plan, out }: ChartRun): string[] {
  return plan.images.flatMap((image) => {
    out.print(`Using ${image.spec} as ${image.kind} image for ${plan.chart}`)
    return ['--set-string', `jupyterhub.${image.kind === 'user' ? 'singleuser' : 'hub'}.image.tag=${image.tag}`]
  })
}

/**
 * A release an interrupted run left pending-*: with --recover, rolled back to the last
 * deployed revision (or uninstalled if it never deployed); otherwise an error naming the
 * state and the repair. Returns whether the release was pending.
 */
async function handlePendingRelease({ plan, exec, out, helm }: ChartRun): Promise<boolean> {
  const { chart } = plan
  const history = await helm.history(chart)
  const revisions = 'revisions' in history ? history.revisions : []
  const last = revisions.at(-1)
  if (!last || !last.status.startsWith('pending-')) return false
  const deployed = [...revisions].reverse().find((r) => r.status === 'deployed' || r.status === 'superseded')
  const repair = helm.repairArgs(chart, deployed?.revision, plan.config.helmTimeoutSeconds)
  if (!plan.recover) {
    throw new DeployError(`release ${chart} is stuck in ${last.status} (revision ${last.revision}, an earlier run was interrupted): repair with \`helm ${repair.join(' ')}\` or rerun with --recover`)
  }
  out.warn(`release ${chart} is stuck in ${last.status}: recovering with helm ${repair.join(' ')}`)
  await exec('helm', repair)
  return true
}

async function deploy(r: ChartRun, pluginArgs: string[]) {
  const { plan, state, exec, helm } = r
  const extra = [...imageArgs(r), ...pluginArgs]
  await exec('helm', ['dep', 'up'], { cwd: plan.chartDir, timeout: '5m' })
  if (plan.recover && helm.tracksPending && !plan.dryRun) await handlePendingRelease(r)
  if (plan.rollbackOnFailure && !plan.dryRun) await recordLiveRevision(r)
  // helm stops waiting at its own --timeout; ours is only a backstop.
  const backstop = `${plan.config.helmTimeoutSeconds + 120}s`
  const args = helm.upgradeArgs(plan.chart, plan.chartDir, plan.config.helmTimeoutSeconds, extra)
  const upgrade = await exec('helm', args, { timeout: backstop }).catch(async (e: DeployError) => {
    // A pending release is refused by helm before it changes anything: name the state and the repair.
    if (helm.isPendingRefusal(e.output ?? '') && (await handlePendingRelease(r))) throw e
    await printDiagnostics(r)
    throw e
  })
  state.revision = helm.revision(upgrade.stdout) ?? state.revision
}

/** What the cluster says about the namespace, printed after a failed upgrade or rollout (not when cancelled). */
async function printDiagnostics({ plan, exec, out, helm, invocation }: ChartRun) {
  if (invocation.cancelled) return
  const ns = plan.chart
  out.error(`diagnostics for namespace ${ns}:`)
  const opts = { nothrow: true, timeout: '60s' } as const
  await exec('kubectl', ['get', 'events', '--namespace', ns, '--sort-by=.lastTimestamp'], opts)
  await exec('kubectl', ['get', 'pods', '--namespace', ns], opts)
  await exec('helm', helm.statusArgs(ns), opts)
}

// ---------------------------------------------------------------------------------------
// Rollback on failure (--rollback-on-failure)

/** Just before the upgrade: the revision live now, to go back to, and the newest, to tell whether the upgrade made one. */
async function recordLiveRevision({ plan, state, helm }: ChartRun) {
  const history = await helm.history(plan.chart)
  const revisions = 'revisions' in history ? history.revisions : []
  state.before = {
    live: [...revisions].reverse().find((rev) => rev.status === 'deployed')?.revision,
    newest: revisions.at(-1)?.revision ?? 0,
  }
}

/**
 * After a failure that may have changed the release: back to the revision live before the
 * run, whose rollout is then waited for. Records the outcome for the fail hooks; never
 * throws (the run ends with its own error).
 */
async function rollBack(r: ChartRun) {
  const { plan, state, out, helm } = r
  const { chart } = plan
  const before = state.before
  if (!before) return // failed before the upgrade started: the release was not touched
  if (before.live === undefined) {
    out.warn(before.newest === 0
      ? `${chart}: this was its first install, so there is no earlier revision to roll back to; the release is left as it is (\`helm ${helm.repairArgs(chart, undefined, 0).join(' ')}\` removes it)`
      : `${chart}: no revision was deployed before this run, so there is none to roll back to; the release is left as it is`)
    return
  }
  const history = state.revision === undefined ? await helm.history(chart) : undefined
  const made = state.revision ?? (history && 'revisions' in history ? history.revisions.at(-1)?.revision ?? 0 : 0)
  if (made <= before.newest) {
    out.info(`${chart} is still on revision ${before.live} (the upgrade made no new revision): nothing to roll back`)
    return
  }
  const to = before.live
  out.warn(`${chart} failed after helm upgrade made revision ${made}: rolling back to revision ${to}, the one live before this run`)
  try {
    await inGroup(out, 'rollback', `rollback ${chart}`, async () => {
      const seconds = plan.config.helmTimeoutSeconds
      // helm stops waiting at its own --timeout; ours is only a backstop.
      await r.exec('helm', helm.repairArgs(chart, to, seconds), { timeout: `${seconds + 120}s` })
      await rollout(r)
    })
    state.rolledBackTo = to
    out.warn(`${chart} rolled back to revision ${to}`)
  } catch (e) {
    state.rollbackError = `rollback of ${chart} to revision ${to} failed: ${(e as Error)?.message ?? e}`
    out.error(state.rollbackError)
    await printDiagnostics(r)
  }
}

// ---------------------------------------------------------------------------------------
// Rollout

async function rollout({ plan, exec, out }: ChartRun) {
  const ns = plan.chart
  const { config } = plan
  out.info('Waiting for all deployments to be up and running')
  const list = await exec('kubectl', ['--namespace', ns, 'get', 'deployments', '-o', 'name'], { capture: true, timeout: '2m' })
  const timeout = `--timeout=${config.rolloutTimeoutSeconds}s`
  if (plan.dryRun) {
    out.info(`Executing kubectl rollout status --namespace ${ns} --watch <each deployment> ${timeout}`)
    return
  }
  const deployments = list.stdout.split('\n').map((l) => l.trim()).filter(Boolean)
  if (deployments.length === 0) {
    out.info(`no deployments in namespace ${ns}: nothing to wait for`)
    return
  }
  const results = await Promise.allSettled(deployments.map((d) =>
    exec('kubectl', ['rollout', 'status', '--namespace', ns, '--watch', d, timeout], {
      prefix: `[${d.replace(/^.*\//, '')}] `,
      timeout: `${config.rolloutTimeoutSeconds + 60}s`,
    })))
  const failed = deployments.filter((_, i) => results[i].status === 'rejected')
  if (failed.length) throw new DeployError(`rollout of ${failed.join(', ')} did not finish within ${config.ROLLOUT_TIMEOUT}`)
}

// ---------------------------------------------------------------------------------------
// Plugins and the hook runner

/** The plugins shipped beside deploy.ts (a file: URL, or an https: one when Deno runs deploy.ts from a URL). */
const SHIPPED_PLUGINS = new URL('./plugins/', import.meta.url)

/**
 * Where `--plugin NAME` points: a path as given; a bare name, plugins/<name>.ts of the
 * working directory, else the plugin of that name shipped beside deploy.ts.
 */
function pluginSource(name: string): { file: string; url: string } {
  const bare = !/[/\\]|\.ts$/.test(name)
  const local = bare ? `plugins/${name}.ts` : name
  const here = { file: local, url: pathToFileURL(path.resolve(local)).href }
  if (!bare || fs.existsSync(local)) return here
  const shipped = new URL(`${name}.ts`, SHIPPED_PLUGINS)
  if (shipped.protocol !== 'file:') return { file: shipped.href, url: shipped.href }
  // Found nowhere: the "not found" line names the file the repository would have.
  return fs.existsSync(fileURLToPath(shipped)) ? { file: fileURLToPath(shipped), url: shipped.href } : here
}

/** The names of the plugins shipped beside deploy.ts, for a "not found" line. */
function shippedPluginNames(): string {
  try {
    return fs.readdirSync(fileURLToPath(SHIPPED_PLUGINS)).filter((f) => f.endsWith('.ts')).map((f) => f.slice(0, -3)).join(', ') || 'none'
  } catch {
    return 'none'
  }
}

/** The word of `words` fewest edits away from `word` (case ignored): the hook a typo meant. */
function closest(word: string, words: readonly string[]): string {
  const distance = (a: string, b: string) => {
    let row = Array.from({ length: b.length + 1 }, (_, j) => j)
    for (let i = 1; i <= a.length; i++) {
      const next = [i]
      for (let j = 1; j <= b.length; j++) next[j] = Math.min(row[j] + 1, next[j - 1] + 1, row[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1))
      row = next
    }
    return row[b.length]
  }
  const cost = (w: string) => distance(word.toLowerCase(), w.toLowerCase())
  return words.reduce((best, w) => (cost(w) < cost(best) ? w : best))
}

/** A plugin object's own keys are its name and hooks: any other key is a typo that would be silently ignored. */
function checkPluginKeys(file: string, plugin: Plugin) {
  const unknown = Object.keys(plugin).find((k) => k !== 'name' && !(HOOKS as readonly string[]).includes(k))
  if (unknown) throw usageError(`${file}: plugin ${plugin.name} has an unknown key "${unknown}": did you mean "${closest(unknown, HOOKS)}"? (a plugin has a name and hooks: ${HOOKS.join(', ')})`)
}

/** Loads `--plugin` names and paths (pluginSource says where a name points). */
async function loadPlugins(names: string[]): Promise<Plugin[]> {
  const plugins: Plugin[] = []
  for (const name of names) {
    const { file, url } = pluginSource(name)
    if (url.startsWith('file:') && !fs.existsSync(fileURLToPath(url))) {
      throw usageError(`${file}: plugin not found here nor shipped with deploy.ts (shipped: ${shippedPluginNames()}); check --plugin / DEPLOY_PLUGINS`)
    }
    let mod: { default?: unknown }
    try {
      mod = await import(url)
    } catch (e) {
      throw usageError(`${file}: plugin failed to load: ${String((e as Error).message ?? e).split('\n')[0]}`)
    }
    const plugin = mod.default as Plugin | undefined
    const valid = plugin && typeof plugin === 'object' && typeof plugin.name === 'string' &&
      Object.entries(plugin).every(([k, v]) => k === 'name' || !(HOOKS as readonly string[]).includes(k) || typeof v === 'function')
    if (!valid) throw usageError(`${file}: default export is not a plugin (an object with a name and hook functions)`)
    checkPluginKeys(file, plugin)
    // The same file named twice (`x`, `plugins/x.ts`) is the same module: load it once.
    if (!plugins.includes(plugin)) plugins.push(plugin)
  }
  return plugins
}

/** What a `fail` hook learns about the failure. */
type FailureFacts = Pick<HookContext, 'error' | 'failedPhase' | 'reason'>

/** A plugin's logger: deploy.ts's lines, prefixed with the plugin's name. */
function pluginLog(out: Logger, name: string): Logger {
  return {
    info: (m) => out.info(`${name}: ${m}`),
    warn: (m) => out.warn(`${name}: ${m}`),
    error: (m) => out.error(`${name}: ${m}`),
  }
}

/** Node 20's timers fire at once above this many ms. */
const MAX_TIMER_MS = 2 ** 31 - 1

/** A wait that ends, rejecting with the signal's reason, as soon as `signal` aborts. */
function abortableSleep(signal: AbortSignal): HookContext['sleep'] {
  return (ms) => new Promise<void>((resolve, reject) => {
    if (signal.aborted) return reject(signal.reason)
    const stop = () => {
      clearTimeout(timer)
      reject(signal.reason)
    }
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', stop)
      resolve()
    }, Math.min(Math.max(0, ms) || 0, MAX_TIMER_MS))
    signal.addEventListener('abort', stop, { once: true })
  })
}

/**
 * zx's retry(count, backoff, fn) with waits that stop with the hook: zx's own sleeps cannot
 * be aborted, and its backoff cannot look at the error (Retry-After) or give up early (a 4xx).
 */
function retrying(signal: AbortSignal, sleep: HookContext['sleep']): HookContext['retry'] {
  return async (count, backoff, fn) => {
    const delays = typeof backoff === 'object' ? backoff[Symbol.iterator]() : undefined
    for (let attempt = 1; ; attempt++) {
      signal.throwIfAborted()
      try {
        return await fn(attempt)
      } catch (e) {
        if (attempt >= count || signal.aborted) throw e
        const ms = typeof backoff === 'number' ? backoff : typeof backoff === 'function' ? backoff(attempt, e) : delays!.next().value
        if (typeof ms !== 'number') throw e
        await sleep(ms)
      }
    }
  }
}

/** PROMOTION_OVERRIDE-style switches: yes, no, or undefined for a value that is neither. */
function parseYesNo(text: string | undefined): boolean | undefined {
  const t = (text ?? '').trim().toLowerCase()
  if (/^(1|true|yes|on)$/.test(t)) return true
  if (/^(|0|false|no|off)$/.test(t)) return false
  return undefined
}

function hookContext({ plan, state, exec, out, helm, invocation }: ChartRun, plugin: Plugin, signal: AbortSignal, failure: FailureFacts): HookContext {
  const sleep = abortableSleep(signal)
  return {
    chart: plan.chart,
    phases: plan.phases,
    config: plan.config,
    helmMajor: plan.helmMajor,
    helm,
    images: plan.images as ImageInfo[],
    commit: plan.commit,
    chartDir: plan.chartDir,
    dryRun: plan.dryRun,
    timings: state.timings,
    startedAt: state.startedAt ?? Date.now(),
    log: pluginLog(out, plugin.name),
    run: exec,
    signal,
    sleep,
    retry: retrying(signal, sleep),
    parseYesNo,
    refuse: (message) => {
      throw new RefusedError(message)
    },
    redact: invocation.secrets.redact,
    parseDuration,
    revision: state.revision,
    rolledBackTo: state.rolledBackTo,
    rollbackError: state.rollbackError,
    ...failure,
  }
}

/**
 * Calls one plugin's hook, bounded by `seconds` and, for a blocking hook, by the
 * invocation's cancellation: either aborts `ctx.signal` and rejects.
 */
async function callHook(r: ChartRun, plugin: Plugin, hook: HookName, step: HookStep, failure: FailureFacts) {
  const seconds = step.timeout === 'HOOK_TIMEOUT' ? r.plan.config.hookTimeoutSeconds : step.timeout
  const bound = new AbortController()
  const timer = setTimeout(() => bound.abort(new Error(`did not finish within ${seconds}s`)), seconds * 1000)
  const signal = step.blocking ? AbortSignal.any([bound.signal, r.invocation.signal]) : bound.signal
  const stopped = new Promise<never>((_, reject) => signal.addEventListener('abort', () => reject(signal.reason), { once: true }))
  const fn = plugin[hook] as (ctx: HookContext) => unknown
  try {
    return await Promise.race([fn.call(plugin, hookContext(r, plugin, signal, failure)), stopped])
  } finally {
    clearTimeout(timer)
  }
}

/** The `helm upgrade` arguments a beforeDeploy hook returned: only an array of strings. */
function helmArgsOf(result: unknown): string[] {
  const args = (result as { helmArgs?: unknown } | undefined)?.helmArgs ?? []
  if (!Array.isArray(args) || args.some((a) => typeof a !== 'string')) throw new Error('helmArgs must be an array of strings')
  return args
}

/**
 * Runs `hook` of every plugin in load order, as HOOK_STEPS says: a blocking hook's throw
 * stops the run, a best-effort hook's is one warning. Returns what the hooks gave (helmArgs).
 */
async function runHook(r: ChartRun, hook: HookName, failure: FailureFacts = {}): Promise<string[]> {
  const step = HOOK_STEPS[hook]
  const given: string[] = []
  if (r.plan.dryRun) return given
  for (const plugin of r.plan.plugins.filter((p) => p[hook])) {
    try {
      const result = await callHook(r, plugin, hook, step, failure)
      if (step.returns === 'helmArgs') given.push(...helmArgsOf(result))
    } catch (e) {
      const message = (e as Error)?.message ?? e
      if (!step.blocking) {
        r.out.warn(`plugin ${plugin.name} ${hook} failed: ${message}`)
        continue
      }
      if (r.invocation.cancelled) throw e
      const code = isRefusal(e) ? step.refusal : step.throws
      throw new DeployError(`plugin ${plugin.name} ${hook}: ${message}`, code, { phase: step.phase })
    }
  }
  return given
}

// ---------------------------------------------------------------------------------------
// Orchestration: one chart's phases, then several charts.

async function phase<T>({ plan, state, out }: ChartRun, name: Phase, fn: () => Promise<T>): Promise<T> {
  state.phase = name
  const start = Date.now()
  const result = await inGroup(out, name, `${name} ${plan.chart}`, fn)
  state.timings[name] = Date.now() - start
  return result
}

/** The phases in the original's order, each between its hooks. */
async function runPhases(r: ChartRun) {
  const { phases } = r.plan
  await runHook(r, 'verify')
  if (phases.setup) {
    await runHook(r, 'beforeSetup')
    await phase(r, 'setup', () => setup(r))
    await runHook(r, 'afterSetup')
  }
  if (phases.build) {
    await runHook(r, 'beforeBuild')
    await phase(r, 'build', () => build(r, (hook) => runHook(r, hook)))
    await runHook(r, 'afterBuild')
  }
  if (phases.deploy) {
    const pluginArgs = await runHook(r, 'beforeDeploy')
    try {
      await phase(r, 'deploy', () => deploy(r, pluginArgs))
      await runHook(r, 'afterDeploy')
      await phase(r, 'rollout', () => rollout(r).catch(async (e) => {
        await printDiagnostics(r)
        throw e
      }))
      await runHook(r, 'afterRollout')
    } catch (e) {
      if (r.plan.rollbackOnFailure && !r.invocation.cancelled) await rollBack(r)
      throw e
    }
  }
}

/** Runs one chart's phases; records how it ended instead of throwing; always cleans up. */
async function execute(r: ChartRun) {
  const { state, invocation } = r
  const start = Date.now()
  state.startedAt = start
  try {
    await runPhases(r)
    state.result = 'ok'
  } catch (e) {
    state.result = 'failed'
    state.error = e instanceof DeployError ? e : new DeployError(String((e as Error)?.stack ?? e))
    await reportFailure(r, invocation.cancelled ? undefined : (e as DeployError).phase)
  } finally {
    cleanup(r)
    state.seconds = (Date.now() - start) / 1000
  }
  if (state.result === 'ok') await runHook(r, 'success')
}

/** Prints the error and calls the `fail` hooks; cancelled, only a run that reached a phase gets them. */
async function reportFailure(run: ChartRun, hookPhase: Phase | undefined) {
  const { state, out, invocation } = run
  if (invocation.cancelled) {
    if (state.phase) await runHook(run, 'fail', { error: new DeployError(`cancelled by ${invocation.cancelled}`), failedPhase: state.phase, reason: 'cancelled' })
    return
  }
  out.error(state.error!.message)
  state.error!.reported = true
  await runHook(run, 'fail', { error: state.error, failedPhase: hookPhase ?? state.phase, reason: 'failed' })
}

/** Removes the run's private config directory (its credentials). */
function cleanup({ state }: ChartRun) {
  if (state.privateDir) fs.rmSync(state.privateDir, { recursive: true, force: true })
  state.privateDir = undefined
}

/** The staging chart first (nothing else deploys if it fails), then the rest, `parallel` at a time. */
async function executeAll(runs: ChartRun[], parallel: number, signal: AbortSignal) {
  const queue = [...runs]
  if (queue[0].plan.chart === queue[0].plan.config.STAGING_CHART) {
    const staging = queue.shift()!
    await execute(staging)
    if (staging.state.result !== 'ok') {
      for (const r of queue) r.state.result = 'skipped'
      return
    }
  }
  const worker = async () => {
    for (let r = queue.shift(); r && !signal.aborted; r = queue.shift()) {
      await execute(r)
      r.out.flush(`deploy ${r.plan.chart}`)
    }
  }
  await Promise.all(Array.from({ length: Math.min(parallel, queue.length) }, worker))
}

/** How a chart's run ended, as the summary says it: a refusal (exit 3) is not a failure. */
function resultLabel(plan: ChartPlan, state: ChartState): string {
  if (state.result === 'ok') return plan.dryRun ? 'planned' : 'ok'
  if (state.result === 'failed' && state.error?.exitCode === EXIT.refused) return 'refused'
  return state.result ?? 'not run'
}

function printSummary(log: Output, runs: ChartRun[]) {
  const rows = [['chart', 'phase reached', 'result', 'duration', 'images', 'revision']]
  for (const { plan, state } of runs) {
    rows.push([
      plan.chart,
      state.phase ?? '-',
      resultLabel(plan, state),
      state.seconds === undefined ? '-' : `${state.seconds.toFixed(1)}s`,
      plan.images.map((i) => i.tag).join(',') || '-',
      state.revision === undefined ? '-' : String(state.revision),
    ])
  }
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)))
  log.print(rows.map((r) => r.map((c, i) => c.padEnd(widths[i])).join('  ').trimEnd()).join('\n'))
}

// ---------------------------------------------------------------------------------------
// CLI and main

const USAGE = `usage: deploy.ts [--no-setup] [--build] [--push] [--deploy] [options] <chartname>...

Builds the chart's images and deploys it with helm, like deploy.py. With several charts,
the staging chart goes first and the others follow only if it succeeds.

  --no-setup        skip setup (use your own gcloud/kubectl/docker configuration)
  --build           build the user and hub images that need it
  --push            push what was built (only with --build)
  --deploy          helm upgrade the chart, then wait for its deployments
  --dry-run         announce the commands the run would execute; runs nothing
  --recover         repair a release an interrupted run left pending, then deploy
  --rollback-on-failure
                    when the rollout or a check after the upgrade fails, roll back to the
                    revision live before the run (also ROLLBACK_ON_FAILURE=true)
  --plugin NAME     load plugins/NAME.ts (the repository's, else the one shipped with
                    deploy.ts) or a path; repeatable; also DEPLOY_PLUGINS
  --parallel N      charts deployed at once after the staging chart (default: all, at most 8)
  --changed RANGE   print the charts whose files RANGE changed, one per line
  --json            with --changed: print them as a JSON array (a CI matrix)
  --env-file FILE   read configuration from FILE instead of .env
  --dotenv FILE     the same; prefer it under Node 20, which stops on a missing --env-file itself (exit 9)
  --list            print the charts this repository has
  --verbose         also show read-only probes (registry lookups, helm history)
  --version, --help

Exit codes: 0 success, 1 an external command failed, 2 usage or configuration error
(nothing run), 3 refused by a plugin (its verify hook, or a check such as the staging
promotion), 130/143 interrupted (SIGINT/SIGTERM).`

/**
 * Charts deployed at once after staging when --parallel is not given. helm upgrades wait on
 * the cluster, not on the CPU, so every production chart goes at once; the cap bounds the
 * helm and kubectl clients one job starts (docs/performance.md, P5).
 */
const DEFAULT_PARALLEL = 8

const FLAGS = {
  boolean: ['setup', 'build', 'push', 'deploy', 'dry-run', 'recover', 'rollback-on-failure', 'list', 'verbose', 'version', 'help', 'json'],
  string: ['env-file', 'plugin', 'parallel', 'changed'],
}

function parseArgs(argv: string[]) {
  const unknown: string[] = []
  const args = minimist(argv, {
    ...FLAGS,
    default: { setup: true },
    alias: { 'env-file': 'dotenv' },
    unknown: (a) => (a.startsWith('-') ? (unknown.push(a), false) : true),
  })
  if (unknown.length) throw usageError(`unknown option ${unknown[0]}; see deploy.ts --help`)
  for (const key of ['env-file', 'parallel', 'changed']) {
    if (Array.isArray(args[key])) throw usageError(`--${key} given twice; give it once`)
    if (args[key] === '') throw usageError(`--${key} needs a value`)
  }
  if (args.parallel !== undefined && !/^[1-9]\d*$/.test(args.parallel)) throw usageError(`--parallel ${args.parallel}: give a whole number of charts, 1 or more`)
  return args
}

function version(): string {
  const pkg = fileURLToPath(new URL('./package.json', import.meta.url))
  try {
    return JSON.parse(fs.readFileSync(pkg, 'utf8')).version
  } catch {
    return 'unknown'
  }
}

type Args = ReturnType<typeof parseArgs>

/** The plugins `--plugin` and DEPLOY_PLUGINS name, in that order, each once. */
function pluginNames(args: Args, config: Config): string[] {
  const names = [...[args.plugin ?? []].flat(), ...config.DEPLOY_PLUGINS.split(',')].map((s) => s.trim()).filter(Boolean)
  return [...new Set(names)]
}

/** The chart names asked for, checked, the staging chart first (production charts follow only when it succeeded). */
function chartNames(args: Args, config: Config, charts: string[]): string[] {
  const names = [...new Set(args._.map(String))]
  if (names.length === 0) throw usageError(`no chart name given; valid charts: ${charts.join(', ')}`)
  const unknown = names.filter((n) => !charts.includes(n))
  if (unknown.length) throw usageError(`unknown chart "${unknown[0]}"; valid charts: ${charts.join(', ') || '(none found)'}`)
  return names.sort((a, b) => Number(b === config.STAGING_CHART) - Number(a === config.STAGING_CHART))
}

/** A chart's output and command runner; with several charts, prefixed and (after the first) held. */
function chartTools(invocation: Invocation, request: Request, config: Config, index: number, chart: string, many: boolean): Tools {
  const env: NodeJS.ProcessEnv = { ...config.env }
  const out = many ? new Output(invocation.secrets, `[${chart}] `, index > 0, false) : new Output(invocation.secrets)
  const heartbeatSeconds = process.stdout.isTTY ? 0 : config.heartbeatSeconds
  return { env, out, invocation, exec: makeExec({ env, dryRun: request.dryRun, out, heartbeatSeconds, invocation }) }
}

/** The dry run's header: what is planned, and which plugins would be called. */
function printPlan({ plan, out, helm }: ChartRun) {
  out.print(`# dry run: ${plan.chart} at ${plan.commit.slice(0, 12)}, Helm ${plan.helmMajor}; nothing below is executed`)
  if (plan.rollbackOnFailure && plan.phases.deploy) {
    const rollback = helm.repairArgs(plan.chart, 0, plan.config.helmTimeoutSeconds)
    out.print(`# on failure after the upgrade: helm ${rollback.join(' ').replace(' 0 ', ' <the revision live before> ')}`)
  }
  for (const p of plan.plugins) {
    const hooks = HOOKS.filter((h) => typeof p[h] === 'function')
    out.print(`# plugin ${p.name}: ${hooks.join(', ') || 'no hooks'} (not called in a dry run)`)
  }
}

/** `--changed RANGE`: the charts the range changed, as lines or a JSON array. */
async function printChanged(invocation: Invocation, args: Args, config: Config, charts: string[]) {
  const exec = makeExec({ env: config.env, dryRun: false, out: invocation.log, heartbeatSeconds: 0, invocation })
  const changed = await changedCharts(exec, invocation.log, args.changed, charts)
  process.stdout.write(args.json ? JSON.stringify(changed) + '\n' : changed.map((c) => c + '\n').join(''))
}

/** Preflight for every chart, then the runs; signals cancel the invocation from here on. */
async function deployCharts(invocation: Invocation, args: Args, config: Config, charts: string[]): Promise<number> {
  const { log } = invocation
  const names = chartNames(args, config, charts)
  if (args.push && !args.build) log.warn('--push does nothing without --build (as in deploy.py): add --build to push images')
  const request: Request = {
    phases: { setup: args.setup, build: args.build, push: args.build && args.push, deploy: args.deploy },
    config,
    dryRun: args['dry-run'],
    recover: args.recover,
    rollbackOnFailure: args['rollback-on-failure'] || config.rollbackOnFailure,
    plugins: await loadPlugins(pluginNames(args, config)),
  }
  const tools = names.map((chart, i) => chartTools(invocation, request, config, i, chart, names.length > 1))
  const facts = await checkRepository(request, tools[0])
  const runs = await Promise.all(names.map(async (chart, i): Promise<ChartRun> => {
    const plan = await planChart(chart, request, facts, tools[i])
    return { ...tools[i], plan, state: { timings: {} }, helm: makeHelm(plan.helmMajor, tools[i].exec) }
  }))
  if (request.dryRun) runs.forEach(printPlan)
  const untrap = invocation.trapSignals()
  try {
    await executeAll(runs, Number(args.parallel ?? DEFAULT_PARALLEL), invocation.signal)
  } finally {
    untrap()
    if (invocation.cancelled) for (const r of runs) r.out.flush(`deploy ${r.plan.chart}`)
  }
  if (invocation.cancelled) return invocation.cancelled === 'SIGINT' ? EXIT.sigint : EXIT.sigterm
  printSummary(log, runs)
  const failed = runs.find((r) => r.state.result === 'failed')
  if (runs.length === 1 && failed) throw failed.state.error
  return failed ? failed.state.error!.exitCode : EXIT.ok
}

/** One invocation: returns its exit code; an error ends it with one `ERROR:` line. */
async function main(argv: string[]): Promise<number> {
  const invocation = new Invocation()
  const { log } = invocation
  try {
    const args = parseArgs(argv)
    if (args.help || args.version) {
      log.print(args.help ? USAGE : `deploy.ts ${version()}`)
      return EXIT.ok
    }
    invocation.verbose = args.verbose
    const config = loadConfig(args['env-file'])
    const charts = discoverCharts()
    if (args.list) {
      log.print(charts.join('\n'))
      return EXIT.ok
    }
    // Loaded before signals are trapped, so a signal never finds a command between import and spawn.
    zx ??= await import('zx/core')
    if (args.changed === undefined) return await deployCharts(invocation, args, config, charts)
    await printChanged(invocation, args, config, charts)
    return EXIT.ok
  } catch (e) {
    const err = e instanceof DeployError ? e : new DeployError(String((e as Error)?.stack ?? e))
    const message = invocation.secrets.redact(err.message)
    if (!err.reported) process.stderr.write(`ERROR: ${message}\n`)
    if (CI.github) process.stdout.write(`::error::${message.split('\n')[0]}\n`)
    return err.exitCode
  }
}

function isMain(): boolean {
  if ((import.meta as { main?: boolean }).main) return true
  const entry = process.argv[1]
  return !!entry && path.resolve(entry) === fileURLToPath(import.meta.url)
}

if (isMain()) main(process.argv.slice(2)).then((code) => process.exit(code))
