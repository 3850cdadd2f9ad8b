// The toy controllers: a Deployment gets one ReplicaSet per pod template (pod-template-hash,
// controller ownerReference), the ReplicaSet its Pods, and each Pod's "kubelet" makes it ready
// after `readyDelayMs`, or never when `neverReady` says so (the pod then sits in
// ImagePullBackOff with Warning events). Events: ScalingReplicaSet, SuccessfulCreate,
// Scheduled, Started, Failed/BackOff.
import { createHash, randomBytes } from 'node:crypto'
import {
  clone, now, same,
  type Condition, type ContainerStatus, type Deployment, type DeploymentStatus, type Event, type KubeObject,
  type Pod, type PodTemplate, type ReplicaSet, type ReplicaSetStatus,
} from './objects.ts'
import { typeOf } from './resources.ts'
import type { Store } from './store.ts'

/** Whether the pods of a deployment stay unready; gets the deployment's name and the pod. */
export type NeverReady = (deploymentName: string, pod: Pod) => boolean

export interface ControllerOptions {
  /** Pods become ready this long after they are created (default 500 ms). */
  readyDelayMs?: number
  neverReady?: NeverReady
}

const templateHash = (template: unknown) => createHash('sha256').update(JSON.stringify(template)).digest('hex').slice(0, 10)
const controllerUid = (o: KubeObject) => o.metadata.ownerReferences?.find((r) => r.controller)?.uid
const ownerRef = (o: KubeObject) =>
  ({ apiVersion: o.apiVersion, kind: o.kind ?? '', name: o.metadata.name, uid: o.metadata.uid ?? '', controller: true, blockOwnerDeletion: true })
const containerStatuses = (spec: PodTemplate['spec'] | undefined, state: ContainerStatus['state']): ContainerStatus[] =>
  (spec?.containers ?? []).map((c) => ({ name: c.name, image: c.image, ready: !!state.running, restartCount: 0, state }))
const podHash = (o: KubeObject) => o.metadata.labels?.['pod-template-hash']

function maxUnavailable(d: Deployment): number {
  const v = d.spec.strategy?.rollingUpdate?.maxUnavailable ?? '25%'
  return typeof v === 'string' && v.endsWith('%') ? Math.floor((d.spec.replicas * parseInt(v, 10)) / 100) : Number(v)
}

export class Controllers {
  readyDelayMs: number
  neverReady: NeverReady | undefined
  readonly #store: Store
  readonly #timers = new Set<NodeJS.Timeout>()

  constructor(store: Store, opts: ControllerOptions = {}) {
    this.#store = store
    this.readyDelayMs = opts.readyDelayMs ?? 500
    this.neverReady = opts.neverReady
    store.onWrite((resource, obj) => {
      if (resource === 'deployments') this.reconcileDeployment(obj.metadata.namespace ?? 'default', obj.metadata.name)
    })
  }

  /** Stops every pending pod tick. */
  stop() {
    for (const t of this.#timers) clearTimeout(t)
    this.#timers.clear()
  }

  #later(ms: number, fn: () => void) {
    const t = setTimeout(() => (this.#timers.delete(t), fn()), ms)
    this.#timers.add(t)
  }

  #ownedBy<R extends 'replicasets' | 'pods'>(resource: R, owner: KubeObject) {
    return this.#store.list(resource, owner.metadata.namespace).filter((o) => controllerUid(o) === owner.metadata.uid)
  }

  /** The real event recorder aggregates repeats by bumping count. */
  emitEvent(involved: KubeObject, type: Event['type'], reason: string, message: string, component: string) {
    const store = this.#store
    const ns = involved.metadata.namespace
    const ts = now()
    const existing = store.list('events', ns).find((e) => e.involvedObject.uid === involved.metadata.uid && e.reason === reason && e.message === message)
    if (existing) {
      store.commit('events', 'MODIFIED', { ...clone(existing), count: existing.count + 1, lastTimestamp: ts })
      return
    }
    store.commit('events', 'ADDED', store.prepare<Event>(typeOf('events'), {
      metadata: { name: `${involved.metadata.name}.${randomBytes(8).toString('hex')}`, namespace: ns },
      involvedObject: {
        apiVersion: involved.apiVersion, kind: involved.kind, name: involved.metadata.name, namespace: ns,
        uid: involved.metadata.uid, resourceVersion: involved.metadata.resourceVersion,
      },
      reason, message, type, source: { component }, firstTimestamp: ts, lastTimestamp: ts, count: 1,
      reportingComponent: component, reportingInstance: '',
    }))
  }

  reconcileDeployment(ns: string, name: string) {
    const dep = this.#store.find('deployments', ns, name)
    if (!dep) return
    const hash = templateHash(dep.spec.template)
    const replicaSets = this.#ownedBy('replicasets', dep)
    const current = this.#scaleCurrent(dep, replicaSets.find((rs) => podHash(rs) === hash), replicaSets.length + 1)
    for (const old of replicaSets) {
      if (old.metadata.uid === current.metadata.uid || old.spec.replicas === 0) continue
      this.#store.commit('replicasets', 'MODIFIED', { ...clone(old), spec: { ...old.spec, replicas: 0 } })
      this.emitEvent(dep, 'Normal', 'ScalingReplicaSet', `Scaled down replica set ${old.metadata.name} from ${old.spec.replicas} to 0`, 'deployment-controller')
      this.#syncPods(ns, old.metadata.name)
    }
    this.#syncPods(ns, current.metadata.name)
    this.#updateDeploymentStatus(ns, name)
  }

  /** The ReplicaSet of the deployment's current template, created or scaled to its replicas. */
  #scaleCurrent(dep: Deployment, current: ReplicaSet | undefined, revision: number): ReplicaSet {
    const replicas = dep.spec.replicas
    const scaled = (rs: ReplicaSet, from: number) => {
      const message = `Scaled ${replicas >= from ? 'up' : 'down'} replica set ${rs.metadata.name} from ${from} to ${replicas}`
      this.emitEvent(dep, 'Normal', 'ScalingReplicaSet', message, 'deployment-controller')
      return rs
    }
    if (current) {
      if (current.spec.replicas === replicas) return current
      const from = current.spec.replicas
      return scaled(this.#store.commit('replicasets', 'MODIFIED', { ...clone(current), spec: { ...current.spec, replicas } }), from)
    }
    const hash = templateHash(dep.spec.template)
    const template = clone(dep.spec.template ?? { spec: { containers: [] } })
    const labels = { ...template.metadata?.labels, 'pod-template-hash': hash }
    template.metadata = { ...template.metadata, labels }
    return scaled(this.#store.commit('replicasets', 'ADDED', this.#store.prepare<ReplicaSet>(typeOf('replicasets'), {
      metadata: {
        name: `${dep.metadata.name}-${hash}`, namespace: dep.metadata.namespace, labels, ownerReferences: [ownerRef(dep)],
        annotations: { 'deployment.kubernetes.io/revision': String(revision) },
      },
      // helm finds "the new ReplicaSet" by comparing this template with the Deployment's, minus the hash
      spec: { replicas, selector: { ...dep.spec.selector, matchLabels: { ...dep.spec.selector?.matchLabels, 'pod-template-hash': hash } }, template },
      status: { replicas: 0, observedGeneration: 1 },
    })), 0)
  }

  #syncPods(ns: string, rsName: string) {
    const rs = this.#store.find('replicasets', ns, rsName)
    if (!rs) return
    const pods = this.#ownedBy('pods', rs)
    for (const extra of pods.slice(rs.spec.replicas)) this.#store.remove('pods', ns, extra.metadata.name)
    for (let i = pods.length; i < rs.spec.replicas; i++) {
      const pod = this.#store.commit('pods', 'ADDED', this.#store.prepare<Pod>(typeOf('pods'), {
        metadata: {
          name: `${rsName}-${randomBytes(3).toString('hex').slice(0, 5)}`, namespace: ns,
          labels: rs.spec.template.metadata?.labels, ownerReferences: [ownerRef(rs)],
        },
        spec: { ...clone(rs.spec.template.spec), nodeName: 'sim-node' },
        status: {
          phase: 'Pending', conditions: [{ type: 'Ready', status: 'False' }],
          containerStatuses: containerStatuses(rs.spec.template.spec, { waiting: { reason: 'ContainerCreating' } }),
        },
      }))
      this.emitEvent(rs, 'Normal', 'SuccessfulCreate', `Created pod: ${pod.metadata.name}`, 'replicaset-controller')
      this.emitEvent(pod, 'Normal', 'Scheduled', `Successfully assigned ${ns}/${pod.metadata.name} to sim-node`, 'default-scheduler')
      this.#later(this.readyDelayMs, () => this.#podTick(ns, pod.metadata.name))
    }
    this.#updateReplicaSetStatus(ns, rsName)
  }

  /** A pod's kubelet, once per readyDelayMs: becomes ready, or keeps failing if neverReady. */
  #podTick(ns: string, podName: string) {
    const store = this.#store
    const pod = store.find('pods', ns, podName)
    if (!pod) return
    const rs = store.find('replicasets', ns, pod.metadata.ownerReferences?.[0]?.name ?? '')
    const depName = rs?.metadata.ownerReferences?.[0]?.name ?? ''
    const containers = pod.spec.containers ?? []
    if (this.neverReady?.(depName, clone(pod))) {
      const status = { ...pod.status, containerStatuses: containerStatuses(pod.spec, { waiting: { reason: 'ImagePullBackOff' } }) }
      if (!same(status, pod.status)) store.commit('pods', 'MODIFIED', { ...clone(pod), status })
      for (const c of containers) {
        this.emitEvent(pod, 'Warning', 'Failed', `Failed to pull image "${c.image}": simulated pull failure`, 'kubelet')
        this.emitEvent(pod, 'Warning', 'BackOff', `Back-off pulling image "${c.image}"`, 'kubelet')
      }
      this.#later(Math.max(this.readyDelayMs, 1000), () => this.#podTick(ns, podName)) // retries: a test can heal it
      return
    }
    for (const c of containers) this.emitEvent(pod, 'Normal', 'Started', `Started container ${c.name}`, 'kubelet')
    store.commit('pods', 'MODIFIED', {
      ...clone(pod),
      status: {
        phase: 'Running', startTime: now(), conditions: [{ type: 'Ready', status: 'True' }],
        containerStatuses: containerStatuses(pod.spec, { running: { startedAt: now() } }),
      },
    })
    if (rs) {
      this.#updateReplicaSetStatus(ns, rs.metadata.name)
      if (depName) this.#updateDeploymentStatus(ns, depName)
    }
  }

  #updateReplicaSetStatus(ns: string, name: string) {
    const rs = this.#store.find('replicasets', ns, name)
    if (!rs) return
    const pods = this.#ownedBy('pods', rs)
    const ready = pods.filter((p) => p.status?.phase === 'Running').length
    const n = pods.length
    const status: ReplicaSetStatus = { replicas: n, fullyLabeledReplicas: n, readyReplicas: ready, availableReplicas: ready, observedGeneration: rs.metadata.generation }
    if (!same(status, rs.status)) this.#store.commit('replicasets', 'MODIFIED', { ...clone(rs), status })
  }

  #updateDeploymentStatus(ns: string, name: string) {
    const dep = this.#store.find('deployments', ns, name)
    if (!dep) return
    const status = deploymentStatus(dep, this.#ownedBy('replicasets', dep))
    if (!same(status, dep.status)) this.#store.commit('deployments', 'MODIFIED', { ...clone(dep), status })
  }
}

/** A deployment's status from its ReplicaSets, as the deployment controller writes it. */
function deploymentStatus(dep: Deployment, sets: ReplicaSet[]): DeploymentStatus {
  const hash = templateHash(dep.spec.template)
  const sum = (f: keyof ReplicaSetStatus, only = sets) => only.reduce((n, rs) => n + (rs.status?.[f] ?? 0), 0)
  const updated = sum('replicas', sets.filter((rs) => podHash(rs) === hash))
  const available = sum('availableReplicas')
  const replicas = dep.spec.replicas
  const condition = (type: string, status: string, reason: string, message: string): Condition => {
    const p = dep.status.conditions?.find((c) => c.type === type) // keep timestamps while unchanged
    const ts = p?.status === status && p.reason === reason ? p.lastUpdateTime : now()
    return { type, status, lastUpdateTime: ts, lastTransitionTime: ts, reason, message }
  }
  const done = updated === replicas && available >= replicas
  const status: DeploymentStatus = {
    observedGeneration: dep.metadata.generation, replicas: sum('replicas'), updatedReplicas: updated,
    readyReplicas: sum('readyReplicas'), availableReplicas: available, unavailableReplicas: Math.max(0, replicas - available),
    conditions: [
      available >= replicas - maxUnavailable(dep)
        ? condition('Available', 'True', 'MinimumReplicasAvailable', 'Deployment has minimum availability.')
        : condition('Available', 'False', 'MinimumReplicasUnavailable', 'Deployment does not have minimum availability.'),
      condition('Progressing', 'True', done ? 'NewReplicaSetAvailable' : 'ReplicaSetUpdated',
        `ReplicaSet "${dep.metadata.name}-${hash}" ${done ? 'has successfully progressed' : 'is progressing'}.`),
    ],
  }
  for (const f of ['readyReplicas', 'availableReplicas', 'unavailableReplicas'] as const) if (!status[f]) delete status[f] // omitempty
  return status
}
