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
 * plan and state, preflight, setup, build and push, the deploy lock, validate and diff,
 * deploy, rollout, plugins and hooks, orchestration, CLI and main.
 */
import process from 'node:process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { Buffer } from 'node:buffer'
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

const usageError = (message: string) => new DeployError(message, EXIT.usage)

/** A refusal: a RefusedError, or the older form, any error with `exitCode: 3`. */
const isRefusal = (e: unknown) => e instanceof RefusedError || (e as { exitCode?: unknown })?.exitCode === EXIT.refused

/** One line for any thrown value: its message's first line, masked and at most 500 characters; never a stack. */
function errorLine(e: unknown, secrets: Secrets): string {
  const message = (e as Error)?.message ?? e
  return secrets.redact(String(message).trim().split('\n')[0] || String(e), 500)
}

/** A DeployError for anything thrown: an unexpected error becomes one masked line, exit 1. */
const asDeployError = (e: unknown, secrets: Secrets) => (e instanceof DeployError ? e : new DeployError(errorLine(e, secrets)))

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
  LOCK_TIMEOUT: '10m',
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
  lockTimeoutSeconds: number
  /** ROLLBACK_ON_FAILURE (also --rollback-on-failure). */
  rollbackOnFailure: boolean
  /** Everything from .env and the environment, for plugins' own keys. */
  env: Record<string, string | undefined>
}

/** Seconds in a duration such as `600`, `90s`, `10m`, `1h30m`, however large; NaN when it does not parse. */
function durationSeconds(text: string): number {
  const t = text.trim()
  if (/^\d+$/.test(t)) return Number(t)
  const match = /^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$/.exec(t)
  if (!match || !t) return NaN
  const [, h = '0', m = '0', s = '0'] = match
  return Number(h) * 3600 + Number(m) * 60 + Number(s)
}

/** No duration may exceed this: Node's timers overflow past 2^31-1 ms (24.8 days) and then fire at once. */
export const MAX_DURATION_SECONDS = 7 * 24 * 3600

/** Seconds in a duration such as `600`, `90s`, `10m`, `1h30m`; NaN when it does not parse or exceeds 7 days. */
export function parseDuration(text: string): number {
  const s = durationSeconds(text)
  return s <= MAX_DURATION_SECONDS ? s : NaN
}

/** The sane range of each duration key, in seconds (docs/reliability.md, "Bounds"). */
const DURATION_RANGES = {
  HELM_TIMEOUT: [1, 24 * 3600],
  ROLLOUT_TIMEOUT: [1, 24 * 3600],
  HEARTBEAT_INTERVAL: [1, 3600],
  BUILD_TIMEOUT: [1, 24 * 3600],
  HOOK_TIMEOUT: [1, 24 * 3600],
  LOCK_TIMEOUT: [0, 24 * 3600],
} as const

/** `90s`, `5m`, `1h30m`: how a range's ends are shown. */
function formatDuration(seconds: number): string {
  const h = Math.floor(seconds / 3600)
  const m = Math.floor((seconds % 3600) / 60)
  const s = seconds % 60
  return `${h ? `${h}h` : ''}${m ? `${m}m` : ''}${s || (!h && !m) ? `${s}s` : ''}`
}

/**
 * A duration setting checked against its range: one line naming the key, the range and
 * the fix otherwise (a usage error, exit 2; plugins get it as ctx.duration).
 */
function checkDuration(key: string, text: string, [min, max]: readonly [number, number]): number {
  const s = durationSeconds(text)
  const range = `from ${formatDuration(min)} to ${formatDuration(max)}`
  if (Number.isNaN(s)) throw usageError(`${key}=${text}: not a duration; use one ${range}, e.g. 600, 90s, 10m, 1h30m`)
  if (s < min || s > max) throw usageError(`${key}=${text}: out of range; use a duration ${range}`)
  return s
}

/** A chart name is a Helm release name and a namespace: a DNS label (so never an option). */
const CHART_NAME = /^[a-z0-9]([-a-z0-9]{0,51}[a-z0-9])?$/

/**
 * Settings that reach a tool as an argument: each must look like what it names, so none
 * can reach gcloud, docker or helm as an option (docs/reliability.md).
 */
const TOOL_VALUES: Partial<Record<keyof typeof DEFAULTS, [RegExp, string]>> = {
  GKE_CLUSTER: [/^[a-z]([-a-z0-9]*[a-z0-9])?$/, 'a GKE cluster name (lowercase letters, digits, -)'],
  GKE_ZONE: [/^[a-z][-a-z0-9]*$/, 'a zone or region such as us-central1-b'],
  GCP_PROJECT: [/^[a-z][-a-z0-9.:]*$/, 'a project id such as ea-jupyter'],
  DOCKER_USERNAME: [/^[A-Za-z0-9][-A-Za-z0-9._@+]*$/, 'a registry user name'],
  DOCKER_REGISTRY: [/^[A-Za-z0-9][-A-Za-z0-9.]*(:\d+)?$/, 'a registry host such as ghcr.io or 127.0.0.1:5000'],
  USER_IMAGE_PREFIX: [/^[a-z0-9]([-a-z0-9._:]|\/(?!\/))*$/, 'an image name prefix such as earthlabhubops/ea-k8s-user-'],
  HUB_IMAGE_PREFIX: [/^[a-z0-9]([-a-z0-9._:]|\/(?!\/))*$/, 'an image name prefix such as earthlabhubops/ea-k8s-hub-'],
  STAGING_CHART: [CHART_NAME, 'a chart name (lowercase letters, digits, -)'],
  AWS_REGION: [/^[a-z][-a-z0-9]*$/, 'an AWS region such as us-east-1'],
  EKS_CLUSTER: [/^[A-Za-z0-9][-A-Za-z0-9_]*$/, 'an EKS cluster name'],
  AZURE_CLIENT_ID: [/^[A-Za-z0-9][-A-Za-z0-9.]*$/, 'an application (client) id'],
  AZURE_TENANT_ID: [/^[A-Za-z0-9][-A-Za-z0-9.]*$/, 'a tenant id or domain'],
  AKS_RESOURCE_GROUP: [/^[\w.()][-\w.()]*$/, 'an Azure resource group name'],
  AKS_CLUSTER: [/^[A-Za-z0-9][-A-Za-z0-9_]*$/, 'an AKS cluster name'],
  AKS_KUBELOGIN: [/^[a-z]+$/, 'a kubelogin login mode such as azurecli or workloadidentity'],
  ACR_NAME: [/^[A-Za-z0-9]+$/, 'an ACR registry name (letters and digits)'],
  GCLOUD_KEY_FILE: [/^[^-\s]/, 'a file path'],
  DOCKER_PASSWORD_FILE: [/^[^-\s]/, 'a file path'],
  KUBECONFIG_FILE: [/^[^-\s]/, 'a file path'],
  AZURE_FEDERATED_TOKEN_FILE: [/^[^-\s]/, 'a file path'],
  AZURE_CLIENT_CERTIFICATE_PATH: [/^[^-\s]/, 'a file path'],
}

function checkToolValues(values: typeof DEFAULTS) {
  for (const [key, [pattern, what]] of Object.entries(TOOL_VALUES) as [keyof typeof DEFAULTS, [RegExp, string]][]) {
    const value = values[key]
    if (value && !pattern.test(value)) throw usageError(`${key}=${value}: not ${what}; fix it in .env or the environment`)
  }
}

/** Reads a .env file strictly: dotenv skips lines it cannot parse, we name them instead. */
function readEnvFile(file: string, required: boolean): Record<string, string> {
  if (!fs.existsSync(file)) {
    if (required) throw usageError(`${file}: no such env file (check --env-file)`)
    return {}
  }
  if (!fs.statSync(file).isFile()) throw usageError(`${file}: not a file; ${required ? 'give --env-file a file' : 'remove it or make it a KEY=VALUE file'}`)
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

/**
 * Variables that make a shell or a tool run code or read another repository: a `.env`
 * file may not set them (exit 2), and the shell-startup ones (also ENV, which sh sources)
 * never reach a command we start, whoever set them (we start tools, not shell sessions).
 */
const RUNS_CODE = /^(BASH_ENV|SHELLOPTS|BASHOPTS|PS4|PROMPT_COMMAND|BASH_FUNC_.*|GIT_(DIR|WORK_TREE|INDEX_FILE|OBJECT_DIRECTORY|ALTERNATE_OBJECT_DIRECTORIES|CONFIG.*|EXEC_PATH|SSH.*|ASKPASS|EXTERNAL_DIFF|PAGER|EDITOR|CEILING_DIRECTORIES|DISCOVERY_ACROSS_FILESYSTEM|NAMESPACE|REPLACE_REF_BASE|TRACE.*)|LD_PRELOAD|LD_LIBRARY_PATH|LD_AUDIT|DYLD_.*|NODE_OPTIONS|PYTHONSTARTUP|PYTHONPATH|PERL5OPT|PERL5LIB|RUBYOPT|HELM_PLUGINS|KUBECTL_PLUGINS_PATH)$/
const SHELL_STARTUP = /^(BASH_ENV|ENV|SHELLOPTS|BASHOPTS|PS4|PROMPT_COMMAND|BASH_FUNC_.*)$/

export function loadConfig(envFile: string | undefined, environment = process.env): Config {
  const file = envFile ?? '.env'
  const fromFile = readEnvFile(file, envFile !== undefined)
  const runsCode = Object.keys(fromFile).find((k) => RUNS_CODE.test(k))
  if (runsCode) throw usageError(`${file}: ${runsCode} would make the commands deploy.ts starts run other code or read elsewhere; remove it from ${file} (set it in the environment if you really mean it)`)
  const env = { ...fromFile, ...environment }
  const values = { ...DEFAULTS }
  for (const key of Object.keys(DEFAULTS) as (keyof typeof DEFAULTS)[]) {
    // Empty is the default of some keys (DOCKER_REGISTRY: Docker Hub); set empty, any other key is a mistake.
    if (env[key] === '' && DEFAULTS[key] !== '') {
      const where = environment[key] === '' ? 'in the environment' : `in ${file}`
      throw usageError(`${key} is set but empty (${where}): give it a value, or remove it to use the default (${DEFAULTS[key]})`)
    }
    if (env[key] !== undefined && env[key] !== '') values[key] = env[key]!
  }
  checkToolValues(values)
  const seconds = (key: keyof typeof DURATION_RANGES) => checkDuration(key, values[key], DURATION_RANGES[key])
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
    lockTimeoutSeconds: seconds('LOCK_TIMEOUT'),
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
  /** Runs even after SIGINT/SIGTERM, within its timeout (how a cancelled run releases the deploy lock). */
  cleanup?: boolean
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
  /** `helm template` of the chart as release `release` (values and namespace follow). */
  templateArgs(release: string, chartDir: string): string[]
  /** Whether `helm upgrade --install --dry-run=server` exists (--validate's server-side check, --diff). */
  readonly serverDryRun: boolean
  /** `helm rollback` to `revision` (waiting for it), or, with none deployed, uninstall. */
  repairArgs(release: string, revision: number | undefined, timeoutSeconds: number): string[]
  /** The release's revisions, oldest first, or why helm could not list them. */
  history(release: string): Promise<{ revisions: ReleaseRevision[] } | { error: string }>
  /** The revision `helm upgrade` printed. */
  revision(upgradeOutput: string): number | undefined
  /** Whether a failed upgrade's output says another operation holds the release. */
  isPendingRefusal(output: string): boolean
}

/** One problem --validate found: `message` is one line naming the chart, and the file and values path when helm gave them. */
export interface ValidationProblem {
  /** The check that found it: fetching dependencies, `helm lint`, the render, or the API server (dry run). */
  check: 'dependencies' | 'lint' | 'render' | 'server'
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
  /** Release revision after the deploy phase, read from helm's output. */
  revision?: number
  /** --validate: the chart's validation, from the end of the validate phase on (in `fail` too when it found problems). */
  validation?: ChartValidation
  /** --diff: what the deploy would change, from the end of the diff phase on. */
  diff?: ChartDiff
  /** `fail` only: what went wrong, secrets masked (with the failed command and its last output lines when a command failed) and in which phase; `cancelled` on SIGINT/SIGTERM. */
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

// The masking rule (docs/reliability.md): a value is a secret when its key looks secret
// (any length, any type), or when it comes from a secret file and is not ordinary text
// (a boolean, a small number, a short word). Every form a secret commonly takes in output
// is masked too: its lines, base64 (also inside a longer base64 text), URL- and JSON-escaped.

/** Words of a key name (`secretToken`, `DOCKER_PASSWORD`, `client-secret`), lower-cased. */
const keyWords = (key: string) => key.replace(/([a-z0-9])([A-Z])/g, '$1 $2').toLowerCase().split(/[^a-z0-9]+/).filter(Boolean)
const SECRET_WORDS = new Set(['token', 'tokens', 'secret', 'secrets', 'password', 'passwords', 'passwd', 'pass', 'passphrase', 'key', 'keys', 'apikey', 'privatekey', 'auth', 'authorization', 'credential', 'credentials', 'cookie', 'webhook', 'signature', 'salt', 'dsn'])
/** A last word that makes the key name a place or an identity, not the secret itself (`GCLOUD_KEY_FILE`). */
const NOT_SECRET_TAILS = new Set(['file', 'path', 'dir', 'directory', 'name', 'username', 'user', 'type', 'url', 'sock', 'socket', 'timeout', 'interval', 'enabled'])

/** Whether a key's value is a secret by the key's name alone. */
export function secretKey(key: string): boolean {
  const words = keyWords(key)
  if (words.includes('webhook')) return true
  return words.some((w) => SECRET_WORDS.has(w)) && !NOT_SECRET_TAILS.has(words.at(-1)!)
}

/** Text that is never a secret by itself: booleans, null, small numbers (with a unit), short words. */
export function ordinaryValue(text: string): boolean {
  const t = text.trim()
  return t.length < 4 || /^(true|false|yes|no|on|off|null|none|~)$/i.test(t) ||
    /^[-+]?\d{1,6}(\.\d+)?[a-zA-Z]{0,2}$/.test(t) || /^[A-Za-z]{1,10}$/.test(t)
}

/** The parts of base64(text) that do not depend on what surrounds text in the encoded data. */
function base64Cores(text: string): string[] {
  const bytes = new TextEncoder().encode(text)
  const cores: string[] = []
  for (let skip = 0; skip < 3; skip++) {
    const padded = new Uint8Array(skip + bytes.length)
    padded.set(bytes, skip)
    let binary = ''
    for (const b of padded) binary += String.fromCharCode(b)
    const b64 = btoa(binary)
    const core = b64.slice(Math.ceil((8 * skip) / 6), Math.floor((8 * (skip + bytes.length)) / 6))
    if (core.length >= 6) cores.push(core, core.replace(/\+/g, '-').replace(/\//g, '_'))
  }
  return cores
}

const escapeRegExp = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
/** userinfo of any URL (`scheme://user:password@host`). */
const URL_USERINFO = /\b([a-z][a-z0-9+.-]*:\/\/)[^\s/?#@'"<>]+@/gi

/** The secret values of one invocation: each is printed as ***. */
export class Secrets {
  private readonly values = new Set<string>()
  /** Secrets too short to mask inside other words: masked only where they stand alone. */
  private readonly short = new Set<string>()

  /** Registers a secret value: from now on it is printed as ***, in every common encoding. */
  add(value: string | number | boolean | undefined | null) {
    if (value === undefined || value === null) return
    const v = String(value).trim()
    if (!v) return
    if (v.length < 4) {
      this.short.add(v)
      return
    }
    const forms = new Set([v, JSON.stringify(v).slice(1, -1), encodeURIComponent(v), encodeURIComponent(v).replace(/%20/g, '+')])
    // Multi-line secrets (private keys) may be relayed line by line; their armor lines are not secret.
    for (const line of v.split(/\\n|\r?\n/)) {
      const l = line.trim()
      if (l.length >= 4 && !/^-----(BEGIN|END) [A-Z ]+-----$/.test(l)) forms.add(l)
    }
    if (v.length >= 6) for (const core of base64Cores(v)) forms.add(core)
    for (const form of forms) this.values.add(form)
  }

  /** Registers a value that came from a secret file under `key`, by the masking rule. */
  private addValue(key: string, value: unknown) {
    if (value === undefined || value === null) return
    const text = String(value)
    if (secretKey(key) || !ordinaryValue(text)) this.add(text)
  }

  /**
   * Masks every registered secret, and the userinfo of every URL, as ***. With `max`, the
   * result is shortened to at most that many characters after masking, and a cut that
   * ends inside a secret masks the part left.
   */
  redact = (text: string, max?: number): string => {
    let out = String(text).replace(URL_USERINFO, '$1***@')
    for (const s of [...this.values].sort((a, b) => b.length - a.length)) out = out.split(s).join('***')
    for (const s of this.short) out = out.replace(new RegExp(`(?<![A-Za-z0-9])${escapeRegExp(s)}(?![A-Za-z0-9])`, 'g'), '***')
    if (max === undefined || out.length <= max) return out
    let cut = out.slice(0, Math.max(0, max - 1))
    for (const s of this.values) {
      for (let k = Math.min(s.length - 1, cut.length); k >= 3; k--) {
        if (cut.endsWith(s.slice(0, k))) {
          cut = cut.slice(0, cut.length - k) + '***'
          break
        }
      }
    }
    return `${cut}…`
  }

  /** Registers the values of .env and environment keys that look secret, and every URL's password. */
  addFromEnv(env: Record<string, string | undefined>) {
    for (const [key, value] of Object.entries(env)) {
      if (!value) continue
      if (secretKey(key)) this.add(value)
      for (const m of value.matchAll(/[a-z][a-z0-9+.-]*:\/\/([^\s/?#@]+)@/gi)) this.addUserinfo(m[1])
    }
  }

  /** A URL's `user:password`: the password (as written and decoded) is a secret. */
  private addUserinfo(userinfo: string) {
    const password = userinfo.includes(':') ? userinfo.slice(userinfo.indexOf(':') + 1) : userinfo
    this.add(password)
    try {
      this.add(decodeURIComponent(password))
    } catch {
      // Not percent-encoded.
    }
  }

  /** Registers every leaf of a YAML secret file by the masking rule: its value, and a plain scalar as written (`12345678901234567890`). */
  addYaml(text: string) {
    const doc = YAML.parseDocument(text, { logLevel: 'silent' })
    if (doc.errors.length) return this.addLines(text)
    YAML.visit(doc, {
      Scalar: (key, node, ancestors) => {
        if (key === 'key') return
        const pair = [...ancestors].reverse().find((a) => YAML.isPair(a)) as { key?: unknown } | undefined
        const name = pair && YAML.isScalar(pair.key) ? String(pair.key.value) : ''
        this.addValue(name, node.value)
        if (node.type === 'PLAIN' && node.range) this.addValue(name, text.slice(node.range[0], node.range[1]))
      },
    })
  }

  /**
   * Registers the secrets of a file that did not parse, line by line: the value of each
   * `key: value` (or `"key": "value",`) line by the masking rule, any other line as a value.
   */
  addLines(text: string) {
    for (const line of text.split(/\r?\n/)) {
      const m = /^\s*(?:-\s+)?(?:["']?([\w.-]+)["']?\s*:\s+)?(.*?)\s*$/.exec(line)
      if (!m || !m[2]) continue
      this.addValue(m[1] ?? '', m[2])
      this.addValue(m[1] ?? '', m[2].replace(/^[[{"'|>\s]+|[\]}"',\s]+$/g, ''))
    }
  }
}

/** A secret file's text, or undefined when it is missing, unreadable or still encrypted. */
function readIfPlain(file: string): string | undefined {
  try {
    const bytes = fs.readFileSync(file)
    return bytes.subarray(0, 9).toString('latin1') === '\0GITCRYPT' ? undefined : bytes.toString('utf8')
  } catch {
    return undefined
  }
}

/**
 * Registers every secret the charts' run can meet, before a plugin loads or a command
 * starts: every provider's credential files (by their own masks) and the charts' values.
 */
function collectFileSecrets(secrets: Secrets, config: Config, charts: string[]) {
  const files = [...Object.values(CLUSTERS), ...Object.values(REGISTRIES), ...Object.values(LOGINS).flat()].flatMap((p) => p.files)
  for (const file of new Set(files)) {
    const text = config[file.key] ? readIfPlain(config[file.key])?.trim() : undefined
    if (!text) continue
    let parts: Array<string | undefined> | undefined
    try {
      parts = file.masks?.(text) ?? [text]
    } catch {
      parts = undefined
    }
    for (const part of parts ?? []) secrets.add(part)
    // A credential file that does not parse (JSON is YAML too): its lines, by the masking rule.
    if (file.masks && YAML.parseDocument(text, { logLevel: 'silent' }).errors.length) secrets.addLines(text)
  }
  for (const chart of charts) {
    const values = readIfPlain(`secrets/${chart}.yaml`)
    if (values) secrets.addYaml(values)
  }
}

/** Reads a secret file, refusing one that git-crypt has not unlocked. */
function readSecretFile(file: string, what: string, fix: string): string {
  if (!fs.existsSync(file)) throw usageError(`${file}: ${what} not found; ${fix}`)
  if (fs.statSync(file).isDirectory()) throw usageError(`${file}: ${what} is a directory, not a file; ${fix}`)
  const bytes = fs.readFileSync(file)
  if (bytes.subarray(0, 9).toString('latin1') === '\0GITCRYPT') {
    throw usageError(`${file} is encrypted: run \`git-crypt unlock\` first`)
  }
  return bytes.toString('utf8')
}

/** Refuses a secrets YAML file that does not parse, naming the file and line, never its content. */
function checkSecretsYaml(file: string, text: string) {
  const error = YAML.parseDocument(text, { logLevel: 'silent' }).errors[0]
  if (!error) return
  const line = error.linePos?.[0]?.line
  const what = error.code.toLowerCase().replace(/_/g, ' ')
  throw usageError(`${file}${line ? `:${line}` : ''}: not valid YAML (${what}); fix the file (its content is not shown: it holds secrets)`)
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
  /** `stdout: 'stderr'` keeps stdout for one JSON document (--json). */
  constructor(readonly secrets: Secrets, readonly prefix = '', hold = false, readonly ciGroups = true, readonly stdout: 'stdout' | 'stderr' = 'stdout') {
    if (hold) this.held = []
  }

  write(stream: 'stdout' | 'stderr', text: string, prefix = '') {
    const lines = this.secrets.redact(text).split('\n')
    const last = lines.pop()
    const out = lines.map((l) => `${this.prefix}${prefix}${l}\n`).join('') + (last ? `${this.prefix}${prefix}${last}` : '')
    const to = stream === 'stdout' ? this.stdout : stream
    if (this.held) this.held.push([to, out])
    else process[to].write(out)
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
    process[this.stdout].write(this.secrets.redact(`${this.prefix}${text}\n`))
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
  /** Private credentials dirs of runs not cleaned up yet: removed at exit, however the process ends. */
  readonly privateDirs = new Set<string>()

  cancel(signal: NodeJS.Signals) {
    if (this.cancelled) return
    this.cancelled = signal
    this.log.error(`${signal} received: stopping`)
    this.controller.abort(new DeployError(`cancelled by ${signal}`))
  }

  /**
   * The last resort: an error nobody caught (a plugin's promise it never awaited, a
   * callback that threw) ends the invocation with one masked line and exit 1, never a
   * stack trace. Running commands are stopped; the credentials dirs are removed at exit.
   */
  trapCrashes() {
    process.once('exit', () => {
      for (const dir of this.privateDirs) fs.rmSync(dir, { recursive: true, force: true })
    })
    const crash = (e: unknown) => {
      process.stderr.write(`ERROR: unexpected error (an unawaited promise or a callback, e.g. in a plugin): ${errorLine(e, this.secrets)}\n`)
      this.controller.abort(new DeployError('stopped by an unexpected error'))
      process.exit(EXIT.failed)
    }
    process.on('uncaughtException', crash)
    process.on('unhandledRejection', crash)
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

/** The bound of a command that has none of its own (plugins' commands, for instance). */
const DEFAULT_COMMAND_TIMEOUT = '30m'
/** How long a command that outlived its limit gets to stop on SIGTERM before SIGKILL. */
const KILL_GRACE_SECONDS = 10

export function makeExec({ env: given, dryRun, out, heartbeatSeconds, invocation }: ExecSettings): Exec {
  const { redact } = invocation.secrets
  return async (tool, args, options = {}) => {
    // zx starts each tool through bash: nothing may make that shell run code first. Read
    // at each call, since setup adds the private config dirs to the same env object.
    const env = Object.fromEntries(Object.entries(given).filter(([k]) => !SHELL_STARTUP.test(k)))
    const { capture = false, show = 'announce', prefix = '' } = options
    const line = `${tool} ${args.join(' ')}`
    // A dry run announces every command it skips exactly as a real run announces the ones it runs.
    const announce = () => out.info(`${capture ? 'Executing and capturing' : 'Executing'} ${line}`)
    // Every command is bounded: by its own limit, or by DEFAULT_COMMAND_TIMEOUT.
    const limit = parseDuration(options.timeout ?? DEFAULT_COMMAND_TIMEOUT)
    if (!(limit > 0)) throw new DeployError(`${tool}: timeout ${options.timeout} is not a duration from 1s to 7 days (e.g. 90s, 10m, 1h)`)
    if (dryRun && !options.readOnly) {
      announce()
      return { stdout: '', stderr: '', exitCode: 0 }
    }
    if (invocation.signal.aborted && !options.cleanup) throw invocation.signal.reason
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
      timeout: `${limit}s`,
      log: relay(out, prefix, beat.reset) as never,
    })`${tool} ${args}`
    const release = options.cleanup ? () => undefined : stopOnCancel(invocation, p.pid)
    // zx sends SIGTERM at the limit; a child that ignores it is killed KILL_GRACE_SECONDS later.
    const hardStop = setTimeout(() => {
      try {
        if (p.pid) process.kill(p.pid, 'SIGKILL')
      } catch {
        // Already gone.
      }
    }, (limit + KILL_GRACE_SECONDS) * 1000)
    const done = await p.finally(() => {
      clearTimeout(hardStop)
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
  const why = done.signal ? `was stopped by ${done.signal} (limit ${options.timeout ?? DEFAULT_COMMAND_TIMEOUT})` : `exited with ${done.exitCode}`
  const detail = options.capture ? `: ${tail(done.stderr || done.stdout, 1)}` : ''
  // Masked before it is shortened, so the cut cannot leave part of a secret.
  return new DeployError(`${redact(line, 100)} ${redact(`${why}${detail}`)}`, EXIT.failed, {
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
    template: (release: string, dir: string) => ['template', dir, '--name', release],
    serverDryRun: false,
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
    template: (release: string, dir: string) => ['template', release, dir],
    serverDryRun: true,
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
    templateArgs: (release, dir) => [...v.template(release, dir)],
    serverDryRun: v.serverDryRun,
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
  const r = await exec('helm', ['version', '--client', '--short'], { capture: true, nothrow: true, show: 'probe', readOnly: true, timeout: '60s' })
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
  // -z: file names verbatim (git quotes names outside ASCII otherwise, which then match no dir).
  const args = ['log', '-z', '--pretty=format:%h', '--name-only', '--cc', '--', ...dirs]
  const { stdout } = await exec('git', args, { capture: true, show: 'silent', readOnly: true, timeout: GIT_TIMEOUT })
  // Records: `<hash>\n<file>\0<file>\0...`, separated by an empty field.
  let hash = ''
  let header = true
  for (const field of stdout.split('\0')) {
    if (!field) {
      header = true
      continue
    }
    let file = field
    if (header) {
      const [first, ...rest] = field.split('\n')
      hash = first
      file = rest.join('\n')
      header = false
    }
    for (const [dir, hashes] of found) {
      if (file.startsWith(`${dir}/`) && hashes.at(-1) !== hash && hashes.length < 5) hashes.push(hash)
    }
  }
  return found
}

/** Local git commands get this long (a huge repository, a stuck filesystem). */
const GIT_TIMEOUT = '2m'

/** A revision or range (`main..HEAD`, `a1b2c3...d4e5f6`): never an option, no spaces. */
const COMMIT_RANGE = /^[\w@{}^~:/.-]+$/

/** Refuses a range that is not one, naming where it came from; git also gets --end-of-options. */
function checkRange(range: string, source: string): string {
  if (!COMMIT_RANGE.test(range) || range.startsWith('-')) {
    throw usageError(`${source}=${range}: not a commit range; give one such as main..HEAD or a1b2c3d...e4f5a6b`)
  }
  return range
}

/** The commit range CI built: Travis's variable, or the before..after of a GitHub push. */
function commitRange(env: NodeJS.ProcessEnv, out: Logger): string | undefined {
  if (env.TRAVIS_COMMIT_RANGE) return checkRange(env.TRAVIS_COMMIT_RANGE, 'TRAVIS_COMMIT_RANGE')
  if (env.GITHUB_EVENT_NAME === 'push' && env.GITHUB_EVENT_PATH) {
    let event: { before?: unknown; after?: unknown }
    try {
      event = JSON.parse(fs.readFileSync(env.GITHUB_EVENT_PATH, 'utf8'))
    } catch {
      out.warn(`GITHUB_EVENT_PATH=${env.GITHUB_EVENT_PATH}: not a readable JSON event, so the pushed range is unknown: an image is rebuilt only when its tag is missing from the registry`)
      return undefined
    }
    if (event && typeof event.before === 'string' && typeof event.after === 'string' && event.before && event.after) {
      return checkRange(`${event.before}..${event.after}`, 'GITHUB_EVENT_PATH before..after')
    }
  }
  return undefined
}

/**
 * The files `range` changed (below `paths`, if given), verbatim (-z); undefined, after a
 * warning ending in `fallback`, when git cannot read the range (a force push or a first build).
 */
async function changedFiles(exec: Exec, out: Output, range: string, fallback: string, paths: string[] = []): Promise<string[] | undefined> {
  const only = paths.length ? ['--', ...paths] : []
  const diff = await exec('git', ['diff', '--name-only', '-z', '--end-of-options', range, ...only], { capture: true, nothrow: true, show: 'silent', readOnly: true, timeout: GIT_TIMEOUT })
  if (diff.exitCode === 0) return diff.stdout.split('\0').filter(Boolean)
  // Only a range git does not know means "everything changed"; any other complaint is git's own.
  if (!/bad revision|unknown revision|ambiguous argument|invalid (revision|object|symmetric)|bad object/i.test(diff.stderr)) {
    // Outside a repository git diff only prints its usage: rev-parse says why.
    const why = await exec('git', ['rev-parse', 'HEAD'], { capture: true, nothrow: true, show: 'silent', readOnly: true, timeout: GIT_TIMEOUT })
    throw usageError(gitProblem(why.exitCode !== 0 ? why.stderr : diff.stderr))
  }
  out.warn(`commit range ${range} is not valid here (force push or first build?): ${fallback}`)
  return undefined
}

/**
 * Dirs with uncommitted changes (untracked files included, ignored ones not): what the run
 * would build or deploy from them is not what the commit says.
 */
async function dirtyDirs(exec: Exec, dirs: string[], ignore?: RegExp): Promise<string[]> {
  if (dirs.length === 0) return []
  const args = ['status', '--porcelain=v1', '-z', '--untracked-files=all', '--', ...dirs]
  const { stdout } = await exec('git', args, { capture: true, show: 'silent', readOnly: true, timeout: GIT_TIMEOUT })
  // Entries: `XY <path>`; a rename or copy adds its source as the next field.
  const fields = stdout.split('\0')
  const paths: string[] = []
  for (let i = 0; i < fields.length; i++) {
    if (fields[i].length < 4) continue
    paths.push(fields[i].slice(3))
    if (/[RC]/.test(fields[i][0])) paths.push(fields[++i] ?? '')
  }
  const changed = paths.filter((p) => !ignore?.test(p))
  return dirs.filter((dir) => changed.some((p) => p === dir || p.startsWith(`${dir}/`)))
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
  /** secrets/<chart>.yaml: read (always for a deploy or a diff), or left out of a validation. */
  readonly secretsFile?: ChartValidation['secrets']
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
  /** The chart's deploy lock, while this run holds it. */
  lease?: HeldLease
  /** How the run ended, for the multi-chart summary. */
  result?: 'ok' | 'failed' | 'skipped'
  error?: DeployError
  /** When the run started (ms since the epoch) and how long it took. */
  startedAt?: number
  seconds?: number
  dependenciesReady?: boolean
  /** The server-side dry run, shared by validate and diff. */
  preview?: Promise<Preview>
  validation?: ChartValidation
  diff?: ChartDiff
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
    ? fs.readdirSync('hub-charts').filter((d) => CHART_NAME.test(d) && fs.existsSync(`hub-charts/${d}/Chart.yaml`)).sort()
    : []
  return fs.existsSync('monitoring/Chart.yaml') ? [...hubs, 'monitoring'] : hubs
}

/** Why no chart was found here: most often deploy.ts runs in a subdirectory of the repository. */
function noChartsHere(): string {
  for (let dir = path.resolve('..'); ; dir = path.dirname(dir)) {
    if (fs.existsSync(path.join(dir, 'hub-charts'))) return `no charts in ${process.cwd()}: run deploy.ts from the repository root, ${dir}`
    if (dir === path.dirname(dir)) break
  }
  return `no charts in ${process.cwd()} (no hub-charts/<hub>/Chart.yaml, no monitoring/Chart.yaml): run deploy.ts from the root of the ops repository`
}

function checkChartYaml(chart: string) {
  const file = `${chartDir(chart)}/Chart.yaml`
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

/** Reads a secret file the run needs; a dry run notes a missing or locked one and goes on. */
function secretFileFor(request: Request, out: Output, file: string, what: string, fix: string, check?: (text: string) => void): string | undefined {
  try {
    const text = readSecretFile(file, what, fix)
    check?.(text)
    return text
  } catch (e) {
    if (!request.dryRun) throw e
    out.print(`# ${(e as Error).message} (a real run stops here, exit 2)`)
    return undefined
  }
}

/** The git repository and its commit; a shallow clone would give wrong image tags. */
async function checkGit(request: Request, { exec, env }: Tools): Promise<string> {
  if (!onPath('git', env)) throw usageError(`git not found on PATH: ${INSTALL_HINTS.git}`)
  const rev = await exec('git', ['rev-parse', '--is-shallow-repository', 'HEAD'], { capture: true, nothrow: true, show: 'silent', readOnly: true, timeout: GIT_TIMEOUT })
  if (rev.exitCode !== 0) throw usageError(gitProblem(rev.stderr))
  const [shallow, commit] = rev.stdout.trim().split('\n')
  if (shallow === 'true' && (request.phases.build || request.phases.deploy || request.phases.diff)) {
    throw usageError('this is a shallow clone, so image tags would be wrong: run `git fetch --unshallow` (in CI, clone with full depth)')
  }
  return commit
}

/** Why git cannot read the repository here, in git's own words, with the fix. */
function gitProblem(stderr: string): string {
  const said = stderr.split('\n').map((l) => l.replace(/^(fatal|error): /, '').trim()).filter(Boolean)
  const first = said[0] ?? 'git rev-parse failed'
  const where = process.cwd()
  if (/dubious ownership/.test(first)) {
    return `git refuses ${where}: ${first} (owned by another user); if you trust it, run \`git config --global --add safe.directory ${where}\``
  }
  if (/not a git repository/i.test(first)) return `${where} is not a git repository (git: ${first}): run deploy.ts from the root of the ops repository`
  if (/ambiguous argument 'HEAD'|unknown revision/.test(first)) return `${where} is a git repository without commits: commit the charts first`
  return `git cannot read the repository in ${where}: ${first}`
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

/** Checks that hold for the whole invocation: git and the repository, setup's providers and files, the tools, Helm's version. */
async function checkRepository(request: Request, tools: Tools): Promise<RepositoryFacts> {
  YAML ??= (await import('yaml')).default
  const commit = await checkGit(request, tools)
  pickProvider(CLUSTERS, 'CLUSTER_PROVIDER', request.config)
  pickProvider(REGISTRIES, 'REGISTRY_PROVIDER', request.config)
  if (request.phases.build) commitRange(tools.env, tools.out)
  const setupPlan = request.phases.setup ? planSetup(request, tools) : undefined
  if (!request.dryRun) checkTools(request, tools.env, setupPlan)
  const major = await helmMajorVersion(tools.exec, tools.env)
  const { phases } = request
  if (!major) {
    if (request.dryRun) tools.out.print('# helm not found: planning for Helm 3')
    else if (phases.setup || phases.deploy || phases.validate || phases.diff) throw usageError('could not tell the Helm version from `helm version`: install Helm 2 or 3')
  }
  if (major === 2 && setupPlan && !setupPlan.cluster.helm2) {
    throw usageError(`CLUSTER_PROVIDER=${request.config.CLUSTER_PROVIDER} needs Helm 3: Helm 2's tiller is set up only on gke, as the original did (https://helm.sh/docs/intro/install/)`)
  }
  if (request.recover && major === 2 && !request.dryRun) throw usageError('--recover needs Helm 3 (Helm 2 releases are repaired through tiller): drop --recover')
  if (phases.diff && major && !HELM_VERSIONS[major].serverDryRun) throw usageError('--diff needs Helm 3 (it reads the release with `helm status -o json` and a server-side dry run): install Helm 3, or use --validate')
  if (phases.diff && !request.dryRun && noClusterAccess(phases, tools.env)) throw usageError('--diff needs read access to the cluster: drop --no-setup, or point KUBECONFIG at a kubeconfig')
  return { commit, helmMajor: major ?? 3, setupPlan }
}

/** The chart's own checks (its Chart.yaml, its secret values, its image tags), giving its plan. */
async function planChart(chart: string, request: Request, facts: RepositoryFacts, tools: Tools): Promise<ChartPlan> {
  checkChartYaml(chart)
  const { phases } = request
  // Its values were registered as secrets before anything ran (collectFileSecrets); here it is checked.
  const { secretsFile } = chartSecrets(chart, request, tools.out)
  const needsImages = phases.build || phases.deploy || phases.validate || phases.diff
  const { images, history } = needsImages ? await chartImages(tools.exec, chart, request.config) : { images: [], history: new Map() }
  await checkCommitted(chart, request, images, tools)
  return { ...request, ...facts, chart, chartDir: chartDir(chart), images, history, secretsFile }
}

/**
 * secrets/<chart>.yaml as the run needs it: required for a deploy and a diff (which would
 * otherwise compare against a release rendered with it), optional for a validation.
 */
function chartSecrets(chart: string, request: Request, out: Output): { secretsFile?: ChartValidation['secrets'] } {
  const file = `secrets/${chart}.yaml`
  const what = 'the chart\'s secret values file'
  const fix = `create it with the chart's secret values and encrypt it with git-crypt (docs/adding-a-hub.md, step 3)`
  const check = (text: string) => checkSecretsYaml(file, text)
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

/**
 * What the run builds (image dirs) and deploys (the chart dir, its secret values) must be
 * what the commit says: uncommitted or untracked files there stop the run (a dry run notes them).
 */
async function checkCommitted(chart: string, request: Request, images: ImageInfo[], { exec, out }: Tools) {
  const dirs = [
    ...(request.phases.build ? images.map((i) => i.dir) : []),
    ...(request.phases.deploy ? [chartDir(chart), `secrets/${chart}.yaml`] : []),
  ]
  // helm dep up (re)writes the chart's charts/ and Chart.lock from Chart.yaml: not a change of ours.
  const generated = new RegExp(`^${chartDir(chart)}/(charts/|Chart\\.lock$)`)
  const [dirty] = await dirtyDirs(exec, dirs, generated)
  if (!dirty) return
  const image = images.some((i) => i.dir === dirty)
  const what = image ? `${request.phases.push ? 'built and pushed' : 'built'} under the committed tag` : 'deployed as if committed'
  const error = usageError(`${dirty} has uncommitted or untracked changes that would be ${what}: commit or stash them first`)
  if (!request.dryRun) throw error
  out.print(`# ${error.message} (a real run stops here, exit 2)`)
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
    const fix = `create it, set ${file.key} in .env to where it is, or run with --no-setup`
    const text = secretFileFor(request, out, config[file.key], `${file.key} (${file.what})`, fix, (content) => {
      if (!content.trim()) throw usageError(`${config[file.key]}: ${file.key} (${file.what}) is empty; put the credential in it`)
      if (file.key === 'GCLOUD_KEY_FILE' && credentialType(content) === undefined) {
        throw usageError(`${config[file.key]}: ${file.key} (${file.what}) is not valid JSON; download it again (its content is not shown: it holds secrets)`)
      }
    })?.trim()
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
  let dir: string
  try {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'deploy-'))
  } catch (e) {
    throw new DeployError(`cannot create the private credentials directory in ${os.tmpdir()} (${(e as { code?: string }).code ?? String(e)}): set TMPDIR to a writable directory`)
  }
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
  invocation.privateDirs.add(state.privateDir)
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
  if (r.plan.images.length === 0) {
    r.out.print(`no user-images/${r.plan.chart} or hub-images/${r.plan.chart}: nothing to build`)
    return
  }
  const range = commitRange(r.env, r.out)
  const dirs = r.plan.images.map((i) => i.dir)
  const touched = range && dirs.length ? await touchedDirs(r.exec, r.out, range, dirs) : undefined
  for (const image of r.plan.images) await buildImage(r, image, touched, fire)
}

// ---------------------------------------------------------------------------------------
// The deploy lock: one run changes a chart's release at a time (docs/reliability.md, "The lock").
//
// A lease: the ConfigMap deploy-lock in the release's namespace, created by the run that
// deploys (creation is atomic: a second run gets AlreadyExists), renewed every
// RENEW_SECONDS while it runs, marked released when it ends. Every write after the
// creation names the resourceVersion it read, so two runs can never both win a takeover.

/** A holder that has not renewed its lease for this long (by the waiting run's clock) is gone. */
const LEASE_SECONDS = 120
const RENEW_SECONDS = 20
const LOCK_POLL_SECONDS = 5
const LOCK_NAME = 'deploy-lock'

interface LeaseData {
  holder: string
  commit: string
  acquired: string
  renewed: string
  released: string
}

interface HeldLease {
  resourceVersion?: string
  data: LeaseData
  timer?: NodeJS.Timeout
  renewing?: Promise<unknown>
  lost?: boolean
}

/** Who this run is, as the lease (and a waiting run's message) names it. */
function holderName(env: NodeJS.ProcessEnv): string {
  const github = env.GITHUB_RUN_ID && env.GITHUB_REPOSITORY ? `${env.GITHUB_SERVER_URL ?? 'https://github.com'}/${env.GITHUB_REPOSITORY}/actions/runs/${env.GITHUB_RUN_ID}` : undefined
  const where = env.TRAVIS_JOB_WEB_URL ?? github ?? `${os.userInfo().username}@${os.hostname()}`
  return `${where} (pid ${process.pid})`
}

function leaseObject(chart: string, data: LeaseData, resourceVersion?: string): string {
  return JSON.stringify({
    apiVersion: 'v1',
    kind: 'ConfigMap',
    metadata: { name: LOCK_NAME, namespace: chart, labels: { 'app.kubernetes.io/managed-by': 'deploy.ts' }, ...(resourceVersion ? { resourceVersion } : {}) },
    data,
  })
}

const lockCommand = { capture: true, nothrow: true, show: 'probe', timeout: '60s' } as const

/** kubectl create or replace of the lease: the resourceVersion it got, or kubectl's error line. */
async function writeLease({ plan, exec }: ChartRun, verb: 'create' | 'replace', data: LeaseData, resourceVersion?: string, cleanup = false) {
  const input = leaseObject(plan.chart, data, resourceVersion)
  const r = await exec('kubectl', [verb, '--namespace', plan.chart, '-o', 'json', '-f', '-'], { ...lockCommand, input, cleanup })
  if (r.exitCode !== 0) return { error: tail(r.stderr || r.stdout, 1) || `kubectl ${verb} exited with ${r.exitCode}` }
  let version: string | undefined
  try {
    version = JSON.parse(r.stdout).metadata?.resourceVersion
  } catch {
    // A kubectl wrapper printed something else: renewals then go unconditional.
  }
  return { resourceVersion: version }
}

async function readLease({ plan, exec }: ChartRun): Promise<{ data: Partial<LeaseData>; resourceVersion: string } | undefined> {
  const r = await exec('kubectl', ['get', 'configmap', LOCK_NAME, '--namespace', plan.chart, '-o', 'json', '--ignore-not-found'], { ...lockCommand, readOnly: true })
  const unreadable = (why: string) => new DeployError(`could not read the deploy lock configmap/${LOCK_NAME} in namespace ${plan.chart}: ${why}`)
  if (r.exitCode !== 0) throw unreadable(tail(r.stderr, 1))
  if (!r.stdout.trim()) return undefined
  try {
    const object = JSON.parse(r.stdout)
    return { data: object.data ?? {}, resourceVersion: String(object.metadata?.resourceVersion ?? '') }
  } catch {
    throw unreadable('kubectl did not print JSON')
  }
}

const ago = (iso: string | undefined) => {
  const ms = Date.now() - Date.parse(iso ?? '')
  return Number.isFinite(ms) ? `${Math.max(0, Math.round(ms / 1000))}s ago` : 'at an unknown time'
}

/**
 * Takes the chart's lease, waiting up to LOCK_TIMEOUT while another run holds it. A lease
 * that is released, or that nobody renewed for LEASE_SECONDS, is taken over.
 */
async function acquireLock(r: ChartRun) {
  const { plan, out, exec, env, invocation } = r
  const { chart, config } = plan
  if (plan.dryRun) {
    out.print(`# the deploy takes the lock configmap/${LOCK_NAME} in namespace ${chart} (waiting up to LOCK_TIMEOUT=${config.LOCK_TIMEOUT} for another run)`)
    return
  }
  const now = () => new Date().toISOString()
  const data: LeaseData = { holder: holderName(env), commit: plan.commit, acquired: now(), renewed: now(), released: 'false' }
  const deadline = Date.now() + config.lockTimeoutSeconds * 1000
  let seen: { resourceVersion: string; since: number } | undefined
  let lastNote = 0
  for (;;) {
    data.acquired = data.renewed = now()
    const created = await writeLease(r, 'create', data)
    if (!created.error) return holdLock(r, data, created.resourceVersion)
    if (/namespaces? "[^"]*" not found/.test(created.error)) {
      // A first install: the namespace helm would create holds the lease from the start.
      const namespace = JSON.stringify({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: chart } })
      const ns = await exec('kubectl', ['create', '-o', 'name', '-f', '-'], { ...lockCommand, input: namespace })
      if (ns.exitCode !== 0 && !/AlreadyExists/.test(ns.stderr)) throw new DeployError(`could not create namespace ${chart} for the deploy lock: ${tail(ns.stderr, 1)}`)
      continue
    }
    if (!/AlreadyExists/.test(created.error)) throw new DeployError(`could not take the deploy lock configmap/${LOCK_NAME} in namespace ${chart}: ${created.error}`)
    const lease = await readLease(r)
    if (!lease) continue
    if (lease.resourceVersion !== seen?.resourceVersion) seen = { resourceVersion: lease.resourceVersion, since: Date.now() }
    // Gone: unchanged for a lease's length as we saw it, or renewed long ago by its own clock.
    const gone = Date.now() - seen.since >= LEASE_SECONDS * 1000 || Date.now() - Date.parse(lease.data.renewed ?? '') > 10 * LEASE_SECONDS * 1000
    if (lease.data.released === 'true' || gone) {
      const taken = await writeLease(r, 'replace', data, lease.resourceVersion)
      if (!taken.error) {
        if (lease.data.released !== 'true') out.warn(`took over the deploy lock of ${chart} from ${lease.data.holder ?? 'an unknown run'}, which stopped renewing it (last renewed ${ago(lease.data.renewed)})`)
        return holdLock(r, data, taken.resourceVersion)
      }
      if (!/Conflict|modified/.test(taken.error)) throw new DeployError(`could not take the deploy lock configmap/${LOCK_NAME} in namespace ${chart}: ${taken.error}`)
      continue
    }
    const who = `${lease.data.holder ?? 'an unknown run'} (commit ${(lease.data.commit ?? '?').slice(0, 12)}, started ${ago(lease.data.acquired)}, lease renewed ${ago(lease.data.renewed)})`
    if (Date.now() >= deadline) {
      throw new DeployError(`${chart} is being deployed by ${who}: not deploying alongside it after waiting LOCK_TIMEOUT=${config.LOCK_TIMEOUT}; rerun when it has finished, or raise LOCK_TIMEOUT`)
    }
    if (!lastNote || Date.now() - lastNote >= config.heartbeatSeconds * 1000) {
      out.live(`... waiting for the deploy lock of ${chart}, held by ${who}; waiting up to LOCK_TIMEOUT=${config.LOCK_TIMEOUT}`)
      lastNote = Date.now()
    }
    await abortableSleep(invocation.signal)(Math.min(LOCK_POLL_SECONDS * 1000, Math.max(0, deadline - Date.now())))
  }
}

/** Holds the lease: renewed every RENEW_SECONDS until released. */
function holdLock(r: ChartRun, data: LeaseData, resourceVersion: string | undefined) {
  const lease: HeldLease = { data, resourceVersion }
  r.state.lease = lease
  const renew = async () => {
    data.renewed = new Date().toISOString()
    const w = await writeLease(r, 'replace', data, lease.resourceVersion)
    if (!w.error) lease.resourceVersion = w.resourceVersion
    else if (!lease.lost) {
      lease.lost = /Conflict|modified|not found/.test(w.error)
      r.out.warn(`could not renew the deploy lock of ${r.plan.chart} (${w.error})${lease.lost ? ': another run took it over; this run goes on, but check the release' : ''}`)
    }
  }
  lease.timer = setInterval(() => {
    lease.renewing ??= renew().catch(() => undefined).finally(() => (lease.renewing = undefined))
  }, RENEW_SECONDS * 1000)
}

/** Marks the lease released, if it is still ours (the write names our resourceVersion); also after a cancel. */
async function releaseLock(r: ChartRun) {
  const lease = r.state.lease
  r.state.lease = undefined
  if (!lease) return
  clearInterval(lease.timer)
  await lease.renewing
  if (lease.lost) return
  const w = await writeLease(r, 'replace', { ...lease.data, renewed: new Date().toISOString(), released: 'true' }, lease.resourceVersion, true)
  if (w.error) r.out.warn(`could not release the deploy lock of ${r.plan.chart} (${w.error}): the next run takes it over ${LEASE_SECONDS}s after its last renewal`)
}

// ---------------------------------------------------------------------------------------
// Validate and diff: what a deploy would change, checked and shown before it runs
// (docs/workflow.md). Read-only for the cluster: helm lint/template, and with cluster access
// `helm status` and `helm upgrade --install --dry-run=server`, which helm runs without writing.

/** A Kubernetes object of a rendered manifest, identified by group, kind, namespace and name. */
interface ManifestObject {
  key: string
  kind: string
  namespace: string
  name: string
  body: Record<string, unknown>
}

/** Kinds that live outside namespaces: shown as `Kind/name`. */
const CLUSTER_SCOPED = new Set([
  'Namespace', 'Node', 'PersistentVolume', 'StorageClass', 'PriorityClass', 'ClusterRole', 'ClusterRoleBinding',
  'CustomResourceDefinition', 'IngressClass', 'MutatingWebhookConfiguration', 'ValidatingWebhookConfiguration',
  'APIService', 'RuntimeClass', 'PodSecurityPolicy', 'CSIDriver', 'VolumeSnapshotClass',
])

/** `Kind/namespace/name`, or `Kind/name` for a cluster-scoped object. */
function objectId(o: Pick<ManifestObject, 'kind' | 'namespace' | 'name'>): string {
  return o.namespace ? `${o.kind}/${o.namespace}/${o.name}` : `${o.kind}/${o.name}`
}

/**
 * The objects of a multi-document manifest, in order. Objects without a namespace get the
 * release's (as helm applies them); the API group, not the version, identifies an object,
 * so a moved apiVersion is a change, not a removal and an addition.
 */
function parseManifest(text: string, namespace: string): ManifestObject[] {
  const objects: ManifestObject[] = []
  const add = (doc: unknown) => {
    if (!doc || typeof doc !== 'object') return
    const body = doc as { apiVersion?: string; kind?: string; metadata?: { name?: string; namespace?: string }; items?: unknown[] }
    if (body.kind === 'List' && Array.isArray(body.items)) return body.items.forEach(add)
    if (!body.kind || !body.metadata?.name) return
    const ns = CLUSTER_SCOPED.has(body.kind) ? '' : body.metadata.namespace ?? namespace
    const group = String(body.apiVersion ?? '').includes('/') ? String(body.apiVersion).split('/')[0] : ''
    objects.push({ key: `${group}|${body.kind}|${ns}|${body.metadata.name}`, kind: body.kind, namespace: ns, name: body.metadata.name, body: body as Record<string, unknown> })
  }
  for (const doc of YAML.parseAllDocuments(text)) {
    if (doc.errors.length) throw new DeployError(`manifest is not valid YAML: ${doc.errors[0].message.split('\n')[0]}`)
    add(doc.toJS())
  }
  return objects
}

/** A Secret's values by key (stringData over data, both as bytes), and the object without them. */
function splitSecret(body: Record<string, unknown>): { rest: Record<string, unknown>; values: Map<string, string> } {
  const { data, stringData, ...rest } = body as { data?: Record<string, unknown>; stringData?: Record<string, unknown> }
  const values = new Map<string, string>()
  for (const [k, v] of Object.entries(data ?? {})) values.set(k, Buffer.from(String(v ?? ''), 'base64').toString('latin1'))
  for (const [k, v] of Object.entries(stringData ?? {})) values.set(k, Buffer.from(String(v ?? ''), 'utf8').toString('latin1'))
  return { rest, values }
}

const isSecret = (o: ManifestObject) => o.kind === 'Secret'

/** The object as YAML with sorted keys, so that a reordered map is no change. */
function objectYaml(body: Record<string, unknown>): string {
  return YAML.stringify(body, { sortMapEntries: true, lineWidth: 0 })
}

/** Equal JSON-like values, map order ignored. */
function sameValue(a: unknown, b: unknown): boolean {
  if (a === b) return true
  if (typeof a !== 'object' || typeof b !== 'object' || !a || !b || Array.isArray(a) !== Array.isArray(b)) return false
  const ka = Object.keys(a)
  const kb = Object.keys(b)
  return ka.length === kb.length && ka.every((k) => Object.hasOwn(b, k) && sameValue((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k]))
}

type EditOp = [' ' | '-' | '+', string]

/** Beyond this many differing lines the edit script is "replace all" (Myers' trace grows as D·(N+M)). */
const MAX_EDIT_DISTANCE = 2000

/** The shortest line edit script from x to y (Myers' O((N+M)·D) algorithm). */
function editScript(x: string[], y: string[]): EditOp[] {
  const n = x.length
  const m = y.length
  const max = n + m
  const v = new Int32Array(2 * max + 2)
  const trace: Int32Array[] = []
  search: for (let d = 0; d <= Math.min(max, MAX_EDIT_DISTANCE); d++) {
    trace.push(v.slice())
    for (let k = -d; k <= d; k += 2) {
      let i = k === -d || (k !== d && v[max + k - 1] < v[max + k + 1]) ? v[max + k + 1] : v[max + k - 1] + 1
      let j = i - k
      while (i < n && j < m && x[i] === y[j]) i++, j++
      v[max + k] = i
      if (i >= n && j >= m) break search
    }
    if (d === MAX_EDIT_DISTANCE) return [...x.map((l) => ['-', l] as EditOp), ...y.map((l) => ['+', l] as EditOp)]
  }
  const ops: EditOp[] = []
  let i = n
  let j = m
  for (let d = trace.length - 1; d >= 0; d--) {
    const w = trace[d]
    const k = i - j
    const prevK = k === -d || (k !== d && w[max + k - 1] < w[max + k + 1]) ? k + 1 : k - 1
    const prevI = w[max + prevK]
    const prevJ = prevI - prevK
    while (i > prevI && j > prevJ) ops.push([' ', x[--i]]), j--
    if (d > 0) ops.push(i === prevI ? ['+', y[--j]] : ['-', x[--i]])
  }
  return ops.reverse()
}

/** A unified diff of two texts (`---`/`+++` labels, hunks with `context` lines); '' when equal. */
export function unifiedDiff(before: string, after: string, labels: [string, string], context = 3): string {
  const lines = (t: string) => (t === '' ? [] : t.replace(/\n$/, '').split('\n'))
  const ops = editScript(lines(before), lines(after))
  if (ops.every(([op]) => op === ' ')) return ''
  const out = [`--- ${labels[0]}`, `+++ ${labels[1]}`]
  // Line numbers (1-based) of each op in both texts.
  let a = 1
  let b = 1
  const numbered = ops.map(([op, text]) => {
    const at = { op, text, a, b }
    if (op !== '+') a++
    if (op !== '-') b++
    return at
  })
  const changed = numbered.map((o, i) => (o.op === ' ' ? -1 : i)).filter((i) => i >= 0)
  let start = 0
  while (start < changed.length) {
    let end = start
    while (end + 1 < changed.length && changed[end + 1] - changed[end] <= 2 * context) end++
    const from = Math.max(0, changed[start] - context)
    const to = Math.min(numbered.length - 1, changed[end] + context)
    const hunk = numbered.slice(from, to + 1)
    const aLen = hunk.filter((o) => o.op !== '+').length
    const bLen = hunk.filter((o) => o.op !== '-').length
    const aStart = aLen ? hunk.find((o) => o.op !== '+')!.a : hunk[0].a - 1
    const bStart = bLen ? hunk.find((o) => o.op !== '-')!.b : hunk[0].b - 1
    out.push(`@@ -${aStart},${aLen} +${bStart},${bLen} @@`, ...hunk.map((o) => `${o.op}${o.text}`))
    start = end + 1
  }
  return out.join('\n') + '\n'
}

/**
 * Object by object, what changes from the release's manifest to the one the upgrade would
 * apply. A Secret's `data`/`stringData` never reach the diff: only which keys changed.
 */
function diffObjects(current: ManifestObject[], next: ManifestObject[], labels: [string, string]): ObjectChange[] {
  const old = new Map(current.map((o) => [o.key, o]))
  const seen = new Set<string>()
  const changes: ObjectChange[] = []
  const secretKeys = (a: Map<string, string>, b: Map<string, string>) => ({
    added: [...b.keys()].filter((k) => !a.has(k)).sort(),
    removed: [...a.keys()].filter((k) => !b.has(k)).sort(),
    changed: [...b.keys()].filter((k) => a.has(k) && a.get(k) !== b.get(k)).sort(),
  })
  const entry = (o: ManifestObject, change: ObjectChange['change'], diff = '', keys?: ObjectChange['secretKeys']): ObjectChange =>
    ({ id: objectId(o), kind: o.kind, namespace: o.namespace, name: o.name, change, diff, ...(keys ? { secretKeys: keys } : {}) })
  for (const o of next) {
    seen.add(o.key)
    const before = old.get(o.key)
    const none = new Map<string, string>()
    if (!before) {
      changes.push(entry(o, 'added', '', isSecret(o) ? secretKeys(none, splitSecret(o.body).values) : undefined))
      continue
    }
    if (isSecret(o)) {
      const [a, b] = [splitSecret(before.body), splitSecret(o.body)]
      const keys = secretKeys(a.values, b.values)
      const keysChanged = keys.added.length + keys.removed.length + keys.changed.length > 0
      if (sameValue(a.rest, b.rest) && !keysChanged) continue
      const id = objectId(o)
      changes.push(entry(o, 'changed', unifiedDiff(objectYaml(a.rest), objectYaml(b.rest), [`${id} ${labels[0]}`, `${id} ${labels[1]}`]), keys))
    } else if (!sameValue(before.body, o.body)) {
      const id = objectId(o)
      changes.push(entry(o, 'changed', unifiedDiff(objectYaml(before.body), objectYaml(o.body), [`${id} ${labels[0]}`, `${id} ${labels[1]}`])))
    }
  }
  for (const o of current) {
    if (!seen.has(o.key)) changes.push(entry(o, 'removed', '', isSecret(o) ? secretKeys(splitSecret(o.body).values, new Map()) : undefined))
  }
  return changes
}

/** The summary line: `staginghub: 2 changed, 1 added, 0 removed`. */
function diffSummary(chart: string, s: ChartDiff['summary']): string {
  return `${chart}: ${s.changed} changed, ${s.added} added, ${s.removed} removed`
}

/** The text --diff prints for a chart: a header per object, its unified diff, the summary line. */
function formatDiff(chart: string, objects: ObjectChange[], summary: ChartDiff['summary'], installed: boolean): string {
  const lines: string[] = []
  if (!installed) lines.push(`${chart} is not installed: every object is added`)
  for (const o of objects) {
    lines.push(`${o.id}: ${o.change}`)
    if (o.diff) lines.push(o.diff.replace(/\n$/, ''))
    const k = o.secretKeys
    if (k) {
      const parts = [['added', k.added], ['removed', k.removed], ['changed', k.changed]].filter(([, keys]) => keys.length)
        .map(([what, keys]) => `${what} ${(keys as string[]).join(', ')}`)
      if (parts.length) lines.push(`  secret keys ${parts.join('; ')} (values not shown)`)
    }
  }
  lines.push(diffSummary(chart, summary))
  return lines.join('\n') + '\n'
}

/** Applies `redact` to every string of a JSON-like value (text reaches other systems: mask it all). */
function redactDeep<T>(value: T, redact: Secrets['redact']): T {
  if (typeof value === 'string') return redact(value) as T
  if (Array.isArray(value)) return value.map((v) => redactDeep(v, redact)) as T
  if (value && typeof value === 'object') return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, redactDeep(v, redact)])) as T
  return value
}

/**
 * Problems in helm's output (`Error: ...`, lint's `[ERROR] ...`), each one line naming the
 * chart, the file (as a repository path) and the values path when helm gives them.
 */
export function helmProblems(chart: string, dir: string, check: ValidationProblem['check'], output: string): ValidationProblem[] {
  const blocks: string[] = []
  let open = false
  for (const line of output.split('\n')) {
    const start = /^(?:Error: |\[ERROR\] )(.*)$/.exec(line)
    if (start) {
      blocks.push(start[1])
      open = true
    } else if (!line.trim() || /^(\[(INFO|WARNING)\]|==> |Use --debug)/.test(line)) {
      open = false
    } else if (open) {
      blocks[blocks.length - 1] += `\n${line}`
    }
  }
  const problems: ValidationProblem[] = []
  const found = (p: Omit<ValidationProblem, 'check' | 'message'>, reason: string) => {
    const where = [p.file, p.valuesPath && `values ${p.valuesPath}`].filter(Boolean).join(': ')
    problems.push({ check, message: `${chart}: ${where ? `${where}: ` : ''}${reason}`, ...p })
  }
  /** helm's `<chart>/charts/<sub>/templates/x.yaml` as a repository path, and the subchart values prefix. */
  const locate = (helmPath: string) => {
    const rest = helmPath.split('/').slice(1).join('/')
    const subcharts = [...rest.matchAll(/(?:^|\/)charts\/([^/]+)\//g)].map((m) => m[1].replace(/-\d[^/]*\.tgz$/, ''))
    return { file: `${dir}/${rest}`, prefix: subcharts.map((s) => `${s}.`).join('') }
  }
  for (const block of blocks) {
    let text = block.replace(/^(UPGRADE FAILED|INSTALLATION FAILED): /, '')
    // Summaries and consequences of a problem reported on its own line.
    if (/^\d+ chart\(s\) linted|^:? ?unable to load chart/.test(text)) continue
    // lint names the file relative to the chart: `templates/: ...`, `values.yaml: ...`
    const lintFile = /^([\w./-]+): /.exec(text)
    let file: string | undefined
    if (lintFile && check === 'lint' && !/^(template: |parse error)/.test(text)) {
      text = text.slice(lintFile[0].length)
      if (!lintFile[1].endsWith('/')) file = `${dir}/${lintFile[1]}`
    }
    const load = /^cannot load ([\w./-]+): ([\s\S]*)$/.exec(text)
    if (load) [file, text] = [`${dir}/${load[1]}`, load[2]]
    const badYaml = /^(?:unable to parse YAML: )?error converting YAML to JSON: (?:yaml: )?([\s\S]*)$/.exec(text)
    if (badYaml) text = `not valid YAML: ${badYaml[1]}`
    const schema = /values don't meet the specifications of the schema\(s\) in the following chart\(s\):\n([\s\S]*)/.exec(text)
    if (schema) {
      let sub = ''
      for (const line of schema[1].split('\n')) {
        const name = /^(\S+):$/.exec(line.trim())?.[1]
        if (name) sub = name
        const item = /^- (.+?): (.+)$/.exec(line.trim())
        if (!item) continue
        const own = sub === chart || sub === ''
        const at = item[1] === '(root)' ? '' : item[1]
        const valuesPath = [own ? '' : sub, at].filter(Boolean).join('.') || '(root)'
        // A dependency's schema is inside its archive in charts/: name it instead of a path.
        found(own ? { file: `${dir}/values.schema.json`, valuesPath } : { valuesPath }, own ? item[2] : `${item[2]} (values.schema.json of ${sub})`)
      }
      continue
    }
    const oneLine = text.replace(/\s*\n\s*/g, ' ').trim()
    const parsed = /^failed to parse ([^:]+): (?:error converting YAML to JSON: )?(.*)$/.exec(oneLine)
    if (parsed) {
      found({ file: parsed[1] }, `not valid YAML: ${parsed[2].replace(/^yaml: /, '')}`)
      continue
    }
    const ref = /(?:template: |parse error at \(|YAML parse error on )([\w.-]+(?:\/[\w.-]+)+?\.(?:ya?ml|tpl|txt|json))((?::\d+){0,2})/.exec(oneLine)
    if (ref) {
      const { file: where, prefix } = locate(ref[1])
      const value = /<\.Values\.([\w.]+)>/.exec(oneLine)?.[1]
      const reason = oneLine
        .replace(/^template: \S+: /, '').replace(/^parse error at \([^)]*\): /, '').replace(/^YAML parse error on \S+: /, '')
        .replace(/executing "[^"]*" /, '')
      found({ file: `${where}${ref[2]}`, ...(value ? { valuesPath: `${prefix}${value}` } : {}) }, reason)
      continue
    }
    found(file ? { file } : {}, oneLine)
  }
  return uniqueProblems(problems)
}

/** Problems found twice (lint and template often report the same one): keep the first. */
function uniqueProblems(problems: ValidationProblem[]): ValidationProblem[] {
  const seen = new Set<string>()
  return problems.filter((p) => {
    const key = `${p.file ?? ''}|${p.valuesPath ?? ''}|${p.message.split(': ').at(-1)}`
    return !seen.has(key) && !!seen.add(key)
  })
}


/** The `--set-string` arguments of one image: the chart's image tag. */
function imageSetArgs(image: ImageInfo): string[] {
  return ['--set-string', `jupyterhub.${image.kind === 'user' ? 'singleuser' : 'hub'}.image.tag=${image.tag}`]
}

/** The values exactly as the deploy passes them: secrets/<chart>.yaml when the run has it, then the image tags. */
function valuesArgs({ plan }: ChartRun): string[] {
  const secrets = plan.secretsFile === 'used' ? ['-f', `secrets/${plan.chart}.yaml`] : []
  return [...secrets, ...plan.images.flatMap(imageSetArgs)]
}

/** Why the run cannot reach a cluster, or undefined when it can: setup runs, or a kubeconfig exists. */
function noClusterAccess(phases: Phases, env: NodeJS.ProcessEnv): string | undefined {
  if (phases.setup) return undefined
  const files = (env.KUBECONFIG || path.join(env.HOME ?? os.homedir(), '.kube', 'config')).split(path.delimiter)
  return files.some((f) => f && fs.existsSync(f)) ? undefined : 'no cluster access (--no-setup and no kubeconfig)'
}

/**
 * The chart's dependencies for validate and diff: none to fetch when charts/ holds every
 * archive Chart.lock names; `helm dep build` from the lock; `helm dep up` without one (or
 * when the lock no longer matches Chart.yaml). Once per run.
 */
async function chartDependencies({ plan, state, exec, out }: ChartRun) {
  if (state.dependenciesReady) return
  const dir = plan.chartDir
  const read = (file: string) => (fs.existsSync(`${dir}/${file}`) ? YAML.parse(fs.readFileSync(`${dir}/${file}`, 'utf8')) ?? {} : {})
  type Dependency = { name: string; version?: string }
  const wanted: Dependency[] = read('Chart.yaml').dependencies ?? read('requirements.yaml').dependencies ?? []
  state.dependenciesReady = true
  if (wanted.length === 0) return
  const lockFile = ['Chart.lock', 'requirements.lock'].find((f) => fs.existsSync(`${dir}/${f}`))
  const locked: Dependency[] = lockFile ? read(lockFile).dependencies ?? [] : []
  const cached = lockFile && wanted.every((d) => {
    const l = locked.find((x) => x.name === d.name)
    const pinned = d.version && /^\d+\.\d+\.\d+$/.test(d.version) ? d.version === l?.version : true
    return l && pinned && fs.existsSync(`${dir}/charts/${d.name}-${l.version}.tgz`)
  })
  if (cached) {
    out.info(`${dir}: dependencies already in ${dir}/charts/ as ${lockFile} names them`)
    return
  }
  const opts = { cwd: dir, timeout: '5m', capture: true, nothrow: true } as const
  let r = lockFile ? await exec('helm', ['dep', 'build'], opts) : undefined
  if (!r || /out of sync/.test(r.stderr)) r = await exec('helm', ['dep', 'up'], opts)
  if (r.exitCode !== 0) throw new DeployError(`${plan.chart}: ${dir}: could not fetch the chart's dependencies: ${tail(r.stderr || r.stdout, 1).replace(/^Error: /, '')}`)
}

interface Preview {
  exitCode: number
  stderr: string
  /** The manifest the upgrade would apply. */
  manifest: string
}

/**
 * `helm upgrade --install --dry-run=server`, with the deploy's values: the API server's view
 * (capabilities, lookups, every object built against its schema), and nothing written.
 * Shared by validate and diff.
 */
function upgradePreview(r: ChartRun): Promise<Preview> {
  const { plan, state, exec } = r
  const { chart } = plan
  state.preview ??= (async () => {
    const args = ['upgrade', '--install', '--namespace', chart, chart, plan.chartDir, '--dry-run=server', '--output', 'json', ...valuesArgs(r)]
    // The output holds every rendered Secret and the values: captured, parsed, never printed.
    const done = await exec('helm', args, { capture: true, nothrow: true, timeout: `${plan.config.helmTimeoutSeconds}s` })
    if (done.exitCode !== 0 || plan.dryRun) return { exitCode: done.exitCode, stderr: done.stderr, manifest: '' }
    try {
      return { exitCode: 0, stderr: done.stderr, manifest: String(JSON.parse(done.stdout).manifest ?? '') }
    } catch {
      return { exitCode: 1, stderr: `Error: helm upgrade --dry-run=server --output json printed no release (${done.stdout.length} bytes)`, manifest: '' }
    }
  })()
  return state.preview
}

/** Helm's words when it could not reach the API server at all (as opposed to a refused object). */
const UNREACHABLE = /Kubernetes cluster unreachable|connection refused|no such host|i\/o timeout|dial tcp/

/**
 * --validate: dependencies, `helm lint`, a render with the deploy's values, and with cluster
 * access the server-side dry run. Every problem is one ERROR line; an invalid chart fails the
 * run (exit 1). The result is `state.validation` (ctx.validation for plugins).
 */
async function validate(r: ChartRun) {
  const { plan, state, exec, out, helm, env } = r
  const { chart, chartDir: dir } = plan
  const { redact } = r.invocation.secrets
  const result: ChartValidation = { chart, valid: true, secrets: plan.secretsFile ?? 'used', serverSide: 'skipped', objects: 0, errors: [], warnings: [], text: '' }
  state.validation = result
  const text: string[] = []
  const say = (line: string, how: 'print' | 'warn' | 'error' = 'print') => {
    text.push(redact(line))
    if (how === 'print') out.print(line)
    else out[how](line)
  }
  if (result.secrets !== 'used') {
    say(`${chart}: secrets/${chart}.yaml is ${result.secrets === 'locked' ? 'locked (git-crypt)' : 'missing'}: validating without it, so values that need it are not checked`, 'warn')
  }
  const ns = ['--namespace', chart]
  const values = valuesArgs(r)
  const problems = (check: ValidationProblem['check'], done: CommandResult) => {
    if (done.exitCode === 0) return []
    const found = helmProblems(chart, dir, check, `${done.stderr}\n${done.stdout}`)
    return found.length ? found : [{ check, message: `${chart}: helm ${check} failed: ${tail(done.stderr || done.stdout, 1)}` }]
  }
  try {
    await chartDependencies(r)
  } catch (e) {
    result.errors.push({ check: 'dependencies', message: (e as Error).message })
    result.serverSideNote = 'the chart did not render'
  }
  const quiet = { capture: true, nothrow: true, timeout: '5m' } as const
  if (result.errors.length === 0) {
    const lint = await exec('helm', ['lint', dir, ...ns, ...values], quiet)
    for (const m of lint.stdout.matchAll(/^\[WARNING\] (.*)$/gm)) result.warnings.push(`${chart}: ${dir}/${m[1]}`)
    const template = await exec('helm', [...helm.templateArgs(chart, dir), ...ns, ...values], quiet)
    if (template.exitCode === 0 && !plan.dryRun) result.objects = parseManifest(template.stdout, chart).length
    result.errors.push(...problems('lint', lint), ...problems('render', template))
    const why = helm.serverDryRun ? noClusterAccess(plan.phases, env) : `Helm ${helm.major} has no server-side dry run`
    if (why) {
      result.serverSideNote = why
    } else if (result.errors.length === 0) {
      const preview = await upgradePreview(r)
      if (preview.exitCode === 0) {
        result.serverSide = 'checked'
      } else if (UNREACHABLE.test(preview.stderr)) {
        result.serverSideNote = `cluster unreachable: ${tail(preview.stderr, 1).replace(/^Error: /, '')}`
      } else {
        result.serverSide = 'checked'
        result.errors.push(...problems('server', { stdout: '', ...preview }))
      }
    } else {
      result.serverSideNote = 'the chart did not render'
    }
  }
  if (plan.dryRun) {
    state.validation = undefined
    return
  }
  result.errors = uniqueProblems(result.errors)
  result.valid = result.errors.length === 0
  for (const w of result.warnings) say(w, 'warn')
  for (const p of result.errors) say(p.message, 'error')
  const server = result.serverSide === 'checked' ? 'checked by the API server' : `server-side check skipped: ${result.serverSideNote}`
  const count = `${result.errors.length} problem${result.errors.length > 1 ? 's' : ''}`
  say(result.valid ? `${chart}: valid (helm lint, ${result.objects} objects rendered, ${server})` : `${chart}: invalid: ${count}`)
  result.text = text.join('\n') + '\n'
  Object.assign(result, redactDeep(result, redact))
  if (!result.valid) throw new DeployError(`validation of ${chart} failed: ${count} (listed above)`)
}

interface Release {
  revision: number
  manifest: string
  /** The values the release was installed with (user-supplied, secrets included). */
  config: Record<string, unknown>
}

/**
 * What the release has now, as helm stores it (what `helm get manifest` prints), at the
 * revision an upgrade compares against: the last deployed one (the last one when none is).
 * Undefined when the chart is not installed.
 */
async function currentRelease({ plan, exec, helm }: ChartRun): Promise<Release | undefined> {
  const { chart } = plan
  const status = (extra: string[]) =>
    exec('helm', [...helm.statusArgs(chart), ...extra, '--output', 'json'], { capture: true, nothrow: true, timeout: '2m' })
  const parse = (done: CommandResult, what: string) => {
    if (done.exitCode !== 0) throw new DeployError(`${chart}: could not read ${what}: ${tail(done.stderr, 1).replace(/^Error: /, '')}`)
    try {
      return JSON.parse(done.stdout)
    } catch {
      throw new DeployError(`${chart}: could not read ${what}: \`helm status --output json\` printed no JSON`)
    }
  }
  const last = await status([])
  if (last.exitCode !== 0 && /release: not found/.test(last.stderr)) return undefined
  let release = parse(last, 'the release')
  if (release.info?.status !== 'deployed') {
    const history = await helm.history(chart)
    const deployed = 'revisions' in history ? [...history.revisions].reverse().find((h) => h.status === 'deployed') : undefined
    if (deployed && deployed.revision !== release.version) release = parse(await status(['--revision', String(deployed.revision)]), `revision ${deployed.revision}`)
  }
  return { revision: release.version, manifest: release.manifest ?? '', config: release.config ?? {} }
}

/** The values a deploy sets that are no secret: the image tags (imageSetArgs). */
const IMAGE_TAG_VALUE = /^jupyterhub\.(singleuser|hub)\.image\.tag$/

/**
 * Registers the values the release was installed with: what a deploy passes is
 * secrets/<chart>.yaml and the image tags, so these are the old secrets, including those
 * the file no longer has. Masked like the new ones.
 */
function addOldSecrets({ invocation }: ChartRun, config: Record<string, unknown>) {
  const walk = (value: unknown, at: string) => {
    if (value && typeof value === 'object') {
      for (const [k, v] of Object.entries(value)) walk(v, at ? `${at}.${k}` : k)
    } else if ((typeof value === 'string' || typeof value === 'number') && !IMAGE_TAG_VALUE.test(at)) {
      invocation.secrets.add(String(value))
    }
  }
  walk(config, '')
}

/**
 * --diff: object by object, the release's manifest against the one the upgrade would apply.
 * Read-only: helm status/history and a server-side dry run. The result is `state.diff`
 * (ctx.diff for plugins); the text goes to the chart's output.
 */
async function diffChart(r: ChartRun) {
  const { plan, state, exec, out, helm } = r
  const { chart } = plan
  await chartDependencies(r)
  if (plan.dryRun) {
    await exec('helm', [...helm.statusArgs(chart), '--output', 'json'])
    await upgradePreview(r)
    return
  }
  const current = await currentRelease(r)
  if (current) addOldSecrets(r, current.config)
  const preview = await upgradePreview(r)
  if (preview.exitCode !== 0) {
    const first = helmProblems(chart, plan.chartDir, 'server', preview.stderr)[0]?.message ?? `${chart}: ${tail(preview.stderr, 1)}`
    throw new DeployError(`helm upgrade --dry-run=server failed: ${first}`)
  }
  const labels: [string, string] = [current ? `(revision ${current.revision})` : '(not installed)', `(${plan.commit.slice(0, 7)})`]
  const found = await diffManifests(current?.manifest, preview.manifest, chart, labels)
  state.diff = redactDeep({ chart, namespace: chart, revision: current?.revision, ...found }, r.invocation.secrets.redact)
  out.print(state.diff.text)
}

/**
 * The whole comparison of a release's manifest (undefined: not installed) with the next one,
 * in the release's namespace `chart`: objects, summary and text, not yet masked.
 */
export async function diffManifests(current: string | undefined, next: string, chart: string, labels: [string, string]): Promise<Pick<ChartDiff, 'summary' | 'objects' | 'text'>> {
  YAML ??= (await import('yaml')).default
  const after = parseManifest(next, chart)
  const objects = diffObjects(parseManifest(current ?? '', chart), after, labels)
  const count = (c: ObjectChange['change']) => objects.filter((o) => o.change === c).length
  const summary = { changed: count('changed'), added: count('added'), removed: count('removed'), unchanged: 0 }
  summary.unchanged = after.length - summary.changed - summary.added
  return { summary, objects, text: formatDiff(chart, objects, summary, current !== undefined) }
}

/** The stable --json document of --validate/--diff (docs/workflow.md). */
function previewReport(runs: ChartRun[], redact: Secrets['redact']) {
  return redactDeep({
    version: 1,
    charts: runs.map(({ plan, state }) => ({
      chart: plan.chart,
      result: state.result ?? 'not run',
      error: state.error?.message ?? null,
      validation: state.validation ?? null,
      diff: state.diff ?? null,
    })),
  }, redact)
}

// ---------------------------------------------------------------------------------------
// Deploy

/** The --set-string arguments that point the chart at this commit's images. */
function imageArgs({ plan, out }: ChartRun): string[] {
  return plan.images.flatMap((image) => {
    out.print(`Using ${image.spec} as ${image.kind} image for ${plan.chart}`)
    return imageSetArgs(image)
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
  // Only a whole revision number may reach `helm rollback` (the history is helm's output, not ours).
  const deployed = [...revisions].reverse().find((r) => (r.status === 'deployed' || r.status === 'superseded') && Number.isInteger(r.revision) && r.revision > 0)
  const repair = helm.repairArgs(chart, deployed?.revision, plan.config.helmTimeoutSeconds)
  if (!plan.recover) {
    throw new DeployError(`release ${chart} is stuck in ${last.status} (revision ${last.revision}, an earlier run was interrupted): repair with \`helm ${repair.join(' ')}\` or rerun with --recover`)
  }
  out.warn(`release ${chart} is stuck in ${last.status}: recovering with helm ${repair.join(' ')}`)
  await exec('helm', repair, { timeout: deployed ? `${plan.config.helmTimeoutSeconds + 120}s` : '5m' })
  return true
}

async function deploy(r: ChartRun, pluginArgs: string[]) {
  const { plan, state, exec, helm } = r
  await acquireLock(r)
  const extra = [...imageArgs(r), ...pluginArgs]
  await exec('helm', ['dep', 'up'], { cwd: plan.chartDir, timeout: '5m' })
  if (plan.recover && helm.tracksPending && !plan.dryRun) await handlePendingRelease(r)
  else if (plan.recover) r.out.print(`# --recover: a release left pending-* would be rolled back to its last deployed revision (or uninstalled) first`)
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
  // Names come from the cluster: only `deployment.apps/<name>` may reach kubectl.
  const lines = list.stdout.split('\n').map((l) => l.trim()).filter(Boolean)
  const deployments = lines.filter((l) => /^deployment\.apps\/[a-z0-9][-a-z0-9.]*$/.test(l))
  for (const l of lines.filter((l) => !deployments.includes(l))) out.warn(`not waiting for "${l}": kubectl listed it, but it is not deployment.apps/<name>`)
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
async function loadPlugins(names: string[], secrets: Secrets): Promise<Plugin[]> {
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
      throw usageError(`${file}: plugin failed to load: ${errorLine(e, secrets)}`)
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

/** `signal`, or a TimeoutError after `ms`: a controller the timer holds, so nothing collects it early. */
function signalWithin(signal: AbortSignal, ms: number): AbortSignal {
  const bound = new AbortController()
  const timer = setTimeout(() => bound.abort(new DOMException(`timed out after ${ms} ms`, 'TimeoutError')), ms)
  timer.unref?.()
  const stop = () => {
    clearTimeout(timer)
    bound.abort(signal.reason)
  }
  if (signal.aborted) stop()
  else signal.addEventListener('abort', stop, { once: true })
  bound.signal.addEventListener('abort', () => signal.removeEventListener('abort', stop), { once: true })
  return bound.signal
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
    within: (ms) => signalWithin(signal, ms),
    sleep,
    retry: retrying(signal, sleep),
    parseYesNo,
    refuse: (message) => {
      throw new RefusedError(message)
    },
    redact: invocation.secrets.redact,
    parseDuration,
    duration: (key, fallback, range = [1, 24 * 3600]) => checkDuration(key, plan.config.env[key]?.trim() || fallback, range),
    revision: state.revision,
    validation: state.validation,
    diff: state.diff,
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

/** The `helm upgrade` arguments a beforeDeploy hook returned: only an array of strings, none holding a secret. */
function helmArgsOf(result: unknown, secrets: Secrets): string[] {
  const args = (result as { helmArgs?: unknown } | undefined)?.helmArgs ?? []
  if (!Array.isArray(args) || args.some((a) => typeof a !== 'string')) throw new Error('helmArgs must be an array of strings')
  // An argv is readable by every user of the machine (ps): secrets reach helm in values files only.
  if (args.some((a) => secrets.redact(a) !== a)) throw new Error('helmArgs contain a secret: pass secrets to helm in a values file, never as arguments')
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
      if (step.returns === 'helmArgs') given.push(...helmArgsOf(result, r.invocation.secrets))
    } catch (e) {
      const message = errorLine(e, r.invocation.secrets)
      if (!step.blocking) {
        r.out.warn(`plugin ${plugin.name} ${hook} failed: ${message}`)
        continue
      }
      if (r.invocation.cancelled) throw e
      // exitCode 2 marks a configuration error (a bad ctx.duration, a file or key the plugin reads), whatever the hook.
      const code = (e as { exitCode?: unknown })?.exitCode === EXIT.usage ? EXIT.usage : isRefusal(e) ? step.refusal : step.throws
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
  if (phases.validate) await phase(r, 'validate', () => validate(r))
  if (phases.diff) await phase(r, 'diff', () => diffChart(r))
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
    state.error = masked(asDeployError(e, invocation.secrets), invocation.secrets.redact)
    await reportFailure(r, invocation.cancelled ? undefined : (e as DeployError).phase)
  } finally {
    // The lock first, while the run's credentials still exist (also when cancelled).
    await releaseLock(r)
    cleanup(r)
    state.seconds = (Date.now() - start) / 1000
  }
  if (state.result === 'ok') await runHook(r, 'success')
}

/**
 * The error as the `fail` hooks and the summary get it: message, command and output with
 * every secret masked, whatever threw it (a plugin's error text is not redacted yet).
 */
function masked(e: DeployError, redact: Secrets['redact']): DeployError {
  const copy = new DeployError(redact(e.message), e.exitCode, { phase: e.phase, command: e.command && redact(e.command), output: e.output && redact(e.output) })
  copy.reported = e.reported
  return copy
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
function cleanup({ state, invocation }: ChartRun) {
  if (state.privateDir) fs.rmSync(state.privateDir, { recursive: true, force: true })
  invocation.privateDirs.delete(state.privateDir!)
  state.privateDir = undefined
}

/** The staging chart first (nothing else deploys if it fails), then the rest, `parallel` at a time. */
async function executeAll(runs: ChartRun[], parallel: number, signal: AbortSignal) {
  const queue = [...runs]
  // Only a deploy waits for staging: validations and diffs of every chart are wanted, whatever staging's.
  const { phases } = queue[0].plan
  const previewOnly = (phases.validate || phases.diff) && !phases.deploy
  if (queue[0].plan.chart === queue[0].plan.config.STAGING_CHART && !previewOnly) {
    const staging = queue.shift()!
    // With other charts to follow, staging's live output is its own group, as their blocks are.
    const title = `deploy ${staging.plan.chart}`
    if (queue.length) groupMarkers('start', title.replace(/\W+/g, '-'), title)
    await execute(staging)
    if (queue.length) groupMarkers('end', title.replace(/\W+/g, '-'), title)
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
  --validate        check the chart without deploying: helm lint and a render with the
                    deploy's values; with cluster access also a server-side dry run.
                    On its own it skips setup
  --diff            show what --deploy would change in the cluster, object by object
                    (read-only; runs before --deploy when both are given)
  --dry-run         announce the commands the run would execute; runs nothing
  --recover         repair a release an interrupted run left pending, then deploy
  --rollback-on-failure
                    when the rollout or a check after the upgrade fails, roll back to the
                    revision live before the run (also ROLLBACK_ON_FAILURE=true)
  --plugin NAME     load plugins/NAME.ts (the repository's, else the one shipped with
                    deploy.ts) or a path; repeatable; also DEPLOY_PLUGINS
  --parallel N      charts deployed at once after the staging chart (default: all, at most 8)
  --changed RANGE   print the charts whose files RANGE changed, one per line
  --json            with --changed: print them as a JSON array (a CI matrix); with
                    --validate/--diff: print the results as one JSON document
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
  boolean: ['setup', 'build', 'push', 'deploy', 'validate', 'diff', 'dry-run', 'recover', 'rollback-on-failure', 'list', 'verbose', 'version', 'help', 'json'],
  string: ['env-file', 'plugin', 'parallel', 'changed'],
}

function parseArgs(argv: string[]) {
  const unknown: string[] = []
  const args = minimist(argv, {
    ...FLAGS,
    default: { setup: true },
    alias: { 'env-file': 'dotenv' },
    unknown: (a: string) => (a.startsWith('-') ? (unknown.push(a), false) : true),
  })
  if (unknown.length) throw usageError(`unknown option ${unknown[0]}; see deploy.ts --help`)
  for (const key of ['env-file', 'parallel', 'changed']) {
    if (Array.isArray(args[key])) throw usageError(`--${key} given twice; give it once`)
    if (args[key] === '') throw usageError(`--${key} needs a value`)
  }
  if (args.parallel !== undefined && !/^[1-9]\d*$/.test(args.parallel)) throw usageError(`--parallel ${args.parallel}: give a whole number of charts, 1 or more`)
  if ([args.plugin ?? []].flat().some((p: string) => !p.trim())) throw usageError('--plugin needs a value: a plugin name or path')
  checkCombination(args)
  return args
}

/** Flag combinations that would do less than they say are refused, not ignored. */
function checkCombination(args: minimist.ParsedArgs) {
  if (args.help || args.version) return
  const given = (flag: string) => args[flag] === true || typeof args[flag] === 'string'
  const phaseFlags = ['build', 'push', 'deploy', 'validate', 'diff', 'recover', 'dry-run', 'plugin', 'parallel'].filter(given)
  const drop = phaseFlags.length ? `--${phaseFlags[0]}` : 'the chart names'
  if (args.changed !== undefined) {
    if (phaseFlags.length || args._.length) throw usageError(`--changed only lists charts: drop ${drop} (run the deploy as its own command)`)
    return
  }
  if (args.json && !args.validate && !args.diff) throw usageError('--json only applies to --changed, --validate or --diff: add one of them or drop --json')
  if (args.list) {
    if (phaseFlags.length || args._.length) throw usageError(`--list only lists charts: drop ${drop}`)
    return
  }
  if (args.push && !args.build) throw usageError('--push pushes only what this run builds: add --build (or drop --push)')
  if (args.recover && !args.deploy) throw usageError('--recover repairs a release before deploying it: add --deploy (or drop --recover)')
  if (!args.setup && !args.build && !args.deploy && !args.validate && !args.diff) throw usageError('nothing to do: --no-setup without --build, --deploy, --validate or --diff runs no phase; add one of them')
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
  const names: string[] = [...new Set<string>(args._.map(String))]
  if (charts.length === 0) throw usageError(noChartsHere())
  if (names.length === 0) throw usageError(`no chart name given; valid charts: ${charts.join(', ')}`)
  const invalid = names.find((n) => !CHART_NAME.test(n))
  if (invalid !== undefined) throw usageError(`chart name "${invalid}" is not a valid release name (lowercase letters, digits and -, at most 53); valid charts: ${charts.join(', ') || '(none found)'}`)
  const unknown = names.filter((n) => !charts.includes(n))
  if (unknown.length) throw usageError(`unknown chart "${unknown[0]}"; valid charts: ${charts.join(', ')}`)
  return names.sort((a, b) => Number(b === config.STAGING_CHART) - Number(a === config.STAGING_CHART))
}

/**
 * A chart's output and command runner; with several charts, prefixed and (but for the staging
 * chart, which runs alone) held and printed as one block each; with `json`, everything on
 * stderr (stdout carries the JSON document).
 */
function chartTools(invocation: Invocation, request: Request, config: Config, chart: string, many: boolean, json: boolean): Tools {
  const env: NodeJS.ProcessEnv = { ...config.env }
  const out = json
    ? new Output(invocation.secrets, many ? `[${chart}] ` : '', false, false, 'stderr')
    : many ? new Output(invocation.secrets, `[${chart}] `, chart !== config.STAGING_CHART, false) : new Output(invocation.secrets)
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
  const changed = await changedCharts(exec, invocation.log, checkRange(args.changed, '--changed'), charts)
  process.stdout.write(args.json ? JSON.stringify(changed) + '\n' : changed.map((c) => c + '\n').join(''))
}

/** Preflight for every chart, then the runs; signals cancel the invocation from here on. */
async function deployCharts(invocation: Invocation, args: Args, config: Config, charts: string[]): Promise<number> {
  const { log } = invocation
  const names = chartNames(args, config, charts)
  // Every secret is known before a plugin loads or a command starts, so none can print one.
  YAML ??= (await import('yaml')).default
  collectFileSecrets(invocation.secrets, config, names)
  const request: Request = {
    phases: {
      // --validate needs no cluster: on its own it skips setup (a kubeconfig of your own still enables the server-side check).
      setup: args.setup && (args.build || args.deploy || args.diff || !args.validate),
      build: args.build,
      push: args.build && args.push,
      deploy: args.deploy,
      validate: args.validate,
      diff: args.diff,
    },
    config,
    dryRun: args['dry-run'],
    recover: args.recover,
    rollbackOnFailure: args['rollback-on-failure'] || config.rollbackOnFailure,
    plugins: await loadPlugins(pluginNames(args, config), invocation.secrets),
  }
  // --json with --validate/--diff: stdout carries one JSON document, everything else goes to stderr.
  const json = args.json && (args.validate || args.diff)
  const tools = names.map((chart) => chartTools(invocation, request, config, chart, names.length > 1, json))
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
  if (json) process.stdout.write(JSON.stringify(previewReport(runs, invocation.secrets.redact), null, 2) + '\n')
  printSummary(json ? new Output(invocation.secrets, '', false, false, 'stderr') : log, runs)
  const failed = runs.find((r) => r.state.result === 'failed')
  // With --json, stdout ends with the JSON document: no `::error::` line after it.
  if (runs.length === 1 && failed && !json) throw failed.state.error
  return failed ? failed.state.error!.exitCode : EXIT.ok
}

/** One invocation: returns its exit code; an error ends it with one `ERROR:` line. */
async function main(argv: string[]): Promise<number> {
  const invocation = new Invocation()
  const { log } = invocation
  invocation.trapCrashes()
  try {
    const args = parseArgs(argv)
    if (args.help || args.version) {
      log.print(args.help ? USAGE : `deploy.ts ${version()}`)
      return EXIT.ok
    }
    invocation.verbose = args.verbose
    const config = loadConfig(args['env-file'])
    invocation.secrets.addFromEnv(config.env)
    const charts = discoverCharts()
    if (args.list) {
      if (charts.length === 0) log.warn(noChartsHere())
      else log.print(charts.join('\n'))
      return EXIT.ok
    }
    // Loaded before signals are trapped, so a signal never finds a command between import and spawn.
    zx ??= await import('zx/core')
    if (args.changed === undefined) return await deployCharts(invocation, args, config, charts)
    await printChanged(invocation, args, config, charts)
    return EXIT.ok
  } catch (e) {
    const err = asDeployError(e, invocation.secrets)
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

if (isMain()) {
  // A reader that goes away (`deploy.ts ... | head -1`) must not stop a deploy: output is
  // dropped from then on, the run goes on and cleans up.
  for (const stream of [process.stdout, process.stderr]) stream.on('error', () => undefined)
  main(process.argv.slice(2)).then((code) => process.exit(code))
}
