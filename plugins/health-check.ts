/**
 * health-check: after the rollout, waits until the hub's API answers
 * `GET <hub URL>/hub/api` with 200 and JSON carrying its `version`. See docs/plugins.md.
 *
 * The URL is HUB_URL_<CHART> (chart upper-cased, `-` as `_`), or else
 * https://<jupyterhub.ingress.hosts[0]><jupyterhub.hub.baseUrl> from the chart's values.yaml.
 * HEALTH_CHECK_TIMEOUT (a duration, default 5m) bounds the wait.
 */
import fs from 'node:fs'
import YAML from 'yaml'
import type { HookContext, Plugin } from '../deploy.ts'

const DEFAULT_TIMEOUT = '5m'
const FIRST_DELAY_MS = 1_000
const MAX_DELAY_MS = 15_000
const REQUEST_TIMEOUT_MS = 10_000

const urlKey = (chart: string) => `HUB_URL_${chart.toUpperCase().replace(/[^A-Z0-9]/g, '_')}`

/** The hub's public URL, and where it came from; undefined when nothing names one. */
function hubUrl(ctx: HookContext): { url: string; from: string } | undefined {
  const key = urlKey(ctx.chart)
  const fromEnv = ctx.config.env[key]?.trim()
  if (fromEnv) return { url: fromEnv, from: key }
  const file = `${ctx.chartDir}/values.yaml`
  if (!fs.existsSync(file)) return undefined
  const values = YAML.parse(fs.readFileSync(file, 'utf8')) as
    | { jupyterhub?: { ingress?: { enabled?: boolean; hosts?: unknown[] }; hub?: { baseUrl?: string } } }
    | null
  const ingress = values?.jupyterhub?.ingress
  const host = ingress?.enabled === false ? undefined : ingress?.hosts?.[0]
  if (typeof host !== 'string' || !host) return undefined
  const base = values?.jupyterhub?.hub?.baseUrl ?? '/'
  return { url: `https://${host}${base.startsWith('/') ? base : `/${base}`}`, from: file }
}

function apiUrl(url: string): string {
  return `${url.replace(/\/+$/, '')}/hub/api`
}

function timeoutOf(ctx: HookContext): { text: string; ms: number } {
  const text = ctx.config.env.HEALTH_CHECK_TIMEOUT?.trim() || DEFAULT_TIMEOUT
  const seconds = ctx.parseDuration(text)
  if (!(seconds > 0)) ctx.refuse(`HEALTH_CHECK_TIMEOUT=${text}: not a duration; use e.g. 90s or 5m`)
  return { text, ms: seconds * 1000 }
}

/** A short reason a request failed (Node puts the system error code in `cause`). */
function failure(e: unknown): string {
  const err = e as { name?: string; message?: string; cause?: { code?: string; message?: string } }
  if (err?.name === 'TimeoutError' || err?.name === 'AbortError') return 'no answer (request timed out)'
  const detail = err?.cause?.code ?? err?.cause?.message ?? err?.message ?? String(e)
  return `request failed (${String(detail).replace(/^error sending request for url \([^)]*\): /, '').split('\n')[0]})`
}

/** Waits `ms`, or less when the run is cancelled or the hook's time is up. */
const sleep = (ms: number, signal: AbortSignal) => new Promise<void>((resolve) => {
  const done = () => {
    clearTimeout(timer)
    signal.removeEventListener('abort', done)
    resolve()
  }
  const timer = setTimeout(done, ms)
  signal.addEventListener('abort', done, { once: true })
})

/** One probe: undefined when healthy (with the version), else what it got. */
async function probe(url: string, timeoutMs: number, stop: AbortSignal): Promise<{ version?: string; problem?: string }> {
  try {
    const signal = AbortSignal.any([stop, AbortSignal.timeout(timeoutMs)])
    const res = await fetch(url, { headers: { accept: 'application/json' }, signal })
    const body = await res.text()
    if (res.status !== 200) return { problem: `HTTP ${res.status}` }
    try {
      const json = JSON.parse(body)
      if (json && typeof json === 'object' && 'version' in json) return { version: String(json.version) }
      return { problem: 'HTTP 200 but no "version" in the JSON' }
    } catch {
      return { problem: 'HTTP 200 but not JSON' }
    }
  } catch (e) {
    return { problem: failure(e) }
  }
}

const plugin: Plugin = {
  name: 'health-check',
  verify(ctx) {
    if (!ctx.phases.deploy) return
    timeoutOf(ctx) // a bad HEALTH_CHECK_TIMEOUT stops the run before anything changes
  },
  async afterRollout(ctx) {
    const found = hubUrl(ctx)
    if (!found) {
      ctx.log.info(`health-check: no URL for ${ctx.chart} (set ${urlKey(ctx.chart)} or jupyterhub.ingress.hosts in its values.yaml): skipped`)
      return
    }
    const url = apiUrl(found.url)
    const timeout = timeoutOf(ctx)
    const start = Date.now()
    const deadline = start + timeout.ms
    ctx.log.info(`health-check: waiting up to ${timeout.text} for ${url} (URL from ${found.from})`)
    let delay = FIRST_DELAY_MS
    let last = 'no answer'
    for (let attempt = 1; ; attempt++) {
      const left = deadline - Date.now()
      const result = await probe(url, Math.min(REQUEST_TIMEOUT_MS, Math.max(1_000, left)), ctx.signal)
      if (result.version !== undefined) {
        ctx.log.info(`health-check: ${url} answers: JupyterHub ${result.version} (after ${((Date.now() - start) / 1000).toFixed(1)}s, ${attempt} attempt${attempt > 1 ? 's' : ''})`)
        return
      }
      last = result.problem!
      const remaining = deadline - Date.now()
      if (remaining <= 0) break
      const wait = Math.min(delay, remaining)
      ctx.log.info(`health-check: ${last}; next try in ${Math.ceil(wait / 1000)}s`)
      await sleep(wait, ctx.signal)
      if (ctx.signal.aborted) return
      delay = Math.min(delay * 2, MAX_DELAY_MS)
    }
    throw new Error(`${url} did not answer with the hub's version within ${timeout.text}; last: ${last}`)
  },
}

export default plugin
