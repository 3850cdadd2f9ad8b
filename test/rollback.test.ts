// --rollback-on-failure with stand-ins: the exact helm and kubectl commands for Helm 3 and
// Helm 2, what the fail hooks and notify-slack are told, first installs, failed rollbacks,
// and the default (no flag) staying the original's commands. test/e2e/rollback.test.ts
// runs the same with real helm on the simulated cluster.
import { describe, test, after } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { makeRepo, runDeploy, git, ROOT, HELM2, HELM3, type Rule, type RunResult } from './support/harness.ts'
import { startServer, stopServers, type TestServer } from './support/http.ts'
import { withoutLock } from './support/hostile-deploy.ts'

const servers: TestServer[] = []
after(async () => {
  await Promise.all(servers.map((s) => s.close()))
  await stopServers()
}, { timeout: 30_000 })

const deployments: Rule = { tool: 'kubectl', match: 'get deployments -o name', stdout: 'deployment.apps/hub\n' }
const upgraded = (revision: number): Rule => ({ tool: 'helm', match: '^upgrade', stdout: `NAME: staginghub\nSTATUS: deployed\nREVISION: ${revision}\n` })
const history = (statuses: string[], match = '^history'): Rule => ({
  tool: 'helm', match, stdout: JSON.stringify(statuses.map((status, i) => ({ revision: i + 1, status, chart: 'staginghub-0.1.0', description: '' }))),
})
const NO_RELEASE: Rule = { tool: 'helm', match: '^history', exit: 1, stderr: 'Error: release: not found\n' }
const ROLLOUT = 'kubectl rollout status --namespace staginghub --watch deployment.apps/hub --timeout=600s'
const UPGRADE = 'helm upgrade --install --namespace staginghub staginghub hub-charts/staginghub'

interface Seen {
  hook: string
  failedPhase?: string
  error?: string
  rolledBackTo?: number
  rollbackError?: string
}

/** A repo whose plugin `check` fails afterRollout when CHECK_FAILS is set and records what `fail` is told. */
function checkedRepo(): { repo: string; seen: () => Seen[] } {
  const repo = makeRepo()
  const file = path.join(repo, 'fail.jsonl')
  fs.mkdirSync(path.join(repo, 'plugins'), { recursive: true })
  fs.writeFileSync(path.join(repo, 'plugins', 'check.ts'), `import fs from 'node:fs'
export default {
  name: 'check',
  afterRollout(ctx) {
    if (ctx.config.env.CHECK_FAILS) throw new Error('the hub does not answer')
  },
  fail(ctx) {
    fs.appendFileSync(${JSON.stringify(file)}, JSON.stringify({
      hook: 'fail', failedPhase: ctx.failedPhase, error: ctx.error?.message, rolledBackTo: ctx.rolledBackTo, rollbackError: ctx.rollbackError,
    }) + '\\n')
  },
}
`)
  const seen = () => (fs.existsSync(file) ? fs.readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l)) : [])
  return { repo, seen }
}

const errors = (r: RunResult) => r.stderr.split('\n').filter((l) => l.startsWith('ERROR:'))
// The deploy lock's kubectl calls (test/hostile-deploy.test.ts covers them) left out.
const after_ = (r: RunResult, prefix: string) => withoutLock(r.commands).slice(withoutLock(r.commands).findIndex((c) => c.startsWith(prefix)))
const tagOf = (repo: string) => git(repo, 'log', '-n', '1', '--pretty=format:%h', '--', 'user-images/staginghub')

describe('--rollback-on-failure', { concurrency: 6 }, () => {
  test('Helm 3: a failing check after the rollout rolls back to the revision live before, waits for it, tells the fail hooks and Slack', { timeout: 85_000 }, async () => {
    const { repo, seen } = checkedRepo()
    const slack = await startServer()
    const hook = await startServer()
    servers.push(slack, hook)
    const r = await runDeploy(repo, ['--no-setup', '--deploy', '--rollback-on-failure', '--plugin', 'check', '--plugin', path.join(ROOT, 'plugins/notify-slack.ts'), 'staginghub'], {
      rules: [HELM3, deployments, history(['superseded', 'superseded', 'superseded', 'deployed']), upgraded(5)],
      env: { CHECK_FAILS: '1', SLACK_WEBHOOK_URL: `${slack.origin}/services/T/B/rollbackSecret1`, NOTIFY_WEBHOOK_URL: `${hook.origin}/h` },
    })
    assert.equal(r.code, 1, r.stderr)
    assert.deepEqual(withoutLock(r.commands), [
      'helm version --client --short',
      'helm dep up',
      'helm history staginghub --namespace staginghub -o json',
      `${UPGRADE} --wait --timeout 600s --cleanup-on-fail --create-namespace -f secrets/staginghub.yaml --set-string jupyterhub.singleuser.image.tag=${tagOf(repo)}`,
      'kubectl --namespace staginghub get deployments -o name',
      ROLLOUT,
      'helm rollback staginghub 4 --namespace staginghub --wait --timeout 600s',
      'kubectl --namespace staginghub get deployments -o name',
      ROLLOUT,
    ])
    assert.match(r.stderr, /WARNING: staginghub failed after helm upgrade made revision 5: rolling back to revision 4, the one live before this run/)
    assert.match(r.stderr, /WARNING: staginghub rolled back to revision 4/)
    assert.deepEqual(errors(r), ['ERROR: plugin check afterRollout: the hub does not answer'])
    assert.deepEqual(seen(), [{ hook: 'fail', failedPhase: 'rollout', error: 'plugin check afterRollout: the hub does not answer', rolledBackTo: 4 }])
    const { text } = (await slack.json())[0] as { text: string }
    assert.match(text, /^:x: \*staginghub\*: failed in rollout \(deploy\), rolled back to revision 4$/m)
    const body = (await hook.json())[0] as Record<string, unknown>
    assert.equal(body.rolledBackTo, 4)
    assert.equal(body.status, 'failed')
  })

  test('Helm 2: the same with helm 2\'s flags (no --namespace, the timeout in seconds) and upper-case statuses', { timeout: 60_000 }, async () => {
    const { repo, seen } = checkedRepo()
    const r = await runDeploy(repo, ['--no-setup', '--deploy', '--rollback-on-failure', '--plugin', 'check', 'staginghub'], {
      rules: [HELM2, deployments, history(['SUPERSEDED', 'DEPLOYED', 'FAILED']), upgraded(4)],
      env: { CHECK_FAILS: '1', HELM_TIMEOUT: '5m' },
    })
    assert.equal(r.code, 1, r.stderr)
    assert.ok(r.commands.includes('helm history staginghub -o json'), r.commands.join('\n'))
    assert.deepEqual(after_(r, 'helm rollback'), [
      'helm rollback staginghub 2 --wait --timeout 300',
      'kubectl --namespace staginghub get deployments -o name',
      ROLLOUT,
    ])
    assert.equal(seen()[0].rolledBackTo, 2)
  })

  test('a rollout that does not finish: rolled back; when the rollback\'s own rollout fails too, the rollback is reported as failed', { timeout: 85_000 }, async () => {
    const { repo, seen } = checkedRepo()
    const r = await runDeploy(repo, ['--no-setup', '--deploy', '--rollback-on-failure', '--plugin', 'check', 'staginghub'], {
      rules: [HELM3, deployments, history(['deployed']), upgraded(2), { tool: 'kubectl', match: '^rollout status', exit: 1, stderr: 'error: timed out waiting for the condition\n' }],
    })
    assert.equal(r.code, 1, r.stderr)
    assert.deepEqual(after_(r, 'helm rollback').slice(0, 3), [
      'helm rollback staginghub 1 --namespace staginghub --wait --timeout 600s',
      'kubectl --namespace staginghub get deployments -o name',
      ROLLOUT,
    ])
    assert.deepEqual(errors(r).filter((l) => !l.includes('diagnostics')), [
      'ERROR: rollback of staginghub to revision 1 failed: rollout of deployment.apps/hub did not finish within 10m',
      'ERROR: rollout of deployment.apps/hub did not finish within 10m',
    ])
    // Diagnostics after the failed rollout, and again after the failed rollback.
    assert.equal(r.commands.filter((c) => c === 'kubectl get pods --namespace staginghub').length, 2)
    const fail = seen()[0]
    assert.equal(fail.rolledBackTo, undefined)
    assert.match(fail.rollbackError!, /rollout of deployment\.apps\/hub did not finish/)
  })

  test('helm rollback itself fails: reported with helm\'s reason and diagnostics; exit 1', { timeout: 70_000 }, async () => {
    const { repo, seen } = checkedRepo()
    const r = await runDeploy(repo, ['--no-setup', '--deploy', '--rollback-on-failure', '--plugin', 'check', 'staginghub'], {
      rules: [HELM3, deployments, history(['superseded', 'deployed']), upgraded(3),
        { tool: 'helm', match: '^rollback', exit: 1, stderr: 'Error: timed out waiting for the condition\n' }],
      env: { CHECK_FAILS: '1' },
    })
    assert.equal(r.code, 1, r.stderr)
    assert.match(errors(r)[0], /^ERROR: rollback of staginghub to revision 2 failed: helm rollback staginghub 2 .*exited with 1/)
    assert.ok(after_(r, 'helm rollback').includes('kubectl get events --namespace staginghub --sort-by=.lastTimestamp'), r.commands.join('\n'))
    assert.ok(!after_(r, 'helm rollback').includes(ROLLOUT), 'no rollout wait after a failed rollback')
    assert.deepEqual(errors(r).at(-1), 'ERROR: plugin check afterRollout: the hub does not answer')
    assert.match(seen()[0].rollbackError!, /helm rollback staginghub 2 .*exited with 1/)
  })

  test('a first install that fails: nothing to roll back to, said so; no rollback', { timeout: 60_000 }, async () => {
    const { repo, seen } = checkedRepo()
    const r = await runDeploy(repo, ['--no-setup', '--deploy', '--rollback-on-failure', '--plugin', 'check', 'staginghub'], {
      rules: [HELM3, deployments, NO_RELEASE, { tool: 'helm', match: '^upgrade', exit: 1, stderr: 'Error: context deadline exceeded\n' }],
    })
    assert.equal(r.code, 1, r.stderr)
    assert.ok(!r.commands.some((c) => c.startsWith('helm rollback')), r.commands.join('\n'))
    assert.match(r.stderr, /WARNING: staginghub: this was its first install, so there is no earlier revision to roll back to; the release is left as it is \(`helm uninstall staginghub --namespace staginghub` removes it\)/)
    assert.equal(seen()[0].rolledBackTo, undefined)
    assert.equal(seen()[0].rollbackError, undefined)
  })

  test('an upgrade that fails without a new revision changed nothing: nothing rolled back', { timeout: 65_000 }, async () => {
    const { repo } = checkedRepo()
    const r = await runDeploy(repo, ['--no-setup', '--deploy', '--rollback-on-failure', 'staginghub'], {
      rules: [HELM3, deployments, history(['superseded', 'deployed']), { tool: 'helm', match: '^upgrade', exit: 1, stderr: 'Error: parse error\n' }],
    })
    assert.equal(r.code, 1, r.stderr)
    assert.ok(!r.commands.some((c) => c.startsWith('helm rollback')), r.commands.join('\n'))
    assert.match(r.stderr, /staginghub is still on revision 2 \(the upgrade made no new revision\): nothing to roll back/)
  })

  test('without the flag nothing changes: no history read, no rollback; ROLLBACK_ON_FAILURE=true in .env turns it on; a bad value is refused', { timeout: 45_000 }, async () => {
    const { repo } = checkedRepo()
    const rules = [HELM3, deployments, history(['deployed']), upgraded(2)]
    const env = { CHECK_FAILS: '1' }
    fs.writeFileSync(path.join(repo, 'on.env'), 'ROLLBACK_ON_FAILURE=true\n')
    fs.writeFileSync(path.join(repo, 'bad.env'), 'ROLLBACK_ON_FAILURE=maybe\n')
    const args = ['--no-setup', '--deploy', '--plugin', 'check']
    const [off, on, bad] = await Promise.all([
      runDeploy(repo, [...args, 'staginghub'], { rules, env }),
      runDeploy(repo, [...args, '--dotenv', 'on.env', 'staginghub'], { rules, env }),
      runDeploy(repo, [...args, '--dotenv', 'bad.env', 'staginghub'], { rules, env }),
    ])
    assert.equal(off.code, 1, off.stderr)
    assert.ok(!off.commands.some((c) => c.startsWith('helm history') || c.startsWith('helm rollback')), off.commands.join('\n'))
    assert.equal(on.code, 1, on.stderr)
    assert.ok(on.commands.includes('helm rollback staginghub 1 --namespace staginghub --wait --timeout 600s'), on.commands.join('\n'))
    assert.equal(bad.code, 2, bad.stderr)
    assert.deepEqual(errors(bad), ['ERROR: ROLLBACK_ON_FAILURE=maybe: use true or false'])
    assert.deepEqual(bad.commands, [])
  })

  for (const [signal, code] of [['SIGTERM', 143], ['SIGINT', 130]] as const) {
    test(`${signal} during the rollout: exit ${code}, nothing rolled back (the next run's --recover decides), the fail hooks told no rollback`, { timeout: 45_000 }, async () => {
      const { repo, seen } = checkedRepo()
      let sent = false
      const r = await runDeploy(repo, ['--no-setup', '--deploy', '--rollback-on-failure', '--plugin', 'check', 'staginghub'], {
        rules: [HELM3, deployments, history(['superseded', 'deployed']), upgraded(3),
          { tool: 'kubectl', match: '^rollout status', sleepMs: 60_000, every: 200, stdout: 'Waiting for deployment "hub" rollout to finish: 0 of 1 updated replicas are available...\n' }],
        // Sent once the rollout's kubectl runs (it prints), after the upgrade made revision 3.
        onSpawn: (child) => child.stdout!.on('data', (d: Buffer) => {
          if (!sent && d.toString().includes('Waiting for deployment')) {
            sent = true
            process.kill(child.pid!, signal) // not child.kill(): under Deno that reports the exit as the signal's, whatever the code
          }
        }),
      })
      assert.equal(r.code, code, r.stderr)
      assert.ok(sent, 'the rollout was running')
      assert.ok(!r.commands.some((c) => c.startsWith('helm rollback')), r.commands.join('\n'))
      assert.doesNotMatch(r.stderr, /rolling back|rolled back|rollback of/)
      assert.deepEqual(seen().map((s) => [s.hook, s.rolledBackTo, s.rollbackError]), [['fail', undefined, undefined]])
    })
  }

  test('--dry-run says what a failure would do', { timeout: 20_000 }, async () => {
    const r = await runDeploy(makeRepo(), ['--dry-run', '--no-setup', '--deploy', '--rollback-on-failure', 'staginghub'])
    assert.equal(r.code, 0, r.stderr)
    assert.match(r.stdout, /# on failure after the upgrade: helm rollback staginghub <the revision live before> --namespace staginghub --wait --timeout 600s/)
    assert.ok(!r.commands.some((c) => c.startsWith('helm rollback')))
  })
})
