// End-to-end: an environment of a shared chart, as docs/migrating.md moves mybinder.org-deploy's
// in (hub-charts/<env>/ with the shared chart as a file:// dependency, which has a dependency
// of its own), deployed and validated with the REAL helm and kubectl against the simulated
// Kubernetes API, on each toolchain (helm 3.17 + kubectl 1.32, helm 4.1 + kubectl 1.35). helm packages a local dependency as its directory is, so without
// `helm dep up <shared>` first the shared chart's own subchart would be left out, silently;
// here its object is in the cluster.
// Run: node --import tsx --test test/e2e/migrating.test.ts
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { test } from 'node:test'
import { commit, git, tempDir } from '../support/harness.ts'
import { cluster, forEachToolchain, show } from '../support/e2e.ts'

const configMap = (name: string, data: string) => `apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ${name}\ndata:\n  value: {{ ${data} | quote }}\n`

/** hub-charts/<env>/ on shared/ (chartpress's version string), which depends on leaf/; the environment's values for both, under shared:. */
function sharedChartRepo(env: string): string {
  const repo = tempDir('deploy-e2e-migrating-')
  git(repo, 'init', '-q', '-b', 'main')
  commit(repo, {
    'shared/Chart.yaml': 'apiVersion: v2\nname: shared\nversion: 0.0.1-set.by.chartpress\ndependencies:\n  - name: leaf\n    version: 1.0.0\n    repository: file://../leaf\n',
    'shared/templates/configmap.yaml': configMap('shared', '.Values.projectName'),
    'leaf/Chart.yaml': 'apiVersion: v2\nname: leaf\nversion: 1.0.0\n',
    'leaf/templates/configmap.yaml': configMap('leaf', '.Values.color'),
    [`hub-charts/${env}/Chart.yaml`]: `apiVersion: v2\nname: ${env}\nversion: 0.1.0\ndependencies:\n  - name: shared\n    version: ">=0.0.0-0"\n    repository: file://../../shared\n`,
    [`hub-charts/${env}/values.yaml`]: `shared:\n  projectName: ${env}\n  leaf:\n    color: blue\n`,
    [`secrets/${env}.yaml`]: 'shared: {}\n',
    '.gitignore': 'charts/\nChart.lock\n',
  }, 'an environment of the shared chart')
  return repo
}

await forEachToolchain('a shared local chart with real helm and kubectl', (tools) => {
  test('a shared local chart with a dependency of its own: validated and deployed, the dependency\'s subchart rendered and in the cluster', { timeout: 90_000 }, async (t) => {
    const env = `env${randomBytes(3).toString('hex')}`
    const repo = sharedChartRepo(env)
    const c = await cluster(t, { tools })
    const validated = await c.deploy(repo, ['--no-setup', '--validate', env])
    assert.equal(validated.code, 0, show(validated))
    assert.match(validated.stdout, new RegExp(`^${env}: valid \\(helm lint, 2 objects rendered, checked by the API server\\)$`, 'm'))
    const deployed = await c.deploy(repo, ['--no-setup', '--deploy', env])
    assert.equal(deployed.code, 0, show(deployed))
    assert.match(deployed.stderr, /^INFO:root:Executing helm dep up shared$/m)
    assert.equal(c.api.get('configmaps', env, 'shared')?.data?.value, env)
    assert.equal(c.api.get('configmaps', env, 'leaf')?.data?.value, 'blue')
  })
})
