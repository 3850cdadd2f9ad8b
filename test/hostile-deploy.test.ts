// Hostile input, classes 2 and 3 of issue 9 (docs/reliability.md): no silent wrong deploy
// (file names outside ASCII, uncommitted changes, option injection, flag combinations that
// would do less than they say, the deploy lock) and no hang (every duration bounded, every
// wait bounded). Each case checks the exit code, the message, what ran (recording
// stand-ins) and, through runDeploy, that no planted secret reached any output or argv.
// The lock against real helm and kubectl: test/e2e/lock.test.ts.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { makeRepo, runDeploy, commit, git, tempDir, ROOT, HELM2, HELM3, type RunResult } from './support/harness.ts'
import { heldLease, lockCalls, withoutLock } from './support/hostile-deploy.ts'
import { parseDuration, MAX_DURATION_SECONDS } from '../deploy.ts'

const USER = 'earthlabhubops/ea-k8s-user-staginghub'
const errors = (r: RunResult) => r.stderr.split('\n').filter((l) => l.startsWith('ERROR:'))
const show = (r: RunResult) => `exit ${r.code}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}\n--- commands\n${r.commands.join('\n')}`
const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')

/** Exit 2, one ERROR line matching `text`, no stack trace, nothing run but the Helm version probe. */
function refused(r: RunResult, text: string | RegExp) {
  assert.equal(r.code, 2, show(r))
  assert.equal(errors(r).length, 1, show(r))
  assert.match(errors(r)[0], typeof text === 'string' ? new RegExp(escape(text)) : text)
  assert.doesNotMatch(r.stderr, /^\s+at /m, 'no stack trace')
  assert.deepEqual(r.commands.filter((c) => !c.startsWith('helm version')), [], 'nothing may run')
}

/** The run's last ERROR line, for runs that stop after some commands. */
const finalError = (r: RunResult) => errors(r).at(-1) ?? ''

const tagOf = (repo: string, dir = 'user-images/staginghub') => git(repo, 'log', '-n', '1', '--pretty=format:%h', '--', dir)

// ---------------------------------------------------------------------------------------
// Class 2: file names outside ASCII (git quotes them unless told not to)

test('a commit touching only a non-ASCII file in an image dir: new tag, rebuilt and pushed under it', { timeout: 15_000 }, async () => {
  const repo = makeRepo()
  const before = tagOf(repo)
  const after = commit(repo, { 'user-images/staginghub/environment-ñ.yml': 'dependencies: [numpy]\n' }, 'environment')
  assert.equal(tagOf(repo), after)
  const r = await runDeploy(repo, ['--no-setup', '--build', '--push', 'staginghub'], { env: { TRAVIS_COMMIT_RANGE: `${before}...${after}` } })
  assert.equal(r.code, 0, show(r))
  assert.ok(r.commands.includes(`docker build -t ${USER}:${after} user-images/staginghub`) || r.commands.some((c) => c.startsWith('docker build') && c.includes(`-t ${USER}:${after} `)), show(r))
  assert.ok(r.commands.includes(`docker push ${USER}:${after}`), show(r))
  assert.match(r.stdout, new RegExp(`build completed for image ${escape(USER)}:${after}`))
})

test('a non-ASCII file is the only change and the registry has the old tag: still rebuilt (the tag moved)', { timeout: 15_000 }, async () => {
  const repo = makeRepo()
  const after = commit(repo, { 'user-images/staginghub/ñandú/requirements.txt': 'pandas\n' })
  const r = await runDeploy(repo, ['--no-setup', '--build', 'staginghub'], {
    rules: [HELM3, { tool: 'docker', match: `^manifest inspect ${USER}:${after}$`, exit: 1, stderr: 'no such manifest\n' }],
  })
  assert.equal(r.code, 0, show(r))
  assert.ok(r.commands.some((c) => c.startsWith('docker build') && c.includes(`${USER}:${after}`)), show(r))
  assert.doesNotMatch(r.stdout, /Do not need to rebuild/)
})

test('--deploy after a non-ASCII-only commit points the chart at the new tag', { timeout: 15_000 }, async () => {
  const repo = makeRepo()
  const after = commit(repo, { 'user-images/staginghub/環境.yml': 'x\n' })
  const r = await runDeploy(repo, ['--no-setup', '--deploy', 'staginghub'])
  assert.equal(r.code, 0, show(r))
  assert.ok(r.commands.some((c) => c.startsWith('helm upgrade') && c.endsWith(`--set-string jupyterhub.singleuser.image.tag=${after}`)), show(r))
})

test('--changed sees a commit that touches only a non-ASCII file', { timeout: 15_000 }, async () => {
  const repo = makeRepo({ hubs: ['staginghub', 'ea-hub'] })
  const before = git(repo, 'rev-parse', 'HEAD')
  commit(repo, { 'user-images/ea-hub/environment-ñ.yml': 'x\n' })
  const r = await runDeploy(repo, ['--changed', `${before}..HEAD`, '--json'])
  assert.equal(r.code, 0, show(r))
  assert.equal(r.stdout, '["ea-hub"]\n')
  assert.deepEqual(r.commands, [])
})

test('--changed sees file names with quotes, tabs and newlines', { timeout: 15_000 }, async () => {
  const repo = makeRepo({ hubs: ['staginghub', 'ea-hub'] })
  const before = git(repo, 'rev-parse', 'HEAD')
  commit(repo, { 'hub-charts/ea-hub/files/we"ird\tname\nline.yaml': 'x\n' })
  const r = await runDeploy(repo, ['--changed', `${before}..HEAD`])
  assert.equal(r.code, 0, show(r))
  assert.equal(r.stdout, 'ea-hub\n')
})

// ---------------------------------------------------------------------------------------
// Class 2: uncommitted changes are never built, pushed or deployed as the commit

test('a modified file in an image dir with --build --push: exit 2 naming the file, nothing built or pushed', { timeout: 15_000 }, async () => {
  const repo = makeRepo()
  fs.appendFileSync(path.join(repo, 'user-images/staginghub/Dockerfile'), 'RUN echo uncommitted\n')
  refused(await runDeploy(repo, ['--no-setup', '--build', '--push', 'staginghub']),
    'user-images/staginghub/Dockerfile has uncommitted or untracked changes that would be built and pushed under the committed tag: commit or stash them first')
})

test('an untracked file in an image dir with --build: exit 2 naming the file', { timeout: 15_000 }, async () => {
  const repo = makeRepo()
  fs.writeFileSync(path.join(repo, 'user-images/staginghub/extra.txt'), 'new\n')
  refused(await runDeploy(repo, ['--no-setup', '--build', 'staginghub']), 'user-images/staginghub/extra.txt has uncommitted or untracked changes that would be built under the committed tag')
})

test('an untracked non-ASCII file in a hub image dir: exit 2 naming that file', { timeout: 15_000 }, async () => {
  const repo = makeRepo({ hubImages: ['staginghub'] })
  fs.writeFileSync(path.join(repo, 'hub-images/staginghub/ñ.py'), 'x\n')
  refused(await runDeploy(repo, ['--no-setup', '--build', 'staginghub']), /^ERROR: hub-images\/staginghub\/ñ\.py has uncommitted or untracked changes/)
})

test('an ignored file in an image dir does not stop the build (git does not version it)', { timeout: 15_000 }, async () => {
  const repo = makeRepo()
  commit(repo, { '.gitignore': '*.log\n' })
  fs.writeFileSync(path.join(repo, 'user-images/staginghub/build.log'), 'noise\n')
  const r = await runDeploy(repo, ['--no-setup', '--build', 'staginghub'], { rules: [HELM3, { tool: 'docker', match: '^manifest', exit: 1, stderr: 'no such manifest\n' }] })
  assert.equal(r.code, 0, show(r))
  assert.ok(r.commands.some((c) => c.startsWith('docker build')))
})

test('a modified chart file with --deploy: exit 2 naming the file, no helm command', { timeout: 15_000 }, async () => {
  const repo = makeRepo()
  fs.appendFileSync(path.join(repo, 'hub-charts/staginghub/values.yaml'), 'extra: true\n')
  refused(await runDeploy(repo, ['--no-setup', '--deploy', 'staginghub']), 'hub-charts/staginghub/values.yaml has uncommitted or untracked changes that would be deployed as if committed')
})

test('a modified secrets/<chart>.yaml with --deploy: exit 2 naming it, the value never printed', { timeout: 15_000 }, async () => {
  const repo = makeRepo()
  fs.writeFileSync(path.join(repo, 'secrets/staginghub.yaml'), 'jupyterhub:\n  proxy:\n    secretToken: uncommitted-token-4f9a8b7c6d\n')
  const r = await runDeploy(repo, ['--no-setup', '--deploy', 'staginghub'], { secrets: ['uncommitted-token-4f9a8b7c6d'] })
  refused(r, 'secrets/staginghub.yaml has uncommitted or untracked changes')
})

test('what helm dep up writes (charts/, a committed Chart.lock it rewrites) does not count as a change', { timeout: 15_000 }, async () => {
  const repo = makeRepo()
  commit(repo, { 'hub-charts/staginghub/Chart.lock': 'generated: "2026-01-01T00:00:00Z"\n' })
  fs.writeFileSync(path.join(repo, 'hub-charts/staginghub/Chart.lock'), 'generated: "2026-11-27T06:00:00Z"\n')
  fs.mkdirSync(path.join(repo, 'hub-charts/staginghub/charts'))
  fs.writeFileSync(path.join(repo, 'hub-charts/staginghub/charts/jupyterhub-4.0.0.tgz'), 'tgz')
  const r = await runDeploy(repo, ['--no-setup', '--deploy', 'staginghub'])
  assert.equal(r.code, 0, show(r))
  assert.ok(r.commands.some((c) => c.startsWith('helm upgrade')))
})

test('an uncommitted edit inside a committed subchart under charts/ is refused, naming the file (issue 18, class 3)', { timeout: 15_000 }, async () => {
  const repo = makeRepo()
  commit(repo, { 'hub-charts/staginghub/charts/proxy/Chart.yaml': 'apiVersion: v2\nname: proxy\nversion: 0.1.0\n', 'hub-charts/staginghub/charts/proxy/values.yaml': 'replicas: 1\n' })
  fs.writeFileSync(path.join(repo, 'hub-charts/staginghub/charts/proxy/values.yaml'), 'replicas: 9\n')
  refused(await runDeploy(repo, ['--no-setup', '--deploy', 'staginghub']), 'hub-charts/staginghub/charts/proxy/values.yaml has uncommitted or untracked changes that would be deployed as if committed')
})

test('an edit reached through a link is refused: a linked values file, a linked template folder (issue 18, class 3)', { timeout: 30_000 }, async () => {
  const repo = makeRepo()
  commit(repo, { 'common/values.yaml': 'shared: 1\n', 'common/templates/cm.yaml': 'kind: ConfigMap\n' })
  fs.symlinkSync('../../common/values.yaml', path.join(repo, 'hub-charts/staginghub/common-values.yaml'))
  fs.mkdirSync(path.join(repo, 'hub-charts/staginghub/templates'), { recursive: true })
  fs.symlinkSync('../../../common/templates', path.join(repo, 'hub-charts/staginghub/templates/shared'))
  commit(repo, {})
  fs.writeFileSync(path.join(repo, 'common/values.yaml'), 'shared: 2\n')
  refused(await runDeploy(repo, ['--no-setup', '--deploy', 'staginghub']), 'common/values.yaml has uncommitted or untracked changes that would be deployed as if committed')
  git(repo, 'checkout', '--', 'common/values.yaml')
  fs.writeFileSync(path.join(repo, 'common/templates/new.yaml'), 'kind: Secret\n')
  refused(await runDeploy(repo, ['--no-setup', '--deploy', 'staginghub']), 'common/templates/new.yaml has uncommitted or untracked changes')
})

test('a link or a file:// dependency outside the repository is refused; one inside must be clean (issue 18, class 3)', { timeout: 30_000 }, async () => {
  const outside = fs.mkdtempSync(path.join(os.tmpdir(), 'deploy-outside-'))
  fs.writeFileSync(path.join(outside, 'values.yaml'), 'x: 1\n')
  const linked = makeRepo()
  fs.symlinkSync(path.join(outside, 'values.yaml'), path.join(linked, 'hub-charts/staginghub/outside.yaml'))
  commit(linked, {})
  refused(await runDeploy(linked, ['--no-setup', '--deploy', 'staginghub']), /^ERROR: hub-charts\/staginghub\/outside\.yaml is a link to .*, outside the repository: what is deployed would not be what the commit says/)
  const dep = makeRepo()
  commit(dep, {
    'hub-charts/staginghub/Chart.yaml': 'apiVersion: v2\nname: staginghub\nversion: 0.1.0\ndependencies:\n  - name: lib\n    version: 0.1.0\n    repository: file://../../vendor/lib\n',
    'vendor/lib/Chart.yaml': 'apiVersion: v2\nname: lib\nversion: 0.1.0\n',
  })
  fs.writeFileSync(path.join(dep, 'vendor/lib/values.yaml'), 'new: true\n')
  refused(await runDeploy(dep, ['--no-setup', '--deploy', 'staginghub']), 'vendor/lib/values.yaml has uncommitted or untracked changes that would be deployed as if committed')
  commit(dep, { 'hub-charts/staginghub/Chart.yaml': `apiVersion: v2\nname: staginghub\nversion: 0.1.0\ndependencies:\n  - name: lib\n    version: 0.1.0\n    repository: file://${outside}\n` })
  refused(await runDeploy(dep, ['--no-setup', '--deploy', 'staginghub']), /^ERROR: hub-charts\/staginghub: the dependency file:\/\/.* is outside the repository/)
})

test('a linked chart dir or a submodule image dir is refused: --changed and the tags would not see their changes (issue 18, class 3)', { timeout: 30_000 }, async () => {
  const repo = makeRepo()
  fs.renameSync(path.join(repo, 'user-images/staginghub'), path.join(repo, 'elsewhere'))
  fs.symlinkSync('../elsewhere', path.join(repo, 'user-images/staginghub'))
  commit(repo, {})
  refused(await runDeploy(repo, ['--no-setup', '--build', 'staginghub']), /^ERROR: user-images\/staginghub is a link to \.\.\/elsewhere: .*make it a directory/)
  const sub = makeRepo()
  fs.writeFileSync(path.join(sub, 'user-images/staginghub/.git'), 'gitdir: ../../.git/modules/image\n')
  refused(await runDeploy(sub, ['--no-setup', '--build', 'staginghub']), /^ERROR: user-images\/staginghub is a git submodule: .*vendor it/)
})

test('a dirty image dir does not stop --deploy alone: the committed tag is what gets deployed', { timeout: 15_000 }, async () => {
  const repo = makeRepo()
  const tag = tagOf(repo)
  fs.appendFileSync(path.join(repo, 'user-images/staginghub/Dockerfile'), 'RUN echo uncommitted\n')
  const r = await runDeploy(repo, ['--no-setup', '--deploy', 'staginghub'])
  assert.equal(r.code, 0, show(r))
  assert.ok(r.commands.some((c) => c.startsWith('helm upgrade') && c.endsWith(`image.tag=${tag}`)))
})

test('--dry-run notes a dirty image dir (a real run stops there) and runs nothing', { timeout: 15_000 }, async () => {
  const repo = makeRepo()
  fs.writeFileSync(path.join(repo, 'user-images/staginghub/extra.txt'), 'new\n')
  const r = await runDeploy(repo, ['--dry-run', '--no-setup', '--build', 'staginghub'])
  assert.equal(r.code, 0, show(r))
  assert.match(r.stdout, /^# user-images\/staginghub\/extra\.txt has uncommitted or untracked changes .* \(a real run stops here, exit 2\)$/m)
  assert.deepEqual(r.commands, ['helm version --client --short'])
})

// ---------------------------------------------------------------------------------------
// Class 2: no input of ours reaches a tool as an option

test('--changed=--output=FILE: exit 2, git never sees it, no file written', { timeout: 15_000 }, async () => {
  const repo = makeRepo()
  const r = await runDeploy(repo, ['--changed=--output=pwned.txt'])
  refused(r, '--changed=--output=pwned.txt: not a commit range; give one such as main..HEAD')
  assert.equal(fs.existsSync(path.join(repo, 'pwned.txt')), false)
})

test('--changed with spaces or a leading dash in the middle of a range: exit 2', { timeout: 15_000 }, async () => {
  refused(await runDeploy(makeRepo(), ['--changed', 'HEAD --output=x']), /--changed=HEAD --output=x: not a commit range/)
})

test('TRAVIS_COMMIT_RANGE that is an option: exit 2 naming the variable, nothing built, no file written', { timeout: 15_000 }, async () => {
  const repo = makeRepo()
  const r = await runDeploy(repo, ['--no-setup', '--build', 'staginghub'], { env: { TRAVIS_COMMIT_RANGE: '--output=pwned.txt' } })
  refused(r, 'TRAVIS_COMMIT_RANGE=--output=pwned.txt: not a commit range')
  assert.equal(fs.existsSync(path.join(repo, 'pwned.txt')), false)
})

test('a GitHub push event whose before is an option: exit 2 naming the event file, nothing built', { timeout: 15_000 }, async () => {
  const repo = makeRepo()
  const event = path.join(tempDir(), 'event.json')
  fs.writeFileSync(event, JSON.stringify({ before: '--output=pwned.txt', after: git(repo, 'rev-parse', 'HEAD') }))
  const r = await runDeploy(repo, ['--no-setup', '--build', 'staginghub'], { env: { GITHUB_EVENT_NAME: 'push', GITHUB_EVENT_PATH: event } })
  refused(r, /GITHUB_EVENT_PATH before\.\.after=--output=pwned\.txt\.\.\w+: not a commit range/)
})

/** A `git` first on PATH that logs each call's arguments (a line each, split by \\x1f), then runs the real git. */
function gitSpy(): { path: string; calls: () => string[][] } {
  const dir = tempDir('deploy-git-spy-')
  const log = path.join(dir, 'calls.log')
  const real = ['/usr/bin/git', '/bin/git', '/usr/local/bin/git'].find((g) => fs.existsSync(g))!
  fs.writeFileSync(path.join(dir, 'git'), `#!/bin/sh\n{ printf '%s\\037' "$@"; echo; } >> '${log}'\nexec '${real}' "$@"\n`, { mode: 0o755 })
  const calls = () => (fs.existsSync(log) ? fs.readFileSync(log, 'utf8').split('\n').filter(Boolean).map((l) => l.split('\x1f').slice(0, -1)) : [])
  return { path: `${dir}${path.delimiter}${process.env.PATH}`, calls }
}
/** The git calls that got `value` as an argument or as one side of a range. */
const gave = (calls: string[][], value: string) => calls.filter((args) => args.some((a) => a === value || a.split(/\.\.\.?/).includes(value)))

// A range starting with `-` is an option to git, whatever else the pattern allows: one with no
// `=` and no space too. Refused with exit 2 before git ever sees it.
for (const range of ['-p', '--stat']) {
  test(`--changed=${range}: exit 2 before any git command`, { timeout: 30_000 }, async () => {
    const spy = gitSpy()
    refused(await runDeploy(makeRepo(), [`--changed=${range}`], { path: spy.path }), `--changed=${range}: not a commit range; give one such as main..HEAD`)
    assert.deepEqual(spy.calls(), [], 'git never ran')
  })

  test(`TRAVIS_COMMIT_RANGE=${range}: exit 2 naming it; git never sees it, nothing built`, { timeout: 30_000 }, async () => {
    const spy = gitSpy()
    const r = await runDeploy(makeRepo(), ['--no-setup', '--build', 'staginghub'], { path: spy.path, env: { TRAVIS_COMMIT_RANGE: range } })
    refused(r, `TRAVIS_COMMIT_RANGE=${range}: not a commit range`)
    assert.deepEqual(gave(spy.calls(), range), [])
  })
}

for (const side of ['before', 'after'] as const) {
  test(`a GitHub push event whose ${side} starts with -: exit 2 naming the event file; git never sees it, nothing built`, { timeout: 15_000 }, async () => {
    const repo = makeRepo()
    const head = git(repo, 'rev-parse', 'HEAD')
    const event = path.join(tempDir(), 'event.json')
    fs.writeFileSync(event, JSON.stringify({ before: head, after: head, [side]: '--stat' }))
    const spy = gitSpy()
    const r = await runDeploy(repo, ['--no-setup', '--build', 'staginghub'], { path: spy.path, env: { GITHUB_EVENT_NAME: 'push', GITHUB_EVENT_PATH: event } })
    refused(r, /^ERROR: GITHUB_EVENT_PATH before\.\.after=\S+: not a commit range/)
    assert.deepEqual(gave(spy.calls(), '--stat'), [])
  })
}

for (const [key, value] of [
  ['GKE_CLUSTER', '--impersonate-service-account=evil@example.org'],
  ['GKE_ZONE', '--verbosity=debug'],
  ['GCP_PROJECT', '-q'],
  ['DOCKER_USERNAME', '--password=hunter2-not-a-secret'],
  ['DOCKER_REGISTRY', '-H=tcp://evil:2375'],
  ['USER_IMAGE_PREFIX', '--quiet'],
  ['STAGING_CHART', '--all'],
  ['EKS_CLUSTER', '--profile=prod'],
  ['AWS_REGION', '--endpoint-url=http://evil'],
  ['AKS_RESOURCE_GROUP', '--subscription=other'],
  ['AKS_KUBELOGIN', '--token-cache-dir=/tmp'],
  ['ACR_NAME', '--debug'],
  ['AZURE_CLIENT_CERTIFICATE_PATH', '--allow-no-subscriptions'],
] as const) {
  test(`${key}=${value}: exit 2 naming the key, never passed to a tool`, { timeout: 15_000 }, async () => {
    const r = await runDeploy(makeRepo(), ['--build', '--push', '--deploy', 'staginghub'], { env: { [key]: value } })
    refused(r, new RegExp(`^ERROR: ${key}=${escape(value)}: not an? .*; fix it in \\.env or the environment$`))
    assert.equal(r.commands.length, 0, 'not even the Helm probe: configuration is read first')
  })
}

test('a chart named like an option (`-- -x`, with hub-charts/-x/Chart.yaml present): exit 2, never listed', { timeout: 25_000 }, async () => {
  const repo = makeRepo()
  commit(repo, { 'hub-charts/-x/Chart.yaml': 'apiVersion: v2\nname: x\nversion: 0.1.0\n', 'hub-charts/Bad_Name/Chart.yaml': 'apiVersion: v2\nname: b\nversion: 0.1.0\n' })
  refused(await runDeploy(repo, ['--no-setup', '--deploy', '--', '-x']), 'chart name "-x" is not a valid release name (lowercase letters, digits and -, at most 53); valid charts: staginghub')
  refused(await runDeploy(repo, ['--no-setup', '--deploy', 'Bad_Name']), 'chart name "Bad_Name" is not a valid release name')
  const list = await runDeploy(repo, ['--list'])
  assert.equal(list.stdout, 'staginghub\n')
})

test('deployment names the cluster returns reach kubectl only as deployment.apps/<name>', { timeout: 15_000 }, async () => {
  const r = await runDeploy(makeRepo(), ['--no-setup', '--deploy', 'staginghub'], {
    rules: [HELM3, { tool: 'kubectl', match: 'get deployments -o name', stdout: 'deployment.apps/hub\n--all-namespaces\n-f=/etc/passwd\ndeployment.apps/a b\n' }],
  })
  assert.equal(r.code, 0, show(r))
  assert.deepEqual(withoutLock(r.commands).filter((c) => c.startsWith('kubectl rollout')), ['kubectl rollout status --namespace staginghub --watch deployment.apps/hub --timeout=600s'])
  assert.match(r.stderr, /WARNING: not waiting for "--all-namespaces": kubectl listed it, but it is not deployment\.apps\/<name>/)
})

// ---------------------------------------------------------------------------------------
// Class 2: flag combinations that would report success for work not done

for (const [args, message] of [
  [['--no-setup', '--push', 'staginghub'], '--push pushes only what this run builds: add --build (or drop --push)'],
  [['--no-setup', '--recover', 'staginghub'], '--recover repairs a release before deploying it: add --deploy (or drop --recover)'],
  [['--json', 'staginghub'], '--json only applies to --changed, --list, --plan, --validate or --diff: add one of them or drop --json'],
  [['--changed', 'HEAD~1..HEAD', '--deploy'], '--changed only lists charts: drop --deploy (run the deploy as its own command)'],
  [['--changed', 'HEAD~1..HEAD', 'staginghub'], '--changed only lists charts: drop the chart names'],
  [['--list', '--deploy'], '--list only lists charts: drop --deploy'],
  [['--no-setup', 'staginghub'], 'nothing to do: --no-setup without --build, --deploy, --validate or --diff runs no phase; add one of them'],
  [['--no-setup', '--plugin', 'x', 'staginghub'], 'nothing to do: --no-setup without --build, --deploy, --validate or --diff runs no phase'],
] as const) {
  test(`deploy.ts ${args.join(' ')}: exit 2 naming the fix`, { timeout: 15_000 }, async () => {
    refused(await runDeploy(makeRepo(), [...args]), message)
  })
}

test('--recover with Helm 2 (it only repairs Helm 3 releases): exit 2 instead of silently skipping it', { timeout: 15_000 }, async () => {
  refused(await runDeploy(makeRepo(), ['--no-setup', '--deploy', '--recover', 'staginghub'], { rules: [HELM2] }), '--recover needs Helm 3')
})

test('--dry-run --recover says what the repair would do instead of skipping it silently', { timeout: 15_000 }, async () => {
  const r = await runDeploy(makeRepo(), ['--dry-run', '--no-setup', '--deploy', '--recover', 'staginghub'])
  assert.equal(r.code, 0, show(r))
  assert.match(r.stdout, /^# --recover: a release left pending-\* would be rolled back to its last deployed revision \(or uninstalled\) first$/m)
  assert.deepEqual(r.commands, ['helm version --client --short'])
})

test('--build for a chart with no image dirs says that nothing was built', { timeout: 15_000 }, async () => {
  const r = await runDeploy(makeRepo({ userImages: [] }), ['--no-setup', '--build', '--push', 'staginghub'])
  assert.equal(r.code, 0, show(r))
  assert.match(r.stdout, /^no user-images\/staginghub or hub-images\/staginghub: nothing to build$/m)
  assert.ok(!r.commands.some((c) => c.startsWith('docker')))
})

// ---------------------------------------------------------------------------------------
// Class 2: the deploy lock (stand-ins; with real helm and kubectl in test/e2e/lock.test.ts)

test('the lock: taken before helm touches anything, released last, the lease sent on stdin', { timeout: 20_000 }, async () => {
  const r = await runDeploy(makeRepo(), ['--no-setup', '--deploy', 'staginghub'])
  assert.equal(r.code, 0, show(r))
  const take = r.commands.indexOf('kubectl create --namespace staginghub -o json -f -')
  assert.ok(take >= 0 && take < r.commands.indexOf('helm dep up'), show(r))
  assert.equal(r.commands.at(-1), 'kubectl replace --namespace staginghub -o json -f -', 'released after the rollout')
  for (const call of r.calls.filter((c) => lockCalls([[c.tool, ...c.argv].join(' ')]).length)) assert.ok(call.stdinSha256, 'the lease goes on stdin')
})

test('the lock held by a live run, LOCK_TIMEOUT=0: exit 1 naming that run, no helm command', { timeout: 15_000 }, async () => {
  const r = await runDeploy(makeRepo(), ['--no-setup', '--deploy', 'staginghub'], { rules: [HELM3, ...heldLease('https://travis-ci.com/x/jobs/7 (pid 99)')], env: { LOCK_TIMEOUT: '0' } })
  assert.equal(r.code, 1, show(r))
  assert.match(finalError(r), /^ERROR: staginghub is being deployed by https:\/\/travis-ci\.com\/x\/jobs\/7 \(pid 99\) \(commit abcdef012345, started \d+s ago, lease renewed \d+s ago\): not deploying alongside it after waiting LOCK_TIMEOUT=0; rerun when it has finished, or raise LOCK_TIMEOUT$/)
  assert.ok(!r.commands.some((c) => c.startsWith('helm dep') || c.startsWith('helm upgrade')), show(r))
  assert.ok(!r.commands.some((c) => c.startsWith('kubectl replace')), 'another run\'s lease is never overwritten')
})

test('the lock held, LOCK_TIMEOUT=1s: waits (saying for whom), then stops within its bound', { timeout: 15_000 }, async () => {
  const r = await runDeploy(makeRepo(), ['--no-setup', '--deploy', 'staginghub'], { rules: [HELM3, ...heldLease('other-run (pid 7)')], env: { LOCK_TIMEOUT: '1s' } })
  assert.equal(r.code, 1, show(r))
  assert.match(r.stdout, /^\.\.\. waiting for the deploy lock of staginghub, held by other-run \(pid 7\) .*; waiting up to LOCK_TIMEOUT=1s$/m)
  assert.match(finalError(r), /after waiting LOCK_TIMEOUT=1s/)
  assert.ok(!r.commands.some((c) => c.startsWith('helm upgrade')))
})

test('--recover while another run holds the lock: never rolls back or uninstalls its release', { timeout: 15_000 }, async () => {
  const r = await runDeploy(makeRepo(), ['--no-setup', '--deploy', '--recover', 'staginghub'], {
    rules: [HELM3, ...heldLease('live-run (pid 5)'), { tool: 'helm', match: '^history', stdout: JSON.stringify([{ revision: 1, status: 'deployed' }, { revision: 2, status: 'pending-upgrade' }]) }],
    env: { LOCK_TIMEOUT: '0' },
  })
  assert.equal(r.code, 1, show(r))
  assert.match(finalError(r), /staginghub is being deployed by live-run \(pid 5\)/)
  assert.ok(!r.commands.some((c) => /^helm (history|rollback|uninstall|upgrade)/.test(c)), show(r))
})

test('a released lease is taken at once, without waiting', { timeout: 20_000 }, async () => {
  const released = JSON.stringify({ metadata: { resourceVersion: '9' }, data: { holder: 'earlier (pid 1)', released: 'true', renewed: new Date().toISOString() } })
  const r = await runDeploy(makeRepo(), ['--no-setup', '--deploy', 'staginghub'], {
    rules: [HELM3, heldLease('x')[0], { tool: 'kubectl', match: '^get configmap deploy-lock', stdout: released }],
    env: { LOCK_TIMEOUT: '0' },
  })
  assert.equal(r.code, 0, show(r))
  assert.doesNotMatch(r.stdout, /waiting for the deploy lock/)
  assert.doesNotMatch(r.stderr, /took over/, 'a released lease is no takeover')
})

test('a cluster that refuses the lease (RBAC): exit 1 naming the lock and the reason, no helm command', { timeout: 15_000 }, async () => {
  const r = await runDeploy(makeRepo(), ['--no-setup', '--deploy', 'staginghub'], {
    rules: [HELM3, { tool: 'kubectl', match: '^create --namespace', exit: 1, stderr: 'Error from server (Forbidden): configmaps is forbidden: User "ci" cannot create resource "configmaps"\n' }],
  })
  assert.equal(r.code, 1, show(r))
  assert.match(finalError(r), /^ERROR: could not take the deploy lock configmap\/deploy-lock in namespace staginghub: Error from server \(Forbidden\)/)
  assert.ok(!r.commands.some((c) => c.startsWith('helm dep') || c.startsWith('helm upgrade')))
})

test('--dry-run states the lock it would take and runs no kubectl', { timeout: 15_000 }, async () => {
  const r = await runDeploy(makeRepo(), ['--dry-run', '--no-setup', '--deploy', 'staginghub'], { env: { LOCK_TIMEOUT: '3m' } })
  assert.equal(r.code, 0, show(r))
  assert.match(r.stdout, /^# the deploy takes the lock configmap\/deploy-lock in namespace staginghub \(waiting up to LOCK_TIMEOUT=3m for another run\)$/m)
  assert.deepEqual(r.commands, ['helm version --client --short'])
})

// ---------------------------------------------------------------------------------------
// Class 3: every duration key has a range; nothing overflows a timer

for (const [key, value, message] of [
  ['HELM_TIMEOUT', '720h', 'HELM_TIMEOUT=720h: out of range; use a duration from 1s to 24h'],
  ['HELM_TIMEOUT', '99999999999999999999', 'HELM_TIMEOUT=99999999999999999999: out of range; use a duration from 1s to 24h'],
  ['HELM_TIMEOUT', '0', 'HELM_TIMEOUT=0: out of range; use a duration from 1s to 24h'],
  ['HELM_TIMEOUT', '-5', 'HELM_TIMEOUT=-5: not a duration; use one from 1s to 24h, e.g. 600, 90s, 10m, 1h30m'],
  ['ROLLOUT_TIMEOUT', '1.5m', 'ROLLOUT_TIMEOUT=1.5m: not a duration; use one from 1s to 24h'],
  ['ROLLOUT_TIMEOUT', '596h', 'ROLLOUT_TIMEOUT=596h: out of range; use a duration from 1s to 24h'],
  ['HEARTBEAT_INTERVAL', '720h', 'HEARTBEAT_INTERVAL=720h: out of range; use a duration from 1s to 1h'],
  ['HEARTBEAT_INTERVAL', '0s', 'HEARTBEAT_INTERVAL=0s: out of range; use a duration from 1s to 1h'],
  ['BUILD_TIMEOUT', '25h', 'BUILD_TIMEOUT=25h: out of range; use a duration from 1s to 24h'],
  ['HOOK_TIMEOUT', '1e9', 'HOOK_TIMEOUT=1e9: not a duration; use one from 1s to 24h'],
  ['LOCK_TIMEOUT', 'soon', 'LOCK_TIMEOUT=soon: not a duration; use one from 0s to 24h'],
  ['LOCK_TIMEOUT', '2000000s', 'LOCK_TIMEOUT=2000000s: out of range; use a duration from 0s to 24h'],
] as const) {
  test(`${key}=${value}: exit 2 naming the key, the range and the fix; nothing run`, { timeout: 15_000 }, async () => {
    const r = await runDeploy(makeRepo(), ['--build', '--push', '--deploy', 'staginghub'], { env: { [key]: value } })
    refused(r, message)
    assert.equal(r.commands.length, 0)
  })
}

test('the largest values in range are honoured as set: HELM_TIMEOUT=24h, ROLLOUT_TIMEOUT=1h30m, LOCK_TIMEOUT=0', { timeout: 15_000 }, async () => {
  const r = await runDeploy(makeRepo(), ['--no-setup', '--deploy', 'staginghub'], {
    env: { HELM_TIMEOUT: '24h', ROLLOUT_TIMEOUT: '1h30m', LOCK_TIMEOUT: '0', HEARTBEAT_INTERVAL: '1h' },
    rules: [HELM3, { tool: 'kubectl', match: 'get deployments -o name', stdout: 'deployment.apps/hub\n' }],
  })
  assert.equal(r.code, 0, show(r))
  assert.ok(r.commands.some((c) => c.startsWith('helm upgrade') && c.includes(' --timeout 86400s ')), show(r))
  assert.ok(r.commands.includes('kubectl rollout status --namespace staginghub --watch deployment.apps/hub --timeout=5400s'), show(r))
})

test('parseDuration (also the plugins\' parser) never returns a value past 7 days', { timeout: 5_000 }, () => {
  assert.equal(parseDuration('168h'), MAX_DURATION_SECONDS)
  for (const text of ['720h', '99999999999999999999', '604801', '1e9', '-1s', '10 m']) assert.ok(Number.isNaN(parseDuration(text)), text)
})

test('a plugin duration key out of range (HEALTH_CHECK_TIMEOUT=720h): exit 2 naming it and its range, nothing deployed', { timeout: 15_000 }, async () => {
  const r = await runDeploy(makeRepo(), ['--no-setup', '--deploy', '--plugin', path.join(ROOT, 'plugins/health-check.ts'), 'staginghub'], { env: { HEALTH_CHECK_TIMEOUT: '720h' } })
  assert.equal(r.code, 2, show(r))
  assert.match(finalError(r), /^ERROR: plugin health-check verify: HEALTH_CHECK_TIMEOUT=720h: out of range; use a duration from 1s to 1h$/)
  assert.deepEqual(r.commands, ['helm version --client --short'])
})

/** A plugin in the fixture repo whose verify hook runs `body` (with `ctx`). */
function pluginRepo(body: string): string {
  const repo = makeRepo()
  commit(repo, { 'plugins/probe.ts': `export default { name: 'probe', async verify(ctx: any) { ${body} } }\n` })
  return repo
}

test('a plugin\'s own key read with ctx.duration: a huge value is refused with exit 2', { timeout: 15_000 }, async () => {
  const repo = pluginRepo(`ctx.duration('MY_WAIT', '5m')`)
  const r = await runDeploy(repo, ['--no-setup', '--deploy', '--plugin', 'probe', 'staginghub'], { env: { MY_WAIT: '99999999999999999999' } })
  assert.equal(r.code, 2, show(r))
  assert.match(finalError(r), /^ERROR: plugin probe verify: MY_WAIT=99999999999999999999: out of range; use a duration from 1s to 24h$/)
  assert.deepEqual(r.commands, ['helm version --client --short'])
})

test('a command given a limit past 7 days is refused before it starts, naming the limit', { timeout: 15_000 }, async () => {
  const repo = pluginRepo(`await ctx.run('helm', ['status', 'x'], { timeout: '720h' })`)
  const r = await runDeploy(repo, ['--no-setup', '--deploy', '--plugin', 'probe', 'staginghub'])
  assert.equal(r.code, 3, show(r))
  assert.match(finalError(r), /^ERROR: plugin probe verify: helm: timeout 720h is not a duration from 1s to 7 days/)
  assert.deepEqual(r.commands, ['helm version --client --short'])
})

test('a command\'s limit at its edges: 1s and 7 days (168h) run, 0s and 7 days and a second refused', { timeout: 25_000 }, async () => {
  const repo = pluginRepo(`for (const timeout of ['1s', '168h', '0s', '604801s']) {
    try { await ctx.run('true', [], { timeout, capture: true }); ctx.log.info(timeout + ': ran') } catch (e) { ctx.log.info(timeout + ': ' + e.message) }
  }`)
  const r = await runDeploy(repo, ['--no-setup', '--deploy', '--plugin', 'probe', 'staginghub'])
  assert.equal(r.code, 0, show(r))
  assert.deepEqual(r.stderr.split('\n').filter((l) => l.startsWith('INFO:root:probe: ')).map((l) => l.slice('INFO:root:probe: '.length)), [
    '1s: ran',
    '168h: ran',
    '0s: true: timeout 0s is not a duration from 1s to 7 days (e.g. 90s, 10m, 1h)',
    '604801s: true: timeout 604801s is not a duration from 1s to 7 days (e.g. 90s, 10m, 1h)',
  ])
})

test('a command that ignores SIGTERM at its limit is killed: the run ends, naming the limit', { timeout: 45_000 }, async () => {
  const repo = pluginRepo(`await ctx.run('node', ['-e', "process.on('SIGTERM', () => {}); setInterval(() => {}, 1000)"], { timeout: '1s' })`)
  const r = await runDeploy(repo, ['--no-setup', '--deploy', '--plugin', 'probe', 'staginghub'])
  assert.equal(r.code, 3, show(r))
  assert.match(finalError(r), /^ERROR: plugin probe verify: node -e .* was stopped by SIGKILL \(limit 1s\)$/)
  assert.deepEqual(r.commands, ['helm version --client --short'])
})

test('children never read deploy.ts\'s stdin: a plugin\'s `cat` ends at once although stdin stays open; only the lease is fed', { timeout: 15_000 }, async () => {
  const repo = pluginRepo(`const r = await ctx.run('cat', [], { capture: true, timeout: '10s' }); ctx.log.info('cat read ' + r.stdout.length + ' bytes')`)
  // deploy.ts's stdin is a pipe this test never writes to nor closes: a child reading it would wait for ever.
  const r = await runDeploy(repo, ['--no-setup', '--deploy', '--plugin', 'probe', 'staginghub'], { openStdin: true })
  assert.equal(r.code, 0, show(r))
  assert.match(r.stderr, /cat read 0 bytes/)
  const fed = (c: RunResult['calls'][number]) => c.argv.at(-2) === '-f' && c.argv.at(-1) === '-'
  assert.ok(r.calls.some(fed), r.commands.join('\n'))
  for (const c of r.calls) assert.equal(c.stdin, fed(c) ? 'read' : 'none', `${c.tool} ${c.argv.join(' ')}`)
})
