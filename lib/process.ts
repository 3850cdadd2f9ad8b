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

  /** Opens or closes a collapsible section: travis_fold on Travis, ::group:: on GitHub Actions. */
  group(edge: 'start' | 'end', title: string, id = title.replace(/\W+/g, '-')) {
    if (this.ci.travis) process.stdout.write(`travis_fold:${edge}:${id}\n`)
    if (this.ci.github) process.stdout.write(edge === 'start' ? `::group::${title}\n` : '::endgroup::\n')
  }

  /** Prints what was held, as one collapsible group in CI logs. */
  flush(title: string) {
    const held = this.held
    if (!held) return
    this.held = undefined
    this.group('start', title)
    for (const [stream, text] of held) process[stream].write(text)
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
  private loaded: Runtime | undefined

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
/** How long a command that outlived its limit gets to stop on SIGTERM before SIGKILL. */
const KILL_GRACE_SECONDS = 10

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

/** Runs one command under zx to its end: relayed line by line, bounded, stopped with the invocation. */
async function spawn(tool: string, args: string[], options: ExecOptions, { env, out, invocation, limit, heartbeatSeconds }: Started) {
  const { capture = false, prefix = '' } = options
  const beat = heartbeat(out, `${prefix}${tool} ${args.slice(0, 2).join(' ')}`, capture ? 0 : heartbeatSeconds)
  const { $ } = await invocation.load()
  const p = $({
    // zx would otherwise use the directory it was first loaded in.
    cwd: options.cwd ?? process.cwd(),
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
  return p.finally(() => {
    clearTimeout(hardStop)
    release()
    beat.stop()
  })
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
    const done = await spawn(tool, args, options, { env, out, invocation, limit, heartbeatSeconds })
    const result = { stdout: done.stdout, stderr: done.stderr, exitCode: done.exitCode ?? 1 }
    if (result.exitCode !== 0 && !options.nothrow) throw commandError(line, { ...result, signal: done.signal, capture }, limit, redact)
    return result
  }
}

/** A failed command as one line (what, how it ended, with captured output its last line), plus its output's tail. */
function commandError(line: string, done: CommandResult & { signal: NodeJS.Signals | null; capture?: boolean }, limit: number, redact: Secrets['redact']): DeployError {
  const why = done.signal ? `was stopped by ${done.signal} (limit ${formatDuration(limit)})` : `exited with ${done.exitCode}`
  const detail = done.capture ? `: ${tail(done.stderr || done.stdout, 1)}` : ''
  // Masked before it is shortened, so the cut cannot leave part of a secret.
  return new DeployError(`${redact(line, 100)} ${redact(`${why}${detail}`)}`, EXIT.failed, {
    command: redact(line),
    output: redact(tail(done.stdout + done.stderr, 20)),
  })
}

/** Whether `tool` is an executable in one of the PATH directories. */
export function onPath(tool: string, env: NodeJS.ProcessEnv): boolean {
  return (env.PATH ?? '').split(path.delimiter).some((dir) => {
    try {
      fs.accessSync(path.join(dir, tool), fs.constants.X_OK)
      return true
    } catch {
      return false
    }
  })
}

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
