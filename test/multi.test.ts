// Several charts in one run, and --changed for CI matrices.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { makeRepo, runDeploy, commit, git, HELM3, type Rule } from './support/harness.ts'

const HUBS = ['staginghub', 'ea-hub', 'edsc-hub', 'nbgrader-hub']
/** Slow upgrades of the production charts hub1 … hub9 (staging stays quick). */
const upgradeOf = (commands: string[], chart: string) => commands.findIndex((c) => c.startsWith(`helm upgrade --install --namespace ${chart} `))

test('staging deploys first, then the others, each output prefixed, with a summary', { timeout: 40_000 }, async () => {
  const r = await runDeploy(makeRepo({ hubs: HUBS }), ['--no-setup', '--deploy', 'ea-hub', 'staginghub', 'edsc-hub'], { rules: [HELM3] })
  assert.equal(r.code, 0, r.stderr)
  const staging = upgradeOf(r.commands, 'staginghub')
  assert.ok(staging >= 0 && staging < upgradeOf(r.commands, 'ea-hub') && staging < upgradeOf(r.commands, 'edsc-hub'))
  assert.ok(!r.commands.some((c) => c.includes('nbgrader-hub')))
  assert.match(r.stdout, /^\[ea-hub\] ==> deploy ea-hub$/m)
  assert.match(r.stderr, /^\[edsc-hub\] INFO:root:Executing helm upgrade --install --namespace edsc-hub/m)
  assert.match(r.stdout, /^chart\s+phase reached\s+result\s+duration/m)
  for (const hub of ['staginghub', 'ea-hub', 'edsc-hub']) assert.match(r.stdout, new RegExp(`^${hub}\\s+rollout\\s+ok\\s+\\d+\\.\\ds`, 'm'))
})

test('a failed staging deploy stops the production charts', { timeout: 20_000 }, async () => {
  const r = await runDeploy(makeRepo({ hubs: HUBS }), ['--no-setup', '--deploy', 'staginghub', 'ea-hub', 'edsc-hub'], {
    rules: [HELM3, { tool: 'helm', match: '^upgrade --install --namespace staginghub', exit: 1, stderr: 'Error: UPGRADE FAILED\n' }],
  })
  assert.equal(r.code, 1)
  assert.equal(upgradeOf(r.commands, 'ea-hub'), -1)
  assert.equal(upgradeOf(r.commands, 'edsc-hub'), -1)
  assert.match(r.stdout, /^staginghub\s+deploy\s+failed/m)
  assert.match(r.stdout, /^ea-hub\s+-\s+skipped/m)
})

test('staging goes first whatever the order of the arguments: when it fails, no production chart is touched', { timeout: 15_000 }, async () => {
  const r = await runDeploy(makeRepo({ hubs: HUBS }), ['--no-setup', '--deploy', 'ea-hub', 'edsc-hub', 'staginghub'], {
    rules: [HELM3, { tool: 'helm', match: '^upgrade --install --namespace staginghub', exit: 1 }],
  })
  assert.equal(r.code, 1)
  assert.ok(upgradeOf(r.commands, 'staginghub') >= 0, r.commands.join('\n'))
  const touched = r.calls.filter((c) => /(ea|edsc)-hub/.test([c.cwd, ...c.argv].join(' ')))
  assert.deepEqual(touched.map((c) => [c.tool, ...c.argv].join(' ')), [], 'no command may run for a production chart')
  assert.match(r.stdout, /^ea-hub\s+-\s+skipped/m)
  assert.match(r.stdout, /^edsc-hub\s+-\s+skipped/m)
})

test('one failed production chart does not stop the others; the exit status says it failed', { timeout: 25_000 }, async () => {
  const r = await runDeploy(makeRepo({ hubs: HUBS }), ['--no-setup', '--deploy', 'staginghub', 'ea-hub', 'edsc-hub', 'nbgrader-hub'], {
    rules: [HELM3, { tool: 'helm', match: '^upgrade --install --namespace edsc-hub', exit: 1 }],
  })
  assert.equal(r.code, 1)
  assert.ok(upgradeOf(r.commands, 'ea-hub') > 0 && upgradeOf(r.commands, 'nbgrader-hub') > 0)
  assert.match(r.stdout, /^edsc-hub\s+deploy\s+failed/m)
  assert.match(r.stdout, /^nbgrader-hub\s+rollout\s+ok/m)
})

test('production charts deploy all at once by default, at most 8; --parallel N at a time', { timeout: 80_000 }, async () => {
  // No clock: the upgrades wait in a barrier until eight run at once (standin.mjs). By
  // default the first eight reach it together; the cap makes the ninth start only after one
  // of them ended. With --parallel 1 no two upgrades are ever inside together.
  const upgrades = (r: Awaited<ReturnType<typeof runDeploy>>) =>
    r.calls.filter((c) => c.tool === 'helm' && c.argv[0] === 'upgrade' && c.argv[3] !== 'staginghub')
  const production = Array.from({ length: 9 }, (_, i) => `hub${i + 1}`)
  const repo = makeRepo({ hubs: ['staginghub', ...production] })
  const barrier = (n: number): Rule => ({ tool: 'helm', match: '^upgrade --install --namespace hub', barrier: n })
  const all = await runDeploy(repo, ['--no-setup', '--deploy', 'staginghub', ...production], { rules: [HELM3, barrier(8)] })
  assert.equal(all.code, 0, all.stderr)
  const calls = upgrades(all)
  assert.equal(calls.length, 9)
  assert.equal(Math.max(...calls.map((c) => c.peak ?? 0)), 8, 'by default eight upgrades run at once, never nine')
  assert.equal(calls.filter((c) => c.departedBefore === 0).length, 8, 'the ninth starts only after one of the first eight ended')
  const serial = await runDeploy(repo, ['--no-setup', '--deploy', '--parallel', '1', 'staginghub', 'hub1', 'hub2', 'hub3'], { rules: [HELM3, barrier(1)] })
  assert.equal(serial.code, 0, serial.stderr)
  assert.deepEqual(upgrades(serial).map((c) => c.peak), [1, 1, 1], '--parallel 1 runs them one after another')
})

test('--parallel must be a positive whole number: 1 accepted, 0 refused', { timeout: 15_000 }, async () => {
  const repo = makeRepo()
  const [lots, zero, one] = await Promise.all(['lots', '0', '1'].map((n) => runDeploy(repo, ['--dry-run', '--no-setup', '--parallel', n, '--deploy', 'staginghub'])))
  for (const [r, n] of [[lots, 'lots'], [zero, '0']] as const) {
    assert.equal(r.code, 2, r.stderr)
    assert.equal(r.stderr.trim(), `ERROR: --parallel ${n}: give a whole number of charts, 1 or more`)
  }
  assert.equal(one.code, 0, one.stderr)
})

test('--changed prints the charts a range touched; --json for a CI matrix', { timeout: 15_000 }, async () => {
  const repo = makeRepo({ hubs: HUBS, monitoring: true })
  const base = git(repo, 'rev-parse', 'HEAD')
  commit(repo, { 'user-images/ea-hub/Dockerfile': 'FROM scratch\nLABEL v=2\n', 'secrets/edsc-hub.yaml': 'x: y\n', 'docs/x.md': 'doc\n' })
  const r = await runDeploy(repo, ['--changed', `${base}..HEAD`])
  assert.equal(r.code, 0, r.stderr)
  assert.deepEqual(r.stdout.trim().split('\n'), ['ea-hub', 'edsc-hub'])
  const json = await runDeploy(repo, ['--changed', `${base}..HEAD`, '--json'])
  assert.deepEqual(JSON.parse(json.stdout), ['ea-hub', 'edsc-hub'])
  const mid = git(repo, 'rev-parse', 'HEAD')
  commit(repo, { 'hub-charts/nbgrader-hub/values.yaml': 'a: 1\n', 'monitoring/values.yaml': 'b: 2\n' })
  assert.deepEqual(JSON.parse((await runDeploy(repo, ['--changed', `${mid}..HEAD`, '--json'])).stdout), ['nbgrader-hub', 'monitoring'])
  const none = await runDeploy(repo, ['--changed', 'HEAD..HEAD', '--json'])
  assert.deepEqual(JSON.parse(none.stdout), [])
})

test('--changed matches a dir as a dir: a commit touching ea-hub2\'s chart, images and secrets lists ea-hub2, never ea-hub', { timeout: 30_000 }, async () => {
  const repo = makeRepo({ hubs: ['ea-hub', 'ea-hub2', 'staginghub'], hubImages: ['ea-hub2'] })
  const base = git(repo, 'rev-parse', 'HEAD')
  commit(repo, {
    'hub-charts/ea-hub2/values.yaml': 'a: 2\n', 'user-images/ea-hub2/Dockerfile': 'FROM scratch\nLABEL v=2\n',
    'hub-images/ea-hub2/Dockerfile': 'FROM scratch\nLABEL v=2\n', 'secrets/ea-hub2.yaml': 'b: 2\n', 'secrets/ea-hub.yaml.bak': 'old\n',
  })
  const r = await runDeploy(repo, ['--changed', `${base}..HEAD`, '--json'])
  assert.equal(r.code, 0, r.stderr)
  assert.deepEqual(JSON.parse(r.stdout), ['ea-hub2'])
})

test('CI logs: each chart\'s output is one block inside its own group (GitHub Actions) or fold (Travis)', { timeout: 60_000 }, async () => {
  const repo = makeRepo({ hubs: HUBS })
  const rules = [HELM3, { tool: 'helm', match: '^upgrade', stdout: 'upgrade line 1\nupgrade line 2\n' } as Rule]
  const ci = [
    { env: { GITHUB_ACTIONS: 'true' }, start: (c: string) => `::group::deploy ${c}`, end: () => '::endgroup::' },
    { env: { TRAVIS: 'true' }, start: (c: string) => `travis_fold:start:deploy-${c}`, end: (c: string) => `travis_fold:end:deploy-${c}` },
  ]
  // Staging listed last, and a run without staging: there no chart may stream alongside the others.
  const runs = [['ea-hub', 'edsc-hub', 'nbgrader-hub', 'staginghub'], ['ea-hub', 'edsc-hub', 'nbgrader-hub']]
  const cases = ci.flatMap((c) => runs.map((charts) => ({ ...c, charts })))
  const results = await Promise.all(cases.map(({ env, charts }) => runDeploy(repo, ['--no-setup', '--deploy', ...charts], { env, rules })))
  results.forEach((r, i) => {
    const { charts, start, end } = cases[i]
    assert.equal(r.code, 0, r.stderr)
    const out = r.stdout.split('\n')
    const err = r.stderr.split('\n')
    for (const chart of charts) {
      const mine = (lines: string[]) => lines.flatMap((l, n) => (l.startsWith(`[${chart}] `) ? [n] : []))
      const [o, e] = [mine(out), mine(err)]
      const label = `${chart} in ${JSON.stringify(cases[i].env)} ${charts.join(' ')}:\n${r.stdout}`
      assert.ok(o.length >= 4 && e.length >= 2, label)
      assert.equal(o.at(-1)! - o[0] + 1, o.length, `stdout of ${label}`)
      assert.equal(e.at(-1)! - e[0] + 1, e.length, `stderr of ${label}`)
      assert.equal(out[o[0] - 1], start(chart), label)
      assert.equal(out[o.at(-1)! + 1], end(chart), label)
      assert.ok(out.includes(`[${chart}] upgrade line 2`), label)
    }
  })
})

test('--changed: a change to deploy.ts, lib/, plugins/, package.json, package-lock.json or deno.json means every chart; an invalid range too', { timeout: 30_000 }, async () => {
  const repo = makeRepo({ hubs: HUBS })
  const all = ['ea-hub', 'edsc-hub', 'nbgrader-hub', 'staginghub']
  for (const file of ['deploy.ts', 'lib/helm.ts', 'plugins/notify.ts', 'package.json', 'package-lock.json', 'deno.json']) {
    const base = git(repo, 'rev-parse', 'HEAD')
    commit(repo, { [file]: `// ${Math.random()}\n` })
    assert.deepEqual(JSON.parse((await runDeploy(repo, ['--changed', `${base}..HEAD`, '--json'])).stdout), all, file)
  }
  const bad = await runDeploy(repo, ['--changed', 'deadbeef..HEAD', '--json'])
  assert.equal(bad.code, 0)
  assert.deepEqual(JSON.parse(bad.stdout), all)
  assert.match(bad.stderr, /not valid here.*every chart counts as changed/)
})
