// Deploy and rollout phases with stand-ins: exact helm and kubectl commands for Helm 2
// and 3, concurrent bounded rollouts, diagnostics, stuck releases, the dry-run plan.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { makeRepo, runDeploy, commit, git, HELM2, HELM3, PASSWORD, SECRET_TOKEN, SETUP_COMMANDS, type Rule } from './support/harness.ts'
import { withoutLock } from './support/hostile-deploy.ts'

const USER = 'earthlabhubops/ea-k8s-user-staginghub'
const deployments: Rule = { tool: 'kubectl', match: 'get deployments -o name', stdout: 'deployment.apps/hub\ndeployment.apps/proxy\n' }
const history = (...statuses: string[]): Rule => ({
  tool: 'helm',
  match: '^history',
  stdout: JSON.stringify(statuses.map((status, i) => ({ revision: i + 1, status, chart: 'staginghub-0.1.0', description: '' }))),
})
const userTag = (repo: string) => git(repo, 'log', '-n', '1', '--pretty=format:%h', '--', 'user-images/staginghub')

test('Helm 2: the whole CI run matches the original command for command', { timeout: 20_000 }, async () => {
  const repo = makeRepo()
  const t1 = userTag(repo)
  const t2 = commit(repo, { 'user-images/staginghub/Dockerfile': 'FROM scratch\nLABEL v=2\n' })
  const r = await runDeploy(repo, ['--build', '--push', '--deploy', 'staginghub'], {
    env: { TRAVIS_COMMIT_RANGE: `${t1}...${t2}` },
    rules: [HELM2, deployments, { tool: 'docker', match: `manifest inspect ${USER}:${t1}$` }, { tool: 'docker', match: '^manifest', exit: 1 }],
  })
  assert.equal(r.code, 0, r.stderr)
  // The cache lookups (7, 8) and the rollout waits (last two) run at once: compare them sorted.
  // The deploy lock's kubectl calls are left out here (test/hostile-deploy.test.ts checks them).
  const all = withoutLock(r.commands)
  const commands = [...all.slice(0, 6), ...all.slice(6, 8).sort(), ...all.slice(8, -2), ...all.slice(-2).sort()]
  assert.deepEqual(commands, [
    'helm version --client --short',
    ...SETUP_COMMANDS[2],
    ...[`docker manifest inspect ${USER}:${t2}`, `docker manifest inspect ${USER}:${t1}`].sort(),
    `docker pull ${USER}:${t1}`,
    `docker build --cache-from ${USER}:${t1} -t ${USER}:${t2} user-images/staginghub`,
    `docker push ${USER}:${t2}`,
    'helm dep up',
    `helm upgrade --install --namespace staginghub staginghub hub-charts/staginghub --force --wait --timeout 600 --cleanup-on-fail -f secrets/staginghub.yaml --set-string jupyterhub.singleuser.image.tag=${t2}`,
    'kubectl --namespace staginghub get deployments -o name',
    'kubectl rollout status --namespace staginghub --watch deployment.apps/hub --timeout=600s',
    'kubectl rollout status --namespace staginghub --watch deployment.apps/proxy --timeout=600s',
  ])
  assert.match(r.calls.find((c) => c.argv.join(' ') === 'dep up')!.cwd, /hub-charts\/staginghub$/)
  assert.match(r.stderr, /INFO:root:Executing helm upgrade --install --namespace staginghub/)
  assert.match(r.stderr, /INFO:root:Executing and capturing kubectl --namespace staginghub get deployments -o name/)
  assert.match(r.stderr, /INFO:root:Waiting for all deployments to be up and running/)
  assert.match(r.stdout, new RegExp(`Using ${USER}:${t2} as user image for staginghub`))
})

test('Helm 3: no --force, a timeout with a unit, --create-namespace, the release revision read back', { timeout: 15_000 }, async () => {
  const repo = makeRepo()
  const tag = userTag(repo)
  const r = await runDeploy(repo, ['--no-setup', '--deploy', 'staginghub'], {
    rules: [HELM3, deployments, history('deployed'), { tool: 'helm', match: '^upgrade', stdout: 'NAME: staginghub\nSTATUS: deployed\nREVISION: 7\n' }],
    env: { HELM_TIMEOUT: '15m', ROLLOUT_TIMEOUT: '90s' },
  })
  assert.equal(r.code, 0, r.stderr)
  assert.deepEqual(withoutLock(r.commands).slice(0, 4), [
    'helm version --client --short',
    'helm dep up',
    `helm upgrade --install --namespace staginghub staginghub hub-charts/staginghub --wait --timeout 900s --cleanup-on-fail --create-namespace -f secrets/staginghub.yaml --set-string jupyterhub.singleuser.image.tag=${tag}`,
    'kubectl --namespace staginghub get deployments -o name',
  ])
  assert.match(r.stdout, /^staginghub\s+rollout\s+ok\s+\S+\s+\S+\s+7$/m)
  assert.ok(r.commands.includes('kubectl rollout status --namespace staginghub --watch deployment.apps/hub --timeout=90s'))
})

/** Helm 4: `--client` is gone; `helm version --short` answers. */
const helm4 = (version = 'v4.1.4+g05fa379'): Rule[] => [
  { tool: 'helm', match: '^version --client', stderr: 'Error: unknown flag: --client\n', exit: 1 },
  { tool: 'helm', match: '^version --short$', stdout: `${version}\n` },
]

test('Helm 4: asked again without --client; --wait=watcher, the rest as Helm 3; the rollback waits the same way', { timeout: 60_000 }, async () => {
  const repo = makeRepo()
  const tag = userTag(repo)
  const r = await runDeploy(repo, ['--no-setup', '--deploy', '--rollback-on-failure', 'staginghub'], {
    rules: [...helm4(), history('deployed'), { tool: 'helm', match: '^upgrade', stdout: 'REVISION: 2\n' }, { tool: 'kubectl', match: 'get deployments', exit: 1 }],
  })
  assert.equal(r.code, 1, r.stderr)
  assert.deepEqual(withoutLock(r.commands).slice(0, 5), [
    'helm version --client --short',
    'helm version --short',
    'helm dep up',
    'helm history staginghub --namespace staginghub -o json',
    `helm upgrade --install --namespace staginghub staginghub hub-charts/staginghub --wait=watcher --timeout 600s --cleanup-on-fail --create-namespace -f secrets/staginghub.yaml --set-string jupyterhub.singleuser.image.tag=${tag}`,
  ])
  assert.ok(r.commands.includes('helm rollback staginghub 1 --namespace staginghub --wait=watcher --timeout 600s'), r.commands.join('\n'))
})

test('a Helm major deploy.ts does not know, or a version it cannot read, is refused before anything runs', { timeout: 60_000 }, async () => {
  for (const said of ['v5.0.0+gabcdef', 'helm: command output nobody expected']) {
    const r = await runDeploy(makeRepo(), ['--no-setup', '--deploy', 'staginghub'], { rules: helm4(said) })
    assert.equal(r.code, 2, r.stderr)
    assert.match(r.stderr, new RegExp(`^ERROR: helm version printed "${said.replace(/[.+]/g, '\\$&')}": deploy.ts supports Helm 2, 3 or 4; install one of them`, 'm'))
    assert.deepEqual(r.commands, ['helm version --client --short', 'helm version --short'])
  }
})

test('kubectl more than one minor version away from the cluster gets one warning line; within one, none', { timeout: 60_000 }, async () => {
  const version = (client: number, server: number): Rule => ({
    tool: 'kubectl', match: '^version -o json$',
    stdout: JSON.stringify({ clientVersion: { major: '1', minor: String(client) }, serverVersion: { major: '1', minor: `${server}+` } }),
  })
  const skewed = await runDeploy(makeRepo(), ['--no-setup', '--deploy', 'staginghub'], { rules: [HELM3, version(35, 32)] })
  assert.equal(skewed.code, 0, skewed.stderr)
  assert.deepEqual(skewed.stderr.split('\n').filter((l) => l.includes('minor version')), [
    'WARNING: kubectl 1.35 is more than one minor version away from the cluster\'s Kubernetes 1.32: install kubectl 1.31 to 1.33 (https://kubernetes.io/releases/version-skew-policy/)',
  ])
  const near = await runDeploy(makeRepo(), ['--no-setup', '--deploy', 'staginghub'], { rules: [HELM3, version(33, 32)] })
  assert.equal(near.code, 0, near.stderr)
  assert.doesNotMatch(near.stderr, /minor version/)
})

test('the monitoring chart deploys from monitoring/ with no image tags', { timeout: 15_000 }, async () => {
  const r = await runDeploy(makeRepo({ monitoring: true }), ['--no-setup', '--deploy', 'monitoring'], { rules: [HELM3] })
  assert.equal(r.code, 0, r.stderr)
  const upgrade = r.commands.find((c) => c.startsWith('helm upgrade'))!
  assert.equal(upgrade, 'helm upgrade --install --namespace monitoring monitoring monitoring --wait --timeout 600s --cleanup-on-fail --create-namespace -f secrets/monitoring.yaml')
  assert.match(r.calls.find((c) => c.argv.join(' ') === 'dep up')!.cwd, /\/monitoring$/)
})

test('a hub image sets jupyterhub.hub.image.tag after the user image tag', { timeout: 15_000 }, async () => {
  const repo = makeRepo({ hubImages: ['staginghub'] })
  const hubTag = git(repo, 'log', '-n', '1', '--pretty=format:%h', '--', 'hub-images/staginghub')
  const r = await runDeploy(repo, ['--no-setup', '--deploy', 'staginghub'], { rules: [HELM3] })
  const upgrade = r.commands.find((c) => c.startsWith('helm upgrade'))!
  assert.ok(upgrade.endsWith(`--set-string jupyterhub.singleuser.image.tag=${userTag(repo)} --set-string jupyterhub.hub.image.tag=${hubTag}`), upgrade)
  assert.match(r.stdout, /as hub image for staginghub/)
})

test('an empty deployment list skips the wait with a message', { timeout: 15_000 }, async () => {
  const r = await runDeploy(makeRepo(), ['--no-setup', '--deploy', 'staginghub'], { rules: [HELM3, { tool: 'kubectl', match: 'get deployments', stdout: '\n' }] })
  assert.equal(r.code, 0, r.stderr)
  assert.match(r.stderr, /no deployments in namespace staginghub: nothing to wait for/)
  assert.ok(!r.commands.some((c) => c.startsWith('kubectl rollout status')))
})

test('rollouts run at once, each output line prefixed with its deployment', { timeout: 15_000 }, async () => {
  const r = await runDeploy(makeRepo(), ['--no-setup', '--deploy', 'staginghub'], {
    rules: [HELM3, deployments,
      { tool: 'kubectl', match: 'rollout status .* deployment.apps/hub', sleepMs: 1500, stdout: 'deployment "hub" successfully rolled out\n' },
      { tool: 'kubectl', match: 'rollout status .* deployment.apps/proxy', sleepMs: 1500, stdout: 'deployment "proxy" successfully rolled out\n' }],
  })
  assert.equal(r.code, 0, r.stderr)
  assert.match(r.stdout, /^\[hub\] deployment "hub" successfully rolled out$/m)
  assert.match(r.stdout, /^\[proxy\] deployment "proxy" successfully rolled out$/m)
  const [first, second] = r.calls.filter((c) => c.argv[0] === 'rollout').map((c) => c.startedAt).sort()
  assert.ok(second - first < 1500, 'the second wait started while the first (1.5 s) was still running')
})

test('a kubectl that ignores its own --timeout is stopped by the run\'s limit on the process', { timeout: 195_000 }, async () => {
  // ROLLOUT_TIMEOUT=1s: kubectl is told 1 s and the run stops it 60 s later; this one would
  // hang for 2.5 minutes and then report success.
  const r = await runDeploy(makeRepo(), ['--no-setup', '--deploy', 'staginghub'], {
    env: { ROLLOUT_TIMEOUT: '1s' },
    rules: [HELM3, { tool: 'kubectl', match: 'get deployments -o name', stdout: 'deployment.apps/hub\n' },
      { tool: 'kubectl', match: '^rollout status', sleepMs: 150_000 }],
  })
  assert.equal(r.code, 1, r.stderr)
  assert.match(r.stderr, /ERROR: rollout of deployment\.apps\/hub did not finish within 1s/)
  const wait = r.calls.find((c) => c.argv[0] === 'rollout')!
  assert.ok(wait.argv.includes('--timeout=1s'), wait.argv.join(' '))
  assert.throws(() => process.kill(wait.pid, 0), 'the hanging kubectl was stopped')
})

test('a failed rollout prints events, pods and helm status, then exits 1', { timeout: 15_000 }, async () => {
  const r = await runDeploy(makeRepo(), ['--no-setup', '--deploy', 'staginghub'], {
    rules: [HELM3, deployments,
      { tool: 'kubectl', match: 'rollout status .* deployment.apps/proxy', exit: 1, stderr: 'error: timed out waiting for the condition\n' },
      { tool: 'kubectl', match: '^get events', stdout: 'LAST SEEN   TYPE      REASON      OBJECT\n5s          Warning   BackOff     pod/proxy-1\n' }],
  })
  assert.equal(r.code, 1)
  assert.deepEqual(withoutLock(r.commands).slice(-3), [
    'kubectl get events --namespace staginghub --sort-by=.lastTimestamp',
    'kubectl get pods --namespace staginghub',
    'helm status staginghub --namespace staginghub',
  ])
  assert.match(r.stdout, /Warning   BackOff     pod\/proxy-1/)
  assert.match(r.stderr, /ERROR: rollout of deployment.apps\/proxy did not finish within 10m/)
})

test('a failed helm upgrade prints the diagnostics too (Helm 2: helm status without namespace)', { timeout: 15_000 }, async () => {
  const r = await runDeploy(makeRepo(), ['--no-setup', '--deploy', 'staginghub'], {
    rules: [HELM2, { tool: 'helm', match: '^upgrade', exit: 1, stderr: 'Error: UPGRADE FAILED: timed out waiting for the condition\n' }],
  })
  assert.equal(r.code, 1)
  assert.deepEqual(withoutLock(r.commands).slice(-3), ['kubectl get events --namespace staginghub --sort-by=.lastTimestamp', 'kubectl get pods --namespace staginghub', 'helm status staginghub'])
  assert.ok(!r.commands.some((c) => c.startsWith('kubectl rollout')))
})

for (const state of ['pending-install', 'pending-upgrade', 'pending-rollback']) {
  test(`a release stuck in ${state} is refused with the repair, and --recover repairs it`, { timeout: 25_000 }, async () => {
    const statuses = state === 'pending-install' ? [state] : ['superseded', 'deployed', state]
    const repo = makeRepo()
    const helmRefuses: Rule = { tool: 'helm', match: '^upgrade', exit: 1, stderr: 'Error: UPGRADE FAILED: another operation (install/upgrade/rollback) is in progress\n' }
    const refused = await runDeploy(repo, ['--no-setup', '--deploy', 'staginghub'], { rules: [HELM3, history(...statuses), helmRefuses] })
    assert.equal(refused.code, 1)
    const repair = state === 'pending-install' ? 'helm uninstall staginghub --namespace staginghub' : 'helm rollback staginghub 2 --namespace staginghub --wait --timeout 600s'
    assert.match(refused.stderr, new RegExp(`release staginghub is stuck in ${state} .*repair with \`${repair}\` or rerun with --recover`))
    assert.deepEqual(withoutLock(refused.commands).slice(-2).map((c) => c.split(' ').slice(0, 2).join(' ')), ['helm upgrade', 'helm history'], 'helm refused before changing anything; no diagnostics')
    const recovered = await runDeploy(repo, ['--no-setup', '--deploy', '--recover', 'staginghub'], { rules: [HELM3, history(...statuses)] })
    assert.equal(recovered.code, 0, recovered.stderr)
    const commands = withoutLock(recovered.commands)
    const i = commands.indexOf(repair)
    assert.ok(i > 0 && commands[i + 1].startsWith('helm upgrade'), commands.join('\n'))
  })
}

/** The commands a run announced (`INFO:root:Executing ...` on stderr), without the prefix. */
const announced = (stderr: string) => stderr.split('\n').filter((l) => l.startsWith('INFO:root:Executing ')).map((l) => l.slice('INFO:root:'.length))

test('--dry-run announces every command in order as a real run does (stderr, INFO:root:Executing), redacted, and runs nothing but read-only probes', { timeout: 15_000 }, async () => {
  const repo = makeRepo()
  const previous = userTag(repo)
  commit(repo, { 'user-images/staginghub/Dockerfile': 'FROM scratch\nLABEL v=2\n' })
  const r = await runDeploy(repo, ['--dry-run', '--build', '--push', '--deploy', 'staginghub'], { rules: [HELM2] })
  assert.equal(r.code, 0, r.stderr)
  assert.deepEqual(r.commands, ['helm version --client --short'])
  const plan = announced(r.stderr).map((l) => l.replace(/^Executing (and capturing )?/, '').split(' ').slice(0, 3).join(' '))
  // The plan builds a new tag: its cache is the previous one, never the tag it builds.
  assert.deepEqual(plan, [
    'gcloud auth activate-service-account', 'gcloud container clusters', 'helm init --upgrade', 'kubectl rollout status',
    'docker login -u', 'docker manifest inspect', 'docker pull earthlabhubops/ea-k8s-user-staginghub:' + previous,
    'docker build --cache-from', 'docker push earthlabhubops/ea-k8s-user-staginghub:' + userTag(repo),
    'helm dep up', 'helm upgrade --install', 'kubectl --namespace staginghub', 'kubectl rollout status',
  ])
  // One format on one stream: no `+ ` lines anywhere; the header and the summary say nothing ran.
  assert.ok(!/^\+ /m.test(r.stdout + r.stderr), r.stdout)
  assert.match(r.stdout, /^# dry run: staginghub at [0-9a-f]{12}, Helm 2; nothing below is executed$/m)
  assert.match(r.stdout, /^staginghub\s+rollout\s+planned/m)
  assert.ok(!(r.stdout + r.stderr).includes(PASSWORD) && !(r.stdout + r.stderr).includes(SECRET_TOKEN))
})

test('a real run announces the same lines as its dry run (which also lists setup\'s unannounced commands)', { timeout: 20_000 }, async () => {
  const repo = makeRepo({ hubImages: ['staginghub'] })
  commit(repo, { 'user-images/staginghub/Dockerfile': 'FROM scratch\nLABEL v=2\n' })
  const args = ['--build', '--push', '--deploy', 'staginghub']
  // Both images changed in the range, their new tags are not in the registry and the previous
  // user image is: the real run does what the plan assumes (the newest previous tag as cache).
  const env = { TRAVIS_COMMIT_RANGE: `${git(repo, 'rev-list', '--max-parents=0', 'HEAD')}..HEAD` }
  const hubTag = git(repo, 'log', '-n', '1', '--pretty=format:%h', '--', 'hub-images/staginghub')
  const newTags: Rule = { tool: 'docker', match: `^manifest inspect .*:(${userTag(repo)}|${hubTag})$`, exit: 1, stderr: 'manifest unknown\n' }
  const rules: Rule[] = [HELM3, deployments, newTags]
  const [dry, real] = await Promise.all([runDeploy(repo, ['--dry-run', ...args], { rules, env }), runDeploy(repo, args, { rules, env })])
  assert.equal(dry.code, 0, dry.stderr)
  assert.equal(real.code, 0, real.stderr)
  const planned = announced(dry.stderr)
  // The plan cannot know the deployments: it names them `<each deployment>`, once.
  const ran = [...new Set(announced(real.stderr).map((l) => l.replace(/--watch deployment\S+/, '--watch <each deployment>')))]
  assert.ok(ran.length >= 6, real.stderr)
  // Every line the real run announced appears, identical and in the same order, in the plan.
  let at = 0
  for (const line of ran) {
    at = planned.indexOf(line, at)
    assert.ok(at >= 0, `the dry run lacks: ${line}\n${planned.join('\n')}`)
  }
  for (const line of SETUP_COMMANDS[3]) assert.ok(planned.includes(`Executing${line.startsWith('gcloud auth') || line.startsWith('docker login') ? ' and capturing' : ''} ${line}`), line)
})

test('--dry-run with no helm on PATH plans for Helm 3 and says so', { timeout: 15_000 }, async () => {
  const repo = makeRepo()
  const r = await runDeploy(repo, ['--dry-run', '--no-setup', '--deploy', 'staginghub'], { path: '/usr/bin:/bin', noStandins: true })
  assert.equal(r.code, 0, r.stderr)
  assert.match(r.stdout, /helm not found: planning for Helm 3/)
  assert.match(r.stderr, /^INFO:root:Executing helm upgrade --install .* --timeout 600s --cleanup-on-fail --create-namespace/m)
})

test('--dry-run on a fresh clone (secrets still locked or absent) notes them and plans the whole run', { timeout: 15_000 }, async () => {
  const repo = makeRepo({ noSetupSecrets: true })
  git(repo, 'rm', '-q', 'secrets/staginghub.yaml')
  const r = await runDeploy(repo, ['--dry-run', '--build', '--push', '--deploy', 'staginghub'], { path: '/usr/bin:/bin', noStandins: true })
  assert.equal(r.code, 0, r.stderr)
  assert.match(r.stdout, /^# secrets\/staginghub\.yaml: the chart's secret values file not found.*\(a real run stops here, exit 2\)$/m)
  assert.match(r.stdout, /^# secrets\/gke-auth-key\.json: GCLOUD_KEY_FILE .* not found/m)
  assert.match(r.stderr, /^INFO:root:Executing and capturing docker login -u earthlabcu --password-stdin$/m)
  assert.match(r.stderr, /^INFO:root:Executing helm upgrade --install /m)
})
