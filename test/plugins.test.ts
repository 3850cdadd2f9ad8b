// Plugins: the hook contract (order, context, failures, loading, --dry-run) with test
// plugins written into the temp repo, and the shipped plugins (notify-slack,
// promote-from-staging, health-check) against real HTTP servers on 127.0.0.1 and
// scripted `helm history` answers.
import { describe, test, after } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { makeRepo, runDeploy, commit, git, ROOT, HELM3, HELM2, type Rule, type RunResult } from './support/harness.ts'
import { startServer, closedPort, stopServers, type TestServer } from './support/http.ts'

const HOOKS = ['verify', 'beforeSetup', 'afterSetup', 'beforeBuild', 'afterBuild', 'beforePush', 'afterPush',
  'beforeDeploy', 'afterDeploy', 'afterRollout', 'success', 'fail']
const shipped = (name: string) => path.join(ROOT, 'plugins', `${name}.ts`)
const BUILD_ALL: Rule = { tool: 'docker', match: '^manifest inspect', exit: 1 }

const servers: TestServer[] = []
async function server(...args: Parameters<typeof startServer>) {
  const s = await startServer(...args)
  servers.push(s)
  return s
}
after(async () => {
  await Promise.all(servers.map((s) => s.close()))
  await stopServers()
}, { timeout: 30_000 })

interface Recorded {
  plugin: string
  hook: string
  chart: string
  phases: Record<string, boolean>
  images: { kind: string; tag: string; spec: string; built?: boolean; pushed?: boolean }[]
  commit: string
  helmMajor: number
  dryRun?: boolean
  /** Fields a hook's context must not have. */
  stale: string[]
  deadlineLeft: number
  timings: string[]
  revision?: number
  error?: string
  failedPhase?: string
  reason?: string
  redact: string
  parseDuration: number
  run: string
  log: string
}

interface RecorderOptions {
  throwIn?: string[]
  /** Hooks whose error carries exitCode 3 (a refusal after verify). */
  refuseIn?: string[]
  hangIn?: string[]
  helmArgs?: string[]
}

/** Writes plugins/<name>.ts into the repo: every hook appends what it saw to a JSON-lines file. */
function writeRecorder(repo: string, name: string, options: RecorderOptions = {}, file = path.join(repo, `${name}.hooks.jsonl`)): string {
  fs.mkdirSync(path.join(repo, 'plugins'), { recursive: true })
  // As in the ops repo: .ts files are ES modules there (package.json "type": "module").
  fs.writeFileSync(path.join(repo, 'package.json'), '{ "type": "module" }\n')
  fs.writeFileSync(path.join(repo, 'plugins', `${name}.ts`), `import fs from 'node:fs'
const NAME = ${JSON.stringify(name)}
const FILE = ${JSON.stringify(file)}
const OPTS = ${JSON.stringify(options)}
const plugin = { name: NAME }
for (const hook of ${JSON.stringify(HOOKS)}) {
  plugin[hook] = async (ctx) => {
    fs.appendFileSync(FILE, JSON.stringify({
      plugin: NAME, hook, chart: ctx.chart, phases: ctx.phases, images: ctx.images, commit: ctx.commit,
      helmMajor: ctx.helm.major, dryRun: ctx.dryRun, stale: ['helmMajor', ...(hook === 'verify' ? [] : ['dryRun'])].filter((k) => k in ctx),
      deadlineLeft: ctx.deadline - Date.now(), timings: Object.keys(ctx.timings), revision: ctx.revision,
      error: ctx.error?.message, failedPhase: ctx.failedPhase, reason: ctx.reason, redact: typeof ctx.redact,
      parseDuration: ctx.parseDuration('1m30s'), run: typeof ctx.run, log: typeof ctx.log.warn,
    }) + '\\n')
    if (OPTS.throwIn?.includes(hook)) throw new Error(NAME + ' ' + hook + ' broke')
    if (OPTS.refuseIn?.includes(hook)) throw Object.assign(new Error(NAME + ' refuses'), { exitCode: 3 })
    if (OPTS.hangIn?.includes(hook)) await new Promise(() => {})
    if (hook === 'beforeDeploy' && OPTS.helmArgs) return { helmArgs: OPTS.helmArgs }
  }
}
export default plugin
`)
  return file
}

function recorded(file: string): Recorded[] {
  return fs.existsSync(file) ? fs.readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l)) : []
}

const errorLines = (r: RunResult) => r.stderr.split('\n').filter((l) => l.startsWith('ERROR:'))
const warnings = (r: RunResult) => r.stderr.split('\n').filter((l) => l.startsWith('WARNING:'))
const argvOf = (r: RunResult, prefix: string) => r.calls.find((c) => [c.tool, ...c.argv].join(' ').startsWith(prefix))?.argv

/** The description JSON a `helm upgrade` was given. */
function description(r: RunResult): Record<string, unknown> {
  const argv = argvOf(r, 'helm upgrade')
  assert.ok(argv, r.commands.join('\n'))
  const i = argv.lastIndexOf('--description')
  assert.ok(i > 0, argv.join(' '))
  return JSON.parse(argv[i + 1])
}

/** A secret URL must show up nowhere: not in the output, not in any command's argv. */
function assertNotLeaked(r: RunResult, ...urls: string[]) {
  for (const url of urls) {
    const secretPart = new URL(url).pathname
    for (const text of [r.stdout, r.stderr, ...r.calls.map((c) => c.argv.join(' '))]) {
      assert.ok(!text.includes(url) && !text.includes(secretPart), `${url} leaked into:\n${text}`)
    }
  }
}

describe('plugins', { concurrency: 8 }, () => {
  // -------------------------------------------------------------------------------------
  // The contract

  test('hooks run in order, plugin by plugin, with the run\'s context; helmArgs reach helm upgrade', { timeout: 210_000 }, async () => {
    const repo = makeRepo({ hubImages: ['staginghub'] })
    const both = path.join(repo, 'hooks.jsonl')
    writeRecorder(repo, 'rec-a', { helmArgs: ['--description', 'from-a'] }, both)
    writeRecorder(repo, 'rec-b', { helmArgs: ['--atomic'] }, both)
    const history = { tool: 'helm', match: '^history staginghub', stdout: JSON.stringify([{ revision: 7, status: 'deployed' }]) } as const
    // rec-a named twice (by name and by path) still loads, and runs, once.
    const r = await runDeploy(repo, ['--build', '--push', '--deploy', '--plugin', 'rec-a', '--plugin', './plugins/rec-a.ts', 'staginghub'], {
      rules: [HELM3, BUILD_ALL, history, { tool: 'helm', match: '^upgrade', stdout: 'Release "staginghub" has been upgraded.\nNAME: staginghub\nREVISION: 7\n' }],
      env: { DEPLOY_PLUGINS: 'rec-b' },
    })
    assert.equal(r.code, 0, r.stderr)
    const order = ['verify', 'beforeSetup', 'afterSetup', 'beforeBuild', 'beforePush', 'afterPush', 'beforePush', 'afterPush',
      'afterBuild', 'beforeDeploy', 'afterDeploy', 'afterRollout', 'success']
    // Each hook of every plugin in load order (--plugin first, then DEPLOY_PLUGINS) before the next hook.
    assert.deepEqual(recorded(both).map((e) => `${e.plugin}.${e.hook}`), order.flatMap((h) => [`rec-a.${h}`, `rec-b.${h}`]))
    assert.deepEqual(argvOf(r, 'helm upgrade')!.slice(-3), ['--description', 'from-a', '--atomic'])
    const seenA = recorded(both).filter((e) => e.plugin === 'rec-a')

    const head = git(repo, 'rev-parse', 'HEAD')
    const userTag = git(repo, 'log', '-n', '1', '--pretty=format:%h', '--', 'user-images/staginghub')
    const hubTag = git(repo, 'log', '-n', '1', '--pretty=format:%h', '--', 'hub-images/staginghub')
    for (const e of seenA) {
      assert.equal(e.chart, 'staginghub')
      assert.deepEqual(e.phases, { setup: true, build: true, push: true, deploy: true, validate: false, diff: false })
      assert.equal(e.commit, head)
      assert.equal(e.helmMajor, 3)
      // dryRun means something only in verify, the one hook a dry run calls.
      assert.equal(e.dryRun, e.hook === 'verify' ? false : undefined)
      assert.deepEqual(e.stale, [])
      // Every hook knows when its time is up: HOOK_TIMEOUT (15m) for blocking hooks, 10 s for success/fail.
      assert.ok(e.deadlineLeft > 0 && e.deadlineLeft <= (e.hook === 'success' ? 10_000 : 900_000), `${e.hook} deadline ${e.deadlineLeft}`)
      assert.equal(e.redact, 'function')
      assert.equal(e.run, 'function')
      assert.equal(e.log, 'function')
      assert.equal(e.parseDuration, 90)
    }
    const at = (hook: string) => seenA.find((e) => e.hook === hook)!
    for (const hook of ['verify', 'beforeBuild']) {
      assert.deepEqual(at(hook).images.map((i) => [i.kind, i.tag, i.built]), [['user', userTag, undefined], ['hub', hubTag, undefined]], hook)
    }
    assert.deepEqual(at('afterBuild').images.map((i) => [i.spec, i.built, i.pushed]), [
      [`earthlabhubops/ea-k8s-user-staginghub:${userTag}`, true, true],
      [`earthlabhubops/ea-k8s-hub-staginghub:${hubTag}`, true, true],
    ])
    assert.equal(at('afterBuild').revision, undefined)
    assert.equal(at('afterDeploy').revision, 7)
    assert.deepEqual(at('success').timings, ['setup', 'build', 'deploy', 'rollout'])
    assert.equal(at('success').error, undefined)
  })

  test('a verify refusal: exit 3, later plugins\' verify and every phase skipped, fail hooks told why (and one that throws is logged)', { timeout: 35_000 }, async () => {
    const repo = makeRepo()
    const a = writeRecorder(repo, 'refuser', { throwIn: ['verify', 'fail'] })
    const b = writeRecorder(repo, 'rec-b')
    const r = await runDeploy(repo, ['--build', '--deploy', '--plugin', 'refuser', '--plugin', 'rec-b', 'staginghub'])
    assert.equal(r.code, 3, r.stderr)
    assert.match(errorLines(r).join('\n'), /plugin refuser verify: refuser verify broke/)
    assert.deepEqual(recorded(a).map((e) => e.hook), ['verify', 'fail'])
    assert.deepEqual(recorded(b).map((e) => e.hook), ['fail'])
    const fail = recorded(b)[0]
    assert.match(fail.error!, /plugin refuser verify: refuser verify broke/)
    assert.equal(fail.failedPhase, 'verify')
    assert.equal(fail.reason, 'failed')
    // refuser's own fail hook threw: one warning, the exit status stays 3.
    assert.ok(warnings(r).some((l) => /plugin refuser fail failed: refuser fail broke/.test(l)), r.stderr)
    assert.deepEqual(r.commands.filter((c) => !c.startsWith('helm version')), [], 'nothing may run after a refusal')
    // The summary says what the exit code says: refused, not failed.
    assert.match(r.stdout, /^staginghub\s+-\s+refused\s/m)
  })

  test('a throwing afterDeploy: exit 1, no rollout, fail hook gets the error and the phase', { timeout: 90_000 }, async () => {
    const repo = makeRepo()
    const a = writeRecorder(repo, 'rec', { throwIn: ['afterDeploy'] })
    const r = await runDeploy(repo, ['--no-setup', '--deploy', '--plugin', 'rec', 'staginghub'])
    assert.equal(r.code, 1, r.stderr)
    assert.match(errorLines(r).join('\n'), /plugin rec afterDeploy: rec afterDeploy broke/)
    assert.ok(r.commands.some((c) => c.startsWith('helm upgrade')))
    assert.ok(!r.commands.some((c) => c.startsWith('kubectl --namespace staginghub get deployments')), 'rollout must not start')
    const seen = recorded(a)
    assert.deepEqual(seen.map((e) => e.hook), ['verify', 'beforeDeploy', 'afterDeploy', 'fail'])
    assert.match(seen[3].error!, /rec afterDeploy broke/)
    assert.equal(seen[3].failedPhase, 'deploy')
  })

  test('a throwing beforeDeploy: exit 1 before helm upgrade, failed phase deploy', { timeout: 35_000 }, async () => {
    const repo = makeRepo()
    const a = writeRecorder(repo, 'rec', { throwIn: ['beforeDeploy'] })
    const r = await runDeploy(repo, ['--no-setup', '--deploy', '--plugin', 'rec', 'staginghub'])
    assert.equal(r.code, 1, r.stderr)
    assert.ok(!r.commands.some((c) => c.startsWith('helm upgrade') || c.startsWith('helm dep')), r.commands.join('\n'))
    assert.deepEqual(recorded(a).map((e) => [e.hook, e.failedPhase]), [['verify', undefined], ['beforeDeploy', undefined], ['fail', 'deploy']])
  })

  test('a success hook that throws is logged; the exit status stays 0 and the next plugin still runs', { timeout: 100_000 }, async () => {
    const repo = makeRepo()
    writeRecorder(repo, 'bad', { throwIn: ['success'] })
    const good = writeRecorder(repo, 'good')
    const ok = await runDeploy(repo, ['--no-setup', '--deploy', '--plugin', 'bad', '--plugin', 'good', 'staginghub'])
    assert.equal(ok.code, 0, ok.stderr)
    assert.ok(warnings(ok).some((l) => /plugin bad success failed: bad success broke/.test(l)), ok.stderr)
    assert.equal(recorded(good).at(-1)!.hook, 'success')
  })

  test('a hook\'s error text reaches the fail hooks masked: a notifier that masks nothing itself posts no secret', { timeout: 160_000 }, async () => {
    const repo = makeRepo()
    const hook = await server()
    const token = 'leaky-api-token-0123456789'
    commit(repo, {
      'plugins/leaky.ts': "export default { name: 'leaky', afterDeploy(ctx) { throw new Error(`cannot reach https://api.example.org/?token=${ctx.config.env.LEAKY_API_TOKEN}`) } }\n",
      'plugins/naive-notify.ts': `export default { name: 'naive-notify', async fail(ctx) {
  const { message, stack, command, output } = ctx.error
  await fetch(ctx.config.env.NAIVE_NOTIFY_URL, { method: 'POST', body: JSON.stringify({ message, stack, command, output, failedPhase: ctx.failedPhase }) })
} }\n`,
    })
    const r = await runDeploy(repo, ['--no-setup', '--deploy', '--plugin', 'leaky', '--plugin', 'naive-notify', 'staginghub'], {
      env: { LEAKY_API_TOKEN: token, NAIVE_NOTIFY_URL: `${hook.origin}/notify` },
      secrets: [token],
    })
    assert.equal(r.code, 1, r.stderr)
    const [sent] = await hook.received()
    assert.ok(sent, 'the fail hook posted')
    assert.ok(!sent.body.includes(token) && !sent.body.includes(token.slice(0, 16)), sent.body)
    const body = JSON.parse(sent.body) as { message: string; stack: string; failedPhase: string }
    assert.equal(body.message, 'plugin leaky afterDeploy: cannot reach https://api.example.org/?token=***')
    assert.match(body.stack, /token=\*\*\*/)
    assert.equal(body.failedPhase, 'deploy')
  })

  test('a success hook that hangs is abandoned after 10 s; the run still succeeds', { timeout: 180_000 }, async () => {
    const repo = makeRepo()
    writeRecorder(repo, 'slow', { hangIn: ['success'] })
    const next = writeRecorder(repo, 'next')
    const start = Date.now()
    const r = await runDeploy(repo, ['--no-setup', '--deploy', '--plugin', 'slow', '--plugin', 'next', 'staginghub'])
    const took = Date.now() - start
    assert.equal(r.code, 0, r.stderr)
    assert.ok(warnings(r).some((l) => /plugin slow success failed: did not finish within 10s/.test(l)), r.stderr)
    assert.equal(recorded(next).at(-1)!.hook, 'success')
    assert.ok(took >= 9_500, `took ${took} ms`)
  })

  test('bad plugin files: exit 2 naming the file, nothing run, no hook called', { timeout: 70_000 }, async () => {
    const repo = makeRepo()
    const good = writeRecorder(repo, 'good')
    const files: Record<string, string> = {
      'plugins/boom.ts': "throw new Error('boom while loading')\nexport default { name: 'boom' }\n",
      'plugins/number.ts': 'export default 42\n',
      'plugins/nodefault.ts': "export const name = 'nodefault'\n",
      'plugins/badhook.ts': "export default { name: 'badhook', verify: 'yes' }\n",
      'plugins/syntax.ts': 'export default { name: \n',
      'plugins/typo.ts': "export default { name: 'typo', verify() {}, afterdeploy() {} }\n",
      'plugins/extra.ts': "export default { name: 'extra', onSucces: () => {} }\n",
    }
    for (const [file, text] of Object.entries(files)) fs.writeFileSync(path.join(repo, file), text)
    const cases: [string[], Record<string, string>, RegExp][] = [
      [['--plugin', 'good', '--plugin', 'missing'], {}, /plugins\/missing\.ts: plugin not found here nor shipped with deploy\.ts \(shipped: health-check, notify-slack, pr-comment, promote-from-staging\)/],
      [['--plugin', 'good'], { DEPLOY_PLUGINS: 'boom' }, /plugins\/boom\.ts: plugin failed to load: .*boom while loading/],
      [['--plugin', 'number'], {}, /plugins\/number\.ts: default export is not a plugin/],
      [['--plugin', 'nodefault'], {}, /plugins\/nodefault\.ts: default export is not a plugin/],
      [['--plugin', 'badhook'], {}, /plugins\/badhook\.ts: default export is not a plugin/],
      [['--plugin', 'syntax'], {}, /plugins\/syntax\.ts: plugin failed to load/],
      // A misspelled hook would never be called: it is refused, naming the hook it is closest to.
      [['--plugin', 'typo'], {}, /^ERROR: plugins\/typo\.ts: plugin typo has an unknown key "afterdeploy": did you mean "afterDeploy"\? \(a plugin has a name and hooks: verify, /],
      [['--plugin', 'extra'], {}, /plugins\/extra\.ts: plugin extra has an unknown key "onSucces": did you mean "success"\?/],
    ]
    const results = await Promise.all(cases.map(([args, env]) => runDeploy(repo, ['--no-setup', '--deploy', ...args, 'staginghub'], { env })))
    results.forEach((r, i) => {
      assert.equal(r.code, 2, `${cases[i][0].join(' ')}: ${r.stderr}`)
      const errors = errorLines(r)
      assert.equal(errors.length, 1, r.stderr)
      assert.match(errors[0], cases[i][2])
      assert.deepEqual(r.commands, [], 'nothing may run')
    })
    assert.deepEqual(recorded(good), [], 'no hook of a plugin that loaded may run either')
  })

  test('a bare name is the repository\'s plugins/<name>.ts, else the plugin shipped beside deploy.ts (run from another directory)', { timeout: 185_000 }, async () => {
    const slack = await server()
    // The fixture repository is not deploy.ts's directory and has no plugins/ at all.
    const bare = makeRepo()
    assert.ok(!fs.existsSync(path.join(bare, 'plugins')))
    const own = makeRepo()
    const mine = writeRecorder(own, 'notify-slack')
    const env = { SLACK_WEBHOOK_URL: `${slack.origin}/services/fallback` }
    const [shippedRun, ownRun] = await Promise.all([
      runDeploy(bare, ['--no-setup', '--deploy', '--plugin', 'notify-slack', 'staginghub'], { env }),
      runDeploy(own, ['--no-setup', '--deploy', '--plugin', 'notify-slack', 'staginghub'], { env }),
    ])
    assert.equal(shippedRun.code, 0, shippedRun.stderr)
    assert.match(shippedRun.stderr, /notify-slack: posted to Slack/)
    assert.equal((await slack.received()).length, 1, 'only the shipped plugin posts')
    // The repository's own plugins/notify-slack.ts wins over the shipped one.
    assert.equal(ownRun.code, 0, ownRun.stderr)
    assert.deepEqual(recorded(mine).map((e) => e.hook), ['verify', 'beforeDeploy', 'afterDeploy', 'afterRollout', 'success'])
  })

  test('ctx: the run\'s start time, a logger that names the plugin, retry with backoff, sleep and a yes/no parser', { timeout: 145_000 }, async () => {
    const repo = makeRepo()
    const file = path.join(repo, 'helpers.jsonl')
    fs.mkdirSync(path.join(repo, 'plugins'))
    fs.writeFileSync(path.join(repo, 'plugins/helpers.ts'), `import fs from 'node:fs'
const note = (entry) => fs.appendFileSync(${JSON.stringify(file)}, JSON.stringify(entry) + '\\n')
const outcome = (p) => p.then((value) => ({ value }), (e) => ({ error: e.message }))
export default {
  name: 'helpers',
  async verify(ctx) {
    ctx.log.info('hello')
    ctx.log.warn('careful')
    const tries = []
    const gaps = []
    const third = await outcome(ctx.retry(3, 20, (n) => { tries.push(n); if (n < 3) throw new Error('again ' + n); return 'done' }))
    const exhausted = await outcome(ctx.retry(2, 0, (n) => { throw new Error('still failing ' + n) }))
    const stopped = await outcome(ctx.retry(5, (n, e) => (e.message === 'fatal' ? undefined : 0), (n) => { throw new Error(n === 2 ? 'fatal' : 'flaky') }))
    let count = 0
    const listed = await outcome(ctx.retry(10, [0, 0], () => { count++; throw new Error('tried ' + count) }))
    const before = Date.now()
    await ctx.sleep(50)
    note({ hook: 'verify', startedAt: ctx.startedAt, now: Date.now(), tries, third, exhausted, stopped, listed, slept: Date.now() - before,
      yesNo: ['1', 'YES', ' on ', 'true', '0', 'no', 'Off', '', undefined, 'maybe'].map((t) => ctx.parseYesNo(t)) })
  },
  success(ctx) {
    note({ hook: 'success', startedAt: ctx.startedAt })
  },
}
`)
    const before = Date.now()
    const r = await runDeploy(repo, ['--no-setup', '--deploy', '--plugin', 'helpers', 'staginghub'])
    assert.equal(r.code, 0, r.stderr)
    assert.match(r.stderr, /^INFO:root:helpers: hello$/m)
    assert.match(r.stderr, /^WARNING: helpers: careful$/m)
    const [verify, success] = fs.readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l))
    assert.ok(verify.startedAt >= before && verify.startedAt <= verify.now, JSON.stringify(verify))
    assert.equal(success.startedAt, verify.startedAt, 'one start time for the chart\'s whole run')
    assert.deepEqual(verify.tries, [1, 2, 3])
    assert.deepEqual(verify.third, { value: 'done' })
    assert.deepEqual(verify.exhausted, { error: 'still failing 2' })
    assert.deepEqual(verify.stopped, { error: 'fatal' }, 'a backoff that returns nothing gives up at once')
    assert.deepEqual(verify.listed, { error: 'tried 3' }, 'an iterable backoff: one retry per value')
    assert.ok(verify.slept >= 40, `slept ${verify.slept} ms`)
    assert.deepEqual(verify.yesNo, [true, true, true, true, false, false, false, false, false, null])
  })

  /** A plugin whose afterDeploy waits as WAIT_KIND says (sleep, fetch or retry), passing ctx.signal on. */
  function writeWaiter(repo: string): string {
    const file = path.join(repo, 'waiter.txt')
    fs.mkdirSync(path.join(repo, 'plugins'), { recursive: true })
    fs.writeFileSync(path.join(repo, 'plugins/waiter.ts'), `import fs from 'node:fs'
const note = (line) => fs.appendFileSync(${JSON.stringify(file)}, line + '\\n')
let markEnded
const ended = new Promise((resolve) => (markEnded = resolve))
export default {
  name: 'waiter',
  async afterDeploy(ctx) {
    const kind = ctx.config.env.WAIT_KIND
    ctx.log.info('waiting: ' + kind)
    try {
      if (kind === 'sleep') await ctx.sleep(3_600_000)
      if (kind === 'fetch') await fetch(ctx.config.env.WAIT_URL, { signal: ctx.signal })
      if (kind === 'retry') await ctx.retry(Infinity, 3_600_000, () => { throw new Error('not yet') })
      note(kind + ' finished')
    } catch (e) {
      note(kind + ' ended: ' + (ctx.signal.aborted ? ctx.signal.reason.message : 'not aborted: ' + e.message))
      throw e
    } finally {
      markEnded()
    }
  },
  // Waits for afterDeploy's own wait to end, so what it noted is there when the run exits.
  async fail(ctx) {
    await ended
    note('fail ' + ctx.reason + ' ' + ctx.failedPhase)
  },
}
`)
    return file
  }

  test('ctx.signal ends a hook\'s own sleep, fetch or retry when HOOK_TIMEOUT runs out, not only the wait for it', { timeout: 130_000 }, async () => {
    const hang = await server([{ hang: true }])
    const repo = makeRepo()
    const file = writeWaiter(repo)
    const kinds = ['sleep', 'fetch', 'retry']
    const results = await Promise.all(kinds.map((kind) => runDeploy(repo, ['--no-setup', '--deploy', '--plugin', 'waiter', 'staginghub'], {
      env: { WAIT_KIND: kind, WAIT_URL: `${hang.origin}/slow`, HOOK_TIMEOUT: '2s' },
    })))
    results.forEach((r, i) => {
      assert.equal(r.code, 1, r.stderr)
      assert.deepEqual(errorLines(r), ['ERROR: plugin waiter afterDeploy: did not finish within 2s'])
      assert.ok(!warnings(r).some((l) => l.includes('waiter fail failed')), `the ${kinds[i]} kept going: ${r.stderr}`)
    })
    const lines = fs.readFileSync(file, 'utf8').trim().split('\n').sort()
    assert.deepEqual(lines, [
      'fail failed deploy', 'fail failed deploy', 'fail failed deploy',
      'fetch ended: did not finish within 2s', 'retry ended: did not finish within 2s', 'sleep ended: did not finish within 2s',
    ])
  })

  test('ctx.signal ends a blocking hook\'s wait on SIGTERM: exit 143, fail hooks told cancelled', { timeout: 135_000 }, async () => {
    const repo = makeRepo()
    const file = writeWaiter(repo)
    const r = await runDeploy(repo, ['--no-setup', '--deploy', '--plugin', 'waiter', 'staginghub'], {
      env: { WAIT_KIND: 'sleep' },
      onSpawn: (child) => {
        let sent = false
        child.stderr!.on('data', (d: Buffer) => {
          if (!sent && d.toString().includes('waiter: waiting: sleep')) {
            sent = true
            process.kill(child.pid!, 'SIGTERM')
          }
        })
      },
    })
    assert.equal(r.code, 143, r.stderr)
    assert.deepEqual(fs.readFileSync(file, 'utf8').trim().split('\n'), ['sleep ended: cancelled by SIGTERM', 'fail cancelled deploy'])
  })

  test('--dry-run lists the plugins and their hooks and calls only verify, with ctx.dryRun', { timeout: 85_000 }, async () => {
    const repo = makeRepo()
    const rec = writeRecorder(repo, 'rec')
    const slack = await server()
    const r = await runDeploy(repo, ['--dry-run', '--no-setup', '--build', '--push', '--deploy', '--plugin', 'rec', '--plugin', shipped('notify-slack'), 'staginghub'], {
      env: { SLACK_WEBHOOK_URL: `${slack.origin}/services/T1/B1/dryrunsecret` },
    })
    assert.equal(r.code, 0, r.stderr)
    assert.match(r.stdout, new RegExp(`# plugin rec: ${HOOKS.join(', ')} \\(verify called in this dry run, the others not\\)`))
    assert.match(r.stdout, /# plugin notify-slack: verify, success, fail \(verify called in this dry run, the others not\)/)
    assert.deepEqual(recorded(rec).map((e) => [e.hook, e.dryRun]), [['verify', true]])
    assert.equal((await slack.received()).length, 0)
    assert.match(r.stderr, /^INFO:root:Executing helm upgrade --install /m)
    assert.ok(!(r.stdout + r.stderr).includes('--description'))
  })

  // -------------------------------------------------------------------------------------
  // notify-slack

  const GITHUB = { GITHUB_SERVER_URL: 'https://github.com', GITHUB_REPOSITORY: 'earthlab/hub-ops', GITHUB_RUN_ID: '4242' }
  const TRAVIS_URL = 'https://app.travis-ci.com/github/earthlab/hub-ops/builds/777'

  test('notify-slack: success posts to Slack and the JSON webhook, never showing their URLs', { timeout: 170_000 }, async () => {
    const repo = makeRepo()
    const slack = await server()
    const hook = await server()
    const slackUrl = `${slack.origin}/services/T0AAA/B0BBB/xoxSlackSecret1234`
    const hookUrl = `${hook.origin}/hooks/deploy?token=jsonHookSecret5678`
    const r = await runDeploy(repo, ['--verbose', '--no-setup', '--build', '--push', '--deploy', '--plugin', shipped('notify-slack'), 'staginghub'], {
      rules: [HELM3, BUILD_ALL],
      env: { SLACK_WEBHOOK_URL: slackUrl, NOTIFY_WEBHOOK_URL: hookUrl, ...GITHUB },
    })
    assert.equal(r.code, 0, r.stderr)
    assert.match(r.stderr, /notify-slack: posted to Slack/)
    assert.match(r.stderr, /notify-slack: posted to the notify webhook/)
    assertNotLeaked(r, slackUrl, hookUrl)

    const head = git(repo, 'rev-parse', 'HEAD')
    const tag = git(repo, 'log', '-n', '1', '--pretty=format:%h', '--', 'user-images/staginghub')
    const posts = await slack.received()
    assert.equal(posts.length, 1)
    assert.equal(posts[0].method, 'POST')
    assert.equal(posts[0].path, '/services/T0AAA/B0BBB/xoxSlackSecret1234')
    assert.match(String(posts[0].headers['content-type']), /application\/json/)
    const { text } = JSON.parse(posts[0].body) as { text: string }
    assert.match(text, /\*staginghub\*: build, push, deploy succeeded/)
    assert.ok(text.includes(head.slice(0, 12)), text)
    assert.ok(text.includes(`earthlabhubops/ea-k8s-user-staginghub:${tag}\` (built, pushed)`), text)
    assert.match(text, /Duration: \d+\.\ds elapsed; build [\d.]+s, deploy [\d.]+s, rollout [\d.]+s/)
    assert.ok(text.includes('<https://github.com/earthlab/hub-ops/actions/runs/4242|build log>'), text)
    assert.ok(!/PROMOTION_OVERRIDE/.test(text))

    const body = (await hook.json())[0] as Record<string, any>
    assert.equal((await hook.received())[0].path, '/hooks/deploy?token=jsonHookSecret5678')
    assert.equal(body.event, 'success')
    assert.equal(body.status, 'succeeded')
    assert.equal(body.chart, 'staginghub')
    assert.equal(body.commit, head)
    assert.deepEqual(body.phases, ['build', 'push', 'deploy'])
    assert.deepEqual(body.images.map((i: any) => [i.kind, i.tag, i.built, i.pushed]), [['user', tag, true, true]])
    assert.ok(body.durationMs.elapsed > 0 && body.durationMs.sum >= 0 && body.durationMs.sum <= body.durationMs.elapsed, JSON.stringify(body.durationMs))
    assert.deepEqual(Object.keys(body.timings), ['build', 'deploy', 'rollout'])
    assert.equal(body.ciUrl, 'https://github.com/earthlab/hub-ops/actions/runs/4242')
    assert.equal(body.promotionOverride, false)
    assert.equal(body.error, undefined)
  })

  test('notify-slack: a failure names the phase, the redacted error and the last output lines', { timeout: 150_000 }, async () => {
    const repo = makeRepo()
    const slack = await server()
    const hook = await server()
    const slackUrl = `${slack.origin}/services/T0AAA/B0BBB/xoxSlackSecret9999`
    const r = await runDeploy(repo, ['--no-setup', '--deploy', '--plugin', shipped('notify-slack'), 'staginghub'], {
      rules: [HELM3, {
        tool: 'helm', match: '^upgrade', exit: 1,
        stderr: `client.go:486: value proxy-secret-token-0123456789 rejected\nError: UPGRADE FAILED: timed out waiting for the condition\n`,
      }],
      env: { SLACK_WEBHOOK_URL: slackUrl, NOTIFY_WEBHOOK_URL: `${hook.origin}/h`, TRAVIS_BUILD_WEB_URL: TRAVIS_URL, PROMOTION_OVERRIDE: '1' },
    })
    assert.equal(r.code, 1, r.stderr)
    assertNotLeaked(r, slackUrl)
    const { text } = (await slack.json())[0] as { text: string }
    assert.match(text, /:x: \*staginghub\*: failed in deploy \(deploy\)/)
    assert.match(text, /Error: ```helm upgrade --install .*exited with 1```/)
    assert.match(text, /UPGRADE FAILED: timed out waiting for the condition/)
    assert.ok(text.includes(`<${TRAVIS_URL}|build log>`), text)
    assert.match(text, /PROMOTION_OVERRIDE was set/)
    const body = (await hook.json())[0] as Record<string, any>
    assert.equal(body.event, 'fail')
    assert.equal(body.status, 'failed')
    assert.equal(body.failedPhase, 'deploy')
    assert.match(body.error, /helm upgrade .* exited with 1/)
    assert.match(body.command, /^helm upgrade --install --namespace staginghub staginghub hub-charts\/staginghub/)
    assert.ok(body.output.includes('Error: UPGRADE FAILED: timed out waiting for the condition'), JSON.stringify(body.output))
    assert.equal(body.ciUrl, TRAVIS_URL)
    assert.equal(body.promotionOverride, true)
    for (const sent of [text, (await hook.received())[0].body]) {
      assert.ok(!sent.includes('proxy-secret-token-0123456789'), 'a secret from the output reached the notification')
      assert.ok(sent.includes('value *** rejected'), sent)
    }
  })

  test('notify-slack: a failed command\'s long output is shown by its end, where the error is, not its beginning', { timeout: 160_000 }, async () => {
    const slack = await server()
    const hook = await server()
    const progress = Array.from({ length: 30 }, (_, i) => `progress line ${i + 1}`)
    const r = await runDeploy(makeRepo(), ['--no-setup', '--deploy', '--plugin', shipped('notify-slack'), 'staginghub'], {
      rules: [HELM3, { tool: 'helm', match: '^upgrade', exit: 1, stdout: `${progress.join('\n')}\n`, stderr: 'Error: UPGRADE FAILED: the cause, at the very end\n' }],
      env: { SLACK_WEBHOOK_URL: `${slack.origin}/services/T0AAA/B0BBB/endOfOutput`, NOTIFY_WEBHOOK_URL: `${hook.origin}/h` },
    })
    assert.equal(r.code, 1, r.stderr)
    // The last ten lines, the error last.
    const last = [...progress.slice(-9), 'Error: UPGRADE FAILED: the cause, at the very end']
    const { text } = (await slack.json())[0] as { text: string }
    assert.ok(text.includes(`Last output:\n\`\`\`${last.join('\n')}\`\`\``), text)
    assert.doesNotMatch(text, /progress line (1|2|3|20)\n/)
    assert.deepEqual(((await hook.json())[0] as { output: string[] }).output, last)
  })

  test('notify-slack: retries 5xx and 429, honouring Retry-After up to its cap', { timeout: 115_000 }, async () => {
    const slack = await server([{ status: 500 }, { status: 429, headers: { 'retry-after': '3600' } }, { status: 200 }])
    const r = await runDeploy(makeRepo(), ['--no-setup', '--deploy', '--plugin', shipped('notify-slack'), 'staginghub'], {
      env: { SLACK_WEBHOOK_URL: `${slack.origin}/services/retry` },
    })
    assert.equal(r.code, 0, r.stderr)
    const posts = await slack.received()
    assert.equal(posts.length, 3)
    assert.match(r.stderr, /Slack answered HTTP 500: retrying in 0\.5s/)
    assert.match(r.stderr, /Slack answered HTTP 429: retrying in 3\.0s/)
    assert.match(r.stderr, /posted to Slack/)
    const [first, second, third] = posts.map((q) => q.at)
    assert.ok(second - first >= 400, `${second - first} ms before the first retry`)
    assert.ok(third - second >= 2_900 && third - second < 8_000, `${third - second} ms: Retry-After capped at 3 s`)
    assert.equal(posts[0].body, posts[2].body, 'the same message each time')
  })

  test('notify-slack: gives up after 2 retries, does not retry a 4xx; the run is unaffected', { timeout: 150_000 }, async () => {
    const slack = await server([{ status: 503 }])
    const hook = await server([{ status: 404 }])
    const r = await runDeploy(makeRepo(), ['--no-setup', '--deploy', '--plugin', shipped('notify-slack'), 'staginghub'], {
      env: { SLACK_WEBHOOK_URL: `${slack.origin}/s`, NOTIFY_WEBHOOK_URL: `${hook.origin}/h` },
    })
    assert.equal(r.code, 0, r.stderr)
    assert.equal((await slack.received()).length, 3)
    assert.equal((await hook.received()).length, 1)
    assert.ok(warnings(r).some((l) => l.includes('plugin notify-slack success failed: Slack answered HTTP 503 (3 attempts); the notify webhook answered HTTP 404')), r.stderr)
  })

  test('notify-slack: a hanging or unreachable endpoint times out per request, URL unnamed', { timeout: 160_000 }, async () => {
    const slack = await server([{ hang: true }])
    const slackUrl = `${slack.origin}/services/T9/B9/hangingSecret`
    const hookUrl = `http://127.0.0.1:${await closedPort()}/closed/portSecret`
    const start = Date.now()
    const r = await runDeploy(makeRepo(), ['--no-setup', '--deploy', '--plugin', shipped('notify-slack'), 'staginghub'], {
      env: { SLACK_WEBHOOK_URL: slackUrl, NOTIFY_WEBHOOK_URL: hookUrl },
    })
    const took = Date.now() - start
    assert.equal(r.code, 0, r.stderr)
    assert.equal((await slack.received()).length, 1)
    const line = warnings(r).find((l) => l.includes('plugin notify-slack success failed'))
    assert.ok(line, r.stderr)
    assert.match(line, /Slack: timed out after 5s/)
    assert.match(line, /the notify webhook: request failed/)
    assert.ok(!/did not finish within 10s/.test(r.stderr), 'must finish within deploy.ts\'s 10 s bound')
    assert.ok(took >= 4_500, `${took} ms`)
    assertNotLeaked(r, slackUrl, hookUrl)
  })

  test('notify-slack: no URL configured means one warning and nothing else', { timeout: 80_000 }, async () => {
    const r = await runDeploy(makeRepo(), ['--no-setup', '--deploy', '--plugin', shipped('notify-slack'), 'staginghub'], {
      rules: [HELM3, { tool: 'helm', match: '^dep up', exit: 1 }],
    })
    assert.equal(r.code, 1, r.stderr)
    assert.deepEqual(warnings(r), ['WARNING: notify-slack: neither SLACK_WEBHOOK_URL nor NOTIFY_WEBHOOK_URL is set: no notification will be sent'])
  })

  // -------------------------------------------------------------------------------------
  // promote-from-staging

  const chartYaml = (name: string, jupyterhub: string) =>
    `apiVersion: v2\nname: ${name}\nversion: 1.0.0\ndependencies:\n  - name: jupyterhub\n    version: ${jupyterhub}\n    repository: https://hub.jupyter.org/helm-chart/\n`
  function promotionRepo(staging = '3.3.8', production = '3.3.8'): string {
    const repo = makeRepo({ hubs: ['staginghub', 'ea-hub'] })
    commit(repo, { 'hub-charts/staginghub/Chart.yaml': chartYaml('staginghub', staging), 'hub-charts/ea-hub/Chart.yaml': chartYaml('ea-hub', production) }, 'pin z2jh')
    return repo
  }
  const recordOf = (deps: Record<string, string>) => JSON.stringify({ commit: '0123456789ab', images: { user: 'abc1234' }, deps })
  const stagingHistory = (revisions: object[], match = '^history staginghub'): Rule =>
    ({ tool: 'helm', match, stdout: JSON.stringify(revisions) })
  const HEALTHY = stagingHistory([
    { revision: 1, status: 'superseded', description: 'Install complete' },
    { revision: 2, status: 'deployed', description: recordOf({ jupyterhub: '3.3.8' }) },
  ])
  const PROD = { PRODUCTION_CHARTS: 'ea-hub, other' }

  test('promote-from-staging: staging healthy with the same versions → production deploys (check after setup)', { timeout: 145_000 }, async () => {
    const repo = promotionRepo()
    const r = await runDeploy(repo, ['--deploy', '--plugin', shipped('promote-from-staging'), 'ea-hub'], { rules: [HELM3, HEALTHY], env: PROD })
    assert.equal(r.code, 0, r.stderr)
    const i = (prefix: string) => r.commands.findIndex((c) => c.startsWith(prefix))
    assert.ok(i('gcloud container clusters get-credentials') < i('helm history staginghub --namespace staginghub -o json'), r.commands.join('\n'))
    assert.ok(i('helm history staginghub') < i('helm dep up'), r.commands.join('\n'))
    assert.match(r.stderr, /promote-from-staging: staginghub runs what ea-hub is about to get/)
    const tag = git(repo, 'log', '-n', '1', '--pretty=format:%h', '--', 'user-images/ea-hub')
    assert.deepEqual(description(r), { commit: git(repo, 'rev-parse', 'HEAD').slice(0, 12), chart: '1.0.0', images: { user: tag }, deps: { jupyterhub: '3.3.8' } })
  })

  test('promote-from-staging: versions differ → exit 3 saying what differs, nothing built or deployed', { timeout: 75_000 }, async () => {
    const repo = promotionRepo('3.3.8', '3.3.7')
    const plugin = shipped('promote-from-staging')
    const [noSetup, withSetup] = await Promise.all([
      runDeploy(repo, ['--no-setup', '--deploy', '--plugin', plugin, 'ea-hub'], { rules: [HELM3, HEALTHY], env: PROD }),
      runDeploy(repo, ['--build', '--push', '--deploy', '--plugin', plugin, 'ea-hub'], { rules: [HELM3, HEALTHY, BUILD_ALL], env: PROD }),
    ])
    for (const r of [noSetup, withSetup]) {
      assert.equal(r.code, 3, r.stderr)
      const [error] = errorLines(r)
      assert.match(error, /plugin promote-from-staging (verify|afterSetup): jupyterhub 3\.3\.8 on staginghub vs 3\.3\.7 here: deploy staginghub first \(or set PROMOTION_OVERRIDE=1/)
      assert.ok(!r.commands.some((c) => /^(helm (dep|upgrade)|docker (build|push))/.test(c)), r.commands.join('\n'))
    }
    assert.match(errorLines(noSetup)[0], /verify:/)
    assert.match(errorLines(withSetup)[0], /afterSetup:/)
    assert.match(withSetup.stdout, /^ea-hub\s+setup\s+refused\s/m)
  })

  test('promote-from-staging: a dependency only one side has blocks the promotion (exit 3, nothing deployed)', { timeout: 60_000 }, async () => {
    const dask = '  - name: dask-gateway\n    version: 2024.1.0\n    repository: https://helm.dask.org/\n'
    const extraHere = promotionRepo()
    commit(extraHere, { 'hub-charts/ea-hub/Chart.yaml': chartYaml('ea-hub', '3.3.8') + dask }, 'production adds dask-gateway')
    const plugin = shipped('promote-from-staging')
    const stagingHasMore = stagingHistory([{ revision: 2, status: 'deployed', description: recordOf({ jupyterhub: '3.3.8', 'dask-gateway': '2024.1.0' }) }])
    const [productionOnly, stagingOnly] = await Promise.all([
      runDeploy(extraHere, ['--no-setup', '--deploy', '--plugin', plugin, 'ea-hub'], { rules: [HELM3, HEALTHY], env: PROD }),
      runDeploy(promotionRepo(), ['--no-setup', '--deploy', '--plugin', plugin, 'ea-hub'], { rules: [HELM3, stagingHasMore], env: PROD }),
    ])
    const cases: [RunResult, RegExp][] = [
      [productionOnly, /verify: dask-gateway \(none\) on staginghub vs 2024\.1\.0 here: deploy staginghub first/],
      [stagingOnly, /verify: dask-gateway 2024\.1\.0 on staginghub vs \(none\) here: deploy staginghub first/],
    ]
    for (const [r, error] of cases) {
      assert.equal(r.code, 3, r.stderr)
      assert.match(errorLines(r)[0], error)
      assert.ok(!r.commands.some((c) => /^helm (dep|upgrade)/.test(c)), r.commands.join('\n'))
    }
  })

  test('promote-from-staging: staging failed, missing or not recorded → exit 3 with the reason', { timeout: 55_000 }, async () => {
    const repo = promotionRepo()
    const plugin = shipped('promote-from-staging')
    const cases: [Rule, RegExp][] = [
      [stagingHistory([{ revision: 1, status: 'deployed', description: recordOf({ jupyterhub: '3.3.8' }) }, { revision: 2, status: 'failed', description: recordOf({ jupyterhub: '3.3.8' }) }]),
        /staginghub revision 2 is failed, not deployed/],
      [stagingHistory([{ revision: 5, status: 'pending-upgrade', description: 'Preparing upgrade' }]), /staginghub revision 5 is pending-upgrade, not deployed/],
      [{ tool: 'helm', match: '^history staginghub', exit: 1, stderr: 'Error: release: not found\n' }, /could not read the history of staginghub \(Error: release: not found\)/],
      [stagingHistory([{ revision: 3, status: 'deployed', description: 'Upgrade complete' }]), /staginghub revision 3 records no chart versions/],
      [stagingHistory([]), /staginghub has never been deployed/],
    ]
    const results = await Promise.all(cases.map(([rule]) => runDeploy(repo, ['--no-setup', '--deploy', '--plugin', plugin, 'ea-hub'], { rules: [HELM3, rule], env: PROD })))
    results.forEach((r, i) => {
      assert.equal(r.code, 3, r.stderr)
      assert.match(errorLines(r)[0], cases[i][1])
      assert.match(errorLines(r)[0], /deploy staginghub first/)
      assert.ok(!r.commands.some((c) => c.startsWith('helm upgrade')))
    })
  })

  test('promote-from-staging: PROMOTION_OVERRIDE=1 deploys anyway, loudly, and notify-slack says so', { timeout: 70_000 }, async () => {
    const repo = promotionRepo('3.3.8', '3.3.7')
    const slack = await server()
    const r = await runDeploy(repo, ['--no-setup', '--deploy', '--plugin', shipped('promote-from-staging'), '--plugin', shipped('notify-slack'), 'ea-hub'], {
      rules: [HELM3, HEALTHY],
      env: { ...PROD, PROMOTION_OVERRIDE: '1', SLACK_WEBHOOK_URL: `${slack.origin}/services/override` },
    })
    assert.equal(r.code, 0, r.stderr)
    assert.ok(warnings(r).some((l) => l.includes('PROMOTION_OVERRIDE is set: deploying ea-hub although jupyterhub 3.3.8 on staginghub vs 3.3.7 here')), r.stderr)
    assert.ok(warnings(r).some((l) => /^WARNING: promote-from-staging: !{20,}/.test(l)), 'a loud banner')
    assert.deepEqual(description(r).deps, { jupyterhub: '3.3.7' })
    assert.equal(description(r).override, true)
    assert.match(((await slack.json())[0] as { text: string }).text, /PROMOTION_OVERRIDE was set: the promotion check from staging was bypassed/)
  })

  test('promote-from-staging: a PROMOTION_OVERRIDE that is neither yes nor no is refused before anything runs', { timeout: 50_000 }, async () => {
    const r = await runDeploy(promotionRepo('3.3.8', '3.3.7'), ['--no-setup', '--deploy', '--plugin', shipped('promote-from-staging'), 'ea-hub'], {
      rules: [HELM3, HEALTHY],
      env: { ...PROD, PROMOTION_OVERRIDE: 'maybe' },
    })
    assert.equal(r.code, 3, r.stderr)
    assert.deepEqual(errorLines(r), ['ERROR: plugin promote-from-staging verify: PROMOTION_OVERRIDE=maybe: neither yes nor no; set it to 1 to deploy despite the check, or unset it'])
    assert.deepEqual(r.commands, ['helm version --client --short'])
  })

  test('promote-from-staging: Helm 2 reads the history without --namespace; DEPLOYED counts', { timeout: 55_000 }, async () => {
    const repo = promotionRepo()
    const r = await runDeploy(repo, ['--no-setup', '--deploy', '--plugin', shipped('promote-from-staging'), 'ea-hub'], {
      rules: [HELM2, stagingHistory([{ revision: 4, updated: 'Mon Jan  1 00:00:00 2024', status: 'DEPLOYED', chart: 'staginghub-1.0.0', description: recordOf({ jupyterhub: '3.3.8' }) }])],
      env: PROD,
    })
    assert.equal(r.code, 0, r.stderr)
    assert.ok(r.commands.includes('helm history staginghub -o json'), r.commands.join('\n'))
    assert.deepEqual(description(r).deps, { jupyterhub: '3.3.8' })
  })

  test('promote-from-staging: staging and non-production charts are only recorded, never checked', { timeout: 45_000 }, async () => {
    const repo = promotionRepo()
    const plugin = shipped('promote-from-staging')
    const [staging, buildOnly] = await Promise.all([
      runDeploy(repo, ['--no-setup', '--deploy', '--plugin', plugin, 'staginghub'], { env: { PRODUCTION_CHARTS: 'ea-hub,staginghub' } }),
      runDeploy(repo, ['--no-setup', '--build', '--plugin', plugin, 'ea-hub'], { env: PROD }),
    ])
    assert.equal(staging.code, 0, staging.stderr)
    const beforeDeploy = staging.commands.slice(0, staging.commands.findIndex((c) => c.startsWith('helm dep up')))
    assert.ok(!beforeDeploy.some((c) => c.startsWith('helm history')), staging.commands.join('\n'))
    assert.deepEqual(description(staging).deps, { jupyterhub: '3.3.8' })
    assert.equal(buildOnly.code, 0, buildOnly.stderr)
    assert.ok(!buildOnly.commands.some((c) => c.startsWith('helm history')))
  })

  // -------------------------------------------------------------------------------------
  // health-check

  test('health-check: waits for a hub that starts late (503, then HTML, then its version)', { timeout: 55_000 }, async () => {
    const hub = await server([{ status: 503 }, { status: 200, body: '<html>starting</html>' }, { status: 200, body: { version: '5.2.1' } }])
    const repo = makeRepo({ hubs: ['staginghub', 'ea-hub'] })
    const r = await runDeploy(repo, ['--no-setup', '--deploy', '--plugin', shipped('health-check'), 'ea-hub'], {
      env: { HUB_URL_EA_HUB: `${hub.origin}/` },
    })
    assert.equal(r.code, 0, r.stderr)
    const tries = await hub.received()
    assert.deepEqual(tries.map((q) => [q.method, q.path]), [['GET', '/hub/api'], ['GET', '/hub/api'], ['GET', '/hub/api']])
    assert.match(r.stderr, /health-check: HTTP 503; next try in 1s/)
    assert.match(r.stderr, /health-check: HTTP 200 but not JSON; next try in 2s/)
    assert.match(r.stderr, new RegExp(`health-check: ${hub.origin}/hub/api answers: JupyterHub 5\\.2\\.1 \\(after [\\d.]+s, 3 attempts\\)`))
    const [a, b, c] = tries.map((q) => q.at)
    assert.ok(b - a >= 900 && c - b >= 1_900, `backoff doubles: ${b - a} ms, ${c - b} ms`)
  })

  test('health-check: a hub that never gets ready fails the run (exit 1) naming the URL and last status', { timeout: 55_000 }, async () => {
    const hub = await server([{ status: 503 }])
    const hook = await server()
    const r = await runDeploy(makeRepo(), ['--no-setup', '--deploy', '--plugin', shipped('health-check'), '--plugin', shipped('notify-slack'), 'staginghub'], {
      env: { HUB_URL_STAGINGHUB: `${hub.origin}`, HEALTH_CHECK_TIMEOUT: '3s', NOTIFY_WEBHOOK_URL: `${hook.origin}/h` },
    })
    assert.equal(r.code, 1, r.stderr)
    assert.match(errorLines(r)[0], new RegExp(`plugin health-check afterRollout: ${hub.origin}/hub/api did not answer with the hub's version within 3s; last: HTTP 503`))
    // Tries at about 0 s, 1 s and 3 s (a loaded machine may miss the last before the deadline):
    // it retried with backoff, and the deadline bounds the wait.
    const tries = await hub.received()
    assert.ok(tries.length >= 2 && tries.length <= 4, `${tries.length} requests`)
    const span = tries.at(-1)!.at - tries[0].at
    assert.ok(span >= 900 && span < 6_000, `${span} ms between the first and the last try`)
    const body = (await hook.json())[0] as Record<string, any>
    assert.equal(body.failedPhase, 'rollout')
    assert.match(body.error, /did not answer/)
  })

  test('health-check: ingress.enabled false in values.yaml means its host is not the hub\'s URL', { timeout: 45_000 }, async () => {
    const hub = await server([{ status: 200, body: { version: '5.2.1' } }])
    const repo = makeRepo()
    commit(repo, { 'hub-charts/staginghub/values.yaml': `jupyterhub:\n  ingress:\n    enabled: false\n    hosts:\n      - 127.0.0.1:${hub.port}\n` })
    const r = await runDeploy(repo, ['--no-setup', '--deploy', '--plugin', shipped('health-check'), 'staginghub'], { env: { HEALTH_CHECK_TIMEOUT: '1s' } })
    assert.equal(r.code, 0, r.stderr)
    assert.match(r.stderr, /health-check: no URL for staginghub .*: skipped/)
    assert.equal((await hub.received()).length, 0)
  })

  test('health-check: HEALTH_CHECK_TIMEOUT at the edges of its range (1s to 1h): 1s and 1h accepted, 0s and 3601s refused', { timeout: 60_000 }, async () => {
    const plugin = shipped('health-check')
    const repo = makeRepo()
    const runs = await Promise.all(['1s', '1h', '0s', '3601s'].map((t) => runDeploy(repo, ['--no-setup', '--deploy', '--plugin', plugin, 'staginghub'], { env: { HEALTH_CHECK_TIMEOUT: t } })))
    assert.deepEqual(runs.map((r) => r.code), [0, 0, 2, 2], runs.map((r) => r.stderr).join('\n'))
    assert.deepEqual(runs.slice(2).map((r) => errorLines(r)), [
      ['ERROR: plugin health-check verify: HEALTH_CHECK_TIMEOUT=0s: out of range; use a duration from 1s to 1h'],
      ['ERROR: plugin health-check verify: HEALTH_CHECK_TIMEOUT=3601s: out of range; use a duration from 1s to 1h'],
    ])
  })

  test('health-check: the URL from values.yaml (https, ingress host + baseUrl); skipped without one; bad timeout refused', { timeout: 40_000 }, async () => {
    const plain = await server([{ status: 200, body: { version: '5.2.1' } }])
    const withIngress = makeRepo()
    commit(withIngress, {
      'hub-charts/staginghub/values.yaml': `jupyterhub:\n  hub:\n    baseUrl: /jhub/\n  ingress:\n    enabled: true\n    hosts:\n      - 127.0.0.1:${plain.port}\n`,
    })
    const plugin = shipped('health-check')
    const [fromValues, skipped, badTimeout] = await Promise.all([
      runDeploy(withIngress, ['--no-setup', '--deploy', '--plugin', plugin, 'staginghub'], { env: { HEALTH_CHECK_TIMEOUT: '1s' } }),
      runDeploy(makeRepo(), ['--no-setup', '--deploy', '--plugin', plugin, 'staginghub']),
      runDeploy(makeRepo(), ['--no-setup', '--deploy', '--plugin', plugin, 'staginghub'], { env: { HEALTH_CHECK_TIMEOUT: 'soon' } }),
    ])
    // https to a plain-HTTP port fails: the point is which URL was tried.
    assert.equal(fromValues.code, 1, fromValues.stderr)
    assert.match(errorLines(fromValues)[0], new RegExp(`https://127\\.0\\.0\\.1:${plain.port}/jhub/hub/api did not answer .* within 1s; last: request failed`))
    assert.match(fromValues.stderr, /URL from hub-charts\/staginghub\/values\.yaml/)

    assert.equal(skipped.code, 0, skipped.stderr)
    assert.match(skipped.stderr, /health-check: no URL for staginghub \(set HUB_URL_STAGINGHUB or jupyterhub\.ingress\.hosts in its values\.yaml\): skipped/)

    assert.equal(badTimeout.code, 2, badTimeout.stderr)
    assert.match(errorLines(badTimeout)[0], /plugin health-check verify: HEALTH_CHECK_TIMEOUT=soon: not a duration/)
    assert.ok(!badTimeout.commands.some((c) => c.startsWith('helm upgrade')))
  })
})
