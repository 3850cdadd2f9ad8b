/**
 * pr-comment: posts the plan of a pull-request run (per chart: the images, the
 * validation result, the diff) as one comment on the pull request, created once and
 * then updated in place. See docs/plugins.md.
 *
 * GITHUB_TOKEN is a secret (deploy.ts masks it): it goes only into the Authorization
 * header of requests to GITHUB_API_URL's origin. The GitHub API failing never fails the
 * run: it gives one warning.
 */
import fs from 'node:fs'
import type { ChartDiff, ChartValidation, HookContext, ImageInfo, Plugin } from '../deploy.ts'

/** Where an existing comment is found: the first line of the body. */
export const MARKER = '<!-- deploy.ts pr-comment -->'
/** GitHub refuses a comment body longer than this ("maximum is 65536 characters"). */
export const COMMENT_LIMIT = 65_536
const REQUEST_TIMEOUT_MS = 5_000
/** Requests end this long before the hook's deadline, so the hook returns its own error. */
const MARGIN_MS = 1_000
/** Pages of 100 comments read at most while looking for ours. */
const MAX_PAGES = 20

/** One chart's part of the comment. */
interface Section {
  chart: string
  /** The upstream chart the hub's values go on (the upstream-chart layout); unset for a wrapper chart. */
  source?: { chart: string; version?: string; valuesFiles: string[] }
  images: Pick<ImageInfo, 'kind' | 'spec' | 'built'>[]
  /** Whether the run built (with --build): then an image not built is in the registry already. */
  built: boolean
  /** ctx.validation: unset in a run without --validate. */
  validation?: ChartValidation
  /** ctx.diff: unset in a run without --diff. */
  diff?: ChartDiff
  /** The run failed: the redacted error line. */
  error?: string
  failedPhase?: string
}

interface Target {
  api: string
  repo: string
  pr: number
  token: string
}

// One comment covers every chart of the invocation, so this state is shared by its charts
// (sections keyed by chart); it lives as long as the process, i.e. one invocation.
/** Sections by chart, in the order the charts finished; the comment shows them all. */
const sections = new Map<string, Section>()
/** Comment updates of one process go one after the other. */
let queue: Promise<void> = Promise.resolve()
/** The comment's id once found or created (later charts update it without listing again). */
let commentId: number | undefined

/** The pull request this run is for: GitHub Actions' event file, or Travis's variables. */
function pullRequest(env: Record<string, string | undefined>): { repo?: string; pr?: number } {
  if (env.GITHUB_EVENT_PATH) {
    try {
      // Only a regular file is read: a FIFO would wait for a writer for ever.
      if (!fs.statSync(env.GITHUB_EVENT_PATH).isFile()) throw new Error('not a file')
      const event = JSON.parse(fs.readFileSync(env.GITHUB_EVENT_PATH, 'utf8'))
      const pr = Number(event?.pull_request?.number ?? NaN)
      return { repo: env.GITHUB_REPOSITORY, pr: Number.isInteger(pr) && pr > 0 ? pr : undefined }
    } catch {
      return { repo: env.GITHUB_REPOSITORY }
    }
  }
  if (env.TRAVIS_PULL_REQUEST && /^\d+$/.test(env.TRAVIS_PULL_REQUEST)) {
    return { repo: env.GITHUB_REPOSITORY ?? env.TRAVIS_REPO_SLUG, pr: Number(env.TRAVIS_PULL_REQUEST) }
  }
  return { repo: env.GITHUB_REPOSITORY }
}

/** The pull request to comment on, or why there is none. */
function target(ctx: HookContext): Target | string {
  const env = ctx.config.env
  const { repo, pr } = pullRequest(env)
  if (!pr) return 'not a pull request run (no pull_request in GITHUB_EVENT_PATH, no TRAVIS_PULL_REQUEST)'
  if (!repo || !/^[\w.-]+\/[\w.-]+$/.test(repo)) return `GITHUB_REPOSITORY=${repo ?? ''} is not owner/name`
  const token = env.GITHUB_TOKEN?.trim()
  if (!token) return 'GITHUB_TOKEN is not set (in GitHub Actions: env: GITHUB_TOKEN: ${{ secrets.GITHUB_TOKEN }})'
  const api = (env.GITHUB_API_URL?.trim() || 'https://api.github.com').replace(/\/+$/, '')
  try {
    if (!['http:', 'https:'].includes(new URL(api).protocol)) return `GITHUB_API_URL=${api} is not an http(s) URL`
  } catch {
    return `GITHUB_API_URL=${api} is not a URL`
  }
  return { api, repo, pr, token }
}

// ---------------------------------------------------------------------------------------
// The comment

/** A code fence longer than any backtick run in `text`, so the text cannot close it. */
function fence(text: string): string {
  const longest = Math.max(2, ...[...text.matchAll(/`+/g)].map((m) => m[0].length))
  return '`'.repeat(longest + 1)
}

/** Text shown as Markdown: `<none>` would otherwise vanish as an unknown HTML tag. */
const escapeHtml = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;')

/** At most `max` characters of `text`, cut at a line end. */
function cutLines(text: string, max: number): string {
  if (text.length <= max) return text
  const head = text.slice(0, Math.max(0, max))
  return head.slice(0, head.lastIndexOf('\n') + 1)
}

/** Room reserved for the note of each cut diff. */
const NOTE_ROOM = 240

function cutNote(chart: string, shown: number, total: number): string {
  return `_Diff cut to ${shown} of ${total} lines to fit GitHub's comment limit (${COMMENT_LIMIT} characters): run \`deploy.ts --diff ${chart}\` for all of it._`
}

function renderSection(s: Section, diffText: string, note: string): string {
  const out = [`### ${s.chart}`, '']
  if (s.error) out.push(`:x: **failed** in ${s.failedPhase ?? 'the run'}: ${escapeHtml(s.error)}`, '')
  if (s.source) out.push(`**Chart:** \`${s.source.chart}\` ${s.source.version} with ${s.source.valuesFiles.map((f) => `\`${f}\``).join(', ')}`)
  const state = (built?: boolean) => (built ? ', built' : s.built ? ', in the registry already' : '')
  out.push(s.images.length
    ? `**Images:** ${s.images.map((i) => `\`${i.spec}\` (${i.kind}${state(i.built)})`).join(', ')}`
    : '**Images:** none')
  const v = s.validation
  if (!v) out.push('**Validation:** not run')
  else {
    const how = [
      `${v.objects} object${v.objects === 1 ? '' : 's'}`,
      v.secrets === 'used' ? 'with its secrets' : `without secrets/${s.chart}.yaml (${v.secrets})`,
      v.serverSide === 'checked' ? 'checked by the API server' : `not checked by the API server${v.serverSideNote ? `: ${v.serverSideNote}` : ''}`,
    ].join('; ')
    out.push(`**Validation:** ${v.valid ? ':white_check_mark: valid' : ':x: invalid'} (${escapeHtml(how)})`)
    for (const e of v.errors) out.push(`- :x: ${escapeHtml(e.message)}`)
    for (const w of v.warnings) out.push(`- :warning: ${escapeHtml(w)}`)
  }
  if (!s.diff) out.push('**Diff:** not run')
  else {
    const { changed, added, removed } = s.diff.summary
    const against = s.diff.revision === undefined ? 'not installed yet' : `against revision ${s.diff.revision}`
    out.push(`**Diff** (${against}): ${changed} changed, ${added} added, ${removed} removed`)
    if (diffText) {
      const f = fence(diffText)
      out.push('', '<details><summary>Changes</summary>', '', `${f}diff`, diffText.replace(/\n?$/, '\n') + f, '</details>')
    }
    if (note) out.push('', note)
  }
  return out.join('\n') + '\n'
}

/**
 * The whole comment body, redacted, at most COMMENT_LIMIT characters: when the diffs do
 * not fit, the longest are cut at a line end, each with a note saying so.
 */
export function renderComment(all: Section[], commit: string, redact: (s: string) => string, ciUrl?: string): string {
  const head = [MARKER, '## deploy.ts plan', '', `For commit \`${commit.slice(0, 12)}\`${ciUrl ? ` ([CI run](${ciUrl}))` : ''}. Updated on every push.`, ''].join('\n') + '\n'
  const diffs = all.map((s) => redact(s.diff?.text ?? ''))
  const render = (texts: string[], notes: string[]) =>
    redact(head + all.map((s, i) => renderSection(s, texts[i], notes[i])).join('\n'))
  const full = render(diffs, diffs.map(() => ''))
  if (full.length <= COMMENT_LIMIT) return full
  // What the diffs may take: their length minus the excess, minus room for the notes.
  const cutCount = diffs.filter(Boolean).length
  let room = diffs.reduce((a, d) => a + d.length, 0) - (full.length - COMMENT_LIMIT) - cutCount * NOTE_ROOM
  // Water-filling: short diffs stay whole, the long ones share what is left.
  const order = diffs.map((_, i) => i).filter((i) => diffs[i]).sort((a, b) => diffs[a].length - diffs[b].length)
  const shares = diffs.map(() => 0)
  order.forEach((i, k) => {
    shares[i] = Math.min(diffs[i].length, Math.floor(Math.max(0, room) / (order.length - k)))
    room -= shares[i]
  })
  const lines = (t: string) => t.split('\n').filter(Boolean).length
  const texts = diffs.map((d, i) => cutLines(d, shares[i]))
  const notes = all.map((s, i) => (texts[i].length < diffs[i].length ? cutNote(s.chart, lines(texts[i]), lines(diffs[i])) : ''))
  const body = render(texts, notes)
  // A last guard (huge error texts, many charts): never send what GitHub refuses.
  return body.length <= COMMENT_LIMIT ? body : body.slice(0, COMMENT_LIMIT - 80) + '\n\n_…cut to fit GitHub\'s comment limit._\n'
}

// ---------------------------------------------------------------------------------------
// The GitHub REST API: list the comments, create one, update one.

class ApiError extends Error {}

/** Why a request failed, without the error text (which may name the URL). */
function failure(e: unknown): string {
  const err = e as { name?: string; cause?: { code?: string } }
  if (err?.name === 'TimeoutError' || err?.name === 'AbortError') return `timed out after ${REQUEST_TIMEOUT_MS / 1000}s`
  const code = err?.cause?.code
  return typeof code === 'string' && /^[A-Z_]+$/.test(code) ? `request failed (${code})` : 'request failed (could not connect)'
}

/** The rel="next" URL of a Link header (RFC 8288; GitHub's pagination). */
export function nextLink(header: string | null): string | undefined {
  for (const part of header?.split(',') ?? []) {
    const m = /<([^>]*)>\s*;(.*)$/.exec(part.trim())
    if (m && /\brel="?([^";]*\s)?next(\s[^";]*)?"?/.test(m[2])) return m[1]
  }
  return undefined
}

async function request(ctx: HookContext, t: Target, what: string, url: string, deadline: number, method = 'GET', body?: unknown): Promise<Response> {
  const left = deadline - Date.now()
  if (left <= 0) throw new ApiError(`${what}: out of time`)
  let res: Response
  try {
    res = await fetch(url, {
      method,
      headers: {
        accept: 'application/vnd.github+json',
        authorization: `Bearer ${t.token}`,
        'x-github-api-version': '2022-11-28',
        'user-agent': 'deploy.ts-pr-comment',
        ...(body === undefined ? {} : { 'content-type': 'application/json' }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: ctx.within(Math.min(REQUEST_TIMEOUT_MS, left)),
    })
  } catch (e) {
    throw new ApiError(`${what}: ${failure(e)}`)
  }
  if (!res.ok) {
    await res.body?.cancel().catch(() => undefined)
    const hint = res.status === 403 || res.status === 401
      ? ' (the token may not write to pull requests: give the job `permissions: pull-requests: write`; a pull request from a fork gets a read-only token)'
      : ''
    throw new ApiError(`${what}: GitHub answered HTTP ${res.status}${hint}`)
  }
  return res
}

/** The id of our comment (the first whose body starts with the marker), reading every page. */
async function findComment(ctx: HookContext, t: Target, deadline: number): Promise<number | undefined> {
  let url: string | undefined = `${t.api}/repos/${t.repo}/issues/${t.pr}/comments?per_page=100`
  const origin = new URL(t.api).origin
  for (let page = 1; url && page <= MAX_PAGES; page++) {
    const res = await request(ctx, t, 'listing the comments', url, deadline)
    const comments = (await res.json()) as { id?: unknown; body?: unknown }[]
    const ours = Array.isArray(comments) ? comments.find((c) => typeof c.body === 'string' && c.body.startsWith(MARKER)) : undefined
    if (ours && typeof ours.id === 'number') return ours.id
    url = nextLink(res.headers.get('link'))
    // The token goes only to the API's own origin.
    if (url && new URL(url, t.api).origin !== origin) return undefined
    if (url) url = new URL(url, t.api).href
  }
  return undefined
}

async function upsert(ctx: HookContext, t: Target, body: string) {
  const deadline = ctx.deadline - MARGIN_MS
  commentId ??= await findComment(ctx, t, deadline)
  if (commentId !== undefined) {
    await request(ctx, t, 'updating the comment', `${t.api}/repos/${t.repo}/issues/comments/${commentId}`, deadline, 'PATCH', { body })
    ctx.log.info(`updated the plan comment on pull request #${t.pr}`)
    return
  }
  const res = await request(ctx, t, 'creating the comment', `${t.api}/repos/${t.repo}/issues/${t.pr}/comments`, deadline, 'POST', { body })
  const created = (await res.json().catch(() => ({}))) as { id?: unknown }
  if (typeof created.id === 'number') commentId = created.id
  ctx.log.info(`commented the plan on pull request #${t.pr}`)
}

/** Records this chart's section and rewrites the comment with every section so far. */
function post(ctx: HookContext): Promise<void> {
  const t = target(ctx)
  if (typeof t === 'string') return Promise.resolve()
  sections.set(ctx.chart, {
    chart: ctx.chart,
    source: ctx.chartSource.layout === 'upstream-chart' ? ctx.chartSource : undefined,
    images: ctx.images.map(({ kind, spec, built }) => ({ kind, spec, built })),
    built: ctx.phases.build,
    validation: ctx.validation,
    diff: ctx.diff,
    error: ctx.error ? ctx.redact(String(ctx.error.message ?? ctx.error)).split('\n')[0].slice(0, 500) : undefined,
    failedPhase: ctx.failedPhase,
  })
  const body = renderComment([...sections.values()], ctx.commit, ctx.redact, ctx.ciRunUrl)
  const done = queue.then(() => upsert(ctx, t, body)).catch((e) => {
    // Warn, never fail: the comment is a convenience, the run's result stands.
    const message = e instanceof ApiError ? e.message : 'unexpected error'
    ctx.log.warn(`could not comment on pull request #${t.pr}: ${ctx.redact(message)}`)
  })
  queue = done
  return done
}

const plugin: Plugin = {
  name: 'pr-comment',
  verify(ctx) {
    const t = target(ctx)
    if (typeof t === 'string') ctx.log.warn(`${t}: no comment will be posted`)
  },
  success: (ctx) => post(ctx),
  fail: (ctx) => post(ctx),
}

export default plugin
