/**
 * notify-slack: reports each run's result to a Slack incoming webhook
 * (SLACK_WEBHOOK_URL) and/or as a JSON POST to any URL (NOTIFY_WEBHOOK_URL).
 * See docs/plugins.md.
 *
 * Both URLs are secrets (deploy.ts masks them in its output); this plugin never
 * logs them, nor an error text that could contain them.
 */
import type { HookContext, ImageInfo, Plugin } from '../deploy.ts'

/** Each request may take this long. */
const REQUEST_TIMEOUT_MS = 5_000
/** Retries after a 429 or 5xx answer. */
const MAX_RETRIES = 2
/** Retry-After is honoured up to this many seconds. */
const RETRY_AFTER_CAP_S = 3
/** Lines of a failed command's output included in a failure message. */
const OUTPUT_LINES = 10
/** Requests end this long before the hook's deadline, so the hook returns its own error. */
const MARGIN_MS = 1_000

interface Target {
  label: string
  url: string
  body: (report: Report) => unknown
}

function targets(ctx: HookContext, warn = false): Target[] {
  const env = ctx.config.env
  const found: Target[] = []
  const add = (key: string, label: string, body: Target['body']) => {
    const url = env[key]?.trim()
    if (!url) return
    let ok = false
    try {
      ok = ['http:', 'https:'].includes(new URL(url).protocol)
    } catch {
      ok = false
    }
    if (ok) found.push({ label, url, body })
    else if (warn) ctx.log.warn(`${key} is not an http(s) URL: ignoring it`)
  }
  add('SLACK_WEBHOOK_URL', 'Slack', slackMessage)
  add('NOTIFY_WEBHOOK_URL', 'the notify webhook', (r) => r)
  return found
}

/** What both kinds of message say: the JSON webhook receives exactly this object. */
interface Report {
  event: 'success' | 'fail'
  status: 'succeeded' | 'failed' | 'cancelled'
  chart: string
  phases: string[]
  images: Pick<ImageInfo, 'kind' | 'name' | 'tag' | 'spec' | 'built' | 'pushed'>[]
  commit: string
  helmMajor: HookContext['helm']['major']
  revision?: number
  durationMs: { elapsed: number; sum: number }
  timings: HookContext['timings']
  ciUrl?: string
  promotionOverride: boolean
  failedPhase?: string
  error?: string
  /** The command that failed, when one did. */
  command?: string
  output?: string[]
  /** With --rollback-on-failure: the revision the release is back on, or why the rollback failed. */
  rolledBackTo?: number
  rollbackError?: string
}

function report(ctx: HookContext, event: Report['event']): Report {
  const sum = Object.values(ctx.timings).reduce((a, b) => a + (b ?? 0), 0)
  const r: Report = {
    event,
    status: event === 'success' ? 'succeeded' : ctx.reason === 'cancelled' ? 'cancelled' : 'failed',
    chart: ctx.chart,
    phases: Object.entries(ctx.phases).filter(([, on]) => on).map(([name]) => name),
    images: ctx.images.map(({ kind, name, tag, spec, built, pushed }) => ({ kind, name, tag, spec, built, pushed })),
    commit: ctx.commit,
    helmMajor: ctx.helm.major,
    revision: ctx.revision,
    durationMs: { elapsed: Date.now() - ctx.startedAt, sum },
    timings: ctx.timings,
    ciUrl: ctx.ciRunUrl,
    promotionOverride: ctx.parseYesNo(ctx.config.env.PROMOTION_OVERRIDE) === true,
  }
  if (event === 'fail') {
    r.failedPhase = ctx.failedPhase
    r.error = ctx.redact(String(ctx.error?.message ?? ctx.error ?? 'unknown error'), 2000)
    // A failed command's last output lines (deploy.ts redacted them already).
    const { output, command } = (ctx.error ?? {}) as { output?: unknown; command?: unknown }
    if (typeof command === 'string') r.command = ctx.redact(command)
    if (typeof output === 'string' && output.trim()) r.output = output.split('\n').slice(-OUTPUT_LINES).map((l) => ctx.redact(l, 300))
    if (ctx.rolledBackTo !== undefined) r.rolledBackTo = ctx.rolledBackTo
    if (ctx.rollbackError) r.rollbackError = ctx.redact(ctx.rollbackError, 2000)
  }
  return r
}

function seconds(ms: number): string {
  const s = Math.round(ms / 1000)
  return s >= 60 ? `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, '0')}s` : `${(ms / 1000).toFixed(1)}s`
}

/** Slack mrkdwn: only &, < and > need escaping. */
const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;')

function slackMessage(r: Report): { text: string } {
  const what = r.phases.join(', ') || 'verify only'
  const head = r.status === 'succeeded'
    ? `:white_check_mark: *${esc(r.chart)}*: ${esc(what)} succeeded`
    : r.status === 'cancelled'
      ? `:warning: *${esc(r.chart)}*: cancelled during ${esc(r.failedPhase ?? 'the run')}`
      : `:x: *${esc(r.chart)}*: failed in ${esc(r.failedPhase ?? 'the run')} (${esc(what)})${rollback(r)}`
  const lines = [head]
  if (r.promotionOverride) lines.push(':rotating_light: PROMOTION_OVERRIDE was set: the promotion check from staging was bypassed')
  lines.push(`Commit: \`${esc(r.commit.slice(0, 12) || 'unknown')}\`${r.revision ? `, release revision ${r.revision}` : ''}`)
  for (const image of r.images) {
    const done = [image.built && 'built', image.pushed && 'pushed'].filter(Boolean).join(', ')
    lines.push(`${image.kind === 'hub' ? 'Hub' : 'User'} image: \`${esc(image.spec)}\`${done ? ` (${done})` : ''}`)
  }
  const phases = Object.entries(r.timings).map(([p, ms]) => `${p} ${seconds(ms ?? 0)}`).join(', ')
  lines.push(`Duration: ${seconds(r.durationMs.elapsed)} elapsed${phases ? `; ${esc(phases)}` : ''}`)
  if (r.ciUrl) lines.push(`CI: <${r.ciUrl.replace(/[|>]/g, encodeURIComponent)}|build log>`)
  if (r.error) lines.push(`Error: \`\`\`${esc(r.error)}\`\`\``)
  if (r.output?.length) lines.push(`Last output:\n\`\`\`${esc(r.output.join('\n'))}\`\`\``)
  return { text: lines.join('\n') }
}

function rollback(r: Report): string {
  if (r.rolledBackTo !== undefined) return `, rolled back to revision ${r.rolledBackTo}`
  return r.rollbackError ? `; the rollback failed too: ${esc(r.rollbackError)}` : ''
}

/** Seconds from a Retry-After header (seconds or an HTTP date), capped; a default backoff otherwise. */
function retryDelayMs(header: string | null, attempt: number): number {
  let s = header && /^\d+$/.test(header.trim()) ? Number(header.trim()) : NaN
  if (header && Number.isNaN(s)) {
    const date = Date.parse(header)
    if (!Number.isNaN(date)) s = Math.max(0, (date - Date.now()) / 1000)
  }
  return Number.isNaN(s) ? 500 * 2 ** (attempt - 1) : Math.min(s, RETRY_AFTER_CAP_S) * 1000
}

/** Why a request failed, without the error text (Deno's names the URL). */
function failure(e: unknown): string {
  const err = e as { name?: string; cause?: { code?: string } }
  if (err?.name === 'TimeoutError' || err?.name === 'AbortError') return `timed out after ${REQUEST_TIMEOUT_MS / 1000}s`
  const code = err?.cause?.code
  if (typeof code === 'string' && /^[A-Z_]+$/.test(code)) return `request failed (${code})`
  return 'request failed (could not connect)'
}

/** A non-2xx answer: retried when it is a 429 or a 5xx. */
class HttpStatus extends Error {
  constructor(label: string, readonly status: number, readonly retryAfter: string | null, attempt: number) {
    super(`${label} answered HTTP ${status}${attempt > 1 ? ` (${attempt} attempts)` : ''}`)
  }
}

/** POSTs JSON with retries on 429 and 5xx; throws a message that never contains the URL. */
async function post(ctx: HookContext, target: Target, payload: unknown, deadline: number): Promise<void> {
  const body = JSON.stringify(payload)
  /** The wait before the next try; none after an error that a retry would not fix. */
  const backoff = (attempt: number, e: unknown) => {
    if (!(e instanceof HttpStatus) || !(e.status === 429 || e.status >= 500)) return undefined
    const wait = retryDelayMs(e.retryAfter, attempt)
    if (Date.now() + wait >= deadline) {
      e.message = `${target.label} answered HTTP ${e.status}; no time left to retry`
      return undefined
    }
    ctx.log.info(`${target.label} answered HTTP ${e.status}: retrying in ${(wait / 1000).toFixed(1)}s`)
    return wait
  }
  await ctx.retry(MAX_RETRIES + 1, backoff, async (attempt) => {
    const left = deadline - Date.now()
    if (left <= 0) throw new Error(`${target.label}: gave up (out of time)`)
    let res: Response
    try {
      res = await fetch(target.url, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body,
        signal: ctx.within(Math.min(REQUEST_TIMEOUT_MS, left)),
      })
    } catch (e) {
      throw new Error(`${target.label}: ${failure(e)}`)
    }
    await res.body?.cancel().catch(() => undefined)
    if (!res.ok) throw new HttpStatus(target.label, res.status, res.headers.get('retry-after'), attempt)
  })
}

async function notify(ctx: HookContext, event: Report['event']) {
  const all = targets(ctx)
  if (!all.length) return
  const r = report(ctx, event)
  const deadline = ctx.deadline - MARGIN_MS
  const results = await Promise.allSettled(all.map(async (t) => {
    await post(ctx, t, t.body(r), deadline)
    ctx.log.info(`posted to ${t.label}`)
  }))
  const errors = results.flatMap((res) => (res.status === 'rejected' ? [ctx.redact(String((res.reason as Error)?.message ?? res.reason))] : []))
  if (errors.length) throw new Error(errors.join('; '))
}

const plugin: Plugin = {
  name: 'notify-slack',
  verify(ctx) {
    const env = ctx.config.env
    if (!env.SLACK_WEBHOOK_URL?.trim() && !env.NOTIFY_WEBHOOK_URL?.trim()) {
      ctx.log.warn('neither SLACK_WEBHOOK_URL nor NOTIFY_WEBHOOK_URL is set: no notification will be sent')
      return
    }
    targets(ctx, true) // warns about a URL that cannot be used now rather than at the end
  },
  success: (ctx) => notify(ctx, 'success'),
  fail: (ctx) => notify(ctx, 'fail'),
}

export default plugin
