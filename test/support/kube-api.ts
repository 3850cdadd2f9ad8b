/**
 * A small simulated Kubernetes API server for end-to-end tests that drive the REAL
 * helm 3.17 and kubectl 1.32 binaries (see /work/shared/notes/simulated-kube-api.md for
 * what those binaries request and why each piece below exists).
 *
 * Serves (plain HTTP on 127.0.0.1, random port; the kubeconfig carries a token, but client-go
 * sends no credentials over plain http, so only a wrong token would be refused):
 * - discovery: /version, /api, /apis, /apis/apps, /api/v1, /apis/apps/v1 (legacy,
 *   non-aggregated form; kubectl falls back to it), and OpenAPI v3 (/openapi/v3 root plus
 *   one tiny document per group-version) which helm needs for install/upgrade: each
 *   document only says "PATCH supports ?fieldValidation", so helm skips client-side
 *   schema validation.
 * - resources: namespaces, secrets, configmaps, services, serviceaccounts, pods, events
 *   (core/v1) and deployments, replicasets (apps/v1), with get, list (label and field
 *   selectors), create, update (PUT), patch (strategic merge as helm/kubectl send it, JSON
 *   merge patch, JSON patch), delete (cascading to owned objects unless Orphan), watch
 *   (newline-delimited events replayed from a resourceVersion), and `meta.k8s.io/v1`
 *   Table responses when the client asks for them (kubectl get).
 * - Secrets sent as protobuf (helm's release storage) are decoded.
 * - a toy deployment controller: a Deployment gets one ReplicaSet per pod template
 *   (pod-template-hash, controller ownerReference) and Pods; they become ready after
 *   `readyDelayMs`, or never for deployments matched by `neverReady` (pods then sit in
 *   ImagePullBackOff with Warning events). Events: ScalingReplicaSet, SuccessfulCreate,
 *   Scheduled, Started, Failed/BackOff.
 * - defaults that the clients rely on: Deployment replicas/strategy, Service clusterIP.
 *
 * Debugging: KUBE_API_DEBUG=1 logs every request (and JSON bodies) to stderr.
 *
 * Does NOT: server-side apply, admission/validation (unknown fields are kept),
 * protobuf for anything but Secret (so typed writers like `kubectl create deployment` get 415), aggregated discovery, subresources (status, scale,
 * logs, exec), pagination (`limit` is ignored), watch bookmarks, finalizers or graceful
 * deletion (deletes are immediate), other kinds (CRDs, Ingress, RBAC, StatefulSet...).
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { gunzipSync, gzipSync } from 'node:zlib';

/** Kubernetes objects are free-form JSON here. */
export type KubeObject = Record<string, any>;

export interface KubeApiOptions {
  /** Pods become ready this long after they are created (default 500 ms). */
  readyDelayMs?: number;
  /** Deployments for which this returns true never become ready. */
  neverReady?: (deploymentName: string) => boolean;
}

export interface RequestRecord {
  method: string;
  path: string;
  query: string;
  status?: number;
}

export interface SeedReleaseOptions {
  name: string;
  namespace: string;
  /** Helm status label and release status, e.g. "pending-upgrade". */
  status: string;
  /** Revision number; default: latest stored revision + 1 (or 1). */
  version?: number;
  description?: string;
}

export interface KubeApi {
  url: string;
  token: string;
  /** Every request received, in order (status filled in when the response ends). */
  requests: RequestRecord[];
  close(): Promise<void>;
  /** Writes a kubeconfig (mode 0600) with one cluster/user/context, set as current. */
  writeKubeconfig(path: string, opts?: { namespace?: string }): Promise<void>;
  /** Stored object (deep copy) by plural resource name, e.g. get('deployments', 'ns', 'web'). */
  get(resource: string, namespace: string | undefined, name: string): KubeObject | undefined;
  list(resource: string, namespace?: string): KubeObject[];
  /** Creates or replaces an object (by apiVersion/kind), with defaults and controllers; creates its namespace if needed. */
  put(obj: KubeObject): KubeObject;
  remove(resource: string, namespace: string | undefined, name: string): boolean;
  /** Stores a helm release Secret, copying the latest stored revision of that release if any. */
  seedHelmRelease(opts: SeedReleaseOptions): KubeObject;
  /** Decoded helm releases (the JSON helm stores), sorted by revision. */
  helmReleases(name: string, namespace: string): KubeObject[];
  setNeverReady(fn: ((deploymentName: string) => boolean) | undefined): void;
  setReadyDelay(ms: number): void;
}

interface ResourceType { group: string; version: string; resource: string; kind: string; namespaced: boolean; shortNames: string[]; all: boolean }
const type = (gv: string, resource: string, kind: string, shortName: string, all = false, namespaced = true): ResourceType => {
  const [group, version] = gv.includes('/') ? gv.split('/') : ['', gv];
  return { group, version, resource, kind, namespaced, shortNames: shortName ? [shortName] : [], all };
};
const TYPES: ResourceType[] = [ // namespaces first: TYPES[0]
  type('v1', 'namespaces', 'Namespace', 'ns', false, false),
  type('v1', 'secrets', 'Secret', ''),
  type('v1', 'configmaps', 'ConfigMap', 'cm'),
  type('v1', 'services', 'Service', 'svc', true),
  type('v1', 'serviceaccounts', 'ServiceAccount', 'sa'),
  type('v1', 'pods', 'Pod', 'po', true),
  type('v1', 'events', 'Event', 'ev'),
  type('apps/v1', 'deployments', 'Deployment', 'deploy', true),
  type('apps/v1', 'replicasets', 'ReplicaSet', 'rs', true),
];
const gvOf = (t: ResourceType) => (t.group ? `${t.group}/${t.version}` : t.version);
const typeByResource = (resource: string) => TYPES.find((t) => t.resource === resource);
const GROUP_VERSIONS = [...new Set(TYPES.map(gvOf))];
const gvPath = (gv: string) => (gv === 'v1' ? 'api/v1' : `apis/${gv}`);

class ApiError extends Error {
  constructor(readonly code: number, readonly reason: string, message: string, readonly details?: KubeObject) {
    super(message);
  }
}
const unsupported = (type: string, accepted: string) =>
  new ApiError(415, 'UnsupportedMediaType', `the body of the request was in an unknown format - accepted media types include: ${accepted}; got ${type}`);
const notFound = (t: ResourceType, name: string) =>
  new ApiError(404, 'NotFound', `${t.resource}${t.group ? `.${t.group}` : ''} "${name}" not found`, { name, group: t.group, kind: t.resource });

const throwError = (e: Error): never => {
  throw e;
};
const clone = <T>(v: T): T => (v === undefined ? v : structuredClone(v));
const isObj = (v: unknown): v is KubeObject => typeof v === 'object' && v !== null && !Array.isArray(v);
const now = () => new Date().toISOString().replace(/\.\d+Z$/, 'Z'); // API times have second precision
const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);

function age(ts: string | undefined): string {
  if (!ts) return '<unknown>';
  const s = Math.max(0, Math.round((Date.now() - Date.parse(ts)) / 1000));
  return s < 120 ? `${s}s` : s < 7200 ? `${Math.floor(s / 60)}m` : `${Math.floor(s / 3600)}h`;
}

// ---------------------------------------------------------------------------------
// Selectors: labelSelector (=, ==, !=, in, notin, exists, !exists) and fieldSelector
// (=, ==, != on dotted paths such as metadata.name or involvedObject.name).
function splitTerms(s: string): string[] {
  const out = [''];
  let depth = 0; // commas inside "in (a,b)" do not split
  for (const c of s) {
    depth += c === '(' ? 1 : c === ')' ? -1 : 0;
    if (c === ',' && depth === 0) out.push('');
    else out[out.length - 1] += c;
  }
  return out.map((t) => t.trim()).filter(Boolean);
}

function labelMatcher(selector: string | null): (labels: Record<string, string> | undefined) => boolean {
  if (!selector) return () => true;
  const tests = splitTerms(selector).map((term): ((l: Record<string, string>) => boolean) => {
    let m: RegExpMatchArray | null;
    if ((m = term.match(/^!\s*(\S+)$/))) return (l) => !(m![1] in l);
    if ((m = term.match(/^(\S+)\s+(in|notin)\s+\((.*)\)$/))) {
      const values = m[3].split(',').map((v) => v.trim());
      return m[2] === 'in' ? (l) => values.includes(l[m![1]]) : (l) => !values.includes(l[m![1]]);
    }
    if ((m = term.match(/^([^!=\s]+)\s*(==|=|!=)\s*(.*)$/))) {
      return m[2] === '!=' ? (l) => l[m![1]] !== m![3] : (l) => l[m![1]] === m![3];
    }
    return (l) => term in l;
  });
  return (labels) => tests.every((test) => test(labels ?? {}));
}

function fieldMatcher(selector: string | null): (obj: KubeObject) => boolean {
  if (!selector) return () => true;
  const tests = splitTerms(selector).map((term) => {
    const m = term.match(/^([^!=]+)(==|=|!=)(.*)$/);
    if (!m) throw new ApiError(400, 'BadRequest', `invalid field selector: ${term}`);
    const get = (o: KubeObject) => String(m[1].split('.').reduce((v: any, k) => v?.[k], o) ?? '');
    return m[2] === '!=' ? (o: KubeObject) => get(o) !== m[3] : (o: KubeObject) => get(o) === m[3];
  });
  return (obj) => tests.every((test) => test(obj));
}

// ---------------------------------------------------------------------------------
// Patches. Helm 3.17 sends client-side three-way strategic merge patches for built-in
// kinds; kubectl sends strategic merge patches for rollout restart / patch.
// Lists merged by key (the patchMergeKey of the Kubernetes types we serve); all other lists
// are replaced. `ports` is keyed by containerPort in containers and by port in Services.
const MERGE_KEYS: Record<string, string> = {
  containers: 'name', initContainers: 'name', ephemeralContainers: 'name', env: 'name', volumes: 'name',
  volumeMounts: 'mountPath', volumeDevices: 'devicePath', imagePullSecrets: 'name', hostAliases: 'ip',
  ownerReferences: 'uid', conditions: 'type', topologySpreadConstraints: 'topologyKey', ports: 'port',
};

function stripDirectives(v: any): any {
  if (Array.isArray(v)) return v.map(stripDirectives);
  if (!isObj(v)) return v;
  return Object.fromEntries(Object.entries(v).filter(([k]) => !k.startsWith('$')).map(([k, x]) => [k, stripDirectives(x)]));
}

function strategicMerge(target: any, patch: any): any {
  if (!isObj(patch)) return clone(patch);
  if (patch.$patch === 'replace') return stripDirectives(patch);
  const out: KubeObject = isObj(target) ? { ...target } : {};
  for (const [k, v] of Object.entries(patch)) {
    if (k.startsWith('$deleteFromPrimitiveList/')) {
      const field = k.slice('$deleteFromPrimitiveList/'.length);
      if (Array.isArray(out[field])) out[field] = out[field].filter((x: unknown) => !(v as unknown[]).includes(x));
    } else if (k.startsWith('$')) {
      continue; // $patch, $retainKeys, $setElementOrder/*: handled below or only about ordering
    } else if (v === null || (isObj(v) && v.$patch === 'delete')) {
      delete out[k];
    } else if (Array.isArray(v)) {
      out[k] = mergeList(k, out[k], v, patch[`$setElementOrder/${k}`]);
    } else {
      out[k] = isObj(v) ? strategicMerge(out[k], v) : v;
    }
  }
  if (Array.isArray(patch.$retainKeys)) for (const k of Object.keys(out)) if (!patch.$retainKeys.includes(k)) delete out[k];
  return out;
}

function mergeList(field: string, current: unknown, patch: any[], order?: KubeObject[]): unknown[] {
  if (patch.some((i) => isObj(i) && i.$patch === 'replace')) return stripDirectives(patch.filter((i) => !(isObj(i) && i.$patch === 'replace')));
  if (field === 'finalizers' && Array.isArray(current)) return [...new Set([...current, ...patch])];
  let key = MERGE_KEYS[field];
  const hints = [...patch, ...(order ?? [])];
  if (field === 'ports' && hints.some((i) => isObj(i) && 'containerPort' in i)) key = 'containerPort';
  if (!key || !Array.isArray(current) || patch.length === 0 || !patch.every(isObj)) return stripDirectives(patch);
  const out = current.map((x) => clone(x));
  for (const item of patch) {
    const i = out.findIndex((o) => isObj(o) && same(o[key], item[key]));
    if (item.$patch === 'delete') {
      if (i >= 0) out.splice(i, 1);
    } else if (i >= 0) out[i] = strategicMerge(out[i], item);
    else out.push(strategicMerge({}, item));
  }
  if (order) {
    const rank = (o: KubeObject) => {
      const r = order.findIndex((x) => same(x[key], o[key]));
      return r < 0 ? order.length : r;
    };
    out.sort((a, b) => rank(a) - rank(b)); // stable: unknown items keep their relative order
  }
  return out;
}

function mergePatch(target: any, patch: any): any {
  if (!isObj(patch)) return clone(patch);
  const out: KubeObject = isObj(target) ? { ...target } : {};
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else out[k] = mergePatch(out[k], v);
  }
  return out;
}

function jsonPatch(doc: KubeObject, ops: KubeObject[]): KubeObject {
  const root: KubeObject = { doc: clone(doc) };
  const locate = (pointer: string, mustExist: boolean): [any, string] => {
    const parts = ['doc', ...pointer.split('/').slice(1).map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'))];
    const last = parts.pop()!;
    const parent = parts.reduce((o: any, p) => o?.[p], root);
    if (!isObj(parent) && !Array.isArray(parent)) throw new ApiError(422, 'Invalid', `json patch: path ${pointer} does not exist`);
    if (mustExist && !(last in parent)) throw new ApiError(422, 'Invalid', `json patch: path ${pointer} does not exist`);
    return [parent, last];
  };
  const read = (pointer: string) => clone(((p, k) => p[k])(...locate(pointer, true)));
  const remove = (pointer: string) => {
    const [p, k] = locate(pointer, true);
    if (Array.isArray(p)) p.splice(Number(k), 1);
    else delete p[k];
  };
  const add = (pointer: string, value: unknown) => {
    const [p, k] = locate(pointer, false);
    if (Array.isArray(p)) p.splice(k === '-' ? p.length : Number(k), 0, value);
    else p[k] = value;
  };
  for (const op of ops) {
    if (op.op === 'add') add(op.path, clone(op.value));
    else if (op.op === 'remove') remove(op.path);
    else if (op.op === 'replace') (remove(op.path), add(op.path, clone(op.value)));
    else if (op.op === 'move') { const v = read(op.from); remove(op.from); add(op.path, v); }
    else if (op.op === 'copy') add(op.path, read(op.from));
    else if (op.op === 'test') { if (!same(read(op.path), op.value)) throw new ApiError(422, 'Invalid', `json patch: test failed at ${op.path}`); }
    else throw new ApiError(400, 'BadRequest', `json patch: unknown op ${op.op}`);
  }
  return root.doc;
}

// ---------------------------------------------------------------------------------
// Protobuf, just enough to read helm's release Secrets: the 4-byte magic "k8s\0", then a
// runtime.Unknown {1: typeMeta {1: apiVersion, 2: kind}, 2: raw} whose raw bytes are a
// core/v1 Secret {1: metadata, 2: data map<string,bytes>, 3: type, 4: stringData}.
type PbField = [number, bigint | Buffer];
function pbFields(buf: Buffer): PbField[] {
  const out: PbField[] = [];
  let i = 0;
  const varint = () => {
    let r = 0n;
    for (let shift = 0n; ; shift += 7n) {
      if (i >= buf.length) throw new ApiError(400, 'BadRequest', 'truncated protobuf');
      const b = buf[i++];
      r |= BigInt(b & 0x7f) << shift;
      if (!(b & 0x80)) return r;
    }
  };
  while (i < buf.length) {
    const tag = Number(varint());
    const wire = tag & 7;
    if (wire === 0) out.push([tag >>> 3, varint()]);
    else if (wire === 2) {
      const n = Number(varint());
      out.push([tag >>> 3, buf.subarray(i, i + n)]);
      i += n;
    } else if (wire === 1) i += 8;
    else if (wire === 5) i += 4;
    else throw new ApiError(400, 'BadRequest', `unsupported protobuf wire type ${wire}`);
  }
  return out;
}
const pbGet = (fields: PbField[], n: number) => (fields.find(([f]) => f === n)?.[1] as Buffer | undefined) ?? Buffer.alloc(0);
const pbString = (v: bigint | Buffer) => (Buffer.isBuffer(v) ? v.toString('utf8') : String(v));
const pbMapEntry = (v: bigint | Buffer): [string, Buffer] => [pbString(pbGet(pbFields(v as Buffer), 1)), pbGet(pbFields(v as Buffer), 2)];

function decodeSecretProtobuf(body: Buffer): KubeObject {
  if (body.subarray(0, 4).toString('latin1') !== 'k8s\0') throw new ApiError(400, 'BadRequest', 'protobuf body without k8s magic');
  const unknown = pbFields(body.subarray(4));
  const kind = pbString(pbGet(pbFields(pbGet(unknown, 1)), 2));
  if (kind !== 'Secret') throw new ApiError(415, 'UnsupportedMediaType', `protobuf is only supported for Secret, got ${kind}`);
  const secret: KubeObject = { apiVersion: 'v1', kind: 'Secret', metadata: {} };
  const metaNames: Record<number, string> = { 1: 'name', 2: 'generateName', 3: 'namespace', 6: 'resourceVersion' };
  const setEntry = (o: KubeObject, map: string, v: bigint | Buffer, encoding: BufferEncoding) => {
    const [k, val] = pbMapEntry(v);
    (o[map] ??= {})[k] = val.toString(encoding);
  };
  for (const [f, v] of pbFields(pbGet(unknown, 2))) {
    if (f === 1) {
      for (const [mf, mv] of pbFields(v as Buffer)) {
        if (metaNames[mf]) secret.metadata[metaNames[mf]] = pbString(mv);
        if (mf === 11 || mf === 12) setEntry(secret.metadata, mf === 11 ? 'labels' : 'annotations', mv, 'utf8');
      }
    } else if (f === 2) setEntry(secret, 'data', v, 'base64');
    else if (f === 3) secret.type = pbString(v);
    else if (f === 4) setEntry(secret, 'stringData', v, 'utf8');
  }
  return secret;
}

// ---------------------------------------------------------------------------------
// Helm release Secrets: data.release is base64(gzip(release JSON)), base64'd again by JSON.
function decodeRelease(secret: KubeObject): KubeObject {
  let raw = Buffer.from(Buffer.from(secret.data.release, 'base64').toString('utf8'), 'base64');
  if (raw[0] === 0x1f && raw[1] === 0x8b) raw = gunzipSync(raw);
  return JSON.parse(raw.toString('utf8'));
}
const encodeRelease = (release: KubeObject) =>
  Buffer.from(gzipSync(JSON.stringify(release)).toString('base64')).toString('base64');

// ---------------------------------------------------------------------------------
// kubectl get asks for Tables; these columns mimic the real server's printers.
type Column = [name: string, type: string, cell: (o: KubeObject) => unknown];
const nameCol: Column = ['Name', 'string', (o) => o.metadata.name];
const ageCol: Column = ['Age', 'string', (o) => age(o.metadata.creationTimestamp)];
const podStatus = (p: KubeObject) =>
  p.status?.containerStatuses?.find((c: KubeObject) => c.state?.waiting)?.state.waiting.reason ?? p.status?.phase ?? 'Unknown';
const COLUMNS: Record<string, Column[]> = {
  pods: [nameCol,
    ['Ready', 'string', (p) => `${(p.status?.containerStatuses ?? []).filter((c: KubeObject) => c.ready).length}/${p.spec?.containers?.length ?? 0}`],
    ['Status', 'string', podStatus], ['Restarts', 'string', () => '0'], ageCol],
  events: [['Last Seen', 'string', (e) => age(e.lastTimestamp)], ['Type', 'string', (e) => e.type], ['Reason', 'string', (e) => e.reason],
    ['Object', 'string', (e) => `${String(e.involvedObject?.kind).toLowerCase()}/${e.involvedObject?.name}`], ['Message', 'string', (e) => e.message]],
  deployments: [nameCol, ['Ready', 'string', (d) => `${d.status?.readyReplicas ?? 0}/${d.spec.replicas}`],
    ['Up-to-date', 'integer', (d) => d.status?.updatedReplicas ?? 0], ['Available', 'integer', (d) => d.status?.availableReplicas ?? 0], ageCol],
};
function toTable(t: ResourceType, items: KubeObject[], resourceVersion: string): KubeObject {
  const cols = COLUMNS[t.resource] ?? [nameCol, ageCol];
  return {
    kind: 'Table', apiVersion: 'meta.k8s.io/v1', metadata: { resourceVersion },
    columnDefinitions: cols.map(([name, type]) => ({ name, type, format: name === 'Name' ? 'name' : '', description: name, priority: 0 })),
    // kubectl --sort-by sorts on rows[].object, so always include the full object
    rows: items.map((o) => ({ cells: cols.map(([, , cell]) => cell(o)), object: o })),
  };
}

const templateHash = (template: unknown) => createHash('sha256').update(JSON.stringify(template)).digest('hex').slice(0, 10);
const controllerUid = (o: KubeObject) => o.metadata.ownerReferences?.find((r: KubeObject) => r.controller)?.uid;
const ownerRef = (o: KubeObject) =>
  ({ apiVersion: o.apiVersion, kind: o.kind, name: o.metadata.name, uid: o.metadata.uid, controller: true, blockOwnerDeletion: true });
const containerStatuses = (podSpec: KubeObject | undefined, state: KubeObject) =>
  (podSpec?.containers ?? []).map((c: KubeObject) => ({ name: c.name, image: c.image, ready: !!state.running, restartCount: 0, state }));
function maxUnavailable(d: KubeObject): number {
  const v = d.spec.strategy?.rollingUpdate?.maxUnavailable ?? '25%';
  return typeof v === 'string' && v.endsWith('%') ? Math.floor((d.spec.replicas * parseInt(v, 10)) / 100) : Number(v);
}

// ---------------------------------------------------------------------------------
export async function startKubeApi(opts: KubeApiOptions = {}): Promise<KubeApi> {
  const debug = !!process.env.KUBE_API_DEBUG; // logs every request to stderr
  const log = (line: string) => process.stderr.write(`[kube-api] ${line}\n`);
  const token = 'sim-token'; // written to the kubeconfig; see the auth note in the handler
  let readyDelayMs = opts.readyDelayMs ?? 500;
  let neverReady = opts.neverReady;
  const requests: RequestRecord[] = [];
  const store = new Map<string, KubeObject>(); // `${resource}/${namespace}/${name}`
  const history: Array<{ rv: number; resource: string; type: string; object: KubeObject }> = [];
  type Watcher = { resource: string; match: (o: KubeObject) => boolean; write: (type: string, o: KubeObject) => void; res: http.ServerResponse };
  const watchers = new Set<Watcher>();
  const timers = new Set<NodeJS.Timeout>();
  let resourceVersion = 0; // one global counter, as etcd's revision
  let nextIp = 10;

  const later = (ms: number, fn: () => void) => {
    const t = setTimeout(() => (timers.delete(t), fn()), ms);
    timers.add(t);
    return t;
  };
  const key = (t: ResourceType, ns: string | undefined, name: string) => `${t.resource}/${t.namespaced ? ns : ''}/${name}`;
  const find = (t: ResourceType, ns: string | undefined, name: string) => store.get(key(t, ns, name));
  const list = (t: ResourceType, ns?: string) =>
    [...store.values()].filter((o) => o.kind === t.kind && (!ns || o.metadata.namespace === ns));

  /** Every change goes through here: bumps the global resourceVersion and feeds watches. */
  function commit(t: ResourceType, type: 'ADDED' | 'MODIFIED' | 'DELETED', obj: KubeObject): KubeObject {
    obj.metadata.resourceVersion = String(++resourceVersion);
    const k = key(t, obj.metadata.namespace, obj.metadata.name);
    if (type === 'DELETED') store.delete(k);
    else store.set(k, obj);
    const event = { rv: resourceVersion, resource: t.resource, type, object: clone(obj) };
    history.push(event);
    for (const w of watchers) if (w.resource === t.resource && w.match(obj)) w.write(type, event.object);
    return obj;
  }

  /** Defaults and server-owned fields, on create (no `old`) and on update. */
  function prepare(t: ResourceType, obj: KubeObject, old?: KubeObject): KubeObject {
    obj.apiVersion = gvOf(t);
    obj.kind = t.kind;
    const meta = obj.metadata;
    meta.uid = old?.metadata.uid ?? randomUUID();
    meta.creationTimestamp = old?.metadata.creationTimestamp ?? now();
    if (!t.namespaced) delete meta.namespace;
    if (old && ['deployments', 'replicasets', 'pods'].includes(t.resource)) obj.status = old.status; // status is a subresource
    switch (t.resource) {
      case 'namespaces':
        meta.labels = { ...meta.labels, 'kubernetes.io/metadata.name': meta.name };
        obj.spec = { finalizers: ['kubernetes'] };
        obj.status = { phase: 'Active' };
        break;
      case 'secrets':
        obj.type ??= 'Opaque';
        for (const [k, v] of Object.entries(obj.stringData ?? {})) (obj.data ??= {})[k] = Buffer.from(String(v)).toString('base64');
        delete obj.stringData;
        break;
      case 'deployments': {
        const s = (obj.spec ??= {});
        s.replicas ??= 1;
        s.strategy ??= { type: 'RollingUpdate' };
        // helm's readiness check dereferences strategy.rollingUpdate
        if (s.strategy.type === 'RollingUpdate') s.strategy.rollingUpdate = { maxUnavailable: '25%', maxSurge: '25%', ...s.strategy.rollingUpdate };
        s.revisionHistoryLimit ??= 10;
        s.progressDeadlineSeconds ??= 600;
        obj.status ??= {};
        break;
      }
      case 'services': {
        const s = (obj.spec ??= {});
        s.type ??= 'ClusterIP';
        s.sessionAffinity ??= 'None';
        for (const p of s.ports ?? []) Object.assign(p, { protocol: p.protocol ?? 'TCP', targetPort: p.targetPort ?? p.port });
        // a Service keeps its allocated IP across updates (helm --wait needs it non-empty)
        if (s.type !== 'ExternalName' && !s.clusterIP) s.clusterIP = old?.spec.clusterIP || `10.96.0.${nextIp++}`;
        if (s.clusterIP) s.clusterIPs = [s.clusterIP];
        break;
      }
    }
    // generation counts spec changes only (after defaulting); status writes don't bump it
    if (obj.spec !== undefined) meta.generation = !old ? 1 : same(old.spec, obj.spec) ? old.metadata.generation : (old.metadata.generation ?? 1) + 1;
    return obj;
  }

  function ensureNamespace(t: ResourceType, ns: string | undefined, create: boolean) {
    if (!t.namespaced || find(TYPES[0], undefined, ns!)) return;
    if (!create) throw new ApiError(404, 'NotFound', `namespaces "${ns}" not found`, { name: ns, kind: 'namespaces' });
    commit(TYPES[0], 'ADDED', prepare(TYPES[0], { metadata: { name: ns } }));
  }

  function create(t: ResourceType, ns: string | undefined, obj: KubeObject): KubeObject {
    obj.metadata ??= {};
    if (!obj.metadata.name) throw new ApiError(422, 'Invalid', `${t.kind} is invalid: metadata.name: Required value`);
    if (t.namespaced) obj.metadata.namespace = ns;
    ensureNamespace(t, ns, false);
    const name = obj.metadata.name;
    if (find(t, ns, name)) throw new ApiError(409, 'AlreadyExists', `${t.resource} "${name}" already exists`, { name, kind: t.resource });
    const created = clone(commit(t, 'ADDED', prepare(t, obj)));
    afterWrite(t, created);
    return created;
  }

  function update(t: ResourceType, ns: string | undefined, name: string, obj: KubeObject): KubeObject {
    const old = find(t, ns, name);
    if (!old) throw notFound(t, name);
    const rv = obj.metadata?.resourceVersion;
    if (rv && rv !== old.metadata.resourceVersion) {
      const message = `Operation cannot be fulfilled on ${t.resource} "${name}": the object has been modified; please apply your changes to the latest version and try again`;
      throw new ApiError(409, 'Conflict', message, { name, kind: t.resource });
    }
    obj.metadata = { ...obj.metadata, name, ...(t.namespaced ? { namespace: ns } : {}) };
    const updated = clone(commit(t, 'MODIFIED', prepare(t, obj, old)));
    afterWrite(t, updated);
    return updated;
  }

  function remove(t: ResourceType, ns: string | undefined, name: string, cascade = true): KubeObject {
    const obj = find(t, ns, name);
    if (!obj) throw notFound(t, name);
    commit(t, 'DELETED', obj);
    // garbage collection: dependents go too (background propagation), and a namespace's contents
    for (const dep of [...store.values()]) {
      const owned = dep.metadata.ownerReferences?.some((r: KubeObject) => r.uid === obj.metadata.uid);
      const depType = TYPES.find((x) => x.kind === dep.kind)!;
      const inNamespace = t.resource === 'namespaces' && dep.metadata.namespace === name;
      if (((cascade && owned) || inNamespace) && find(depType, dep.metadata.namespace, dep.metadata.name)) {
        remove(depType, dep.metadata.namespace, dep.metadata.name, cascade);
      }
    }
    return obj;
  }

  function afterWrite(t: ResourceType, obj: KubeObject) {
    if (t.resource === 'deployments') reconcileDeployment(obj.metadata.namespace, obj.metadata.name);
  }

  // --- events -------------------------------------------------------------------
  function emitEvent(involved: KubeObject, type: 'Normal' | 'Warning', reason: string, message: string, component: string) {
    const t = typeByResource('events')!;
    const ns = involved.metadata.namespace;
    const ts = now();
    const existing = list(t, ns).find((e) => e.involvedObject.uid === involved.metadata.uid && e.reason === reason && e.message === message);
    if (existing) {
      // the real event recorder aggregates repeats by bumping count
      commit(t, 'MODIFIED', { ...clone(existing), count: existing.count + 1, lastTimestamp: ts });
      return;
    }
    commit(t, 'ADDED', prepare(t, {
      metadata: { name: `${involved.metadata.name}.${randomBytes(8).toString('hex')}`, namespace: ns },
      involvedObject: {
        apiVersion: involved.apiVersion, kind: involved.kind, name: involved.metadata.name, namespace: ns,
        uid: involved.metadata.uid, resourceVersion: involved.metadata.resourceVersion,
      },
      reason, message, type, source: { component }, firstTimestamp: ts, lastTimestamp: ts, count: 1,
      reportingComponent: component, reportingInstance: '',
    }));
  }

  // --- the toy deployment controller -----------------------------------------------
  const RS = typeByResource('replicasets')!;
  const POD = typeByResource('pods')!;
  const DEPLOY = typeByResource('deployments')!;
  const ownedBy = (t: ResourceType, owner: KubeObject) =>
    list(t, owner.metadata.namespace).filter((o) => controllerUid(o) === owner.metadata.uid);

  function reconcileDeployment(ns: string, name: string) {
    const dep = find(DEPLOY, ns, name);
    if (!dep) return;
    const hash = templateHash(dep.spec.template);
    const replicaSets = ownedBy(RS, dep);
    let current = replicaSets.find((rs) => rs.metadata.labels?.['pod-template-hash'] === hash);
    const replicas = dep.spec.replicas;
    if (!current) {
      const template = clone(dep.spec.template ?? {});
      template.metadata = { ...template.metadata, labels: { ...template.metadata?.labels, 'pod-template-hash': hash } };
      current = commit(RS, 'ADDED', prepare(RS, {
        metadata: {
          name: `${name}-${hash}`, namespace: ns, labels: template.metadata.labels, ownerReferences: [ownerRef(dep)],
          annotations: { 'deployment.kubernetes.io/revision': String(replicaSets.length + 1) },
        },
        // helm finds "the new ReplicaSet" by comparing this template with the Deployment's, minus the hash
        spec: { replicas, selector: { ...dep.spec.selector, matchLabels: { ...dep.spec.selector?.matchLabels, 'pod-template-hash': hash } }, template },
        status: { replicas: 0, observedGeneration: 1 },
      }));
      emitEvent(dep, 'Normal', 'ScalingReplicaSet', `Scaled up replica set ${current.metadata.name} from 0 to ${replicas}`, 'deployment-controller');
    } else if (current.spec.replicas !== replicas) {
      const from = current.spec.replicas;
      current = commit(RS, 'MODIFIED', { ...clone(current), spec: { ...current.spec, replicas } });
      const message = `Scaled ${replicas > from ? 'up' : 'down'} replica set ${current.metadata.name} from ${from} to ${replicas}`;
      emitEvent(dep, 'Normal', 'ScalingReplicaSet', message, 'deployment-controller');
    }
    for (const old of replicaSets) {
      if (old.metadata.uid === current.metadata.uid || old.spec.replicas === 0) continue;
      commit(RS, 'MODIFIED', { ...clone(old), spec: { ...old.spec, replicas: 0 } });
      emitEvent(dep, 'Normal', 'ScalingReplicaSet', `Scaled down replica set ${old.metadata.name} from ${old.spec.replicas} to 0`, 'deployment-controller');
      syncPods(ns, old.metadata.name);
    }
    syncPods(ns, current.metadata.name);
    updateDeploymentStatus(ns, name);
  }

  function syncPods(ns: string, rsName: string) {
    const rs = find(RS, ns, rsName);
    if (!rs) return;
    const pods = ownedBy(POD, rs);
    for (const extra of pods.slice(rs.spec.replicas)) remove(POD, ns, extra.metadata.name);
    for (let i = pods.length; i < rs.spec.replicas; i++) {
      const pod = commit(POD, 'ADDED', prepare(POD, {
        metadata: {
          name: `${rsName}-${randomBytes(3).toString('hex').slice(0, 5)}`, namespace: ns,
          labels: rs.spec.template?.metadata?.labels, ownerReferences: [ownerRef(rs)],
        },
        spec: { ...clone(rs.spec.template?.spec), nodeName: 'sim-node' },
        status: {
          phase: 'Pending', conditions: [{ type: 'Ready', status: 'False' }],
          containerStatuses: containerStatuses(rs.spec.template?.spec, { waiting: { reason: 'ContainerCreating' } }),
        },
      }));
      emitEvent(rs, 'Normal', 'SuccessfulCreate', `Created pod: ${pod.metadata.name}`, 'replicaset-controller');
      emitEvent(pod, 'Normal', 'Scheduled', `Successfully assigned ${ns}/${pod.metadata.name} to sim-node`, 'default-scheduler');
      later(readyDelayMs, () => podTick(ns, pod.metadata.name));
    }
    updateReplicaSetStatus(ns, rsName);
  }

  /** A pod's kubelet, once per readyDelayMs: becomes ready, or keeps failing if neverReady. */
  function podTick(ns: string, podName: string) {
    const pod = find(POD, ns, podName);
    if (!pod) return;
    const rs = find(RS, ns, pod.metadata.ownerReferences[0].name);
    const depName = rs?.metadata.ownerReferences?.[0]?.name ?? '';
    const containers: KubeObject[] = pod.spec.containers ?? [];
    if (neverReady?.(depName)) {
      const status = { ...pod.status, containerStatuses: containerStatuses(pod.spec, { waiting: { reason: 'ImagePullBackOff' } }) };
      if (!same(status, pod.status)) commit(POD, 'MODIFIED', { ...clone(pod), status });
      for (const c of containers) {
        emitEvent(pod, 'Warning', 'Failed', `Failed to pull image "${c.image}": simulated pull failure`, 'kubelet');
        emitEvent(pod, 'Warning', 'BackOff', `Back-off pulling image "${c.image}"`, 'kubelet');
      }
      later(Math.max(readyDelayMs, 1000), () => podTick(ns, podName)); // retries, so setNeverReady(undefined) heals it
      return;
    }
    for (const c of containers) emitEvent(pod, 'Normal', 'Started', `Started container ${c.name}`, 'kubelet');
    commit(POD, 'MODIFIED', {
      ...clone(pod),
      status: {
        phase: 'Running', startTime: now(), conditions: [{ type: 'Ready', status: 'True' }],
        containerStatuses: containerStatuses(pod.spec, { running: { startedAt: now() } }),
      },
    });
    if (rs) {
      updateReplicaSetStatus(ns, rs.metadata.name);
      if (depName) updateDeploymentStatus(ns, depName);
    }
  }

  function updateReplicaSetStatus(ns: string, name: string) {
    const rs = find(RS, ns, name);
    if (!rs) return;
    const pods = ownedBy(POD, rs);
    const ready = pods.filter((p) => p.status?.phase === 'Running').length;
    const n = pods.length;
    const status = { replicas: n, fullyLabeledReplicas: n, readyReplicas: ready, availableReplicas: ready, observedGeneration: rs.metadata.generation };
    if (!same(status, rs.status)) commit(RS, 'MODIFIED', { ...clone(rs), status });
  }

  function updateDeploymentStatus(ns: string, name: string) {
    const dep = find(DEPLOY, ns, name);
    if (!dep) return;
    const hash = templateHash(dep.spec.template);
    const sets = ownedBy(RS, dep);
    const sum = (f: string, only = sets) => only.reduce((n, rs) => n + (rs.status?.[f] ?? 0), 0);
    const updated = sum('replicas', sets.filter((rs) => rs.metadata.labels?.['pod-template-hash'] === hash));
    const available = sum('availableReplicas');
    const replicas = dep.spec.replicas;
    const condition = (type: string, status: string, reason: string, message: string) => {
      const p = dep.status?.conditions?.find((c: KubeObject) => c.type === type); // keep timestamps while unchanged
      const ts = p?.status === status && p.reason === reason ? p.lastUpdateTime : now();
      return { type, status, lastUpdateTime: ts, lastTransitionTime: ts, reason, message };
    };
    const done = updated === replicas && available >= replicas;
    const status: KubeObject = {
      observedGeneration: dep.metadata.generation, replicas: sum('replicas'), updatedReplicas: updated,
      readyReplicas: sum('readyReplicas'), availableReplicas: available, unavailableReplicas: Math.max(0, replicas - available),
      conditions: [
        available >= replicas - maxUnavailable(dep)
          ? condition('Available', 'True', 'MinimumReplicasAvailable', 'Deployment has minimum availability.')
          : condition('Available', 'False', 'MinimumReplicasUnavailable', 'Deployment does not have minimum availability.'),
        condition('Progressing', 'True', done ? 'NewReplicaSetAvailable' : 'ReplicaSetUpdated',
          `ReplicaSet "${name}-${hash}" ${done ? 'has successfully progressed' : 'is progressing'}.`),
      ],
    };
    for (const f of ['readyReplicas', 'availableReplicas', 'unavailableReplicas']) if (!status[f]) delete status[f]; // omitempty
    if (!same(status, dep.status)) commit(DEPLOY, 'MODIFIED', { ...clone(dep), status });
  }

  // --- HTTP -----------------------------------------------------------------------
  const send = (res: http.ServerResponse, code: number, body: unknown) => {
    res.writeHead(code, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify(body));
  };
  const statusBody = (e: ApiError) =>
    ({ kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message: e.message, reason: e.reason, details: e.details, code: e.code });

  function discovery(path: string, host: string): unknown {
    if (path === '/version') {
      return { major: '1', minor: '32', gitVersion: 'v1.32.0-sim', gitCommit: 'sim', gitTreeState: 'clean', platform: 'linux/amd64' };
    }
    if (path === '/api') return { kind: 'APIVersions', versions: ['v1'], serverAddressByClientCIDRs: [{ clientCIDR: '0.0.0.0/0', serverAddress: host }] };
    const groups = [...new Set(TYPES.filter((t) => t.group).map((t) => t.group))].map((name) => {
      const versions = [...new Set(TYPES.filter((t) => t.group === name).map((t) => t.version))]
        .map((version) => ({ groupVersion: `${name}/${version}`, version }));
      return { name, versions, preferredVersion: versions[0] };
    });
    if (path === '/apis') return { kind: 'APIGroupList', apiVersion: 'v1', groups };
    const group = groups.find((g) => path === `/apis/${g.name}`);
    if (group) return { kind: 'APIGroup', apiVersion: 'v1', ...group };
    const gv = GROUP_VERSIONS.find((v) => path === `/${gvPath(v)}`);
    if (gv) {
      return {
        kind: 'APIResourceList', apiVersion: 'v1', groupVersion: gv,
        resources: TYPES.filter((t) => gvOf(t) === gv).map((t) => ({
          name: t.resource, singularName: t.kind.toLowerCase(), namespaced: t.namespaced, kind: t.kind,
          verbs: ['create', 'delete', 'deletecollection', 'get', 'list', 'patch', 'update', 'watch'],
          shortNames: t.shortNames, ...(t.all ? { categories: ['all'] } : {}),
        })),
      };
    }
    // OpenAPI v3: helm downloads it to decide between client-side schema validation (which
    // would need the full schema) and server-side validation; these documents say
    // "the server supports ?fieldValidation" for every kind, so helm validates nothing.
    if (path === '/openapi/v3') {
      return { paths: Object.fromEntries(GROUP_VERSIONS.map((v) => [gvPath(v), { serverRelativeURL: `/openapi/v3/${gvPath(v)}?hash=SIM` }])) };
    }
    const doc = GROUP_VERSIONS.find((v) => path === `/openapi/v3/${gvPath(v)}`);
    if (doc) {
      const paths: KubeObject = {};
      for (const t of TYPES.filter((x) => gvOf(x) === doc)) {
        paths[`/${gvPath(doc)}${t.namespaced ? '/namespaces/{namespace}' : ''}/${t.resource}/{name}`] = {
          patch: {
            'x-kubernetes-group-version-kind': { group: t.group, version: t.version, kind: t.kind },
            parameters: [{ name: 'fieldValidation', in: 'query', schema: { type: 'string', uniqueItems: true } }],
            responses: { 200: { description: 'OK' } },
          },
        };
      }
      return { openapi: '3.0.0', info: { title: 'Kubernetes (simulated)', version: 'v1.32.0' }, paths, components: { schemas: {} } };
    }
    return undefined;
  }

  function parseBody(t: ResourceType, req: http.IncomingMessage, body: Buffer): KubeObject {
    const type = (req.headers['content-type'] ?? 'application/json').split(';')[0].trim();
    if (type === 'application/vnd.kubernetes.protobuf') {
      if (t.resource !== 'secrets') throw new ApiError(415, 'UnsupportedMediaType', `protobuf is only supported for secrets, not ${t.resource}`);
      return decodeSecretProtobuf(body);
    }
    if (type.endsWith('json') || type === '') {
      try {
        return JSON.parse(body.toString('utf8') || '{}');
      } catch (e) {
        throw new ApiError(400, 'BadRequest', `invalid JSON body: ${(e as Error).message}`);
      }
    }
    throw unsupported(type, 'application/json, application/vnd.kubernetes.protobuf (Secret only)');
  }

  function watch(t: ResourceType, ns: string | undefined, name: string | undefined, q: URLSearchParams, res: http.ServerResponse, table: boolean) {
    const fields = fieldMatcher(q.get('fieldSelector'));
    const labels = labelMatcher(q.get('labelSelector'));
    const match = (o: KubeObject) => (!ns || o.metadata.namespace === ns) && (!name || o.metadata.name === name) && fields(o) && labels(o.metadata.labels);
    res.writeHead(200, { 'Content-Type': 'application/json', 'Cache-Control': 'no-cache' });
    res.flushHeaders(); // without this, kubectl rollout status hangs after success until timeoutSeconds
    const from = Number(q.get('resourceVersion') || 0);
    const write = (type: string, obj: KubeObject) => // `kubectl get -w` wants each object as a one-row Table
      res.write(`${JSON.stringify({ type, object: table ? toTable(t, [obj], obj.metadata.resourceVersion) : obj })}\n`);
    if (!from) for (const o of list(t, ns).filter(match)) write('ADDED', o);
    else for (const e of history) if (e.rv > from && e.resource === t.resource && match(e.object)) write(e.type, e.object);
    const watcher = { resource: t.resource, match, write, res };
    watchers.add(watcher);
    const timeout = Number(q.get('timeoutSeconds') || 0);
    const timer = timeout ? later(timeout * 1000, () => res.end()) : undefined;
    res.on('close', () => {
      watchers.delete(watcher);
      if (timer) (clearTimeout(timer), timers.delete(timer));
    });
  }

  function serveResource(req: http.IncomingMessage, res: http.ServerResponse, url: URL, body: Buffer): boolean {
    const m = url.pathname.match(/^\/(?:api\/(v1)|apis\/([^/]+)\/([^/]+))\/(.*)$/);
    if (!m) return false;
    const [group, version] = m[1] ? ['', 'v1'] : [m[2], m[3]];
    const seg = m[4].split('/').filter(Boolean);
    let ns: string | undefined;
    if (seg[0] === 'namespaces' && seg.length >= 3) {
      ns = seg[1];
      seg.splice(0, 2);
    }
    const [resource, name, sub] = seg;
    const t = TYPES.find((x) => x.group === group && x.version === version && x.resource === resource);
    if (!t || sub || (ns && !t.namespaced)) throw new ApiError(404, 'NotFound', 'the server could not find the requested resource');
    const q = url.searchParams;
    const method = req.method ?? 'GET';
    const wantsTable = /as=Table/.test(req.headers.accept ?? '');
    if (method === 'GET' && ['true', '1'].includes(q.get('watch') ?? '')) {
      watch(t, ns, name, q, res, wantsTable);
    } else if (method === 'GET' && name) {
      send(res, 200, find(t, ns, name) ?? throwError(notFound(t, name)));
    } else if (method === 'GET') {
      const fields = fieldMatcher(q.get('fieldSelector'));
      const labels = labelMatcher(q.get('labelSelector'));
      const items = list(t, ns).filter((o) => fields(o) && labels(o.metadata.labels)).sort((a, b) => a.metadata.name.localeCompare(b.metadata.name));
      const rv = String(resourceVersion);
      if (wantsTable) send(res, 200, toTable(t, items, rv));
      else send(res, 200, { kind: `${t.kind}List`, apiVersion: gvOf(t), metadata: { resourceVersion: rv }, items });
    } else if (method === 'POST' && !name) {
      send(res, 201, create(t, ns, parseBody(t, req, body)));
    } else if (method === 'PUT' && name) {
      send(res, 200, update(t, ns, name, parseBody(t, req, body)));
    } else if (method === 'PATCH' && name) {
      const current = clone(find(t, ns, name)); // patches below must not touch the stored object
      if (!current) throw notFound(t, name);
      const type = (req.headers['content-type'] ?? '').split(';')[0].trim();
      const patch = parseBody(t, req, body);
      let patched: KubeObject;
      if (type === 'application/strategic-merge-patch+json') patched = strategicMerge(current, patch);
      else if (type === 'application/merge-patch+json') patched = mergePatch(current, patch);
      else if (type === 'application/json-patch+json') patched = jsonPatch(current, patch as unknown as KubeObject[]);
      else throw unsupported(type, 'application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (no apply)');
      // only a resourceVersion the patch itself sets is a precondition
      if (patch.metadata?.resourceVersion === undefined) patched.metadata.resourceVersion = '';
      send(res, 200, update(t, ns, name, patched));
    } else if (method === 'DELETE' && name) {
      let options: KubeObject = {};
      try { options = body.length ? JSON.parse(body.toString('utf8')) : {}; } catch { /* no options */ }
      const policy = options.propagationPolicy ?? q.get('propagationPolicy');
      const obj = remove(t, ns, name, policy !== 'Orphan');
      const details = { name, group: t.group, kind: t.resource, uid: obj.metadata.uid };
      send(res, 200, { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Success', details });
    } else {
      throw new ApiError(405, 'MethodNotAllowed', `${method} is not supported on ${url.pathname}`);
    }
    return true;
  }

  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url ?? '/', 'http://localhost');
    const record: RequestRecord = { method: req.method ?? 'GET', path: url.pathname, query: url.search };
    requests.push(record);
    res.on('close', () => { // 'close', not 'finish': watches end when the client hangs up
      record.status = res.statusCode;
      const { accept = '-', 'content-type': type = '-' } = req.headers;
      if (debug) log(`${record.method} ${url.pathname}${url.search} -> ${res.statusCode} (${type}; accept ${accept})`);
    });
    try {
      // client-go never sends credentials over plain http (kubernetes/kubectl#744), so the
      // token in the kubeconfig is decorative; only a wrong one is refused.
      const auth = req.headers.authorization;
      if (auth && auth !== `Bearer ${token}`) throw new ApiError(401, 'Unauthorized', 'Unauthorized');
      const chunks: Buffer[] = [];
      for await (const chunk of req) chunks.push(chunk);
      const body = Buffer.concat(chunks);
      if (debug && body.length && !req.headers['content-type']?.includes('protobuf')) log(`  body ${body.toString('utf8').slice(0, 2000)}`);
      if (req.method === 'GET') {
        const doc = discovery(url.pathname, req.headers.host ?? '');
        if (doc) return send(res, 200, doc);
      }
      if (!serveResource(req, res, url, body)) throw new ApiError(404, 'NotFound', 'the server could not find the requested resource');
    } catch (e) {
      const err = e instanceof ApiError ? e : new ApiError(500, 'InternalError', `simulated API server bug: ${(e as Error).stack ?? e}`);
      if (debug) log(`  ${err.code} ${err.message}`);
      if (!res.headersSent) send(res, err.code, statusBody(err));
      else res.end();
    }
  });

  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  for (const name of ['default', 'kube-system', 'kube-public']) commit(TYPES[0], 'ADDED', prepare(TYPES[0], { metadata: { name } }));

  const typeOf = (resource: string) => {
    const t = typeByResource(resource);
    if (!t) throw new Error(`kube-api: unknown resource ${resource} (known: ${TYPES.map((x) => x.resource).join(', ')})`);
    return t;
  };
  const helmReleases = (name: string, namespace: string) =>
    list(typeOf('secrets'), namespace)
      .filter((s) => s.type === 'helm.sh/release.v1' && s.metadata.labels?.name === name && s.metadata.labels?.owner === 'helm')
      .map(decodeRelease)
      .sort((a, b) => a.version - b.version);

  const api: KubeApi = {
    url,
    token,
    requests,
    async close() {
      for (const t of timers) clearTimeout(t);
      timers.clear();
      for (const w of watchers) w.res.end();
      watchers.clear();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
    async writeKubeconfig(path, o = {}) {
      const yaml = [
        'apiVersion: v1', 'kind: Config', 'preferences: {}',
        'clusters:', '- name: sim', '  cluster:', `    server: ${url}`,
        'users:', '- name: sim', '  user:', `    token: ${token}`,
        'contexts:', '- name: sim', '  context:', '    cluster: sim', '    user: sim', `    namespace: ${o.namespace ?? 'default'}`,
        'current-context: sim', '',
      ].join('\n');
      await writeFile(path, yaml, { mode: 0o600 }); // helm warns about group-readable kubeconfigs
    },
    get: (resource, namespace, name) => clone(find(typeOf(resource), namespace, name)),
    list: (resource, namespace) => list(typeOf(resource), namespace).map((o) => clone(o)),
    put(obj) {
      const t = TYPES.find((x) => x.kind === obj.kind && gvOf(x) === obj.apiVersion);
      if (!t) throw new Error(`kube-api: unsupported kind ${obj.apiVersion} ${obj.kind}`);
      const o = clone(obj);
      const ns = t.namespaced ? (o.metadata.namespace ?? 'default') : undefined;
      ensureNamespace(t, ns, true);
      return find(t, ns, o.metadata.name) ? update(t, ns, o.metadata.name, o) : create(t, ns, o);
    },
    remove(resource, namespace, name) {
      const t = typeOf(resource);
      if (!find(t, namespace, name)) return false;
      remove(t, namespace, name);
      return true;
    },
    seedHelmRelease({ name, namespace, status, version, description }) {
      const previous = helmReleases(name, namespace).at(-1);
      const ts = new Date().toISOString();
      const release: KubeObject = previous ? clone(previous) : {
        name, namespace, config: {}, manifest: '',
        chart: { metadata: { apiVersion: 'v2', name: 'seeded', version: '0.0.0' }, lock: null, templates: [], values: {}, schema: null, files: [] },
        info: { first_deployed: ts },
      };
      release.version = version ?? (previous?.version ?? 0) + 1;
      release.info = { ...release.info, last_deployed: ts, deleted: '', status, description: description ?? 'Preparing upgrade' };
      return api.put({
        apiVersion: 'v1', kind: 'Secret', type: 'helm.sh/release.v1',
        metadata: {
          name: `sh.helm.release.v1.${name}.v${release.version}`, namespace,
          labels: { name, owner: 'helm', status, version: String(release.version), createdAt: String(Math.floor(Date.now() / 1000)) },
        },
        data: { release: encodeRelease(release) },
      });
    },
    helmReleases: (name, namespace) => helmReleases(name, namespace),
    setNeverReady(fn) { neverReady = fn; },
    setReadyDelay(ms) { readyDelayMs = ms; },
  };
  return api;
}
