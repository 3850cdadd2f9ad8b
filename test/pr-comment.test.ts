// The pr-comment plugin: deploy.ts runs with it against a local stand-in of GitHub's REST
// API (list comments with Link pagination, create, update, a 403), and its rendering of
// large plans cut to GitHub's comment limit.
import { describe, test, after } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { makeRepo, runDeploy, tempDir, ROOT, HELM3, type RunResult } from './support/harness.ts'
import { startServer, closedPort, stopServers, type Answer, type Received, type TestServer } from './support/http.ts'
import { MARKER, COMMENT_LIMIT, renderComment, nextLink } from '../plugins/pr-comment.ts'
import type { ChartDiff, ChartValidation } from '../deploy.ts'

const PLUGIN = path.join(ROOT, 'plugins', 'pr-comment.ts')
const TOKEN = 'ghs_prCommentToken0123456789abcdef'
const COMMENTS = '/repos/earthlab/hub-ops/issues/12/comments'

const servers: TestServer[] = []
async function github(answers: Answer[]) {
  const s = await startServer(answers)
  servers.push(s)
  return s
}
after(async () => {
  await Promise.all(servers.map((s) => s.close()))
  await stopServers()
}, { timeout: 30_000 })

/** The environment of a GitHub Actions pull_request run for PR #12, the API at `api`. */
function prEnv(api: string, extra: Record<string, string> = {}): Record<string, string> {
  const event = path.join(tempDir('pr-event-'), 'event.json')
  fs.writeFileSync(event, JSON.stringify({ action: 'synchronize', number: 12, pull_request: { number: 12 } }))
  return { GITHUB_TOKEN: TOKEN, GITHUB_REPOSITORY: 'earthlab/hub-ops', GITHUB_EVENT_PATH: event, GITHUB_API_URL: api, ...extra }
}

function run(repo: string, args: string[], env: Record<string, string>, rules = [HELM3]): Promise<RunResult> {
  return runDeploy(repo, ['--plugin', PLUGIN, ...args], { env, rules, secrets: [TOKEN] })
}

const warnings = (r: RunResult) => r.stderr.split('\n').filter((l) => l.startsWith('WARNING:'))
const bodyOf = (q: Received) => (JSON.parse(q.body) as { body: string }).body
const route = (q: Received) => `${q.method} ${q.path}`
const comment = (id: number, body: string) => ({ id, body, user: { login: 'github-actions[bot]' } })

describe('pr-comment', { concurrency: 4 }, () => {
  test('first run: reads every page of comments, finds none of ours, creates one', { timeout: 30_000 }, async () => {
    const api = await github([
      { body: [comment(1, 'looks good'), comment(2, `> ${MARKER}\n> quoted by a person`)], headers: { link: '<{origin}/repositories/99/issues/12/comments?per_page=100&page=2>; rel="next", <{origin}/repositories/99/issues/12/comments?per_page=100&page=2>; rel="last"' } },
      { body: [comment(3, 'another')], headers: { link: '<{origin}/repositories/99/issues/12/comments?per_page=100&page=1>; rel="prev", <{origin}/repositories/99/issues/12/comments?per_page=100&page=1>; rel="first"' } },
      { status: 201, body: comment(500, 'created') },
    ])
    const repo = makeRepo()
    const r = await run(repo, ['--no-setup', '--build', 'staginghub'], prEnv(api.origin, { GITHUB_SERVER_URL: 'https://github.com', GITHUB_RUN_ID: '77' }),
      [HELM3, { tool: 'docker', match: '^manifest inspect', exit: 1 }])
    assert.equal(r.code, 0, r.stderr)
    const got = await api.received()
    assert.deepEqual(got.map(route), [
      `GET ${COMMENTS}?per_page=100`,
      'GET /repositories/99/issues/12/comments?per_page=100&page=2',
      `POST ${COMMENTS}`,
    ])
    for (const q of got) {
      assert.equal(q.headers.authorization, `Bearer ${TOKEN}`)
      assert.equal(q.headers.accept, 'application/vnd.github+json')
      assert.equal(q.headers['x-github-api-version'], '2022-11-28')
    }
    const body = bodyOf(got[2])
    assert.ok(body.startsWith(`${MARKER}\n`), body)
    assert.match(body, /### staginghub/)
    assert.match(body, /\*\*Images:\*\* `earthlabhubops\/ea-k8s-user-staginghub:[0-9a-f]{7}` \(user, built\)/)
    assert.match(body, /\*\*Validation:\*\* not run/)
    assert.match(body, /\*\*Diff:\*\* not run/)
    assert.ok(body.includes('([CI run](https://github.com/earthlab/hub-ops/actions/runs/77))'), body)
    assert.match(r.stderr, /pr-comment: commented the plan on pull request #12/)
  })

  test('later runs update our comment in place (found on the second page); several charts share it', { timeout: 30_000 }, async () => {
    const api = await github([
      { body: [comment(1, 'first')], headers: { link: '<{origin}/repositories/99/issues/12/comments?page=2>; rel="next"' } },
      { body: [comment(2, 'x'), comment(777, `${MARKER}\nold plan`)] },
      { body: comment(777, 'updated') },
    ])
    const repo = makeRepo({ hubs: ['staginghub', 'ea-hub'] })
    const r = await run(repo, ['--no-setup', '--validate', 'staginghub', 'ea-hub'], prEnv(`${api.origin}/`))
    assert.equal(r.code, 0, r.stderr)
    const got = await api.received()
    // One listing for the whole run; each chart then rewrites the same comment.
    assert.deepEqual(got.map(route), [
      `GET ${COMMENTS}?per_page=100`,
      'GET /repositories/99/issues/12/comments?page=2',
      'PATCH /repos/earthlab/hub-ops/issues/comments/777',
      'PATCH /repos/earthlab/hub-ops/issues/comments/777',
    ])
    const first = bodyOf(got[2])
    const last = bodyOf(got[3])
    // The charts run at once: the first to finish is posted alone, the last update has both.
    assert.equal(['### staginghub', '### ea-hub'].filter((h) => first.includes(h)).length, 1, first)
    assert.ok(last.includes('### staginghub') && last.includes('### ea-hub'), last)
    assert.equal(last.split(MARKER).length, 2, 'one marker')
  })

  test('a failed run is commented too, its error masked; the exit status is the run\'s', { timeout: 45_000 }, async () => {
    const api = await github([{ body: [] }, { status: 201, body: comment(9, 'x') }])
    const r = await run(makeRepo(), ['--no-setup', '--deploy', 'staginghub'], prEnv(api.origin), [HELM3, {
      tool: 'helm', match: '^upgrade', exit: 1, stderr: 'Error: value proxy-secret-token-0123456789 <rejected>\n',
    }])
    assert.equal(r.code, 1, r.stderr)
    const got = await api.received()
    assert.deepEqual(got.map((q) => q.method), ['GET', 'POST'])
    const body = bodyOf(got[1])
    assert.match(body, /:x: \*\*failed\*\* in deploy: helm upgrade --install .* exited with 1/)
    assert.ok(!body.includes('proxy-secret-token-0123456789'), body)
    assert.ok(!body.includes(TOKEN), body)
  })

  test('a 403 (a read-only token) warns and never fails the job', { timeout: 30_000 }, async () => {
    const api = await github([{ status: 403, body: { message: 'Resource not accessible by integration' } }])
    const r = await run(makeRepo(), ['--no-setup', '--validate', 'staginghub'], prEnv(api.origin))
    assert.equal(r.code, 0, r.stderr)
    assert.deepEqual((await api.received()).map(route), [`GET ${COMMENTS}?per_page=100`])
    const line = warnings(r).find((l) => l.includes('pr-comment'))
    assert.match(line ?? '', /^WARNING: pr-comment: could not comment on pull request #12: listing the comments: GitHub answered HTTP 403 \(the token may not write to pull requests: .*pull-requests: write.*\)$/)
    assert.ok(!/plugin pr-comment success failed/.test(r.stderr), 'a warning of its own, not a failed hook')
  })

  test('a 403 on update and an unreachable API warn the same way', { timeout: 40_000 }, async () => {
    const api = await github([{ body: [comment(5, `${MARKER}\nold`)] }, { status: 403 }])
    const patched = await run(makeRepo(), ['--no-setup', '--validate', 'staginghub'], prEnv(api.origin))
    assert.equal(patched.code, 0, patched.stderr)
    assert.deepEqual((await api.received()).map((q) => q.method), ['GET', 'PATCH'])
    assert.ok(warnings(patched).some((l) => /pr-comment: could not comment on pull request #12: updating the comment: GitHub answered HTTP 403/.test(l)), patched.stderr)

    const down = await run(makeRepo(), ['--no-setup', '--validate', 'staginghub'], prEnv(`http://127.0.0.1:${await closedPort()}`))
    assert.equal(down.code, 0, down.stderr)
    assert.ok(warnings(down).some((l) => /pr-comment: could not comment on pull request #12: listing the comments: request failed/.test(l)), down.stderr)
  })

  test('a Link to another origin is not followed: the token stays with the API', { timeout: 30_000 }, async () => {
    const other = await github([{ body: [] }])
    const api = await github([{ body: [], headers: { link: `<${other.origin}/steal?page=2>; rel="next"` } }, { status: 201, body: comment(3, 'x') }])
    const r = await run(makeRepo(), ['--no-setup', '--validate', 'staginghub'], prEnv(api.origin))
    assert.equal(r.code, 0, r.stderr)
    assert.deepEqual((await other.received()).length, 0)
    assert.deepEqual((await api.received()).map((q) => q.method), ['GET', 'POST'])
  })

  test('outside a pull request, or without a token: one warning, no request', { timeout: 30_000 }, async () => {
    const api = await github([{ body: [] }])
    const push = path.join(tempDir('push-event-'), 'event.json')
    fs.writeFileSync(push, JSON.stringify({ before: 'a', after: 'b' }))
    const [notPr, noToken] = await Promise.all([
      run(makeRepo(), ['--no-setup', '--validate', 'staginghub'], { ...prEnv(api.origin), GITHUB_EVENT_PATH: push }),
      run(makeRepo(), ['--no-setup', '--validate', 'staginghub'], { ...prEnv(api.origin), GITHUB_TOKEN: '' }),
    ])
    assert.equal(notPr.code, 0, notPr.stderr)
    assert.deepEqual(warnings(notPr), ['WARNING: pr-comment: not a pull request run (no pull_request in GITHUB_EVENT_PATH, no TRAVIS_PULL_REQUEST): no comment will be posted'])
    assert.equal(noToken.code, 0, noToken.stderr)
    assert.match(warnings(noToken).join('\n'), /pr-comment: GITHUB_TOKEN is not set/)
    assert.equal((await api.received()).length, 0)
  })

  test('Travis: TRAVIS_PULL_REQUEST and TRAVIS_REPO_SLUG name the pull request', { timeout: 20_000 }, async () => {
    const api = await github([{ body: [] }, { status: 201, body: comment(4, 'x') }])
    const r = await run(makeRepo(), ['--no-setup', '--validate', 'staginghub'], {
      GITHUB_TOKEN: TOKEN, GITHUB_API_URL: api.origin, TRAVIS_PULL_REQUEST: '31', TRAVIS_REPO_SLUG: 'earthlab/hub-ops',
    })
    assert.equal(r.code, 0, r.stderr)
    assert.deepEqual((await api.received()).map(route), ['GET /repos/earthlab/hub-ops/issues/31/comments?per_page=100', 'POST /repos/earthlab/hub-ops/issues/31/comments'])
  })
})

describe('pr-comment rendering', () => {
  const masked = (s: string) => s.split('s3cr3t-value').join('***')
  // The plugin's sections hold deploy.ts's own ChartValidation and ChartDiff.
  const section = (chart: string, text: string) => ({
    chart,
    images: [{ kind: 'user' as const, spec: `img/${chart}:abc1234` }, { kind: 'hub' as const, spec: `hub/${chart}:def5678`, built: true }],
    built: true,
    validation: {
      chart, valid: true, secrets: 'locked', serverSide: 'skipped', serverSideNote: 'no cluster access', objects: 12,
      errors: [], warnings: ['jupyterhub: icon is recommended'], text: '',
    } satisfies ChartValidation,
    diff: { chart, namespace: chart, revision: 7, summary: { changed: 2, added: 1, removed: 0, unchanged: 9 }, objects: [], text } satisfies ChartDiff,
  })
  const diffOf = (lines: number, tag: string) => Array.from({ length: lines }, (_, i) => `+  line ${i} ${tag} ${'x'.repeat(60)}`).join('\n') + '\n'

  test('a plan that fits is whole: diff in <details>, in a fence its content cannot close, masked', { timeout: 5_000 }, () => {
    const text = '--- a\n+++ b\n-  token: s3cr3t-value\n+  note: ```not a fence end```\n'
    const body = renderComment([section('staginghub', text)], '0123456789abcdef', masked)
    assert.ok(body.startsWith(MARKER))
    assert.ok(!body.includes('s3cr3t-value'))
    assert.match(body, /<details><summary>Changes<\/summary>\n\n````diff\n--- a\n/)
    assert.match(body, /\+  note: ```not a fence end```\n````\n<\/details>/)
    assert.match(body, /\*\*Diff\*\* \(against revision 7\): 2 changed, 1 added, 0 removed/)
    assert.match(body, /\*\*Validation:\*\* :white_check_mark: valid \(12 objects; without secrets\/staginghub\.yaml \(locked\); not checked by the API server: no cluster access\)\n- :warning: jupyterhub: icon is recommended/)
    assert.ok(!/cut to/.test(body))
    assert.match(body, /\*\*Images:\*\* `img\/staginghub:abc1234` \(user, in the registry already\), `hub\/staginghub:def5678` \(hub, built\)/)
  })

  test('plans over GitHub\'s limit: the long diffs are cut at a line end with a note, short ones stay whole', { timeout: 5_000 }, () => {
    const small = diffOf(20, 'small')
    const huge = diffOf(2000, 'huge')
    const body = renderComment([section('staginghub', small), section('ea-hub', huge), section('edsc-hub', huge)], '0123456789abcdef', masked)
    assert.ok(body.length <= COMMENT_LIMIT, `${body.length}`)
    assert.ok(body.length > COMMENT_LIMIT - 2_000, `uses the room: ${body.length}`)
    assert.ok(body.includes(small), 'the short diff is whole')
    const notes = [...body.matchAll(/_Diff cut to (\d+) of (\d+) lines to fit GitHub's comment limit \(65536 characters\): run `deploy\.ts --diff (\S+)` for all of it\._/g)]
    assert.deepEqual(notes.map((m) => [m[2], m[3]]), [['2000', 'ea-hub'], ['2000', 'edsc-hub']])
    for (const m of notes) assert.ok(Number(m[1]) > 100 && Number(m[1]) < 2000, m[0])
    // Every fence and <details> opened is closed; every kept line is whole.
    assert.equal(body.split('<details>').length, body.split('</details>').length)
    assert.equal(body.split('```diff').length - 1, 3)
    for (const line of body.split('\n').filter((l) => l.startsWith('+  line'))) assert.match(line, / x{60}$/)
  })

  test('at the edge of GitHub\'s limit: a comment of exactly 65536 characters is whole, one more and the diff is cut', { timeout: 5_000 }, () => {
    // GitHub's own number ("maximum is 65536 characters"), not the plugin's constant.
    const GITHUB_LIMIT = 65_536
    const render = (text: string) => renderComment([section('staginghub', text)], '0123456789abcdef', (t) => t)
    const line = (i: number) => `+  line ${i} ${'x'.repeat(60)}\n`
    const base = render(line(0)).length - line(0).length
    let text = ''
    for (let i = 0; base + text.length + line(i).length <= GITHUB_LIMIT; i++) text += line(i)
    // The last line padded so that the whole comment is exactly at the limit.
    text = text.replace(/\n$/, `${'y'.repeat(GITHUB_LIMIT - base - text.length)}\n`)
    const whole = render(text)
    assert.equal(whole.length, GITHUB_LIMIT)
    assert.ok(whole.includes(text) && !whole.includes('Diff cut to'), 'exactly at the limit: whole')
    const over = render(text.replace(/\n$/, 'z\n'))
    assert.ok(over.length <= GITHUB_LIMIT, `${over.length}`)
    assert.match(over, /_Diff cut to \d+ of \d+ lines to fit GitHub's comment limit/)
  })

  test('Link headers: rel="next" among others, quoted or not', { timeout: 5_000 }, () => {
    assert.equal(nextLink('<https://api.github.com/x?page=2>; rel="next", <https://api.github.com/x?page=5>; rel="last"'), 'https://api.github.com/x?page=2')
    assert.equal(nextLink('<https://a/x?page=1>; rel="prev", <https://a/x?page=3>; rel=next'), 'https://a/x?page=3')
    assert.equal(nextLink('<https://a/x?page=1>; rel="prev"'), undefined)
    assert.equal(nextLink(null), undefined)
  })
})
