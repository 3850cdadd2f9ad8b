/**
 * The invocation (secrets, output, cancellation) and exec, the one place that starts processes.
 */
import process from 'node:process'
import fs from 'node:fs'
import path from 'node:path'
import type { Buffer } from 'node:buffer'
import type YAMLModule from 'yaml'
import { DeployError, EXIT, type CommandResult, type Exec, type ExecOptions, type HookContext, type Logger } from './contract.ts'
import { MAX_DURATION_SECONDS, SHELL_STARTUP, formatDuration, parseDuration } from './config.ts'
import { Secrets, errorLine } from './secrets.ts'
import { REACH_THE_CLUSTER, clusterFault } from './cluster.ts'

/** Which CI runs us: its collapsible log sections and error annotations. */
export interface Ci {
  readonly travis: boolean
  readonly github: boolean
}

export const ciOf = (env: NodeJS.ProcessEnv): Ci => ({ travis: env.TRAVIS === 'true', github: env.GITHUB_ACTIONS === 'true' })

/** The web page of the CI run that runs us: the one place that knows each CI's variables. */
export function ciRunUrl(env: Record<string, string | undefined>): string | undefined {
  const github = env.GITHUB_REPOSITORY && env.GITHUB_RUN_ID
    ? `${env.GITHUB_SERVER_URL ?? 'https://github.com'}/${env.GITHUB_REPOSITORY}/actions/runs/${env.GITHUB_RUN_ID}`
    : undefined
  const travis = env.TRAVIS_BUILD_WEB_URL ?? env.TRAVIS_JOB_WEB_URL
  // Only one CI runs us; should both leave variables behind, the one that says it runs us wins.
  return env.TRAVIS === 'true' ? travis ?? github : github ?? travis
}

export interface OutputOptions {
  /** Before every line: `[ea-hub] ` when several charts run. */
  prefix?: string
  /** Hold the lines back and print them as one block at flush() (a chart deployed alongside others). */
  hold?: boolean
  /** Phase headers open CI groups (not inside a held block, which is one group itself). */
  groups?: boolean
  /** Where stdout lines go: `stderr` keeps stdout for one JSON document (--json). */
  stdout?: 'stdout' | 'stderr'
}

/**
 * Writes a log line. A reader that went away or a full disk drops the log, never the run
 * (Node reports the failed write as an event, Deno throws it).
 */
export function emit(stream: 'stdout' | 'stderr', text: string) {
  try {
    process[stream].write(text)
  } catch {
    // Dropped, as with EPIPE (docs/reliability.md).
  }
}

/**
 * What the invocation was asked to print (a chart list, a JSON document, --help): a write that
 * fails is exit 1 with one line on stderr, never exit 0 with nothing written.
 */
export function writeResult(text: string): Promise<void> {
  const failed = (e: unknown) => {
    const { code, message } = (e ?? {}) as { code?: string; message?: string }
    return new DeployError(`could not write the result to standard output (${code ?? String(message).split('\n')[0]}): nothing, or only part of it, was written`)
  }
  return new Promise((resolve, reject) => {
    try {
      process.stdout.write(text, (e) => (e ? reject(failed(e)) : resolve()))
    } catch (e) {
      reject(failed(e))
    }
  })
}

/**
 * Where one chart's lines go: redacted, each line prefixed, and, for a chart deployed
 * alongside others, held back and printed as one block when it finishes. Heartbeats bypass
 * the hold: CI must see output while it waits.
 */
export class Output implements Logger {
  private held: Array<['stdout' | 'stderr', string]> | undefined
  readonly prefix: string
  readonly groups: boolean
  readonly stdout: 'stdout' | 'stderr'

  constructor(readonly secrets: Secrets, readonly ci: Ci, { prefix = '', hold = false, groups = true, stdout = 'stdout' }: OutputOptions = {}) {
    this.prefix = prefix
    this.groups = groups
    this.stdout = stdout
    if (hold) this.held = []
  }

  write(stream: 'stdout' | 'stderr', text: string, prefix = '') {
    const lines = this.secrets.redact(text).split('\n')
    const last = lines.pop()
    const out = lines.map((l) => `${this.prefix}${prefix}${l}\n`).join('') + (last ? `${this.prefix}${prefix}${last}` : '')
    const to = stream === 'stdout' ? this.stdout : stream
    if (this.held) this.held.push([to, out])
    else emit(to, out)
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
    emit(this.stdout, this.secrets.redact(`${this.prefix}${text}\n`))
  }

  /** Opens or closes a collapsible section: travis_fold on Travis, ::group:: on GitHub Actions. */
  group(edge: 'start' | 'end', title: string, id = title.replace(/\W+/g, '-')) {
    if (this.ci.travis) emit('stdout', `travis_fold:${edge}:${id}\n`)
    if (this.ci.github) emit('stdout', edge === 'start' ? `::group::${title}\n` : '::endgroup::\n')
  }

  /** Prints what was held, as one collapsible group in CI logs. */
  flush(title: string) {
    const held = this.held
    if (!held) return
    this.held = undefined
    this.group('start', title)
    for (const [stream, text] of held) emit(stream, text)
    this.group('end', title)
  }
}

/** Prints a phase header, runs it, prints its duration; a collapsible group in CI logs. */
export async function inGroup<T>(out: Output, id: string, title: string, fn: () => Promise<T>): Promise<T> {
  const start = Date.now()
  if (out.groups) out.group('start', title, id)
  out.print(`==> ${title}`)
  try {
    return await fn()
  } finally {
    out.print(`<== ${title} (${((Date.now() - start) / 1000).toFixed(1)}s)`)
    if (out.groups) out.group('end', title, id)
  }
}

/** The libraries a run needs and --help, --version and --list do not (docs/performance.md, P3). */
export interface Runtime {
  readonly $: typeof import('zx/core').$
  readonly YAML: typeof YAMLModule
}

export class Invocation {
  readonly secrets = new Secrets()
  readonly ci: Ci
  /** Messages that belong to no chart (bad input, the multi-chart summary). */
  readonly log: Output
  /** Aborted on SIGINT/SIGTERM: running commands are stopped, waits and hooks end. */
  private readonly controller = new AbortController()
  readonly signal = this.controller.signal
  /** Whether read-only probes are announced (--verbose). */
  verbose = false
  /** The signal that cancelled the run. */
  cancelled: NodeJS.Signals | undefined
  /** Private credentials dirs of runs not cleaned up yet: removed at exit, however the process ends. */
  readonly privateDirs = new Set<string>()
  /** The commands still running (lib/process.ts, spawn): none outlives the invocation. */
  readonly children = new Set<Child>()
  private loaded: Runtime | undefined
  /** Puts process.exit (and Deno.exit) back, while guardExit() holds them. */
  private unguard: (() => void) | undefined

  constructor(env: NodeJS.ProcessEnv = process.env) {
    this.ci = ciOf(env)
    this.log = new Output(this.secrets, this.ci)
  }

  /** An Output of this invocation's secrets and CI. */
  output(options: OutputOptions = {}): Output {
    return new Output(this.secrets, this.ci, options)
  }

  /** Loads zx and yaml, once: the invocation's one lazy boundary, after --help, --version and --list. */
  async load(): Promise<Runtime> {
    if (!this.loaded) {
      const [zx, yaml] = await Promise.all([import('zx/core'), import('yaml')])
      this.loaded = { $: zx.$, YAML: yaml.default }
    }
    return this.loaded
  }

  /** What load() loaded; only after it. */
  get runtime(): Runtime {
    if (!this.loaded) throw new Error('Invocation.runtime used before Invocation.load()')
    return this.loaded
  }

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
      // Whatever ends the process, no command it started runs on.
      for (const child of this.children) signalGroup(child.pid, 'SIGKILL')
      for (const dir of this.privateDirs) fs.rmSync(dir, { recursive: true, force: true })
    })
    const crash = (e: unknown) => {
      emit('stderr', `ERROR: unexpected error (an unawaited promise or a callback, e.g. in a plugin): ${errorLine(e, this.secrets)}\n`)
      this.controller.abort(new DeployError('stopped by an unexpected error'))
      this.exit(EXIT.failed)
    }
    process.on('uncaughtException', crash)
    process.on('unhandledRejection', crash)
  }

  /**
   * Until the invocation ends, process.exit() and Deno.exit() throw an ExitCalled instead of
   * ending the run: plugins run in this process, and a plugin that exits would end the run
   * with its code, whatever was deployed, the lock held and the fail hooks not called.
   */
  guardExit() {
    const deno = (globalThis as { Deno?: { exit: (code?: number) => never } }).Deno
    const saved = { process: process.exit, deno: deno?.exit }
    const refuse = (code?: number | string | null): never => {
      throw new ExitCalled(Number(code ?? process.exitCode ?? 0) || 0)
    }
    process.exit = refuse as typeof process.exit
    if (deno) deno.exit = refuse
    this.unguard = () => {
      process.exit = saved.process
      if (deno && saved.deno) deno.exit = saved.deno
      this.unguard = undefined
    }
  }

  /** Ends the process with `code` (the guard lifted first). */
  exit(code: number): never {
    this.unguard?.()
    return process.exit(code)
  }

  /**
   * Once the invocation's work is done: the guard lifted, and every command still running (a
   * hook's that outlived it, one a plugin never awaited) stopped, SIGTERM, then SIGKILL after
   * its grace period, before the process ends.
   */
  async finish() {
    this.unguard?.()
    for (const child of this.children) stopChild(child, 'SIGTERM', KILL_GRACE_SECONDS)
    await Promise.all([...this.children].map((child) => child.ended))
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

/** A plugin called process.exit(code) during the run: its hook fails with this (exit 1 for a `code` of 0). */
export class ExitCalled extends DeployError {
  constructor(readonly code: number) {
    super(`called process.exit(${code}) before the run ended, so nothing after it would have run (the deploy, the lock's release, the fail hooks): a plugin must not end the run; throw an error, or ctx.refuse(reason) to refuse`, code || EXIT.failed)
  }
}

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
 * A command deploy.ts started, in its own process group (spawned detached): a signal reaches
 * the tool and whatever it started (a plugin's `sh -c` and its children). The shell zx starts
 * execs the tool, so the group's id is the tool's pid.
 */
export interface Child {
  readonly pid: number
  /** Settles when the command has ended. */
  readonly ended: Promise<unknown>
  /** Set once a stop began: SIGKILL follows when the grace period ends. */
  killTimer?: NodeJS.Timeout
}

/** Signals the child's process group (the child alone if it has none); a child already gone is fine. */
function signalGroup(pid: number, signal: NodeJS.Signals) {
  try {
    process.kill(-pid, signal)
  } catch {
    try {
      process.kill(pid, signal)
    } catch {
      // Already gone.
    }
  }
}

/** Stops a child: `signal` now, SIGKILL after `graceSeconds` unless it ended (a stop already begun keeps its own deadline). */
export function stopChild(child: Child, signal: NodeJS.Signals, graceSeconds: number) {
  if (child.killTimer) return
  signalGroup(child.pid, signal)
  child.killTimer = setTimeout(() => signalGroup(child.pid, 'SIGKILL'), graceSeconds * 1000)
}

/** Last lines of a failed command's output, for the error message and notifications. */
export function tail(text: string, n = 5): string {
  return text.trim().split('\n').slice(-n).join('\n')
}

/** All a command said about why it failed, as one line: its earlier lines often carry the cause, the last only the consequence. */
export function wholeReason(text: string): string {
  return text.split('\n').map((l) => l.trim().replace(/^Error: /, '')).filter(Boolean).join(' ')
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
/** How long a command that outlived its limit (or its hook, or the run) gets to stop on SIGTERM before SIGKILL. */
export const KILL_GRACE_SECONDS = 10
/** How long the commands get for their own shutdown after SIGINT/SIGTERM, before SIGKILL. */
const CANCEL_GRACE_SECONDS = 30

/** A command's bound in seconds: its own (seconds, or a duration such as `90s`), or DEFAULT_COMMAND_TIMEOUT's. */
function commandLimit(tool: string, timeout: ExecOptions['timeout']): number {
  const limit = typeof timeout === 'number' ? timeout : parseDuration(timeout ?? DEFAULT_COMMAND_TIMEOUT)
  if (!(limit > 0 && limit <= MAX_DURATION_SECONDS)) throw new DeployError(`${tool}: timeout ${timeout} is not a duration from 1s to 7 days (e.g. 90s, 10m, 1h)`)
  return limit
}

interface Started {
  env: NodeJS.ProcessEnv
  out: Output
  invocation: Invocation
  /** Seconds the command may run; then SIGTERM, and SIGKILL KILL_GRACE_SECONDS later. */
  limit: number
  heartbeatSeconds: number
}

/**
 * Runs one command under zx to its end: relayed line by line, bounded, stopped with the
 * invocation (SIGTERM or SIGINT, SIGKILL CANCEL_GRACE_SECONDS later) and with `options.signal`.
 * `timedOut`: stopped because it outlived its limit.
 */
async function spawn(tool: string, args: string[], options: ExecOptions, { env, out, invocation, limit, heartbeatSeconds }: Started) {
  const { capture = false, prefix = '' } = options
  const beat = heartbeat(out, `${prefix}${tool} ${args.slice(0, 2).join(' ')}`, capture ? 0 : heartbeatSeconds)
  const { $ } = await invocation.load()
  const started = Date.now()
  const p = $({
    // zx would otherwise use the directory it was first loaded in.
    cwd: options.cwd ?? process.cwd(),
    env,
    input: options.input,
    // A child that reads stdin must not wait on ours: it gets stdin only when we feed it.
    stdio: options.input === undefined ? ['ignore', 'pipe', 'pipe'] : 'pipe',
    detached: true,
    quiet: capture,
    verbose: !capture,
    nothrow: true,
    log: relay(out, prefix, beat.reset) as never,
  })`${tool} ${args}`
  const child: Child = { pid: p.pid!, ended: p.catch(() => undefined) }
  invocation.children.add(child)
  let timedOut = false
  const limitTimer = setTimeout(() => {
    timedOut = true
    stopChild(child, 'SIGTERM', KILL_GRACE_SECONDS)
  }, limit * 1000)
  const cancel = () => stopChild(child, invocation.cancelled ?? 'SIGTERM', CANCEL_GRACE_SECONDS)
  // The hook's signal also aborts on a cancel: that stop is the cancel's.
  const hookEnded = () => (invocation.signal.aborted && !options.cleanup ? cancel() : stopChild(child, 'SIGTERM', KILL_GRACE_SECONDS))
  // A cleanup command (releasing the lock) runs on after a cancel, within its own limit.
  const stops: Array<[AbortSignal, () => void]> = [...(options.cleanup ? [] : [[invocation.signal, cancel] as [AbortSignal, () => void]]), ...(options.signal ? [[options.signal, hookEnded] as [AbortSignal, () => void]] : [])]
  for (const [signal, stop] of stops) {
    if (signal.aborted) stop()
    else signal.addEventListener('abort', stop, { once: true })
  }
  try {
    const done = await p
    return { done, timedOut, seconds: (Date.now() - started) / 1000 }
  } finally {
    clearTimeout(limitTimer)
    clearTimeout(child.killTimer)
    for (const [signal, stop] of stops) signal.removeEventListener('abort', stop)
    invocation.children.delete(child)
    beat.stop()
  }
}

export function makeExec({ env: given, dryRun, out, heartbeatSeconds, invocation }: ExecSettings): Exec {
  const { redact } = invocation.secrets
  return async (tool, args, options = {}) => {
    // zx starts each tool through bash: nothing may make that shell run code first. Read
    // at each call, since setup adds the private config dirs to the same env object.
    const env = Object.fromEntries(Object.entries(given).filter(([k]) => !SHELL_STARTUP.test(k)))
    const { capture = false, show = 'announce' } = options
    const line = `${tool} ${args.join(' ')}`
    // A dry run announces every command it skips exactly as a real run announces the ones it runs.
    const announce = () => out.info(`${capture ? 'Executing and capturing' : 'Executing'} ${line}`)
    const limit = commandLimit(tool, options.timeout)
    if (dryRun && !options.readOnly) {
      announce()
      return { stdout: '', stderr: '', exitCode: 0 }
    }
    if (invocation.signal.aborted && !options.cleanup) throw invocation.signal.reason
    if (show === 'announce' || (show === 'probe' && invocation.verbose)) announce()
    const { done, timedOut, seconds } = await spawn(tool, args, options, { env, out, invocation, limit, heartbeatSeconds })
    const result: CommandResult = { stdout: done.stdout, stderr: done.stderr, exitCode: done.exitCode ?? 1, seconds, ...(timedOut ? { timedOut } : {}) }
    if (result.exitCode === 0 || options.nothrow) return result
    const error = commandError(line, { ...result, signal: done.signal, capture }, limit, redact)
    const fault = options.cluster ? clusterFault(result, options.cluster, { env, invocation }) : undefined
    throw fault ? new DeployError(redact(`${fault}: ${REACH_THE_CLUSTER}`), EXIT.failed, { command: error.command, output: error.output }) : error
  }
}

/** A failed command as one line (what, how it ended, with captured output its last line), plus its output's tail. */
function commandError(line: string, done: CommandResult & { signal: NodeJS.Signals | null; capture?: boolean }, limit: number, redact: Secrets['redact']): DeployError {
  const why = done.timedOut ? `was stopped by ${done.signal ?? 'SIGTERM'} (limit ${formatDuration(limit)})` : done.signal ? `was stopped by ${done.signal}` : `exited with ${done.exitCode}`
  const detail = done.capture ? `: ${tail(done.stderr || done.stdout, 1)}` : ''
  // Masked before it is shortened, so the cut cannot leave part of a secret.
  return new DeployError(`${redact(line, 100)} ${redact(`${why}${detail}`)}`, EXIT.failed, {
    command: redact(line),
    output: redact(tail(done.stdout + done.stderr, 20)),
  })
}

/** The executable `tool` of the first PATH directory that has one. */
export function findOnPath(tool: string, env: NodeJS.ProcessEnv): string | undefined {
  return (env.PATH ?? '').split(path.delimiter).map((dir) => path.join(dir, tool)).find((file) => {
    try {
      fs.accessSync(file, fs.constants.X_OK)
      return true
    } catch {
      return false
    }
  })
}

/** Whether `tool` is an executable in one of the PATH directories. */
export const onPath = (tool: string, env: NodeJS.ProcessEnv): boolean => findOnPath(tool, env) !== undefined

export const INSTALL_HINTS: Record<string, string> = {
  git: 'install git (apt-get install git)',
  docker: 'install Docker (https://docs.docker.com/engine/install/)',
  helm: 'install Helm 4 (https://helm.sh/docs/intro/install/)',
  kubectl: 'install kubectl (https://kubernetes.io/docs/tasks/tools/) or `gcloud components install kubectl`',
  gcloud: 'install the Google Cloud SDK (https://cloud.google.com/sdk/docs/install)',
  aws: 'install the AWS CLI v2 (https://docs.aws.amazon.com/cli/latest/userguide/getting-started-install.html)',
  az: 'install the Azure CLI 2.67 or later (https://learn.microsoft.com/cli/azure/install-azure-cli)',
  kubelogin: 'install kubelogin (`az aks install-cli`, or https://azure.github.io/kubelogin/install.html)',
}

/** Node 20's timers fire at once above this many ms. */
const MAX_TIMER_MS = 2 ** 31 - 1

/** A wait that ends, rejecting with the signal's reason, as soon as `signal` aborts. */
export function abortableSleep(signal: AbortSignal): HookContext['sleep'] {
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

/** `signal`, or a TimeoutError after `ms`: a controller the timer holds, so nothing collects it early. */
export function signalWithin(signal: AbortSignal, ms: number): AbortSignal {
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
