/** Plugins: loading them, and running their hooks as HOOK_STEPS says (docs/plugins.md). */
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { DeployError, EXIT, HOOKS, HOOK_STEPS, RefusedError, isRefusal, usageError, type BaseContext, type FailContext, type HookContext, type HookContexts, type HookName, type HookStep, type Logger, type Plugin } from './contract.ts'
import { checkDuration, parseDuration } from './config.ts'
import { errorLine, notAFile, type Secrets } from './secrets.ts'
import { ExitCalled, abortableSleep, ciRunUrl, signalWithin } from './process.ts'
import type { ChartRun } from './plan.ts'

/** The plugins shipped beside deploy.ts (a file: URL, or an https: one when Deno runs deploy.ts from a URL). */
const SHIPPED_PLUGINS = new URL('../plugins/', import.meta.url)

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
export function closest(word: string, words: readonly string[]): string {
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
export async function loadPlugins(names: string[], secrets: Secrets): Promise<Plugin[]> {
  const plugins: Plugin[] = []
  for (const name of names) {
    const { file, url } = pluginSource(name)
    if (url.startsWith('file:') && !fs.existsSync(fileURLToPath(url))) {
      throw usageError(`${file}: plugin not found here nor shipped with deploy.ts (shipped: ${shippedPluginNames()}); check --plugin / DEPLOY_PLUGINS`)
    }
    const kind = url.startsWith('file:') ? notAFile(fileURLToPath(url)) : undefined
    if (kind) throw usageError(`${file}: the plugin is ${kind}, not a file; check --plugin / DEPLOY_PLUGINS`)
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
export type FailureFacts = Pick<FailContext, 'error' | 'failedPhase' | 'reason'>

/** A plugin's logger: deploy.ts's lines, prefixed with the plugin's name. */
function pluginLog(out: Logger, name: string): Logger {
  return {
    info: (m) => out.info(`${name}: ${m}`),
    warn: (m) => out.warn(`${name}: ${m}`),
    error: (m) => out.error(`${name}: ${m}`),
  }
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
export function parseYesNo(text: string | undefined): boolean | undefined {
  const t = (text ?? '').trim().toLowerCase()
  if (/^(1|true|yes|on)$/.test(t)) return true
  if (/^(|0|false|no|off)$/.test(t)) return false
  return undefined
}

/** What every hook gets; `deadline` is when the hook's time is up. */
function baseContext({ plan, state, exec, out, helm, invocation }: ChartRun, plugin: Plugin, signal: AbortSignal, deadline: number): BaseContext {
  const sleep = abortableSleep(signal)
  return {
    chart: plan.chart,
    phases: plan.phases,
    config: plan.config,
    helm,
    images: plan.images.map((image) => ({ ...image, ...state.images.get(image.dir) })),
    commit: plan.commit,
    chartDir: plan.chartDir,
    chartSource: plan.files.source,
    timings: state.timings,
    startedAt: state.startedAt ?? Date.now(),
    log: pluginLog(out, plugin.name),
    // A command the hook started ends with the hook (its timeout, a cancel), unless given its own signal.
    run: (tool, args, options) => exec(tool, args, { signal, ...options }),
    ciRunUrl: ciRunUrl(plan.config.env),
    signal,
    deadline,
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
  }
}

/** `hook`'s context: the base, and what that hook learns besides (HookContexts). */
function hookContext<N extends HookName>(r: ChartRun, hook: N, base: BaseContext, failure: FailureFacts | undefined): HookContexts[N] {
  const { plan, state } = r
  const results = { revision: state.revision, validation: state.validation, diff: state.diff }
  const extra: Partial<Record<HookName, object>> = {
    verify: { dryRun: plan.dryRun },
    afterDeploy: results,
    afterRollout: results,
    success: results,
    fail: { ...results, ...failure, rolledBackTo: state.rolledBackTo, rollbackError: state.rollbackError },
  }
  return { ...base, ...extra[hook] } as HookContexts[N]
}

/**
 * Calls one plugin's hook, bounded by `seconds` and, for a blocking hook, by the
 * invocation's cancellation: either aborts `ctx.signal` and rejects.
 */
async function callHook(r: ChartRun, plugin: Plugin, hook: HookName, step: HookStep, failure: FailureFacts | undefined) {
  const seconds = step.timeout === 'HOOK_TIMEOUT' ? r.plan.config.hookTimeoutSeconds : step.timeout
  const deadline = Date.now() + seconds * 1000
  const bound = new AbortController()
  const timer = setTimeout(() => bound.abort(new Error(`did not finish within ${seconds}s`)), seconds * 1000)
  const signal = step.blocking ? AbortSignal.any([bound.signal, r.invocation.signal]) : bound.signal
  const stopped = new Promise<never>((_, reject) => signal.addEventListener('abort', () => reject(signal.reason), { once: true }))
  const fn = plugin[hook] as (ctx: HookContext) => unknown
  try {
    return await Promise.race([fn.call(plugin, hookContext(r, hook, baseContext(r, plugin, signal, deadline), failure)), stopped])
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
export async function runHook(r: ChartRun, hook: HookName, failure?: FailureFacts): Promise<string[]> {
  const step = HOOK_STEPS[hook]
  const given: string[] = []
  if (r.plan.dryRun && !step.dryRun) return given
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
      // A plugin that tried to end the run gets its own non-zero code, 1 for an exit 0 (nothing was deployed).
      const code = e instanceof ExitCalled ? e.exitCode : (e as { exitCode?: unknown })?.exitCode === EXIT.usage ? EXIT.usage : isRefusal(e) ? step.refusal : step.throws
      throw new DeployError(`plugin ${plugin.name} ${hook}: ${message}`, code, { phase: step.phase })
    }
  }
  return given
}
