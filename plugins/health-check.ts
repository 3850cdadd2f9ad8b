/**
 * health-check: after the rollout, waits until the hub's API answers
 * `GET <hub URL>/hub/api` with 200 and JSON carrying its `version`. See docs/plugins.md.
 *
 * The URL is HUB_URL_<CHART> (chart upper-cased, `-` as `_`), or else
 * https://<jupyterhub.ingress.hosts[0]><jupyterhub.hub.baseUrl> from the chart's values.yaml
 * (on the upstream-chart layout, <ingress.hosts[0]><hub.baseUrl> from hub-configs/).
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

/** A problem with a key or file the plugin reads: deploy.ts ends the run with exit 2 (a configuration error). */
const configError = (message: string) => Object.assign(new Error(message), { exitCode: 2 })

/** What names a hub's URL: its chart, its directory and chart source, and the configuration's keys. */
type HubFacts = Pick<HookContext, 'chart' | 'chartDir' | 'chartSource'> & { config: { env: Record<string, string | undefined> } }

type HubValues = { ingress?: { enabled?: boolean; hosts?: unknown[] }; hub?: { baseUrl?: unknown } }

/** The jupyterhub chart's values a file gives: under `jupyterhub:` in a wrapper chart's values.yaml, at the top in hub-configs/<hub>.yaml. */
function hubValues(ctx: HubFacts, file: string): HubValues | undefined {
  // A FIFO would wait for a writer for ever.
  if (!fs.statSync(file).isFile()) throw configError(`${file}: not a file; make it the hub's values, or set ${urlKey(ctx.chart)} to the hub's URL`)
  let values: Record<string, unknown> | null
  try {
    values = YAML.parse(fs.readFileSync(file, 'utf8'))
  } catch (e) {
    const line = (e as { linePos?: { line: number }[] }).linePos?.[0]?.line
    throw configError(`${file}${line ? `:${line}` : ''}: not valid YAML; fix it, or set ${urlKey(ctx.chart)} to the hub's URL`)
  }
  const prefix = ctx.chartSource.valuesPrefix.replace(/\.$/, '')
  return (prefix ? values?.[prefix] : values) as HubValues | undefined
}

/** The hub's public URL, and where it came from; undefined when nothing names one. */
function hubUrl(ctx: HubFacts): { url: string; from: string } | undefined {
  const key = urlKey(ctx.chart)
  const fromEnv = ctx.config.env[key]?.trim()
  if (fromEnv) return { url: fromEnv, from: key }
  const source = ctx.chartSource
  // The chart's values.yaml; on the upstream chart the hub's values files, the last one winning.
  const files = (source.layout === 'upstream-chart' ? source.valuesFiles : [`${ctx.chartDir}/values.yaml`]).filter((f) => fs.existsSync(f))
  let found: { ingress?: HubValues['ingress']; base?: string; from?: string } = {}
  for (const file of files) {
    const values = hubValues(ctx, file)
    if (values?.ingress !== undefined) found = { ...found, ingress: { ...found.ingress, ...values.ingress }, from: file }
    if (typeof values?.hub?.baseUrl === 'string') found.base = values.hub.baseUrl
  }
  const { ingress, base = '/', from } = found
  const hosts = ingress?.hosts
  const host = ingress?.enabled === false || !Array.isArray(hosts) ? undefined : hosts[0]
  if (typeof host !== 'string' || !host || !from) return undefined
  return { url: `https://${host}${base.startsWith('/') ? base : `/${base}`}`, from }
}

/**
 * The API URL to probe, without credentials, and the Authorization header they become
 * (fetch refuses a URL with credentials). A value that is not an http(s) URL is refused.
 */
function target(found: { url: string; from: string }): { url: string; headers: Record<string, string> } {
  let parsed: URL
  try {
    parsed = new URL(found.url)
  } catch {
    parsed = new URL('invalid:')
  }
  if (!['http:', 'https:'].includes(parsed.protocol)) {
    throw configError(`${found.from}: the hub URL is not an http(s) URL; give one like https://hub.example.org/`)
  }
  const headers: Record<string, string> = { accept: 'application/json' }
  if (parsed.username || parsed.password) {
    const basic = `${decodeURIComponent(parsed.username)}:${decodeURIComponent(parsed.password)}`
    headers.authorization = `Basic ${btoa(basic)}`
    parsed.username = ''
    parsed.password = ''
  }
  return { url: `${parsed.href.replace(/\/+$/, '')}/hub/api`, headers }
}

function timeoutOf(ctx: HookContext): { text: string; ms: number } {
  const text = ctx.config.env.HEALTH_CHECK_TIMEOUT?.trim() || DEFAULT_TIMEOUT
  return { text, ms: ctx.duration('HEALTH_CHECK_TIMEOUT', DEFAULT_TIMEOUT, [1, 3600]) * 1000 }
}

/** A short reason a request failed (Node puts the system error code in `cause`). */
function failure(e: unknown): string {
  const err = e as { name?: string; message?: string; cause?: { code?: string; message?: string } }
  if (err?.name === 'TimeoutError' || err?.name === 'AbortError') return 'no answer (request timed out)'
  const detail = err?.cause?.code ?? err?.cause?.message ?? err?.message ?? String(e)
  return `request failed (${String(detail).replace(/^error sending request for url \([^)]*\): /, '').split('\n')[0]})`
}

/** What a probe got instead of the hub's version. */
class NotReady extends Error {}

/** One probe: the hub's version, or a NotReady saying what it got. */
async function probe(url: string, headers: Record<string, string>, bounded: AbortSignal, stop: AbortSignal): Promise<string> {
  let res: Response
  let body: string
  try {
    res = await fetch(url, { headers, signal: bounded })
    body = await res.text()
  } catch (e) {
    if (stop.aborted) throw e
    throw new NotReady(failure(e))
  }
  if (res.status !== 200) throw new NotReady(`HTTP ${res.status}`)
  let json: unknown
  try {
    json = JSON.parse(body)
  } catch {
    throw new NotReady('HTTP 200 but not JSON')
  }
  if (json && typeof json === 'object' && 'version' in json) return String(json.version)
  throw new NotReady('HTTP 200 but no "version" in the JSON')
}

const plugin: Plugin = {
  name: 'health-check',
  verify(ctx) {
    if (!ctx.phases.deploy) return
    // A bad HEALTH_CHECK_TIMEOUT, URL or values.yaml stops the run before anything changes.
    timeoutOf(ctx)
    const found = hubUrl(ctx)
    if (found) target(found)
  },
  async afterRollout(ctx) {
    const found = hubUrl(ctx)
    if (!found) {
      ctx.log.info(`no URL for ${ctx.chart} (set ${urlKey(ctx.chart)} or jupyterhub.ingress.hosts in its values.yaml): skipped`)
      return
    }
    const { url, headers } = target(found)
    const timeout = timeoutOf(ctx)
    const start = Date.now()
    const deadline = start + timeout.ms
    ctx.log.info(`waiting up to ${timeout.text} for ${url} (URL from ${found.from})`)
    // Waits of 1 s, 2 s, 4 s ... up to 15 s between tries, until the deadline.
    const backoff = (attempt: number, e: unknown) => {
      const remaining = deadline - Date.now()
      if (!(e instanceof NotReady) || remaining <= 0) return undefined
      const wait = Math.min(FIRST_DELAY_MS * 2 ** (attempt - 1), MAX_DELAY_MS, remaining)
      ctx.log.info(`${e.message}; next try in ${Math.ceil(wait / 1000)}s`)
      return wait
    }
    let attempts = 0
    try {
      const version = await ctx.retry(Infinity, backoff, (attempt) => {
        attempts = attempt
        return probe(url, headers, ctx.within(Math.min(REQUEST_TIMEOUT_MS, Math.max(1_000, deadline - Date.now()))), ctx.signal)
      })
      ctx.log.info(`${url} answers: JupyterHub ${version} (after ${((Date.now() - start) / 1000).toFixed(1)}s, ${attempts} attempt${attempts > 1 ? 's' : ''})`)
    } catch (e) {
      if (!(e instanceof NotReady)) throw e
      throw new Error(`${url} did not answer with the hub's version within ${timeout.text}; last: ${e.message}`)
    }
  },
}

export default plugin

/**
 * One probe, for a gate that looks now rather than waits (the fleet's waves, lib/waves.ts):
 * undefined when the hub answers with its version or nothing names its URL; otherwise what
 * it answered instead. A bad URL or values.yaml throws, as in verify (exit 2).
 */
export async function hubProblem(hub: HubFacts, signal: AbortSignal): Promise<string | undefined> {
  const found = hubUrl(hub)
  if (!found) return undefined
  const { url, headers } = target(found)
  const bound = new AbortController()
  const timer = setTimeout(() => bound.abort(new DOMException('request timed out', 'TimeoutError')), REQUEST_TIMEOUT_MS)
  try {
    await probe(url, headers, AbortSignal.any([bound.signal, signal]), signal)
    return undefined
  } catch (e) {
    if (!(e instanceof NotReady)) throw e
    return `${url} did not answer with the hub's version (${e.message})`
  } finally {
    clearTimeout(timer)
  }
}
