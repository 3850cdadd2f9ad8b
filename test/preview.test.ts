// --validate and --diff with stand-ins: the exact helm commands, bad input refused before
// anything runs, the object diff (Secrets, masking, identity) from canned helm output, and
// the pure helpers (unified diff, helm's error messages).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { Buffer } from 'node:buffer'
import fs from 'node:fs'
import path from 'node:path'
import { diffManifests, helmProblems, unifiedDiff } from '../deploy.ts'
import { makeRepo, runDeploy, git, tempDir, ROOT, HELM2, HELM3, SECRET_TOKEN, SETUP_COMMANDS, type Rule } from './support/harness.ts'
import { withoutLock } from './support/hostile-deploy.ts'

const userTag = (repo: string, hub = 'staginghub') => git(repo, 'log', '-n', '1', '--pretty=format:%h', '--', `user-images/${hub}`)
const noKubeconfig = () => ({ KUBECONFIG: path.join(tempDir(), 'none') })
const withKubeconfig = () => {
  const file = path.join(tempDir(), 'kubeconfig')
  fs.writeFileSync(file, 'apiVersion: v1\nkind: Config\n')
  return { KUBECONFIG: file }
}
const values = (repo: string) => `-f secrets/staginghub.yaml --set-string jupyterhub.singleuser.image.tag=${userTag(repo)}`
const PREVIEW = 'helm upgrade --install --namespace staginghub staginghub hub-charts/staginghub --dry-run=server --output json'
const notInstalled: Rule = { tool: 'helm', match: '^status', exit: 1, stderr: 'Error: release: not found\n' }
const preview = (manifest: string): Rule => ({ tool: 'helm', match: '^upgrade .*--dry-run=server', stdout: JSON.stringify({ name: 'staginghub', version: 5, manifest }) })
const status = (version: number, manifest: string, config: object = {}, state = 'deployed', match = '^status'): Rule =>
  ({ tool: 'helm', match, stdout: JSON.stringify({ name: 'staginghub', version, info: { status: state }, manifest, config }) })

test('--validate on its own: no setup, helm lint and helm template with exactly the deploy\'s values; no cluster, no server-side check', { timeout: 15_000 }, async () => {
  const repo = makeRepo()
  const r = await runDeploy(repo, ['--validate', 'staginghub'], { env: noKubeconfig() })
  assert.equal(r.code, 0, r.stderr)
  assert.deepEqual(r.commands, [
    'helm version --client --short',
    `helm lint hub-charts/staginghub --namespace staginghub ${values(repo)}`,
    `helm template staginghub hub-charts/staginghub --namespace staginghub ${values(repo)}`,
  ])
  assert.match(r.stdout, /^staginghub: valid \(helm lint, 0 objects rendered, server-side check skipped: no cluster access \(--no-setup and no kubeconfig\)\)$/m)
})

test('--validate with a kubeconfig adds the server-side dry run; a monitoring chart has no image tags', { timeout: 15_000 }, async () => {
  const repo = makeRepo({ monitoring: true })
  const r = await runDeploy(repo, ['--no-setup', '--validate', 'staginghub'], { env: withKubeconfig(), rules: [HELM3, preview('')] })
  assert.equal(r.code, 0, r.stderr)
  assert.deepEqual(r.commands.slice(1), [
    `helm lint hub-charts/staginghub --namespace staginghub ${values(repo)}`,
    `helm template staginghub hub-charts/staginghub --namespace staginghub ${values(repo)}`,
    `${PREVIEW} ${values(repo)}`,
  ])
  assert.match(r.stdout, /staginghub: valid \(helm lint, 0 objects rendered, checked by the API server\)/)
  const m = await runDeploy(repo, ['--validate', 'monitoring'], { env: noKubeconfig() })
  assert.equal(m.code, 0, m.stderr)
  assert.deepEqual(m.commands.slice(1), ['helm lint monitoring --namespace monitoring -f secrets/monitoring.yaml', 'helm template monitoring monitoring --namespace monitoring -f secrets/monitoring.yaml'])
})

test('--validate: an unreachable cluster skips the server-side check with a reason; a refused object is a problem (exit 1)', { timeout: 15_000 }, async () => {
  const repo = makeRepo()
  const unreachable = await runDeploy(repo, ['--no-setup', '--validate', 'staginghub'], {
    env: withKubeconfig(),
    rules: [HELM3, { tool: 'helm', match: '^upgrade', exit: 1, stderr: 'Error: Kubernetes cluster unreachable: Get "https://10.0.0.1/version": dial tcp 10.0.0.1:443: connect: connection refused\n' }],
  })
  assert.equal(unreachable.code, 0, unreachable.stderr)
  assert.match(unreachable.stdout, /server-side check skipped: the cluster of KUBECONFIG=\S+ could not be reached for helm upgrade --dry-run=server \(after \d+s: Kubernetes cluster unreachable: Get "https:\/\/10\.0\.0\.1\/version": /)
  const refused = await runDeploy(repo, ['--no-setup', '--validate', 'staginghub'], {
    env: withKubeconfig(),
    rules: [HELM3, { tool: 'helm', match: '^upgrade', exit: 1, stderr: 'Error: INSTALLATION FAILED: unable to build kubernetes objects from release manifest: error validating "": error validating data: ValidationError(Deployment.spec): unknown field "replica" in io.k8s.api.apps.v1.DeploymentSpec\n' }],
  })
  assert.equal(refused.code, 1)
  assert.match(refused.stderr, /^ERROR: staginghub: unable to build kubernetes objects from release manifest: .*unknown field "replica"/m)
  assert.match(refused.stderr, /^ERROR: validation of staginghub failed: 1 problem \(listed above\)$/m)
})

test('--validate with Helm 2: `helm template --name`, no server-side check', { timeout: 15_000 }, async () => {
  const repo = makeRepo()
  const r = await runDeploy(repo, ['--validate', 'staginghub'], { rules: [HELM2], env: withKubeconfig() })
  assert.equal(r.code, 0, r.stderr)
  assert.equal(r.commands.at(-1), `helm template hub-charts/staginghub --name staginghub --namespace staginghub ${values(repo)}`)
  assert.match(r.stdout, /server-side check skipped: Helm 2 has no server-side dry run/)
})

test('--validate of several charts validates every one, even after an invalid staging chart; --json has them all', { timeout: 15_000 }, async () => {
  const repo = makeRepo({ hubs: ['staginghub', 'ea-hub'] })
  const r = await runDeploy(repo, ['--validate', '--json', 'ea-hub', 'staginghub'], {
    env: noKubeconfig(),
    rules: [HELM3, { tool: 'helm', match: '^(lint|template) .*staginghub', exit: 1, stderr: 'Error: failed to parse secrets/staginghub.yaml: error converting YAML to JSON: yaml: line 3: mapping values are not allowed in this context\n' }],
  })
  assert.equal(r.code, 1)
  assert.match(r.stderr, /^\[staginghub\] ERROR: staginghub: secrets\/staginghub\.yaml: not valid YAML: line 3: mapping values are not allowed in this context$/m)
  const doc = JSON.parse(r.stdout)
  assert.deepEqual(doc.charts.map((c: { chart: string; result: string; validation: { valid: boolean } }) => [c.chart, c.result, c.validation.valid]), [['staginghub', 'failed', false], ['ea-hub', 'ok', true]])
  assert.deepEqual(doc.charts[0].validation.errors[0], {
    check: 'lint', file: 'secrets/staginghub.yaml',
    message: 'staginghub: secrets/staginghub.yaml: not valid YAML: line 3: mapping values are not allowed in this context',
  })
})

test('--diff is refused before anything runs: with Helm 2, with --no-setup and no kubeconfig, with the secrets locked', { timeout: 15_000 }, async () => {
  const repo = makeRepo()
  const helm2 = await runDeploy(repo, ['--no-setup', '--diff', 'staginghub'], { rules: [HELM2], env: withKubeconfig() })
  assert.equal(helm2.code, 2)
  assert.match(helm2.stderr, /^ERROR: --diff needs Helm 3 .*install Helm 3, or use --validate$/m)
  assert.deepEqual(helm2.commands, ['helm version --client --short'])
  const nocluster = await runDeploy(repo, ['--no-setup', '--diff', 'staginghub'], { env: noKubeconfig() })
  assert.equal(nocluster.code, 2)
  assert.equal(nocluster.stderr.trim(), 'ERROR: --diff needs read access to the cluster: drop --no-setup, or point KUBECONFIG at a kubeconfig')
  fs.writeFileSync(path.join(repo, 'secrets/staginghub.yaml'), '\0GITCRYPT\0 encrypted bytes')
  const locked = await runDeploy(repo, ['--no-setup', '--diff', 'staginghub'], { env: withKubeconfig() })
  assert.equal(locked.code, 2)
  assert.equal(locked.stderr.trim(), 'ERROR: secrets/staginghub.yaml is encrypted: run `git-crypt unlock` first')
  assert.deepEqual(locked.commands, ['helm version --client --short'])
})

test('--diff after setup: helm status, then the server-side dry run with the deploy\'s values; not installed means all added', { timeout: 20_000 }, async () => {
  const repo = makeRepo()
  const manifest = 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\ndata:\n  x: "1"\n---\n# Source: c/templates/ns.yaml\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: extra\n'
  const r = await runDeploy(repo, ['--diff', 'staginghub'], { rules: [HELM3, notInstalled, preview(manifest)] })
  assert.equal(r.code, 0, r.stderr)
  assert.deepEqual(r.commands, [
    'helm version --client --short',
    ...SETUP_COMMANDS[3],
    'helm status staginghub --namespace staginghub --output json',
    `${PREVIEW} ${values(repo)}`,
  ])
  assert.equal(r.stdout.split('\n').filter((l) => !/^(==>|<==|chart |staginghub  )/.test(l)).join('\n').trim(), [
    'staginghub is not installed: every object is added',
    'ConfigMap/staginghub/a: added',
    'Namespace/extra: added',
    'staginghub: 0 changed, 2 added, 0 removed',
  ].join('\n'))
})

test('--diff object by object: identity by group, order of keys ignored, Secret values never shown, old secret values masked', { timeout: 15_000 }, async () => {
  const repo = makeRepo()
  const OLD = 'old-proxy-token-0123456789'
  // a secret secrets/<chart>.yaml no longer has: still in the release's values, so still masked
  const DROPPED = 'dropped-secret-value-42'
  const before = [
    'apiVersion: policy/v1beta1\nkind: PodDisruptionBudget\nmetadata:\n  name: hub\nspec:\n  minAvailable: 1',
    `apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cfg\ndata:\n  token: ${OLD}\n  b: "2"\n  a: "1"\n  dropped: ${DROPPED}`,
    `apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\ndata:\n  same: ${Buffer.from('unchanged-value').toString('base64')}\n  gone: ${Buffer.from('gone-value-123').toString('base64')}\n  token: ${Buffer.from(OLD).toString('base64')}`,
    'apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: reader\nrules: []',
    'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: same\n  namespace: other\ndata:\n  k: v',
  ].join('\n---\n')
  const after = [
    'apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata:\n  name: hub\nspec:\n  minAvailable: 1',
    `apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cfg\ndata:\n  a: "1"\n  b: "2"\n  token: ${SECRET_TOKEN}`,
    `apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\n  labels: {v: "2"}\nstringData:\n  same: unchanged-value\n  token: ${SECRET_TOKEN}\n  new: brand-new-value`,
    'apiVersion: v1\nkind: List\nitems:\n  - apiVersion: v1\n    kind: ConfigMap\n    metadata:\n      name: same\n      namespace: other\n    data:\n      k: v',
  ].join('\n---\n')
  const r = await runDeploy(repo, ['--no-setup', '--diff', '--json', 'staginghub'], {
    env: withKubeconfig(),
    secrets: [OLD, DROPPED, Buffer.from(OLD).toString('base64'), 'unchanged-value', 'gone-value-123', 'brand-new-value'],
    rules: [HELM3, status(7, before, { jupyterhub: { proxy: { secretToken: OLD }, hub: { dropped: DROPPED }, singleuser: { image: { tag: 'abc1234' } } } }), preview(after)],
  })
  assert.equal(r.code, 0, r.stderr)
  const { diff } = JSON.parse(r.stdout).charts[0]
  assert.equal(diff.revision, 7)
  assert.deepEqual(diff.summary, { changed: 3, added: 0, removed: 1, unchanged: 1 })
  assert.deepEqual(diff.objects.map((o: { id: string; change: string }) => `${o.id}: ${o.change}`), [
    'PodDisruptionBudget/staginghub/hub: changed',
    'ConfigMap/staginghub/cfg: changed',
    'Secret/staginghub/s: changed',
    'ClusterRole/reader: removed',
  ])
  const [pdb, cfg, secret] = diff.objects
  assert.match(pdb.diff, /^-apiVersion: policy\/v1beta1\n\+apiVersion: policy\/v1$/m)
  assert.equal(cfg.diff, [
    '--- ConfigMap/staginghub/cfg (revision 7)',
    `+++ ConfigMap/staginghub/cfg (${git(repo, 'rev-parse', '--short=7', 'HEAD')})`,
    '@@ -2,8 +2,7 @@',
    ' data:',
    '   a: "1"',
    '   b: "2"',
    '-  dropped: ***',
    '-  token: ***',
    '+  token: ***',
    ' kind: ConfigMap',
    ' metadata:',
    '   name: cfg',
    '',
  ].join('\n'), 'reordered keys are no change; the old and the new secret are masked')
  assert.deepEqual(secret.secretKeys, { added: ['new'], removed: ['gone'], changed: ['token'] })
  assert.match(secret.diff, /^\+ {2}labels:$/m)
  assert.doesNotMatch(secret.diff, /^[-+ ] *(data|stringData):/m)
  assert.match(r.stderr, /^Secret\/staginghub\/s: changed\n(.*\n)*  secret keys added new; removed gone; changed token \(values not shown\)$/m)
  assert.match(r.stderr, /^staginghub: 3 changed, 0 added, 1 removed$/m)
})

test('--diff compares against the last deployed revision when the last one failed', { timeout: 15_000 }, async () => {
  const repo = makeRepo()
  const cm = (v: string) => `apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\ndata:\n  v: "${v}"\n`
  const history: Rule = { tool: 'helm', match: '^history', stdout: JSON.stringify([{ revision: 3, status: 'superseded' }, { revision: 4, status: 'deployed' }, { revision: 5, status: 'failed' }]) }
  const r = await runDeploy(repo, ['--no-setup', '--diff', 'staginghub'], {
    env: withKubeconfig(),
    rules: [HELM3, status(4, cm('1'), {}, 'superseded', '^status .*--revision 4'), status(5, cm('9'), {}, 'failed'), history, preview(cm('1'))],
  })
  assert.equal(r.code, 0, r.stderr)
  assert.deepEqual(r.commands.slice(1), [
    'helm status staginghub --namespace staginghub --output json',
    'helm history staginghub --namespace staginghub -o json',
    'helm status staginghub --namespace staginghub --revision 4 --output json',
    `${PREVIEW} ${values(repo)}`,
  ])
  assert.match(r.stdout, /^staginghub: 0 changed, 0 added, 0 removed$/m)
})

test('--dry-run with --validate --diff announces the commands and runs none', { timeout: 15_000 }, async () => {
  const repo = makeRepo()
  const r = await runDeploy(repo, ['--dry-run', '--no-setup', '--validate', '--diff', 'staginghub'], { env: withKubeconfig() })
  assert.equal(r.code, 0, r.stderr)
  assert.deepEqual(r.commands, ['helm version --client --short'])
  const announced = [...r.stderr.matchAll(/^INFO:root:Executing (?:and capturing )?(helm .*)$/gm)].map((m) => m[1])
  assert.deepEqual(announced, [
    `helm lint hub-charts/staginghub --namespace staginghub ${values(repo)}`,
    `helm template staginghub hub-charts/staginghub --namespace staginghub ${values(repo)}`,
    `${PREVIEW} ${values(repo)}`,
    'helm status staginghub --namespace staginghub --output json',
  ])
})

test('unifiedDiff: hunks with three lines of context, merged when close, numbered from 1', { timeout: 5_000 }, () => {
  const a = Array.from({ length: 20 }, (_, i) => `line ${i + 1}`).join('\n') + '\n'
  const b = a.replace('line 2\n', 'line two\n').replace('line 5\n', '').replace('line 18\n', 'line 18\nline 18.5\n')
  assert.equal(unifiedDiff(a, a, ['a', 'b']), '')
  assert.equal(unifiedDiff(a, b, ['a', 'b']), [
    '--- a', '+++ b',
    '@@ -1,8 +1,7 @@', ' line 1', '-line 2', '+line two', ' line 3', ' line 4', '-line 5', ' line 6', ' line 7', ' line 8',
    '@@ -16,5 +15,6 @@', ' line 16', ' line 17', ' line 18', '+line 18.5', ' line 19', ' line 20', '',
  ].join('\n'))
  assert.equal(unifiedDiff('', 'x\n', ['a', 'b']), '--- a\n+++ b\n@@ -0,0 +1,1 @@\n+x\n')
})

test('helmProblems: chart, repository path and values path from helm\'s messages', { timeout: 5_000 }, () => {
  const dir = 'hub-charts/ea-hub'
  assert.deepEqual(helmProblems('ea-hub', dir, 'render', 'Error: template: ea-hub/charts/jupyterhub/templates/hub/deployment.yaml:12:20: executing "ea-hub/charts/jupyterhub/templates/hub/deployment.yaml" at <.Values.hub.image.name>: nil pointer evaluating interface {}.name\n'), [{
    check: 'render',
    file: 'hub-charts/ea-hub/charts/jupyterhub/templates/hub/deployment.yaml:12:20',
    valuesPath: 'jupyterhub.hub.image.name',
    message: 'ea-hub: hub-charts/ea-hub/charts/jupyterhub/templates/hub/deployment.yaml:12:20: values jupyterhub.hub.image.name: at <.Values.hub.image.name>: nil pointer evaluating interface {}.name',
  }])
  const lint = [
    '==> Linting hub-charts/ea-hub', '[INFO] Chart.yaml: icon is recommended',
    "[ERROR] templates/: values don't meet the specifications of the schema(s) in the following chart(s):", 'ea-hub:', '- (root): Additional property typo is not allowed', 'jupyterhub:', '- singleuser.image: tag is required', '',
    '[ERROR] Chart.yaml: version is required', '', 'Error: 1 chart(s) linted, 1 chart(s) failed',
  ].join('\n')
  assert.deepEqual(helmProblems('ea-hub', dir, 'lint', lint).map((p) => p.message), [
    'ea-hub: hub-charts/ea-hub/values.schema.json: values (root): Additional property typo is not allowed',
    'ea-hub: values jupyterhub.singleuser.image: tag is required (values.schema.json of jupyterhub)',
    'ea-hub: hub-charts/ea-hub/Chart.yaml: version is required',
  ])
  // Helm 4 (jsonschema v6) names the place by a JSON pointer, as `helm template` prints it
  const helm4 = [
    "Error: values don't meet the specifications of the schema(s) in the following chart(s):", 'ea-hub:', "- at '': additional properties 'typo' not allowed",
    'jupyterhub:', "- at '/hub/config~1x': additional properties 'imagee' not allowed", '',
  ].join('\n')
  assert.deepEqual(helmProblems('ea-hub', dir, 'render', helm4).map((p) => [p.valuesPath, p.message]), [
    ['(root)', "ea-hub: hub-charts/ea-hub/values.schema.json: values (root): additional properties 'typo' not allowed"],
    ['jupyterhub.hub.config/x', "ea-hub: values jupyterhub.hub.config/x: additional properties 'imagee' not allowed (values.schema.json of jupyterhub)"],
  ])
  // a values.yaml that does not parse: lint says it three ways, template once; one problem
  const badValues = [
    '[ERROR] values.yaml: unable to parse YAML: error converting YAML to JSON: yaml: mapping values are not allowed in this context',
    '[ERROR] templates/: cannot load values.yaml: error converting YAML to JSON: yaml: mapping values are not allowed in this context',
    '[ERROR] : unable to load chart', '\tcannot load values.yaml: error converting YAML to JSON: yaml: mapping values are not allowed in this context',
    'Error: 1 chart(s) linted, 1 chart(s) failed',
  ].join('\n')
  const template = 'Error: cannot load values.yaml: error converting YAML to JSON: yaml: mapping values are not allowed in this context\n'
  const both = [...helmProblems('ea-hub', dir, 'lint', badValues), ...helmProblems('ea-hub', dir, 'render', template)]
  assert.deepEqual([...new Set(both.map((p) => p.message))], ['ea-hub: hub-charts/ea-hub/values.yaml: not valid YAML: mapping values are not allowed in this context'])
})

test('plugins see ctx.validation and ctx.diff in success, and ctx.validation in fail of an invalid chart', { timeout: 20_000 }, async () => {
  const repo = makeRepo({ hubs: ['staginghub', 'ea-hub'] })
  const out = path.join(tempDir(), 'seen.jsonl')
  fs.writeFileSync(path.join(repo, 'plugins-record.ts'), `import fs from 'node:fs'
const record = (hook) => (ctx) => fs.appendFileSync(${JSON.stringify(out)}, JSON.stringify({ hook, chart: ctx.chart, phases: ctx.phases, failedPhase: ctx.failedPhase, validation: ctx.validation, diff: ctx.diff }) + '\\n')
export default { name: 'record', success: record('success'), fail: record('fail') }
`)
  const manifest = 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n'
  const r = await runDeploy(repo, ['--no-setup', '--validate', '--diff', '--plugin', './plugins-record.ts', 'staginghub', 'ea-hub'], {
    env: withKubeconfig(),
    rules: [HELM3, { tool: 'helm', match: '^lint .*ea-hub', exit: 1, stdout: '[ERROR] Chart.yaml: version is required\n' }, notInstalled, preview(manifest)],
  })
  assert.equal(r.code, 1, r.stderr)
  const seen = fs.readFileSync(out, 'utf8').trim().split('\n').map((l) => JSON.parse(l))
  const staging = seen.find((s) => s.chart === 'staginghub')
  assert.equal(staging.hook, 'success')
  assert.deepEqual(staging.phases, { setup: false, build: false, push: false, deploy: false, validate: true, diff: true })
  assert.equal(staging.validation.valid, true)
  assert.equal(staging.validation.serverSide, 'checked')
  assert.deepEqual(staging.diff.summary, { changed: 0, added: 1, removed: 0, unchanged: 0 })
  assert.equal(staging.diff.text, 'staginghub is not installed: every object is added\nConfigMap/staginghub/a: added\nstaginghub: 0 changed, 1 added, 0 removed\n')
  const ea = seen.find((s) => s.chart === 'ea-hub')
  assert.equal(ea.hook, 'fail')
  assert.equal(ea.failedPhase, 'validate')
  assert.equal(ea.diff, undefined, 'an invalid chart is not diffed')
  assert.deepEqual(ea.validation.errors, [{ check: 'lint', file: 'hub-charts/ea-hub/Chart.yaml', message: 'ea-hub: hub-charts/ea-hub/Chart.yaml: version is required' }])
})

test('diffManifests: a Secret written as data or as stringData with the same values is no change; comments and empty documents are ignored', { timeout: 5_000 }, async () => {
  const before = `# Source: x/templates/s.yaml\napiVersion: v1\nkind: Secret\nmetadata:\n  name: s\ndata:\n  k: ${Buffer.from('v\u00e9').toString('base64')}\n---\n---\n`
  const after = '---\n# Source: x/templates/s.yaml\napiVersion: v1\nkind: Secret\nmetadata:\n  name: s\nstringData:\n  k: "v\u00e9"\n'
  const same = await diffManifests(before, after, 'ns', ['old', 'new'])
  assert.deepEqual(same.objects, [])
  assert.deepEqual(same.summary, { changed: 0, added: 0, removed: 0, unchanged: 1 })
  assert.equal(same.text, 'ns: 0 changed, 0 added, 0 removed\n')
  const fresh = await diffManifests(undefined, after, 'ns', ['old', 'new'])
  assert.equal(fresh.text, 'ns is not installed: every object is added\nSecret/ns/s: added\n  secret keys added k (values not shown)\nns: 0 changed, 1 added, 0 removed\n')
})

test('dependencies: `helm dep build` from Chart.lock, `helm dep up` without one; a failure is a validation problem', { timeout: 20_000 }, async () => {
  const repo = makeRepo()
  const chart = path.join(repo, 'hub-charts/staginghub')
  fs.appendFileSync(path.join(chart, 'Chart.yaml'), 'dependencies:\n  - name: jupyterhub\n    version: 3.3.8\n    repository: https://hub.jupyter.org/helm-chart/\n')
  const failing: Rule = { tool: 'helm', match: '^dep up', exit: 1, stderr: 'Error: no cached repository for helm-manager-1a2b found. (try \'helm repo update\')\n' }
  const r = await runDeploy(repo, ['--validate', '--json', 'staginghub'], { env: noKubeconfig(), rules: [HELM3, failing] })
  assert.equal(r.code, 1)
  assert.deepEqual(r.commands.slice(1), ['helm dep up'])
  assert.match(r.stderr, /^ERROR: staginghub: hub-charts\/staginghub: could not fetch the chart's dependencies: no cached repository for helm-manager-1a2b found\. \(try 'helm repo update'\)$/m)
  const { validation } = JSON.parse(r.stdout).charts[0]
  assert.equal(validation.serverSideNote, 'the chart did not render')
  assert.equal(validation.errors[0].check, 'dependencies')

  fs.writeFileSync(path.join(chart, 'Chart.lock'), 'dependencies:\n  - name: jupyterhub\n    repository: https://hub.jupyter.org/helm-chart/\n    version: 3.3.8\n')
  const built = await runDeploy(repo, ['--validate', 'staginghub'], { env: noKubeconfig() })
  assert.equal(built.code, 0, built.stderr)
  assert.deepEqual(built.commands.slice(1, 2), ['helm dep build'])
  fs.mkdirSync(path.join(chart, 'charts'))
  fs.writeFileSync(path.join(chart, 'charts/jupyterhub-3.3.8.tgz'), '')
  const cached = await runDeploy(repo, ['--validate', 'staginghub'], { env: noKubeconfig() })
  assert.equal(cached.code, 0, cached.stderr)
  assert.ok(!cached.commands.some((c) => c.startsWith('helm dep')), cached.commands.join('\n'))
})

test('the dependency cache check compares versions as helm resolves them: a `v` prefix in Chart.yaml, Chart.lock or the archive\'s name', { timeout: 30_000 }, async () => {
  const cases = [
    { wanted: 'v3.3.8', locked: '3.3.8', archive: 'jupyterhub-3.3.8.tgz' },
    { wanted: '3.3.8', locked: 'v3.3.8', archive: 'jupyterhub-v3.3.8.tgz' },
    { wanted: '3.3.8', locked: '3.3.8', archive: 'jupyterhub-v3.3.8.tgz' },
    { wanted: 'v3.3.8', locked: 'v3.3.8', archive: 'jupyterhub-3.3.8.tgz' },
  ]
  const runs = await Promise.all(cases.map(({ wanted, locked, archive }) => {
    const repo = makeRepo()
    const chart = path.join(repo, 'hub-charts/staginghub')
    fs.appendFileSync(path.join(chart, 'Chart.yaml'), `dependencies:\n  - name: jupyterhub\n    version: ${wanted}\n    repository: https://hub.jupyter.org/helm-chart/\n`)
    fs.writeFileSync(path.join(chart, 'Chart.lock'), `dependencies:\n  - name: jupyterhub\n    repository: https://hub.jupyter.org/helm-chart/\n    version: ${locked}\n`)
    fs.mkdirSync(path.join(chart, 'charts'))
    fs.writeFileSync(path.join(chart, 'charts', archive), '')
    return runDeploy(repo, ['--validate', 'staginghub'], { env: noKubeconfig() })
  }))
  runs.forEach((r, i) => {
    assert.equal(r.code, 0, r.stderr)
    assert.ok(!r.commands.some((c) => c.startsWith('helm dep')), `${JSON.stringify(cases[i])}: ${r.commands.join(', ')}`)
    assert.match(r.stderr, /dependencies already in hub-charts\/staginghub\/charts\/ as Chart\.lock names them/)
  })
  // Another version is still no cache: v3.3.9 wanted, 3.3.8 locked and archived.
  const repo = makeRepo()
  const chart = path.join(repo, 'hub-charts/staginghub')
  fs.appendFileSync(path.join(chart, 'Chart.yaml'), 'dependencies:\n  - name: jupyterhub\n    version: v3.3.9\n    repository: https://hub.jupyter.org/helm-chart/\n')
  fs.writeFileSync(path.join(chart, 'Chart.lock'), 'dependencies:\n  - name: jupyterhub\n    repository: https://hub.jupyter.org/helm-chart/\n    version: 3.3.8\n')
  fs.mkdirSync(path.join(chart, 'charts'))
  fs.writeFileSync(path.join(chart, 'charts/jupyterhub-3.3.8.tgz'), '')
  const stale = await runDeploy(repo, ['--validate', 'staginghub'], { env: noKubeconfig() })
  assert.equal(stale.code, 0, stale.stderr)
  assert.deepEqual(stale.commands.filter((c) => c.startsWith('helm dep')), ['helm dep build'])
})

/**
 * The --json schema docs/workflow.md documents: the example's keys, the `{ ... }` item lists
 * of its table (`key?` optional), which fields may be `null`, and the two it says are absent
 * at times (`revision`, `serverSideNote`).
 */
function documentedReport() {
  const section = fs.readFileSync(path.join(ROOT, 'docs/workflow.md'), 'utf8').split('### `--json`')[1].split('\n## ')[0]
  const example = JSON.parse(/```json\n([\s\S]*?)\n```/.exec(section)![1])
  const table = section.slice(section.indexOf('| field |'))
  const items = (field: string) => {
    const list = new RegExp(`\`${field}\`:[^{|]*\`\\{ ([^}]*) \\}\``).exec(table)![1].split(', ')
    return { required: list.filter((k) => !k.endsWith('?')), optional: list.filter((k) => k.endsWith('?')).map((k) => k.slice(0, -1)) }
  }
  const nullable = [...table.matchAll(/^\| `(?:charts\[\]\.)?(\w+)` \|[^|\n]*`null`/gm)].map((m) => m[1])
  for (const said of ['`revision` (absent when not installed)', 'with `serverSideNote` saying why']) assert.ok(table.includes(said), said)
  const chart = example.charts[0]
  return {
    top: Object.keys(example),
    chart: Object.keys(chart),
    nullable,
    validation: { required: Object.keys(chart.validation), optional: ['serverSideNote'] },
    problem: items('errors'),
    diff: { required: Object.keys(chart.diff).filter((k) => k !== 'revision'), optional: ['revision'] },
    summary: Object.keys(chart.diff.summary),
    object: items('objects'),
    results: [...(/`charts\[\]\.result` \| (.*) \|/.exec(table)![1].matchAll(/`([^`]+)`/g))].map((m) => m[1]),
  }
}

test('--json: every key docs/workflow.md documents is in the report, `null` where there is no value, nothing else', { timeout: 20_000 }, async () => {
  const doc = documentedReport()
  assert.deepEqual(doc.nullable, ['error', 'validation', 'diff'])
  const keys = (what: string, o: object, { required, optional = [] }: { required: string[]; optional?: string[] }) => {
    for (const k of required) assert.ok(k in o, `${what}: ${k} missing in ${JSON.stringify(o)}`)
    for (const k of Object.keys(o)) assert.ok(required.includes(k) || optional.includes(k), `${what}: ${k} is not documented`)
  }
  const check = (report: { charts: Record<string, unknown>[] }) => {
    keys('the report', report, { required: doc.top })
    for (const c of report.charts) {
      keys(`chart ${c.chart}`, c, { required: doc.chart })
      assert.ok(doc.results.includes(c.result as string), `result ${c.result}`)
      for (const k of doc.nullable) assert.notEqual(c[k], undefined, `${c.chart}: ${k} is null, not absent`)
      assert.equal(c.error === null, c.result !== 'failed', `${c.chart}: error is null unless it failed`)
      const v = c.validation as { errors: object[] } | null
      if (v) {
        keys(`validation of ${c.chart}`, v, doc.validation)
        for (const e of v.errors) keys(`a problem of ${c.chart}`, e, doc.problem)
      }
      const d = c.diff as { summary: object; objects: object[] } | null
      if (d) {
        keys(`diff of ${c.chart}`, d, doc.diff)
        keys(`diff summary of ${c.chart}`, d.summary, { required: doc.summary })
        for (const o of d.objects) keys(`a changed object of ${c.chart}`, o, doc.object)
      }
    }
  }
  const repo = makeRepo({ hubs: ['staginghub', 'ea-hub'] })
  const secret = (value: string) => `apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\ndata:\n  k: ${Buffer.from(value).toString('base64')}\n`
  const cm = (v: string) => `apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  v: "${v}"\n`
  const invalidEa: Rule = { tool: 'helm', match: '^lint .*ea-hub', exit: 1, stdout: '[ERROR] templates/x.yaml: template: ea-hub/templates/x.yaml:1:3: executing "ea-hub/templates/x.yaml" at <.Values.a.b>: nil pointer evaluating interface {}.b\n' }
  const [both, validateOnly, deployFailed] = await Promise.all([
    // staginghub installed and changed (a Secret and a ConfigMap); ea-hub invalid, so not diffed.
    runDeploy(repo, ['--no-setup', '--validate', '--diff', '--json', 'staginghub', 'ea-hub'], {
      env: withKubeconfig(), secrets: ['old-secret-value', 'new-secret-value'],
      rules: [HELM3, invalidEa, status(3, `${cm('1')}---\n${secret('old-secret-value')}`), preview(`${cm('2')}---\n${secret('new-secret-value')}`)],
    }),
    // No --diff, no cluster: the server-side check skipped (with its note), diff null.
    runDeploy(repo, ['--validate', '--json', 'staginghub'], { env: noKubeconfig() }),
    // Staging's upgrade fails after it validated: ea-hub is skipped, nothing known of it.
    runDeploy(repo, ['--no-setup', '--validate', '--deploy', '--json', 'staginghub', 'ea-hub'], {
      env: withKubeconfig(), rules: [HELM3, preview(''), { tool: 'helm', match: '^upgrade (?!.*--dry-run)', exit: 1, stderr: 'Error: UPGRADE FAILED: boom\n' }],
    }),
  ])
  const reports = [both, validateOnly, deployFailed].map((r) => JSON.parse(r.stdout))
  reports.forEach(check)
  const [b, v, f] = reports
  assert.deepEqual(b.charts.map((c: { chart: string; result: string }) => [c.chart, c.result]), [['staginghub', 'ok'], ['ea-hub', 'failed']])
  assert.equal(b.charts[0].diff.revision, 3)
  assert.deepEqual(b.charts[0].diff.objects.map((o: { id: string; secretKeys?: object }) => [o.id, 'secretKeys' in o]), [['ConfigMap/staginghub/c', false], ['Secret/staginghub/s', true]])
  assert.equal(b.charts[1].diff, null)
  assert.equal(b.charts[1].validation.errors.length, 1)
  assert.equal(typeof b.charts[1].error, 'string')
  assert.equal(v.charts[0].diff, null)
  assert.equal(v.charts[0].validation.serverSide, 'skipped')
  assert.deepEqual(f.charts.map((c: { chart: string; result: string; error: unknown; validation: unknown; diff: unknown }) => [c.chart, c.result, typeof c.error, c.validation === null, c.diff]),
    [['staginghub', 'failed', 'string', false, null], ['ea-hub', 'skipped', 'object', true, null]])
})

test('--json on GitHub Actions: stdout is the JSON document alone, also when the chart is invalid', { timeout: 15_000 }, async () => {
  const repo = makeRepo()
  const r = await runDeploy(repo, ['--validate', '--json', 'staginghub'], {
    env: { ...noKubeconfig(), GITHUB_ACTIONS: 'true' },
    rules: [HELM3, { tool: 'helm', match: '^template', exit: 1, stderr: 'Error: parse error at (staginghub/templates/a.yaml:3): unexpected EOF\n' }],
  })
  assert.equal(r.code, 1)
  const doc = JSON.parse(r.stdout)
  assert.equal(doc.charts[0].validation.errors[0].message, 'staginghub: hub-charts/staginghub/templates/a.yaml:3: unexpected EOF')
  assert.match(r.stderr, /^ERROR: staginghub: hub-charts\/staginghub\/templates\/a\.yaml:3: unexpected EOF$/m)
  assert.doesNotMatch(r.stdout, /::(group|error)::/)
})

test('with --deploy: validate, then diff, then the deploy; a chart that fails to validate is not deployed', { timeout: 20_000 }, async () => {
  const repo = makeRepo()
  const manifest = 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n'
  const r = await runDeploy(repo, ['--no-setup', '--validate', '--diff', '--deploy', 'staginghub'], { env: withKubeconfig(), rules: [HELM3, notInstalled, preview(manifest)] })
  assert.equal(r.code, 0, r.stderr)
  assert.deepEqual(withoutLock(r.commands).map((c) => c.split(' ').slice(0, 2).join(' ')).slice(1, 7), ['helm lint', 'helm template', 'helm upgrade', 'helm status', 'helm dep', 'helm upgrade'])
  assert.equal(r.commands.filter((c) => c.includes('--dry-run=server')).length, 1, 'validate and diff share one server-side dry run')
  assert.match(r.stdout, /^staginghub: 0 changed, 1 added, 0 removed$/m)
  const invalid = await runDeploy(repo, ['--no-setup', '--validate', '--deploy', 'staginghub'], {
    env: withKubeconfig(),
    rules: [HELM3, { tool: 'helm', match: '^lint', exit: 1, stdout: '[ERROR] templates/: template: staginghub/templates/x.yaml:1:3: executing "staginghub/templates/x.yaml" at <.Values.a.b>: nil pointer evaluating interface {}.b\n' }],
  })
  assert.equal(invalid.code, 1)
  assert.ok(!invalid.commands.some((c) => c.startsWith('helm upgrade') || c.startsWith('helm dep')), invalid.commands.join('\n'))
  assert.match(invalid.stderr, /^ERROR: staginghub: hub-charts\/staginghub\/templates\/x\.yaml:1:3: values a\.b: at <\.Values\.a\.b>: nil pointer evaluating interface \{\}\.b$/m)
})

test('--diff: a helm that prints no release JSON is one error line, exit 1', { timeout: 15_000 }, async () => {
  const repo = makeRepo()
  const r = await runDeploy(repo, ['--no-setup', '--diff', 'staginghub'], { env: withKubeconfig(), rules: [HELM3, { tool: 'helm', match: '^status', stdout: 'STATUS: deployed\n' }] })
  assert.equal(r.code, 1)
  assert.match(r.stderr, /^ERROR: staginghub: could not read the release: `helm status --output json` printed no JSON$/m)
  assert.doesNotMatch(r.stderr, /^\s+at /m, 'no stack trace')
})
