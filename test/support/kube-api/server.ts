// The HTTP side: routing (discovery first, then one table of verbs on resources), the request
// log, watches, and `startKubeApi`, which wires store, controllers and server together and
// hands tests the `KubeApi` handle.
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { writeFile } from 'node:fs/promises'
import YAML from 'yaml'
import { Controllers, type ControllerOptions, type NeverReady } from './controllers.ts'
import { decodeRelease, isRelease, releaseSecret, type HelmRelease, type SeedReleaseOptions } from './helm.ts'
import { ApiError, clone, isObj, type Kinds, type KubeObject, type Resource } from './objects.ts'
import { PATCHES } from './patch.ts'
import { decodeSecretProtobuf } from './protobuf.ts'
import { discovery, gvOf, notFound, parsePath, typeOfKind, type ResourceType } from './resources.ts'
import { queryMatcher } from './selectors.ts'
import { Store } from './store.ts'
import { toTable } from './tables.ts'

export interface KubeApiOptions extends ControllerOptions {
  /** The Kubernetes version /version reports, `major.minor` (default 1.32). */
  kubernetesVersion?: string
}

/** The methods that change state. */
export const WRITE_METHODS = ['POST', 'PUT', 'PATCH', 'DELETE']

export interface RequestRecord {
  method: string
  path: string
  /** The raw query string, with its leading `?` (empty when none). */
  query: string
  params: URLSearchParams
  /** The body's media type, e.g. `application/apply-patch+yaml` (empty when none). */
  contentType: string
  /** A write verb (POST, PUT, PATCH, DELETE). */
  write: boolean
  /** A server-side dry run (`?dryRun=All`, or in a DELETE's options): answered, nothing stored. Set once the body is read. */
  dryRun: boolean
  /** Filled in when the response ends. */
  status?: number
}

export interface KubeApi {
  url: string
  token: string
  /** Every request received, in order. */
  requests: RequestRecord[]
  /** The requests that changed state (write verbs, dry runs excluded), from index `from` of `requests`. */
  writes(from?: number): RequestRecord[]
  close(): Promise<void>
  /** Writes a kubeconfig (mode 0600) with one cluster/user/context, set as current. */
  writeKubeconfig(path: string, opts?: { namespace?: string }): Promise<void>
  /** Stored object (deep copy) by plural resource name, e.g. get('deployments', 'ns', 'web'). */
  get<R extends Resource>(resource: R, namespace: string | undefined, name: string): Kinds[R] | undefined
  list<R extends Resource>(resource: R, namespace?: string): Kinds[R][]
  /** Creates or replaces an object (by apiVersion/kind), with defaults and controllers; creates its namespace if needed. */
  put<T extends KubeObject>(obj: T): T
  remove(resource: Resource, namespace: string | undefined, name: string): boolean
  /** Stores a helm release Secret, copying the latest stored revision of that release if any. */
  seedHelmRelease(opts: SeedReleaseOptions): KubeObject
  /** Decoded helm releases (the JSON helm stores), sorted by revision. */
  helmReleases(name: string, namespace: string): HelmRelease[]
  /** Pods of deployments for which `fn` returns true stop becoming ready (undefined: all heal). */
  setNeverReady(fn: NeverReady | undefined): void
  setReadyDelay(ms: number): void
}

/** One request, parsed. */
interface Call {
  req: http.IncomingMessage
  res: http.ServerResponse
  url: URL
  body: Buffer
  type: ResourceType
  namespace?: string
  name?: string
  q: URLSearchParams
  dryRun: boolean
  wantsTable: boolean
  /** The field manager of a write: `?fieldManager`, else the client's name from its User-Agent, as the API server does. */
  manager: string
}

const send = (res: http.ServerResponse, code: number, body: unknown) => {
  res.writeHead(code, { 'Content-Type': 'application/json' })
  res.end(JSON.stringify(body))
}
const statusBody = (e: ApiError) =>
  ({ kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message: e.message, reason: e.reason, details: e.details, code: e.code })
const unsupported = (type: string, accepted: string) =>
  new ApiError(415, 'UnsupportedMediaType', `the body of the request was in an unknown format - accepted media types include: ${accepted}; got ${type}`)
const contentType = (req: http.IncomingMessage) => (req.headers['content-type'] ?? '').split(';')[0].trim()

function parseJson(body: Buffer): unknown {
  try {
    return JSON.parse(body.toString('utf8') || '{}')
  } catch (e) {
    throw new ApiError(400, 'BadRequest', `invalid JSON body: ${(e as Error).message}`)
  }
}

function parseBody(c: Call): unknown {
  const type = contentType(c.req)
  if (type === 'application/vnd.kubernetes.protobuf') {
    if (c.type.resource !== 'secrets') throw new ApiError(415, 'UnsupportedMediaType', `protobuf is only supported for secrets, not ${c.type.resource}`)
    return decodeSecretProtobuf(c.body)
  }
  if (type.endsWith('json') || type === '') return parseJson(c.body)
  throw unsupported(type, 'application/json, application/vnd.kubernetes.protobuf (Secret only)')
}

function objectBody(c: Call, obj = parseBody(c)): KubeObject {
  if (!isObj(obj)) throw new ApiError(400, 'BadRequest', 'the body is not an object')
  return { ...obj, metadata: isObj(obj.metadata) ? { name: '', ...obj.metadata } : { name: '' } }
}

/** A server-side apply's configuration: YAML (JSON is YAML too). */
function applyBody(c: Call): KubeObject {
  try {
    return objectBody(c, YAML.parse(c.body.toString('utf8') || '{}'))
  } catch (e) {
    if (e instanceof ApiError) throw e
    throw new ApiError(400, 'BadRequest', `error decoding YAML: ${(e as Error).message}`)
  }
}

const APPLY = 'application/apply-patch+yaml'

/** Server-side apply: PATCH with the apply content type creates or updates the object (apply.ts). */
function serverSideApply(c: Call, store: Store) {
  const manager = c.q.get('fieldManager')
  if (!manager) throw new ApiError(422, 'Invalid', 'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required for apply patch')
  const existed = !!store.find(c.type.resource, c.namespace, c.name!)
  const obj = store.apply(c.type.resource, c.namespace, c.name!, applyBody(c), { manager, force: c.q.get('force') === 'true', dryRun: c.dryRun })
  send(c.res, existed ? 200 : 201, obj)
}

/**
 * The end of a watch-list's initial events (`sendInitialEvents=true`): a BOOKMARK whose object
 * carries only the resourceVersion and the annotation clients wait for.
 */
const initialEventsEnd = (t: ResourceType, resourceVersion: number) => ({
  kind: t.kind, apiVersion: gvOf(t),
  metadata: { resourceVersion: String(resourceVersion), annotations: { 'k8s.io/initial-events-end': 'true' } },
})

/** The verbs on resources, by `METHOD item|collection`; a watch is a GET with ?watch=true. */
type Verb = (c: Call, store: Store, watches: Set<http.ServerResponse>) => void

const VERBS: Record<string, Verb> = {
  'GET item'(c, store) {
    send(c.res, 200, store.find(c.type.resource, c.namespace, c.name!) ?? throwError(notFound(c.type, c.name!)))
  },
  'GET collection'(c, store) {
    const match = queryMatcher(c.q)
    const items = store.list(c.type.resource, c.namespace).filter(match).sort((a, b) => a.metadata.name.localeCompare(b.metadata.name))
    const rv = String(store.resourceVersion)
    if (c.wantsTable) send(c.res, 200, toTable(c.type, items, rv))
    else send(c.res, 200, { kind: `${c.type.kind}List`, apiVersion: gvOf(c.type), metadata: { resourceVersion: rv }, items })
  },
  'POST collection'(c, store) {
    send(c.res, 201, store.create(c.type.resource, c.namespace, objectBody(c), { dryRun: c.dryRun, manager: c.manager }))
  },
  'PUT item'(c, store) {
    send(c.res, 200, store.update(c.type.resource, c.namespace, c.name!, objectBody(c), { dryRun: c.dryRun, manager: c.manager }))
  },
  'PATCH item'(c, store) {
    if (contentType(c.req) === APPLY) return serverSideApply(c, store)
    const current = clone(store.find(c.type.resource, c.namespace, c.name!)) // the patch must not touch the stored object
    if (!current) throw notFound(c.type, c.name!)
    const type = contentType(c.req)
    const apply = PATCHES[type]
    if (!apply) throw unsupported(type, [...Object.keys(PATCHES), APPLY].join(', '))
    const patch = parseJson(c.body)
    const patched = apply(current, patch)
    if (!isObj(patched) || !isObj(patched.metadata)) throw new ApiError(422, 'Invalid', 'the patch removed metadata')
    const obj = patched as KubeObject
    // only a resourceVersion the patch itself sets is a precondition
    if (!(isObj(patch) && isObj(patch.metadata) && patch.metadata.resourceVersion !== undefined)) obj.metadata.resourceVersion = ''
    send(c.res, 200, store.update(c.type.resource, c.namespace, c.name!, obj, { dryRun: c.dryRun, manager: c.manager }))
  },
  'DELETE item'(c, store) {
    const policy = deleteOptions(c.body).propagationPolicy ?? c.q.get('propagationPolicy')
    const obj = store.remove(c.type.resource, c.namespace, c.name!, { cascade: policy !== 'Orphan', dryRun: c.dryRun })
    const details = { name: c.name, group: c.type.group, kind: c.type.resource, uid: obj.metadata.uid }
    send(c.res, 200, { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Success', details })
  },
  'GET watch'(c, store, watches) {
    const { res, namespace: ns, name, type: t } = c
    const selected = queryMatcher(c.q)
    const match = (o: KubeObject) => (!ns || o.metadata.namespace === ns) && (!name || o.metadata.name === name) && selected(o)
    res.writeHead(200, { 'Content-Type': 'application/json', 'Cache-Control': 'no-cache' })
    res.flushHeaders() // without this, kubectl rollout status hangs after success until timeoutSeconds
    const write = (type: string, obj: KubeObject) => // `kubectl get -w` wants each object as a one-row Table
      res.write(`${JSON.stringify({ type, object: c.wantsTable ? toTable(t, [obj], obj.metadata.resourceVersion ?? '') : obj })}\n`)
    const from = Number(c.q.get('resourceVersion') || 0)
    const watchList = c.q.get('sendInitialEvents') === 'true' // kubectl 1.35, Helm 4: the current state, then the bookmark ending it
    if (watchList || !from) for (const o of store.list(t.resource, ns).filter(match)) write('ADDED', o)
    else for (const e of store.eventsSince(from, t.resource)) if (match(e.object)) write(e.type, e.object)
    if (watchList) res.write(`${JSON.stringify({ type: 'BOOKMARK', object: initialEventsEnd(t, store.resourceVersion) })}\n`)
    const unsubscribe = store.subscribe((e) => {
      if (e.resource === t.resource && match(e.object)) write(e.type, e.object)
    })
    watches.add(res)
    const timeout = Number(c.q.get('timeoutSeconds') || 0)
    const timer = timeout ? setTimeout(() => res.end(), timeout * 1000) : undefined
    res.on('close', () => {
      unsubscribe()
      watches.delete(res)
      clearTimeout(timer)
    })
  },
}

/** DeleteOptions come in the body (kubectl) or as query parameters (helm). */
function deleteOptions(body: Buffer): { propagationPolicy?: string; dryRun?: string[] } {
  try {
    const options: unknown = body.length ? JSON.parse(body.toString('utf8')) : {}
    return isObj(options) ? options : {}
  } catch {
    return {}
  }
}

/** `?dryRun=All`, or for a DELETE also `{"dryRun": ["All"]}` in its DeleteOptions (kubectl's way). */
const isDryRun = (method: string, q: URLSearchParams, body: Buffer) =>
  q.get('dryRun') === 'All' || (method === 'DELETE' && !!deleteOptions(body).dryRun?.includes('All'))

const throwError = (e: Error): never => {
  throw e
}

function route(req: http.IncomingMessage, res: http.ServerResponse, url: URL, body: Buffer): Call | undefined {
  const target = parsePath(url.pathname)
  if (!target) return undefined
  const q = url.searchParams
  return {
    req, res, url, body, ...target, q,
    dryRun: isDryRun(req.method ?? 'GET', q, body),
    wantsTable: /as=Table/.test(req.headers.accept ?? ''),
    manager: q.get('fieldManager') || (req.headers['user-agent'] ?? 'unknown').split('/')[0],
  }
}

function verbOf(c: Call): Verb {
  const method = c.req.method ?? 'GET'
  const shape = method === 'GET' && ['true', '1'].includes(c.q.get('watch') ?? '') ? 'watch' : c.name ? 'item' : 'collection'
  return VERBS[`${method} ${shape}`] ?? throwError(new ApiError(405, 'MethodNotAllowed', `${method} is not supported on ${c.url.pathname}`))
}

async function readBody(req: http.IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = []
  for await (const chunk of req) chunks.push(chunk)
  return Buffer.concat(chunks)
}

function record(req: http.IncomingMessage, url: URL): RequestRecord {
  const method = req.method ?? 'GET'
  const params = new URLSearchParams(url.searchParams)
  return { method, path: url.pathname, query: url.search, params, contentType: contentType(req), write: WRITE_METHODS.includes(method), dryRun: false }
}

function kubeconfig(url: string, token: string, namespace: string) {
  return [
    'apiVersion: v1', 'kind: Config', 'preferences: {}',
    'clusters:', '- name: sim', '  cluster:', `    server: ${url}`,
    'users:', '- name: sim', '  user:', `    token: ${token}`,
    'contexts:', '- name: sim', '  context:', '    cluster: sim', '    user: sim', `    namespace: ${namespace}`,
    'current-context: sim', '',
  ].join('\n')
}

const log = (line: string) => process.stderr.write(`[kube-api] ${line}\n`)

/** The HTTP server: logs each request in `requests`, answers discovery, then the verbs. */
function createServer(store: Store, token: string, version: string, requests: RequestRecord[], watches: Set<http.ServerResponse>) {
  const debug = !!process.env.KUBE_API_DEBUG
  async function handle(req: http.IncomingMessage, res: http.ServerResponse, url: URL, entry: RequestRecord) {
    // client-go never sends credentials over plain http (kubernetes/kubectl#744), so the
    // token in the kubeconfig is decorative; only a wrong one is refused.
    const auth = req.headers.authorization
    if (auth && auth !== `Bearer ${token}`) throw new ApiError(401, 'Unauthorized', 'Unauthorized')
    const body = await readBody(req)
    entry.dryRun = isDryRun(entry.method, url.searchParams, body)
    if (debug && body.length && !req.headers['content-type']?.includes('protobuf')) log(`  body ${body.toString('utf8').slice(0, 2000)}`)
    const doc = req.method === 'GET' ? discovery(url.pathname, req.headers.host ?? '', version) : undefined
    if (doc) return send(res, 200, doc)
    const call = route(req, res, url, body)
    if (!call) throw new ApiError(404, 'NotFound', 'the server could not find the requested resource')
    verbOf(call)(call, store, watches)
  }

  return http.createServer(async (req, res) => {
    const url = new URL(req.url ?? '/', 'http://localhost')
    const entry = record(req, url)
    requests.push(entry)
    res.on('close', () => { // 'close', not 'finish': watches end when the client hangs up
      entry.status = res.statusCode
      const { accept = '-', 'content-type': type = '-' } = req.headers
      if (debug) log(`${entry.method} ${url.pathname}${url.search} -> ${res.statusCode} (${type}; accept ${accept})`)
    })
    try {
      await handle(req, res, url, entry)
    } catch (e) {
      const err = e instanceof ApiError ? e : new ApiError(500, 'InternalError', `simulated API server bug: ${(e as Error).stack ?? e}`)
      if (debug) log(`  ${err.code} ${err.message}`)
      if (!res.headersSent) send(res, err.code, statusBody(err))
      else res.end()
    }
  })
}

/** Starts the simulated API on 127.0.0.1 (random port). KUBE_API_DEBUG=1 logs every request to stderr. */
export async function startKubeApi(opts: KubeApiOptions = {}): Promise<KubeApi> {
  const token = 'sim-token' // written to the kubeconfig; see the auth note in createServer
  const store = new Store()
  const controllers = new Controllers(store, opts)
  const requests: RequestRecord[] = []
  const watches = new Set<http.ServerResponse>()
  const server = createServer(store, token, opts.kubernetesVersion ?? '1.32', requests, watches)
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  const helmReleases = (name: string, namespace: string) =>
    store.list('secrets', namespace).filter((s) => isRelease(s, name)).map(decodeRelease).sort((a, b) => a.version - b.version)

  const api: KubeApi = {
    url,
    token,
    requests,
    writes: (from = 0) => requests.slice(from).filter((r) => r.write && !r.dryRun),
    async close() {
      controllers.stop()
      for (const res of watches) res.end()
      watches.clear()
      server.closeAllConnections()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    },
    async writeKubeconfig(path, o = {}) {
      await writeFile(path, kubeconfig(url, token, o.namespace ?? 'default'), { mode: 0o600 }) // helm warns about group-readable kubeconfigs
    },
    get: (resource, namespace, name) => clone(store.find(resource, namespace, name)),
    list: (resource, namespace) => store.list(resource, namespace).map((o) => clone(o)),
    put(obj) {
      const t = typeOfKind(obj.apiVersion, obj.kind)
      if (!t || !obj.apiVersion) throw new Error(`kube-api: unsupported kind ${obj.apiVersion} ${obj.kind}`)
      const o = clone(obj)
      const ns = t.namespaced ? (o.metadata.namespace ?? 'default') : undefined
      store.ensureNamespace(t, ns, true)
      return store.find(t.resource, ns, o.metadata.name) ? store.update(t.resource, ns, o.metadata.name, o) : store.create(t.resource, ns, o)
    },
    remove(resource, namespace, name) {
      if (!store.find(resource, namespace, name)) return false
      store.remove(resource, namespace, name)
      return true
    },
    seedHelmRelease: (o) => api.put(releaseSecret(o, helmReleases(o.name, o.namespace).at(-1))),
    helmReleases,
    setNeverReady(fn) {
      controllers.neverReady = fn
    },
    setReadyDelay(ms) {
      controllers.readyDelayMs = ms
    },
  }
  return api
}

