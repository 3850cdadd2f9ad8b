#!/usr/bin/env -S npx tsx
/**
 * deploy.ts — builds the images of a JupyterHub hub and deploys its chart with helm.
 *
 * A port of the Python deploy.py: same flags, same phases in the same order, same
 * external commands and announcements (see docs/ and README.md). Runs unchanged under
 * `tsx deploy.ts ...` (Node 20) and `deno run -A deploy.ts ...` (Deno 2).
 *
 * Reads top to bottom: plugin contract, config, logging, command runner, git/tags,
 * setup, build, push, deploy, rollout, plugins, CLI.
 */
import process from 'node:process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import type { ProcessPromise } from 'zx/core'
import type YAMLModule from 'yaml'
import minimist from 'minimist'
import dotenv from 'dotenv'
// zx and yaml are imported on first use, so --help, --version and --list start without them
// (they are most of deploy.ts's own start-up: docs/performance.md, P3).
let zx: typeof import('zx/core') | undefined
let YAML: typeof YAMLModule

// ---------------------------------------------------------------------------------------
// Plugin contract (docs/plugins.md)

export type Phase = 'verify' | 'setup' | 'build' | 'push' | 'deploy' | 'rollout'

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

export interface RunOptions {
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
  /** Read-only commands also run under --dry-run; others are only printed. */
  readOnly?: boolean
}

export type Runner = (tool: string, args: string[], options?: RunOptions) => Promise<CommandResult>

export interface HookContext {
  chart: string
  phases: { setup: boolean; build: boolean; push: boolean; deploy: boolean }
  config: Readonly<Config>
  helmMajor: 2 | 3
  images: ImageInfo[]
  /** Full hash of the commit being deployed. */
  commit: string
  /** The chart's directory: hub-charts/<chart>, or monitoring. */
  chartDir: string
  dryRun: boolean
  /** Milliseconds spent in each finished phase. */
  timings: Partial<Record<Phase, number>>
  log: Logger
  run: Runner
  /** Masks every registered secret (webhook URLs, tokens, passwords) as ***: apply it to text sent elsewhere. */
  redact: (text: string) => string
  /** deploy.ts's duration parser (`600`, `90s`, `10m`, `1h30m` → seconds; NaN otherwise), for plugins' own keys. */
  parseDuration: (text: string) => number
  /** Release revision after the deploy phase, read from helm's output. */
  revision?: number
  /** `fail` only: what went wrong (with the failed command and its last output lines when a command failed) and in which phase; `cancelled` on SIGINT/SIGTERM. */
  error?: Error & { command?: string; output?: string }
  failedPhase?: Phase
  reason?: 'failed' | 'cancelled'
}

type MaybePromise<T> = T | Promise<T>
type Hook = (ctx: HookContext) => MaybePromise<void>

/**
 * A plugin: the default export of plugins/<name>.ts. Every hook is optional and receives
 * the run's context. Hooks up to `afterRollout` are blocking, each bounded by HOOK_TIMEOUT:
 * a throw stops the run (exit 3 from `verify` or for an error with `exitCode: 3`, 1
 * otherwise) and the `fail` hooks run. `success` and `fail` are best effort: bounded by
 * 10 s, their errors logged, the exit status unchanged.
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

// ---------------------------------------------------------------------------------------
// Errors and exit codes

export const EXIT = { ok: 0, failed: 1, usage: 2, refused: 3, sigint: 130, sigterm: 143 } as const

/** An error with the exit code it ends the run with; its message is one line. */
export class DeployError extends Error {
  /** The failed command (redacted) and the last lines of its output, when a command failed. */
  command?: string
  output?: string
  /** Already printed by the chart's run. */
  reported?: boolean
  constructor(message: string, readonly exitCode: number = EXIT.failed) {
    super(message)
  }
}
const usageError = (message: string) => new DeployError(message, EXIT.usage)

// ---------------------------------------------------------------------------------------
// Configuration: .env, then the environment (which wins); defaults are the original's values.

export const DEFAULTS = {
  GCLOUD_KEY_FILE: 'secrets/gke-auth-key.json',
  GKE_CLUSTER: 'jhub',
  GKE_ZONE: 'us-central1-b',
  GCP_PROJECT: 'ea-jupyter',
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
  DEPLOY_PLUGINS: '',
}

export type Config = typeof DEFAULTS & {
  /** HELM_TIMEOUT and ROLLOUT_TIMEOUT in seconds. */
  helmTimeoutSeconds: number
  rolloutTimeoutSeconds: number
  heartbeatSeconds: number
  buildTimeoutSeconds: number
  hookTimeoutSeconds: number
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
  return {
    ...values,
    helmTimeoutSeconds: seconds('HELM_TIMEOUT'),
    rolloutTimeoutSeconds: seconds('ROLLOUT_TIMEOUT'),
    heartbeatSeconds: seconds('HEARTBEAT_INTERVAL'),
    buildTimeoutSeconds: seconds('BUILD_TIMEOUT'),
    hookTimeoutSeconds: seconds('HOOK_TIMEOUT'),
    env,
  }
}

// ---------------------------------------------------------------------------------------
// Logging: every line we print or relay passes through redact().

const secrets = new Set<string>()

/** Registers a secret value: from now on it is printed as ***. */
export function addSecret(value: string | undefined) {
  const v = value?.trim()
  if (!v || v.length < 4) return
  secrets.add(v)
  // Multi-line secrets (private keys) may be relayed line by line.
  for (const line of v.split(/\\n|\n/)) if (line.trim().length >= 16) secrets.add(line.trim())
}

export function redact(text: string): string {
  let out = text
  for (const s of [...secrets].sort((a, b) => b.length - a.length)) out = out.split(s).join('***')
  return out
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
  constructor(readonly prefix = '', hold = false, readonly ciGroups = true) {
    if (hold) this.held = []
  }

  write(stream: 'stdout' | 'stderr', text: string, prefix = '') {
    const lines = redact(text).split('\n')
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
    process.stdout.write(redact(`${this.prefix}${text}\n`))
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

/** Messages that belong to no chart (bad input, the multi-chart summary). */
const log = new Output()
let verbose = false

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
// Command runner: the one place that starts processes.

/** Processes running now, so a signal can be passed on to them. */
const running = new Set<ProcessPromise>()

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

/** Last lines of a failed command's output, for the error message and notifications. */
function tail(text: string, n = 5): string {
  return text.trim().split('\n').slice(-n).join('\n')
}

export interface RunnerOptions {
  env: NodeJS.ProcessEnv
  dryRun: boolean
  out: Output
  /** Silence after which a streamed command gets a heartbeat line; 0 turns them off. */
  heartbeatSeconds: number
}

export function makeRunner({ env, dryRun, out, heartbeatSeconds }: RunnerOptions): Runner {
  return async (tool, args, options = {}) => {
    const { capture = false, show = 'announce', prefix = '' } = options
    const line = `${tool} ${args.join(' ')}`
    if (dryRun && !options.readOnly) {
      const stdin = options.input !== undefined ? ' < (stdin)' : ''
      const where = options.cwd ? ` (in ${options.cwd})` : ''
      out.print(`+ ${line}${stdin}${where}`)
      return { stdout: '', stderr: '', exitCode: 0 }
    }
    if (show === 'announce' || (show === 'probe' && verbose)) {
      out.info(`${capture ? 'Executing and capturing' : 'Executing'} ${line}`)
    }
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
    running.add(p)
    const done = await p.finally(() => {
      running.delete(p)
      beat.stop()
    })
    const result = { stdout: done.stdout, stderr: done.stderr, exitCode: done.exitCode ?? 1 }
    if (result.exitCode !== 0 && !options.nothrow) {
      const why = done.signal ? `was stopped by ${done.signal}${options.timeout ? ` (limit ${options.timeout})` : ''}` : `exited with ${result.exitCode}`
      const detail = capture ? `: ${tail(done.stderr || done.stdout, 1)}` : ''
      const shown = line.length > 100 ? `${line.slice(0, 99)}…` : line
      throw Object.assign(new DeployError(redact(`${shown} ${why}${detail}`)), {
        command: redact(line),
        output: redact(tail(done.stdout + done.stderr, 20)),
      })
    }
    return result
  }
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
}

// ---------------------------------------------------------------------------------------
// Git: image tags and the commit range

/**
 * For each dir, the abbreviated hashes of the last five commits that touched it, newest
 * first, from one `git log` for all dirs: element n-1 is the original's
 * last_git_modified(dir, n) (`git log -n n --pretty=format:%h dir`, last line).
 */
export async function gitModified(run: Runner, dirs: string[]): Promise<Map<string, string[]>> {
  const found = new Map(dirs.map((dir) => [dir, [] as string[]]))
  if (dirs.length === 0) return found
  // --cc: a merge git lists (one that differs from every parent) names the files it resolved.
  const args = ['log', '--pretty=format:%x00%h', '--name-only', '--cc', '--', ...dirs]
  const { stdout } = await run('git', args, { capture: true, show: 'silent', readOnly: true })
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

/** The dirs the commit range touched; a range git cannot read touched them all. */
async function touchedDirs(run: Run, range: string, dirs: string[]): Promise<Set<string>> {
  const diff = await run.run('git', ['diff', '--name-only', range, '--', ...dirs], { capture: true, nothrow: true, show: 'silent', readOnly: true })
  if (diff.exitCode !== 0) {
    run.out.warn(`commit range ${range} is not valid here (force push or first build?): treating ${dirs.join(', ')} as changed`)
    return new Set(dirs)
  }
  const files = diff.stdout.split('\n')
  return new Set(dirs.filter((dir) => files.some((f) => f.startsWith(`${dir}/`))))
}

// ---------------------------------------------------------------------------------------
// Setup: credentials for gcloud, kubectl, helm and docker, in a private per-run directory.

/** Reads a secret file, refusing one that git-crypt has not unlocked. */
function readSecretFile(file: string, what: string): string {
  if (!fs.existsSync(file)) throw usageError(`${file}: ${what} not found; create it or set the key that names it in .env`)
  const bytes = fs.readFileSync(file)
  if (bytes.subarray(0, 9).toString('latin1') === '\0GITCRYPT') {
    throw usageError(`${file} is encrypted: run \`git-crypt unlock\` first`)
  }
  return bytes.toString('utf8')
}

/** Points kubectl, helm, gcloud and docker at a fresh private directory for this run. */
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
    DOCKER_CONFIG: docker,
  })
  return dir
}

async function setup(run: Run) {
  const { config, env, helmMajor } = run
  const keyFile = config.GCLOUD_KEY_FILE
  const password = run.dockerPassword ?? ''
  run.privateDir = privateConfigDir(env)
  const quietly = { show: 'silent', timeout: '5m' } as const
  await run.run('gcloud', ['auth', 'activate-service-account', `--key-file=${keyFile}`], { ...quietly, capture: true })
  await run.run('gcloud', ['container', 'clusters', 'get-credentials', config.GKE_CLUSTER, `--zone=${config.GKE_ZONE}`, `--project=${config.GCP_PROJECT}`], quietly)
  if (helmMajor === 2) {
    await run.run('helm', ['init', '--upgrade'], quietly)
    await run.run('kubectl', ['rollout', 'status', '--namespace', 'kube-system', '--watch', 'deployment', 'tiller-deploy'], quietly)
  }
  const server = config.DOCKER_REGISTRY ? [config.DOCKER_REGISTRY] : []
  await run.run('docker', ['login', '-u', config.DOCKER_USERNAME, '--password-stdin', ...server], { ...quietly, capture: true, input: password })
}

// ---------------------------------------------------------------------------------------
// Build and push

/** The images a chart has: its user image and hub image, when their dirs exist. */
async function chartImages(run: Run): Promise<ImageInfo[]> {
  const { chart, config } = run
  const kinds = [['user', 'user-images', config.USER_IMAGE_PREFIX], ['hub', 'hub-images', config.HUB_IMAGE_PREFIX]] as const
  const present = kinds.filter(([, root]) => fs.existsSync(`${root}/${chart}`))
  run.history = await gitModified(run.run, present.map(([, root]) => `${root}/${chart}`))
  return present.map(([kind, root, prefix]) => {
    const dir = `${root}/${chart}`
    const tag = run.history.get(dir)![0]
    if (!tag) throw usageError(`${dir} has no commits: commit it before building or deploying`)
    const name = `${prefix}${chart}`
    return { kind, dir, name, tag, spec: `${name}:${tag}` }
  })
}

/** A registry on this machine speaks plain HTTP; docker manifest needs --insecure for it. */
function insecureFlag(name: string): string[] {
  return /^(127\.\d+\.\d+\.\d+|localhost)(:\d+)?\//.test(name) ? ['--insecure'] : []
}

/** Whether the registry has `spec`, asked without pulling it; a registry that cannot be asked says no. */
async function imageExists(run: Run, name: string, tag: string): Promise<boolean> {
  const r = await run.run('docker', ['manifest', 'inspect', ...insecureFlag(name), `${name}:${tag}`], { capture: true, nothrow: true, show: 'probe', readOnly: false, timeout: '60s' })
  if (r.exitCode !== 0 && !/no such manifest|manifest unknown|not found/i.test(r.stderr)) {
    run.out.warn(`could not ask the registry about ${name}:${tag} (${tail(r.stderr, 1)}): treating it as missing`)
  }
  return r.exitCode === 0
}

async function needsRebuild(run: Run, image: ImageInfo, touched: Set<string> | undefined): Promise<boolean> {
  if (touched?.has(image.dir)) return true
  if (run.dryRun) {
    run.out.print(`# ${image.spec}: built only if the registry lacks it`)
    await imageExists(run, image.name, image.tag)
    return true
  }
  if (await imageExists(run, image.name, image.tag)) return false
  run.out.info(`${image.spec} is not in the registry: building it`)
  return true
}

/** BuildKit reads --cache-from straight from the registry when images carry inline cache. */
function buildKit(run: Run): boolean {
  return run.env.DOCKER_BUILDKIT === '1'
}

/**
 * The newest of the dir's last five tags that the registry has, for --cache-from: pulled
 * for the legacy builder (which ignores an image it does not have), not for BuildKit.
 */
async function findCacheImage(run: Run, image: ImageInfo): Promise<string | undefined> {
  const candidates = run.history.get(image.dir) ?? []
  // All lookups at once: each costs a registry round trip, whatever the image's size.
  const found = run.dryRun ? candidates.map(() => true) : await Promise.all(candidates.map((tag) => imageExists(run, image.name, tag)))
  const tag = candidates[found.indexOf(true)]
  if (!tag) return undefined
  const spec = `${image.name}:${tag}`
  if (buildKit(run)) return spec
  const pull = await run.run('docker', ['pull', spec], { nothrow: true, timeout: `${run.config.buildTimeoutSeconds}s` })
  if (pull.exitCode === 0) return spec
  run.out.warn(`could not pull ${spec}: building without a cache`)
  return undefined
}

async function buildImage(run: Run, image: ImageInfo, touched: Set<string> | undefined) {
  const label = image.kind === 'hub' ? 'hub image' : 'image'
  if (!(await needsRebuild(run, image, touched))) {
    run.out.print(`Do not need to rebuild ${label}, using ${image.spec}`)
    return
  }
  const cache = await findCacheImage(run, image)
  const cacheArgs = cache ? ['--cache-from', cache] : []
  const inlineCache = buildKit(run) ? ['--build-arg', 'BUILDKIT_INLINE_CACHE=1'] : []
  await run.run('docker', ['build', ...cacheArgs, ...inlineCache, '-t', image.spec, image.dir], { timeout: `${run.config.buildTimeoutSeconds}s` })
  image.built = true
  if (run.phases.push) await pushImage(run, image)
  run.out.print(`build completed for ${label} ${image.spec}`)
}

async function pushImage(run: Run, image: ImageInfo) {
  await runHooks(run, 'beforePush', 'push')
  const pushed = await run.run('docker', ['push', image.spec], { nothrow: true, timeout: `${run.config.buildTimeoutSeconds}s` })
  if (pushed.exitCode !== 0) {
    throw new DeployError(`docker push ${image.spec} failed (exit ${pushed.exitCode}): is the registry reachable and are you logged in?`)
  }
  image.pushed = true
  await runHooks(run, 'afterPush', 'push')
}

/** The original's build_user_image and build_hub_image, in that order; push follows each build. */
async function build(run: Run) {
  const range = commitRange(run.env)
  const touched = range && run.images.length ? await touchedDirs(run, range, run.images.map((i) => i.dir)) : undefined
  for (const image of run.images) await buildImage(run, image, touched)
}

// ---------------------------------------------------------------------------------------
// Deploy

function chartDir(chart: string): string {
  return chart === 'monitoring' ? 'monitoring' : `hub-charts/${chart}`
}

/** The --set-string arguments that point the chart at this commit's images. */
function imageArgs(run: Run): string[] {
  return run.images.flatMap((image) => {
    run.out.print(`Using ${image.spec} as ${image.kind} image for ${run.chart}`)
    return ['--set-string', `jupyterhub.${image.kind === 'user' ? 'singleuser' : 'hub'}.image.tag=${image.tag}`]
  })
}

interface ReleaseRevision {
  revision: number
  status: string
  description?: string
  chart?: string
  app_version?: string
}

/** The release's history (Helm 3), oldest first; empty when there is no such release. */
async function releaseHistory(run: Runner, chart: string): Promise<ReleaseRevision[]> {
  const r = await run('helm', ['history', chart, '--namespace', chart, '-o', 'json'], { capture: true, nothrow: true, show: 'probe', readOnly: true, timeout: '60s' })
  if (r.exitCode !== 0) return []
  return JSON.parse(r.stdout || '[]')
}

/**
 * A release an interrupted run left pending-*: with --recover, rolled back to the last
 * deployed revision (or uninstalled if it never deployed); otherwise an error naming the
 * state and the repair. Returns whether the release was pending.
 */
async function handlePendingRelease(run: Run): Promise<boolean> {
  const history = await releaseHistory(run.run, run.chart)
  const last = history.at(-1)
  if (!last || !last.status.startsWith('pending-')) return false
  const deployed = [...history].reverse().find((r) => r.status === 'deployed' || r.status === 'superseded')
  const ns = ['--namespace', run.chart]
  const repair = deployed ? ['rollback', run.chart, String(deployed.revision), ...ns, '--wait', '--timeout', `${run.config.helmTimeoutSeconds}s`] : ['uninstall', run.chart, ...ns]
  if (!run.recover) {
    throw new DeployError(`release ${run.chart} is stuck in ${last.status} (revision ${last.revision}, an earlier run was interrupted): repair with \`helm ${repair.join(' ')}\` or rerun with --recover`)
  }
  run.out.warn(`release ${run.chart} is stuck in ${last.status}: recovering with helm ${repair.join(' ')}`)
  await run.run('helm', repair)
  return true
}

/** How helm 3 refuses to upgrade a release that is pending-install/upgrade/rollback. */
const PENDING = /another operation \(install\/upgrade\/rollback\) is in progress/

function helmUpgradeArgs(run: Run, extra: string[]): string[] {
  const { chart, config } = run
  const common = ['upgrade', '--install', '--namespace', chart, chart, chartDir(chart)]
  const secretsFile = ['-f', `secrets/${chart}.yaml`]
  if (run.helmMajor === 2) {
    return [...common, '--force', '--wait', '--timeout', String(config.helmTimeoutSeconds), '--cleanup-on-fail', ...secretsFile, ...extra]
  }
  return [...common, '--wait', '--timeout', `${config.helmTimeoutSeconds}s`, '--cleanup-on-fail', '--create-namespace', ...secretsFile, ...extra]
}

async function deploy(run: Run, pluginArgs: string[]) {
  const extra = [...imageArgs(run), ...pluginArgs]
  await run.run('helm', ['dep', 'up'], { cwd: chartDir(run.chart), timeout: '5m' })
  if (run.recover && run.helmMajor === 3 && !run.dryRun) await handlePendingRelease(run)
  // helm stops waiting at its own --timeout; ours is only a backstop.
  const backstop = `${run.config.helmTimeoutSeconds + 120}s`
  const upgrade = await run.run('helm', helmUpgradeArgs(run, extra), { timeout: backstop }).catch(async (e: DeployError) => {
    // A pending release is refused by helm before it changes anything: name the state and the repair.
    if (run.helmMajor === 3 && PENDING.test(e.output ?? '') && (await handlePendingRelease(run))) throw e
    await printDiagnostics(run)
    throw e
  })
  const revision = /^REVISION: (\d+)$/m.exec(upgrade.stdout)?.[1]
  if (revision) run.revision = Number(revision)
}

/** What the cluster says about the namespace, printed after a failed upgrade or rollout (not when cancelled). */
async function printDiagnostics(run: Run) {
  if (cancelled) return
  const ns = run.chart
  run.out.error(`diagnostics for namespace ${ns}:`)
  const opts = { nothrow: true, timeout: '60s' } as const
  await run.run('kubectl', ['get', 'events', '--namespace', ns, '--sort-by=.lastTimestamp'], opts)
  await run.run('kubectl', ['get', 'pods', '--namespace', ns], opts)
  await run.run('helm', run.helmMajor === 2 ? ['status', ns] : ['status', ns, '--namespace', ns], opts)
}

// ---------------------------------------------------------------------------------------
// Rollout

async function rollout(run: Run) {
  const ns = run.chart
  run.out.info('Waiting for all deployments to be up and running')
  const list = await run.run('kubectl', ['--namespace', ns, 'get', 'deployments', '-o', 'name'], { capture: true, timeout: '2m' })
  const timeout = `--timeout=${run.config.rolloutTimeoutSeconds}s`
  if (run.dryRun) {
    run.out.print(`+ kubectl rollout status --namespace ${ns} --watch <each deployment> ${timeout} (all at once)`)
    return
  }
  const deployments = list.stdout.split('\n').map((l) => l.trim()).filter(Boolean)
  if (deployments.length === 0) {
    run.out.info(`no deployments in namespace ${ns}: nothing to wait for`)
    return
  }
  const results = await Promise.allSettled(deployments.map((d) =>
    run.run('kubectl', ['rollout', 'status', '--namespace', ns, '--watch', d, timeout], {
      prefix: `[${d.replace(/^.*\//, '')}] `,
      timeout: `${run.config.rolloutTimeoutSeconds + 60}s`,
    })))
  const failed = deployments.filter((_, i) => results[i].status === 'rejected')
  if (failed.length) throw new DeployError(`rollout of ${failed.join(', ')} did not finish within ${run.config.ROLLOUT_TIMEOUT}`)
}

// ---------------------------------------------------------------------------------------
// Plugins

/** Loads `--plugin` names and paths; a bare name means plugins/<name>.ts. */
async function loadPlugins(names: string[]): Promise<Plugin[]> {
  const plugins: Plugin[] = []
  for (const name of names) {
    const file = /[/\\]|\.ts$/.test(name) ? name : `plugins/${name}.ts`
    if (!fs.existsSync(file)) throw usageError(`${file}: plugin not found (check --plugin / DEPLOY_PLUGINS)`)
    let mod: { default?: unknown }
    try {
      mod = await import(pathToFileURL(path.resolve(file)).href)
    } catch (e) {
      throw usageError(`${file}: plugin failed to load: ${String((e as Error).message ?? e).split('\n')[0]}`)
    }
    const plugin = mod.default as Plugin | undefined
    const valid = plugin && typeof plugin === 'object' && typeof plugin.name === 'string' &&
      Object.entries(plugin).every(([k, v]) => k === 'name' || !(HOOKS as readonly string[]).includes(k) || typeof v === 'function')
    if (!valid) throw usageError(`${file}: default export is not a plugin (an object with a name and hook functions)`)
    // The same file named twice (`x`, `plugins/x.ts`) is the same module: load it once.
    if (!plugins.includes(plugin)) plugins.push(plugin)
  }
  return plugins
}

const BEST_EFFORT_TIMEOUT_SECONDS = 10

function hookContext(run: Run): HookContext {
  return {
    chart: run.chart,
    phases: run.phases,
    config: run.config,
    helmMajor: run.helmMajor,
    images: run.images,
    commit: run.commit,
    chartDir: chartDir(run.chart),
    dryRun: run.dryRun,
    timings: run.timings,
    log: run.out,
    run: run.run,
    redact,
    parseDuration,
    revision: run.revision,
  }
}

/** Calls one plugin's hook, bounded: a hook that does not finish in time is an error naming it. */
async function callHook(run: Run, plugin: Plugin, hook: HookName, seconds: number, extra: Partial<HookContext> = {}) {
  let timer: NodeJS.Timeout | undefined
  const bound = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`did not finish within ${seconds}s`)), seconds * 1000)
  })
  const fn = plugin[hook] as (ctx: HookContext) => unknown
  try {
    return await Promise.race([fn.call(plugin, { ...hookContext(run), ...extra }), bound])
  } finally {
    clearTimeout(timer)
  }
}

/**
 * Runs a blocking hook of every plugin in order; a throw stops the run. Returns the extra
 * `helm upgrade` arguments `beforeDeploy` hooks give.
 */
async function runHooks(run: Run, hook: Exclude<HookName, 'success' | 'fail'>, phase: Phase): Promise<string[]> {
  const helmArgs: string[] = []
  if (run.dryRun) return helmArgs
  for (const plugin of run.plugins.filter((p) => p[hook])) {
    try {
      const result = await callHook(run, plugin, hook, run.config.hookTimeoutSeconds) as { helmArgs?: unknown } | undefined
      const args = hook === 'beforeDeploy' ? result?.helmArgs ?? [] : []
      if (!Array.isArray(args) || args.some((a) => typeof a !== 'string')) throw new Error('helmArgs must be an array of strings')
      helmArgs.push(...args)
    } catch (e) {
      // A later hook refuses (exit 3) by throwing an error whose exitCode is 3.
      const code = hook === 'verify' || (e as { exitCode?: unknown })?.exitCode === EXIT.refused ? EXIT.refused : EXIT.failed
      throw Object.assign(new DeployError(`plugin ${plugin.name} ${hook}: ${(e as Error)?.message ?? e}`, code), { phase })
    }
  }
  return helmArgs
}

/** success/fail hooks: each bounded, errors logged, never changing the exit status. */
async function runFinalHooks(run: Run, hook: 'success' | 'fail', extra: Partial<HookContext> = {}) {
  if (run.dryRun) return
  for (const plugin of run.plugins.filter((p) => p[hook])) {
    try {
      await callHook(run, plugin, hook, BEST_EFFORT_TIMEOUT_SECONDS, extra)
    } catch (e) {
      run.out.warn(`plugin ${plugin.name} ${hook} failed: ${(e as Error)?.message ?? e}`)
    }
  }
}

// ---------------------------------------------------------------------------------------
// The run

interface Run {
  chart: string
  phases: HookContext['phases']
  config: Config
  env: NodeJS.ProcessEnv
  helmMajor: 2 | 3
  dryRun: boolean
  recover: boolean
  run: Runner
  images: ImageInfo[]
  /** Each image dir's last five commits, newest first (tags and cache candidates). */
  history: Map<string, string[]>
  commit: string
  timings: HookContext['timings']
  plugins: Plugin[]
  dockerPassword?: string
  privateDir?: string
  revision?: number
  phase?: Phase
  out: Output
  /** How the run ended, for the multi-chart summary. */
  result?: 'ok' | 'failed' | 'skipped'
  error?: DeployError
  seconds?: number
}

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

/** Helm's major version from the client alone (Helm 2 would ask tiller without --client). */
async function helmMajorVersion(run: Runner, env: NodeJS.ProcessEnv): Promise<2 | 3 | undefined> {
  if (!onPath('helm', env)) return undefined
  const r = await run('helm', ['version', '--client', '--short'], { capture: true, nothrow: true, show: 'probe', readOnly: true })
  const major = /v(\d+)\./.exec(r.stdout)?.[1]
  return major === '2' ? 2 : major === '3' ? 3 : undefined
}

/** Keys of .env and the environment whose values are secrets: webhook URLs, tokens, keys, passwords. */
const SECRET_KEY = /(WEBHOOK_URL|TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|CRYPT_KEY)$/i

function collectEnvSecrets(run: Run) {
  for (const [key, value] of Object.entries(run.config.env)) if (SECRET_KEY.test(key)) addSecret(value)
}

/** Registers every leaf of a secrets/<chart>.yaml as a secret. */
function addSecretLeaves(yamlText: string) {
  const leaves = (v: unknown): string[] =>
    v && typeof v === 'object' ? Object.values(v).flatMap(leaves) : v === null || v === undefined ? [] : [String(v)]
  for (const leaf of leaves(YAML.parse(yamlText))) addSecret(leaf)
}

/** Reads a secret file the run needs; a dry run notes a missing or locked one and goes on. */
function secretFileFor(run: Run, file: string, what: string): string | undefined {
  try {
    return readSecretFile(file, what)
  } catch (e) {
    if (!run.dryRun) throw e
    run.out.print(`# ${(e as Error).message} (a real run stops here, exit 2)`)
    return undefined
  }
}

/** What every chart of one invocation shares, checked once. */
interface Shared {
  commit: string
  helmMajor: 2 | 3
  dockerPassword?: string
}

/**
 * Checks that hold for the whole invocation before a command runs (bad input stops here
 * with exit 2): git and the repository, the tools on PATH, Helm's version, setup's files.
 */
async function checkRepository(run: Run): Promise<Shared> {
  const { phases, env } = run
  YAML ??= (await import('yaml')).default
  if (!onPath('git', env)) throw usageError(`git not found on PATH: ${INSTALL_HINTS.git}`)
  const rev = await run.run('git', ['rev-parse', '--is-shallow-repository', 'HEAD'], { capture: true, nothrow: true, show: 'silent', readOnly: true })
  if (rev.exitCode !== 0) throw usageError(`${process.cwd()} is not a git repository with commits: run deploy.ts from the root of the ops repository`)
  const [shallow, commit] = rev.stdout.trim().split('\n')
  if (shallow === 'true' && (phases.build || phases.deploy)) {
    throw usageError('this is a shallow clone, so image tags would be wrong: run `git fetch --unshallow` (in CI, clone with full depth)')
  }
  const shared: Shared = { commit, helmMajor: 3 }
  if (phases.setup) {
    const key = secretFileFor(run, run.config.GCLOUD_KEY_FILE, 'GCLOUD_KEY_FILE (the service account key)')
    try {
      addSecret(JSON.parse(key ?? '{}').private_key)
    } catch {
      // A key file gcloud cannot read fails in gcloud, with its own message.
    }
    shared.dockerPassword = secretFileFor(run, run.config.DOCKER_PASSWORD_FILE, 'DOCKER_PASSWORD_FILE (the Docker Hub password)')?.trim()
    addSecret(shared.dockerPassword)
  }
  collectEnvSecrets(run)
  if (!run.dryRun) {
    const needed = new Set<string>()
    if (phases.setup) ['gcloud', 'kubectl', 'helm', 'docker'].forEach((t) => needed.add(t))
    if (phases.build) needed.add('docker')
    if (phases.deploy) ['helm', 'kubectl'].forEach((t) => needed.add(t))
    for (const tool of needed) if (!onPath(tool, env)) throw usageError(`${tool} not found on PATH: ${INSTALL_HINTS[tool]}`)
  }
  const major = await helmMajorVersion(run.run, env)
  if (major) shared.helmMajor = major
  else if (run.dryRun) run.out.print('# helm not found: planning for Helm 3')
  else if (phases.setup || phases.deploy) throw usageError('could not tell the Helm version from `helm version`: install Helm 2 or 3')
  return shared
}

/** The chart's own checks: its Chart.yaml, its secret values, its image tags. */
async function checkChart(run: Run, shared: Shared) {
  Object.assign(run, shared)
  checkChartYaml(run.chart)
  if (run.phases.deploy) {
    const values = secretFileFor(run, `secrets/${run.chart}.yaml`, 'the chart\'s secret values file')
    if (values) addSecretLeaves(values)
  }
  if (run.phases.build || run.phases.deploy) run.images = await chartImages(run)
}

async function phase<T>(run: Run, name: Phase, fn: () => Promise<T>): Promise<T> {
  run.phase = name
  const start = Date.now()
  const result = await inGroup(run.out, name, `${name} ${run.chart}`, fn)
  run.timings[name] = Date.now() - start
  return result
}

/** The phases in the original's order, with the plugin hooks around them. */
async function runPhases(run: Run) {
  const { phases } = run
  await runHooks(run, 'verify', 'verify')
  if (phases.setup) {
    await runHooks(run, 'beforeSetup', 'setup')
    await phase(run, 'setup', () => setup(run))
    await runHooks(run, 'afterSetup', 'setup')
  }
  if (phases.build) {
    await runHooks(run, 'beforeBuild', 'build')
    await phase(run, 'build', () => build(run))
    await runHooks(run, 'afterBuild', 'build')
  }
  if (phases.deploy) {
    const pluginArgs = await runHooks(run, 'beforeDeploy', 'deploy')
    await phase(run, 'deploy', () => deploy(run, pluginArgs))
    await runHooks(run, 'afterDeploy', 'deploy')
    await phase(run, 'rollout', () => rollout(run).catch(async (e) => {
      await printDiagnostics(run)
      throw e
    }))
    await runHooks(run, 'afterRollout', 'rollout')
  }
}

// ---------------------------------------------------------------------------------------
// Several charts, changed charts

/** Charts whose files the commit range changed; deploy.ts, plugins/ or package.json mean all. */
async function changedCharts(run: Runner, out: Output, range: string, charts: string[]): Promise<string[]> {
  const diff = await run('git', ['diff', '--name-only', range], { capture: true, nothrow: true, show: 'silent', readOnly: true })
  if (diff.exitCode !== 0) {
    out.warn(`commit range ${range} is not valid here (force push or first build?): every chart counts as changed`)
    return charts
  }
  const changed = new Set<string>()
  for (const file of diff.stdout.split('\n').filter(Boolean)) {
    if (file === 'deploy.ts' || file.startsWith('plugins/') || file === 'package.json' || file === 'package-lock.json') return charts
    const hub = /^(?:hub-charts|user-images|hub-images)\/([^/]+)\//.exec(file)?.[1] ?? /^secrets\/([^/]+)\.yaml$/.exec(file)?.[1]
    if (hub) changed.add(hub)
    if (file.startsWith('monitoring/')) changed.add('monitoring')
  }
  return charts.filter((c) => changed.has(c))
}

/** Runs one chart's phases; records how it ended instead of throwing. */
async function execute(run: Run) {
  const start = Date.now()
  try {
    await runPhases(run)
    run.result = 'ok'
  } catch (e) {
    run.result = 'failed'
    run.error = e instanceof DeployError ? e : new DeployError(String((e as Error)?.stack ?? e))
    if (cancelled) return
    const failedPhase = (e as { phase?: Phase }).phase ?? run.phase
    run.out.error(run.error.message)
    run.error.reported = true
    await runFinalHooks(run, 'fail', { error: run.error, failedPhase, reason: 'failed' })
  } finally {
    cleanup(run)
    run.seconds = (Date.now() - start) / 1000
  }
  if (run.result === 'ok') await runFinalHooks(run, 'success')
}

/** The staging chart first (nothing else deploys if it fails), then the rest, `parallel` at a time. */
async function executeAll(runs: Run[], parallel: number) {
  const queue = [...runs]
  if (queue[0].chart === queue[0].config.STAGING_CHART) {
    const staging = queue.shift()!
    await execute(staging)
    if (staging.result !== 'ok') {
      for (const run of queue) run.result = 'skipped'
      return
    }
  }
  const worker = async () => {
    for (let run = queue.shift(); run && !cancelled; run = queue.shift()) {
      await execute(run)
      run.out.flush(`deploy ${run.chart}`)
    }
  }
  await Promise.all(Array.from({ length: Math.min(parallel, queue.length) }, worker))
}

function printSummary(runs: Run[]) {
  const rows = [['chart', 'phase reached', 'result', 'duration', 'images', 'revision']]
  for (const run of runs) {
    rows.push([
      run.chart,
      run.phase ?? '-',
      run.dryRun && run.result === 'ok' ? 'planned' : run.result ?? 'not run',
      run.seconds === undefined ? '-' : `${run.seconds.toFixed(1)}s`,
      run.images.map((i) => i.tag).join(',') || '-',
      run.revision === undefined ? '-' : String(run.revision),
    ])
  }
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)))
  log.print(rows.map((r) => r.map((c, i) => c.padEnd(widths[i])).join('  ').trimEnd()).join('\n'))
}

// ---------------------------------------------------------------------------------------
// CLI

const USAGE = `usage: deploy.ts [--no-setup] [--build] [--push] [--deploy] [options] <chartname>...

Builds the chart's images and deploys it with helm, like deploy.py. With several charts,
the staging chart goes first and the others follow only if it succeeds.

  --no-setup        skip setup (use your own gcloud/kubectl/docker configuration)
  --build           build the user and hub images that need it
  --push            push what was built (only with --build)
  --deploy          helm upgrade the chart, then wait for its deployments
  --dry-run         print the commands the run would execute; runs nothing
  --recover         repair a release an interrupted run left pending, then deploy
  --plugin NAME     load plugins/NAME.ts (or a path); repeatable; also DEPLOY_PLUGINS
  --parallel N      charts deployed at once after the staging chart (default 3)
  --changed RANGE   print the charts whose files RANGE changed, one per line
  --json            with --changed: print them as a JSON array (a CI matrix)
  --env-file FILE   read configuration from FILE instead of .env
  --dotenv FILE     the same; use it under Node 20, which claims --env-file for itself
  --list            print the charts this repository has
  --verbose         also show read-only probes (registry lookups, helm history)
  --version, --help

Exit codes: 0 success, 1 an external command failed, 2 usage or configuration error
(nothing run), 3 refused by a plugin (its verify hook, or a check such as the staging
promotion), 130/143 interrupted (SIGINT/SIGTERM).`

const FLAGS = {
  boolean: ['setup', 'build', 'push', 'deploy', 'dry-run', 'recover', 'list', 'verbose', 'version', 'help', 'json'],
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

/** Set once SIGINT or SIGTERM arrived: the run is ending as cancelled. */
let cancelled: NodeJS.Signals | undefined

/** Passes the signal on to the running commands, waits for them (30 s at most), then kills. */
async function killRunning(signal: NodeJS.Signals) {
  // The shell zx starts execs the tool, so the child's pid is the tool's. zx's own kill
  // signals a process group, which under Deno takes this process down too.
  const signalAll = (sig: NodeJS.Signals) => {
    for (const p of running) {
      try {
        if (p.pid) process.kill(p.pid, sig)
      } catch {
        // Already gone.
      }
    }
  }
  const all = [...running]
  signalAll(signal)
  const deadline = new Promise((resolve) => setTimeout(resolve, 30_000).unref())
  await Promise.race([Promise.allSettled(all), deadline])
  signalAll('SIGKILL')
}

function onSignals(runs: Run[]) {
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.on(signal, async () => {
      if (cancelled) return
      cancelled = signal
      log.error(`${signal} received: stopping`)
      await killRunning(signal)
      for (const run of runs.filter((r) => r.phase && !r.result)) {
        run.result = 'failed'
        await runFinalHooks(run, 'fail', { error: new Error(`cancelled by ${signal}`), failedPhase: run.phase, reason: 'cancelled' })
        cleanup(run)
      }
      for (const run of runs) run.out.flush(`deploy ${run.chart}`)
      process.exit(signal === 'SIGINT' ? EXIT.sigint : EXIT.sigterm)
    })
  }
}

function newRun(chart: string, args: ReturnType<typeof parseArgs>, config: Config, plugins: Plugin[], out: Output): Run {
  const env: NodeJS.ProcessEnv = { ...config.env }
  const dryRun = args['dry-run']
  const heartbeatSeconds = process.stdout.isTTY ? 0 : config.heartbeatSeconds
  return {
    chart,
    phases: { setup: args.setup, build: args.build, push: args.build && args.push, deploy: args.deploy },
    config,
    env,
    helmMajor: 3,
    dryRun,
    recover: args.recover,
    run: makeRunner({ env, dryRun, out, heartbeatSeconds }),
    images: [],
    history: new Map(),
    commit: '',
    timings: {},
    plugins,
    out,
  }
}

async function main(argv: string[]): Promise<number> {
  const args = parseArgs(argv)
  if (args.help) {
    log.print(USAGE)
    return EXIT.ok
  }
  if (args.version) {
    log.print(`deploy.ts ${version()}`)
    return EXIT.ok
  }
  verbose = args.verbose
  const config = loadConfig(args['env-file'])
  const charts = discoverCharts()
  if (args.list) {
    log.print(charts.join('\n'))
    return EXIT.ok
  }
  // Loaded before any signal handler exists, so a signal never finds a command between import and spawn.
  zx ??= await import('zx/core')
  if (args.changed !== undefined) {
    const runner = makeRunner({ env: config.env, dryRun: false, out: log, heartbeatSeconds: 0 })
    const changed = await changedCharts(runner, log, args.changed, charts)
    process.stdout.write(args.json ? JSON.stringify(changed) + '\n' : changed.map((c) => c + '\n').join(''))
    return EXIT.ok
  }
  const names = [...new Set(args._.map(String))]
  if (names.length === 0) throw usageError(`no chart name given; valid charts: ${charts.join(', ')}`)
  const unknown = names.filter((n) => !charts.includes(n))
  if (unknown.length) throw usageError(`unknown chart "${unknown[0]}"; valid charts: ${charts.join(', ') || '(none found)'}`)
  if (args.push && !args.build) log.warn('--push does nothing without --build (as in deploy.py): add --build to push images')
  // Staging first: production charts follow only when it succeeded.
  names.sort((a, b) => Number(b === config.STAGING_CHART) - Number(a === config.STAGING_CHART))
  const pluginNames = [...[args.plugin ?? []].flat(), ...config.DEPLOY_PLUGINS.split(',')].map((s) => s.trim()).filter(Boolean)
  const plugins = await loadPlugins([...new Set(pluginNames)])
  const many = names.length > 1
  const runs = names.map((chart, i) =>
    newRun(chart, args, config, plugins, many ? new Output(`[${chart}] `, i > 0, false) : new Output()))
  const shared = await checkRepository(runs[0])
  await Promise.all(runs.map((run) => checkChart(run, shared)))
  if (args['dry-run']) {
    for (const run of runs) {
      run.out.print(`# dry run: ${run.chart} at ${run.commit.slice(0, 12)}, Helm ${run.helmMajor}; nothing below is executed`)
      for (const p of plugins) {
        const hooks = HOOKS.filter((h) => typeof p[h] === 'function')
        run.out.print(`# plugin ${p.name}: ${hooks.join(', ') || 'no hooks'} (not called in a dry run)`)
      }
    }
  }
  onSignals(runs)
  await executeAll(runs, Number(args.parallel ?? 3))
  if (cancelled) return new Promise(() => undefined)
  printSummary(runs)
  const failed = runs.find((r) => r.result === 'failed')
  if (!many && failed) throw failed.error
  return failed ? failed.error!.exitCode : EXIT.ok
}

function cleanup(run: Run) {
  if (run.privateDir) fs.rmSync(run.privateDir, { recursive: true, force: true })
  run.privateDir = undefined
}

function isMain(): boolean {
  if ((import.meta as { main?: boolean }).main) return true
  const entry = process.argv[1]
  return !!entry && path.resolve(entry) === fileURLToPath(import.meta.url)
}

if (isMain()) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (e: unknown) => {
      const err = e instanceof DeployError ? e : new DeployError(String((e as Error)?.stack ?? e))
      const message = redact(err.message)
      if (!err.reported) process.stderr.write(`ERROR: ${message}\n`)
      if (CI.github) process.stdout.write(`::error::${message.split('\n')[0]}\n`)
      process.exit(err.exitCode)
    },
  )
}
