// Failing safely: signals, heartbeats, CI log groups, secrets kept out of every output.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { makeRepo, runDeploy, commit, tempDir, findLeak, HELM3, SECRET_TOKEN, PASSWORD, type RunResult } from './support/harness.ts'

const alive = (pid: number) => {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

/** A plugin, written into the repo, that records the fail hook's reason and phase. */
function recordingPlugin(repo: string): string {
  const file = path.join(tempDir(), 'fail-hooks.txt')
  commit(repo, {
    'plugins/record.ts': `import fs from 'node:fs'\nexport default { name: 'record', fail(ctx: { reason?: string; failedPhase?: string }) { fs.appendFileSync(${JSON.stringify(file)}, \`\${ctx.reason} \${ctx.failedPhase}\\n\`) } }\n`,
  })
  return file
}

for (const [signal, code] of [['SIGTERM', 143], ['SIGINT', 130]] as const) {
  test(`${signal} during helm upgrade: passed on as ${signal} to the running command, fail hooks run with cancelled, exit ${code}, no orphan`, { timeout: 25_000 }, async () => {
    const repo = makeRepo()
    const failFile = recordingPlugin(repo)
    let sent = false
    const r: RunResult = await runDeploy(repo, ['--no-setup', '--deploy', '--plugin', 'record', 'staginghub'], {
      rules: [HELM3, { tool: 'helm', match: '^upgrade', sleepMs: 60_000 }],
      onSpawn: (child) => child.stderr!.on('data', (d: Buffer) => {
        if (!sent && d.toString().includes('Executing helm upgrade')) {
          sent = true
          setTimeout(() => process.kill(child.pid!, signal), 2000)
        }
      }),
    })
    assert.equal(r.code, code, r.stderr)
    assert.match(r.stderr, new RegExp(`${signal} received: stopping`))
    const upgrade = r.calls.find((c) => c.argv[0] === 'upgrade')!
    assert.ok(upgrade, 'the upgrade was running')
    assert.equal(alive(upgrade.pid), false, 'the helm child was stopped with the run')
    // Tools clean up differently on each: the signal is passed on as it came.
    assert.deepEqual(r.signals, [{ tool: 'helm', pid: upgrade.pid, signal }])
    assert.equal(fs.readFileSync(failFile, 'utf8'), 'cancelled deploy\n')
  })
}

test('in CI, a silent long command gets heartbeat lines naming what it waits for', { timeout: 30_000 }, async () => {
  const r = await runDeploy(makeRepo(), ['--no-setup', '--deploy', 'staginghub'], {
    env: { HEARTBEAT_INTERVAL: '1s' },
    rules: [HELM3, { tool: 'helm', match: '^upgrade', sleepMs: 3500 }],
  })
  assert.equal(r.code, 0, r.stderr)
  const beats = r.stdout.split('\n').filter((l) => l.startsWith('... still waiting for helm upgrade --install'))
  assert.ok(beats.length >= 2, r.stdout)
  assert.match(beats[0], /\(\d+s\)$/)
})

test('a command that keeps printing gets no heartbeat lines', { timeout: 55_000 }, async () => {
  // It prints every 100 ms for 11 s; a heartbeat would need 5 s of silence (it would get two).
  const r = await runDeploy(makeRepo(), ['--no-setup', '--deploy', 'staginghub'], {
    env: { HEARTBEAT_INTERVAL: '5s' },
    rules: [HELM3, { tool: 'helm', match: '^upgrade', sleepMs: 11_000, every: 100, stdout: 'waiting for the hub pod\n' }],
  })
  assert.equal(r.code, 0, r.stderr)
  assert.ok(r.stdout.split('\n').filter((l) => l === 'waiting for the hub pod').length >= 20, r.stdout)
  assert.deepEqual(r.stdout.split('\n').filter((l) => l.includes('still waiting')), [])
})

test('Travis: each phase is a fold', { timeout: 15_000 }, async () => {
  const r = await runDeploy(makeRepo(), ['--no-setup', '--deploy', 'staginghub'], { env: { TRAVIS: 'true' }, rules: [HELM3] })
  assert.equal(r.code, 0, r.stderr)
  const folds = r.stdout.split('\n').filter((l) => l.startsWith('travis_fold:'))
  assert.deepEqual(folds, ['travis_fold:start:deploy', 'travis_fold:end:deploy', 'travis_fold:start:rollout', 'travis_fold:end:rollout'])
})

test('GitHub Actions: each phase is a group, a failure an ::error:: annotation', { timeout: 15_000 }, async () => {
  const r = await runDeploy(makeRepo(), ['--no-setup', '--deploy', 'staginghub'], {
    env: { GITHUB_ACTIONS: 'true' },
    rules: [HELM3, { tool: 'helm', match: '^upgrade', exit: 1 }],
  })
  assert.equal(r.code, 1)
  assert.match(r.stdout, /^::group::deploy staginghub\n==> deploy staginghub$/m)
  assert.match(r.stdout, /^::endgroup::$/m)
  assert.match(r.stdout, /^::error::helm upgrade --install --namespace staginghub staginghub hub-charts\/staginghub .*… exited with 1$/m)
})

test('secrets a failing tool prints are redacted from the output and the error', { timeout: 15_000 }, async () => {
  const r = await runDeploy(makeRepo(), ['--deploy', 'staginghub'], {
    rules: [HELM3, { tool: 'helm', match: '^upgrade', exit: 1, stderr: `Error: values: secretToken=${SECRET_TOKEN} password=${PASSWORD}\n` }],
  })
  assert.equal(r.code, 1)
  assert.match(r.stderr, /secretToken=\*\*\* password=\*\*\*/)
})

test('the secret scan every scenario gets does find a leak', { timeout: 5_000 }, () => {
  const call = { tool: 'docker', argv: ['login', '-p', PASSWORD], cwd: '', stdin: 'none' as const, stdinSha256: null, dockerPluginsLinked: null, env: {}, pid: 1, startedAt: 0 }
  assert.match(findLeak({ stdout: '', stderr: '', calls: [call] }, [PASSWORD])!, /argv of docker/)
  assert.match(findLeak({ stdout: `x ${SECRET_TOKEN}`, stderr: '', calls: [] }, [SECRET_TOKEN])!, /output/)
  assert.equal(findLeak({ stdout: '***', stderr: '', calls: [] }, [PASSWORD]), undefined)
})

test('a bound that is hit names what was being waited for', { timeout: 15_000 }, async () => {
  const r = await runDeploy(makeRepo(), ['--no-setup', '--build', 'staginghub'], {
    env: { BUILD_TIMEOUT: '1s' },
    rules: [HELM3, { tool: 'docker', match: '^manifest', exit: 1, stderr: 'no such manifest\n' }, { tool: 'docker', match: '^build', sleepMs: 20_000 }],
  })
  assert.equal(r.code, 1)
  assert.match(r.stderr, /ERROR: docker build -t earthlabhubops\/ea-k8s-user-staginghub:\w+ user-images\/staginghub was stopped by SIGTERM \(limit 1s\)/)
})

test('a blocking plugin hook that hangs is bounded by HOOK_TIMEOUT and named', { timeout: 15_000 }, async () => {
  const repo = makeRepo()
  commit(repo, { 'plugins/stuck.ts': "export default { name: 'stuck', afterDeploy: () => new Promise(() => {}) }\n" })
  const r = await runDeploy(repo, ['--no-setup', '--deploy', '--plugin', 'stuck', 'staginghub'], { env: { HOOK_TIMEOUT: '1s' } })
  assert.equal(r.code, 1)
  assert.match(r.stderr, /ERROR: plugin stuck afterDeploy: did not finish within 1s/)
  assert.ok(!r.commands.some((c) => c.startsWith('kubectl rollout')))
})

test('secret-looking values of the environment and .env are redacted from relayed output', { timeout: 15_000 }, async () => {
  const repo = makeRepo()
  const token = 'ghp_0123456789abcdefTOKEN'
  const hook = 'https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXX'
  commit(repo, { '.env': `SLACK_WEBHOOK_URL=${hook}\n` })
  const r = await runDeploy(repo, ['--no-setup', '--deploy', 'staginghub'], {
    env: { CI_DEPLOY_TOKEN: token },
    secrets: [token, hook],
    rules: [HELM3, { tool: 'helm', match: '^dep up', stdout: `token ${token} hook ${hook}\n` }],
  })
  assert.equal(r.code, 0, r.stderr)
  assert.match(r.stdout, /token \*\*\* hook \*\*\*/)
})

test('every secret-looking key of the environment and .env is masked, whatever its case; ordinary values are not', { timeout: 15_000 }, async () => {
  const repo = makeRepo()
  // One key per ending the rule names (docs/configuration.md), and keys that only look close.
  const secret = {
    DB_PASSWORD: 'db-pa55word-value', LDAP_PASSWD: 'ldap-passwd-value', OAUTH_CLIENT_SECRET: 'oauth-client-secret-value',
    MAPS_API_KEY: 'maps-api-key-value', GIT_CRYPT_KEY: 'git-crypt-key-value', CI_DEPLOY_TOKEN: 'ci-deploy-token-value',
    TEAMS_WEBHOOK_URL: 'https://teams.example.org/hook/teams-webhook-value', grafana_admin_password: 'lower-case-key-value',
  }
  const fromFile = { REGISTRY_PASSWORD: 'registry-password-from-dotenv' }
  const ordinary = { GKE_ZONE: 'europe-west1-b', SSH_KEY_PATH: 'keys/ordinary-path', REPLICA_COUNT: 'ordinary-count-42', DEPLOY_USER: 'ordinary-user' }
  commit(repo, { '.env': Object.entries(fromFile).map(([k, v]) => `${k}=${v}\n`).join('') })
  const all = { ...secret, ...fromFile, ...ordinary }
  const r = await runDeploy(repo, ['--no-setup', '--deploy', 'staginghub'], {
    env: { ...secret, ...ordinary },
    secrets: [...Object.values(secret), ...Object.values(fromFile)],
    rules: [HELM3, { tool: 'helm', match: '^dep up', stdout: Object.entries(all).map(([k, v]) => `${k} is ${v}\n`).join('') }],
  })
  assert.equal(r.code, 0, r.stderr)
  for (const key of [...Object.keys(secret), ...Object.keys(fromFile)]) assert.ok(r.stdout.includes(`${key} is ***\n`), `${key}:\n${r.stdout}`)
  for (const [key, value] of Object.entries(ordinary)) assert.ok(r.stdout.includes(`${key} is ${value}\n`), `${key} must not be masked:\n${r.stdout}`)
})
