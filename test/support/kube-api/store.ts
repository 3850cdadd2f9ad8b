// The object store: what etcd plus the API server's defaulting do. Every change goes through
// `commit`, which bumps the one global resourceVersion and feeds the watches; `create`,
// `update`, `apply` and `remove` validate first, and with `dryRun` answer as if applied but
// store nothing. Writes made for a field manager record its fields (apply.ts).
import { randomUUID } from 'node:crypto'
import { applyConfig, recordUpdate, type ApplyOptions } from './apply.ts'
import {
  ApiError, clone, now, same,
  type Deployment, type Kinds, type KubeObject, type Namespace, type Resource, type Secret, type Service,
} from './objects.ts'
import { notFound, typeOf, typeOfKind, type ResourceType } from './resources.ts'

export type WatchEventType = 'ADDED' | 'MODIFIED' | 'DELETED'

export interface WatchEvent {
  rv: number
  resource: Resource
  type: WatchEventType
  object: KubeObject
}

export interface WriteOptions {
  /** `?dryRun=All`: validate and answer, store nothing, start no controller. */
  dryRun?: boolean
  /** The field manager of an update (`?fieldManager`, else the client's name): gets the fields it changed. */
  manager?: string
}

/** Defaults and server-owned fields of one kind, on create (no `old`) and on update. */
type Defaults = (obj: KubeObject, old: KubeObject | undefined, store: Store) => void

const DEFAULTS: Partial<Record<Resource, Defaults>> = {
  namespaces(obj) {
    const ns = obj as Namespace
    ns.metadata.labels = { ...ns.metadata.labels, 'kubernetes.io/metadata.name': ns.metadata.name }
    ns.spec = { finalizers: ['kubernetes'] }
    ns.status = { phase: 'Active' }
  },
  secrets(obj) {
    const secret = obj as Secret
    secret.type ??= 'Opaque'
    for (const [k, v] of Object.entries(secret.stringData ?? {})) (secret.data ??= {})[k] = Buffer.from(String(v)).toString('base64')
    delete secret.stringData
  },
  deployments(obj) {
    const dep = obj as Deployment
    const s = (dep.spec ??= { replicas: 1, template: { spec: { containers: [] } } })
    s.replicas ??= 1
    s.strategy ??= { type: 'RollingUpdate' }
    // helm's readiness check dereferences strategy.rollingUpdate
    if (s.strategy.type === 'RollingUpdate') s.strategy.rollingUpdate = { maxUnavailable: '25%', maxSurge: '25%', ...s.strategy.rollingUpdate }
    s.revisionHistoryLimit ??= 10
    s.progressDeadlineSeconds ??= 600
    dep.status ??= {}
  },
  services(obj, old, store) {
    const s = ((obj as Service).spec ??= {})
    s.type ??= 'ClusterIP'
    s.sessionAffinity ??= 'None'
    for (const p of s.ports ?? []) Object.assign(p, { protocol: p.protocol ?? 'TCP', targetPort: p.targetPort ?? p.port })
    // a Service keeps its allocated IP across updates (helm --wait needs it non-empty)
    if (s.type !== 'ExternalName' && !s.clusterIP) s.clusterIP = (old as Service | undefined)?.spec.clusterIP || store.allocateIp()
    if (s.clusterIP) s.clusterIPs = [s.clusterIP]
  },
}

/** Kinds whose status is a subresource: a write of the object keeps the stored status. */
const STATUS_SUBRESOURCE: Resource[] = ['deployments', 'replicasets', 'pods']

export class Store {
  /** One global counter, as etcd's revision. */
  resourceVersion = 0
  readonly #objects = new Map<string, KubeObject>() // `${resource}/${namespace}/${name}`
  readonly #history: WatchEvent[] = []
  readonly #subscribers = new Set<(event: WatchEvent) => void>()
  readonly #writeHooks: Array<(resource: Resource, obj: KubeObject) => void> = []
  #nextIp = 10

  constructor() {
    for (const name of ['default', 'kube-system', 'kube-public']) this.commit('namespaces', 'ADDED', this.prepare(typeOf('namespaces'), { metadata: { name } }))
  }

  #key(t: ResourceType, ns: string | undefined, name: string) {
    return `${t.resource}/${t.namespaced ? ns : ''}/${name}`
  }

  find<R extends Resource>(resource: R, ns: string | undefined, name: string): Kinds[R] | undefined {
    return this.#objects.get(this.#key(typeOf(resource), ns, name)) as Kinds[R] | undefined
  }

  list<R extends Resource>(resource: R, ns?: string): Kinds[R][] {
    const t = typeOf(resource)
    return [...this.#objects.values()].filter((o) => o.kind === t.kind && (!ns || o.metadata.namespace === ns)) as Kinds[R][]
  }

  /** Stores a change as is (controllers write through here): new resourceVersion, watch event. */
  commit<T extends KubeObject>(resource: Resource, type: WatchEventType, obj: T): T {
    obj.metadata.resourceVersion = String(++this.resourceVersion)
    const k = this.#key(typeOf(resource), obj.metadata.namespace, obj.metadata.name)
    if (type === 'DELETED') this.#objects.delete(k)
    else this.#objects.set(k, obj)
    const event: WatchEvent = { rv: this.resourceVersion, resource, type, object: clone(obj) }
    this.#history.push(event)
    for (const notify of this.#subscribers) notify(event)
    return obj
  }

  /** Changes after resourceVersion `rv` (a watch resuming from it replays them). */
  eventsSince(rv: number, resource: Resource): WatchEvent[] {
    return this.#history.filter((e) => e.rv > rv && e.resource === resource)
  }

  subscribe(notify: (event: WatchEvent) => void): () => void {
    this.#subscribers.add(notify)
    return () => this.#subscribers.delete(notify)
  }

  /** Called after every stored create and update made through the API (not by controllers). */
  onWrite(hook: (resource: Resource, obj: KubeObject) => void) {
    this.#writeHooks.push(hook)
  }

  allocateIp() {
    return `10.96.0.${this.#nextIp++}`
  }

  prepare<T extends KubeObject>(t: ResourceType, obj: T, old?: KubeObject): T {
    obj.apiVersion = t.group ? `${t.group}/${t.version}` : t.version
    obj.kind = t.kind
    const meta = obj.metadata
    meta.uid = old?.metadata.uid ?? randomUUID()
    meta.creationTimestamp = old?.metadata.creationTimestamp ?? now()
    if (!t.namespaced) delete meta.namespace
    if (old && STATUS_SUBRESOURCE.includes(t.resource)) Object.assign(obj, { status: old.status })
    DEFAULTS[t.resource]?.(obj, old, this)
    // generation counts spec changes only (after defaulting); status writes don't bump it
    if (obj.spec !== undefined) meta.generation = !old ? 1 : same(old.spec, obj.spec) ? old.metadata.generation : (old.metadata.generation ?? 1) + 1
    return obj
  }

  ensureNamespace(t: ResourceType, ns: string | undefined, create: boolean) {
    if (!t.namespaced || (ns && this.find('namespaces', undefined, ns))) return
    if (!create) throw new ApiError(404, 'NotFound', `namespaces "${ns}" not found`, { name: ns, kind: 'namespaces' })
    this.commit('namespaces', 'ADDED', this.prepare(typeOf('namespaces'), { metadata: { name: ns ?? 'default' } }))
  }

  create<T extends KubeObject>(resource: Resource, ns: string | undefined, obj: T, opts: WriteOptions = {}): T {
    const t = typeOf(resource)
    obj.metadata ??= { name: '' }
    if (!obj.metadata.name) throw new ApiError(422, 'Invalid', `${t.kind} is invalid: metadata.name: Required value`)
    if (t.namespaced) obj.metadata.namespace = ns
    this.ensureNamespace(t, ns, false)
    const name = obj.metadata.name
    if (this.find(resource, ns, name)) throw new ApiError(409, 'AlreadyExists', `${t.resource} "${name}" already exists`, { name, kind: t.resource })
    const prepared = this.prepare(t, obj)
    if (opts.manager) recordUpdate(undefined, prepared, opts.manager)
    if (opts.dryRun) return clone(prepared)
    const created = clone(this.commit(resource, 'ADDED', prepared))
    for (const hook of this.#writeHooks) hook(resource, created)
    return created
  }

  update<T extends KubeObject>(resource: Resource, ns: string | undefined, name: string, obj: T, opts: WriteOptions = {}): T {
    const t = typeOf(resource)
    const old = this.find(resource, ns, name)
    if (!old) throw notFound(t, name)
    const rv = obj.metadata?.resourceVersion
    if (rv && rv !== old.metadata.resourceVersion) {
      const message = `Operation cannot be fulfilled on ${t.resource} "${name}": the object has been modified; please apply your changes to the latest version and try again`
      throw new ApiError(409, 'Conflict', message, { name, kind: t.resource })
    }
    obj.metadata = { ...obj.metadata, name, ...(t.namespaced ? { namespace: ns } : {}) }
    const prepared = this.prepare(t, obj, old)
    if (opts.manager) recordUpdate(old, prepared, opts.manager)
    else prepared.metadata.managedFields ??= old.metadata.managedFields
    if (opts.dryRun) return clone({ ...prepared, metadata: { ...prepared.metadata, resourceVersion: old.metadata.resourceVersion } })
    const updated = clone(this.commit(resource, 'MODIFIED', prepared))
    for (const hook of this.#writeHooks) hook(resource, updated)
    return updated
  }

  /** Server-side apply of `config` to `name`: creates it or updates it (apply.ts); conflicts refused unless `force`. */
  apply<T extends KubeObject>(resource: Resource, ns: string | undefined, name: string, config: T, opts: WriteOptions & ApplyOptions): T {
    if (config.metadata.name && config.metadata.name !== name) {
      throw new ApiError(400, 'BadRequest', `the name of the object (${config.metadata.name}) does not match the name on the URL (${name})`)
    }
    const live = this.find(resource, ns, name)
    const obj = applyConfig(live, { ...config, metadata: { ...config.metadata, name } }, opts) as T
    const write = { dryRun: opts.dryRun }
    return live ? this.update(resource, ns, name, obj, write) : this.create(resource, ns, obj, write)
  }

  /** Deletes, then garbage-collects: dependents (unless !cascade, i.e. Orphan) and a namespace's contents. */
  remove(resource: Resource, ns: string | undefined, name: string, opts: WriteOptions & { cascade?: boolean } = {}): KubeObject {
    const obj = this.find(resource, ns, name)
    if (!obj) throw notFound(typeOf(resource), name)
    if (opts.dryRun) return clone(obj)
    const cascade = opts.cascade ?? true
    this.commit(resource, 'DELETED', obj)
    for (const dep of [...this.#objects.values()]) {
      const owned = dep.metadata.ownerReferences?.some((r) => r.uid === obj.metadata.uid)
      const inNamespace = resource === 'namespaces' && dep.metadata.namespace === name
      const depType = typeOfKind(undefined, dep.kind)
      if (depType && ((cascade && owned) || inNamespace) && this.find(depType.resource, dep.metadata.namespace, dep.metadata.name)) {
        this.remove(depType.resource, dep.metadata.namespace, dep.metadata.name, { cascade })
      }
    }
    return obj
  }
}
