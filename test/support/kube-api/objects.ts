// The objects the simulated API stores: JSON with a typed core (metadata, and the fields of
// the kinds its controllers read). Everything a client sends beyond those is kept as is.

export type JsonObject = { [field: string]: unknown }
export type Labels = Record<string, string>

export interface OwnerReference {
  apiVersion?: string
  kind: string
  name: string
  uid: string
  controller?: boolean
  blockOwnerDeletion?: boolean
}

/** Which fields one manager set, and how (apply.ts). */
export interface ManagedFieldsEntry {
  manager: string
  operation: 'Apply' | 'Update'
  apiVersion?: string
  time: string
  fieldsType: 'FieldsV1'
  /** `f:<field>` and `k:<list item key as JSON>` nodes; `{}` a field, `.` a list item as a whole. */
  fieldsV1: JsonObject
}

export interface ObjectMeta {
  name: string
  namespace?: string
  generateName?: string
  uid?: string
  resourceVersion?: string
  generation?: number
  creationTimestamp?: string
  labels?: Labels
  annotations?: Labels
  ownerReferences?: OwnerReference[]
  managedFields?: ManagedFieldsEntry[]
  [field: string]: unknown
}

export interface KubeObject {
  apiVersion?: string
  kind?: string
  metadata: ObjectMeta
  [field: string]: unknown
}

export interface Container {
  name: string
  image?: string
  [field: string]: unknown
}

export interface PodTemplate {
  metadata?: { labels?: Labels; annotations?: Labels; [field: string]: unknown }
  spec: { containers: Container[]; [field: string]: unknown }
}

export interface Condition {
  type: string
  status: string
  reason?: string
  message?: string
  lastUpdateTime?: string
  lastTransitionTime?: string
}

export interface Namespace extends KubeObject {
  spec?: { finalizers: string[] }
  status?: { phase: string }
}

export interface Secret extends KubeObject {
  type?: string
  data?: Record<string, string>
  stringData?: Record<string, string>
}

export interface ConfigMap extends KubeObject {
  data?: Record<string, string>
}

export interface ServicePort {
  name?: string
  port: number
  targetPort?: number | string
  protocol?: string
  [field: string]: unknown
}

export interface Service extends KubeObject {
  spec: {
    type?: string
    clusterIP?: string
    clusterIPs?: string[]
    sessionAffinity?: string
    selector?: Labels
    ports?: ServicePort[]
    [field: string]: unknown
  }
}

export interface DeploymentStatus {
  observedGeneration?: number
  replicas?: number
  updatedReplicas?: number
  readyReplicas?: number
  availableReplicas?: number
  unavailableReplicas?: number
  conditions?: Condition[]
}

export interface Deployment extends KubeObject {
  spec: {
    replicas: number
    selector?: { matchLabels?: Labels; [field: string]: unknown }
    template: PodTemplate
    strategy?: { type?: string; rollingUpdate?: { maxUnavailable?: number | string; maxSurge?: number | string } }
    revisionHistoryLimit?: number
    progressDeadlineSeconds?: number
    [field: string]: unknown
  }
  status: DeploymentStatus
}

export interface ReplicaSetStatus {
  replicas: number
  fullyLabeledReplicas?: number
  readyReplicas?: number
  availableReplicas?: number
  observedGeneration?: number
}

export interface ReplicaSet extends KubeObject {
  spec: { replicas: number; selector?: { matchLabels?: Labels }; template: PodTemplate }
  status?: ReplicaSetStatus
}

export interface ContainerStatus {
  name: string
  image?: string
  ready: boolean
  restartCount: number
  state: { waiting?: { reason: string }; running?: { startedAt: string } }
}

export interface Pod extends KubeObject {
  spec: PodTemplate['spec'] & { nodeName?: string }
  status?: { phase?: string; startTime?: string; conditions?: Condition[]; containerStatuses?: ContainerStatus[] }
}

export interface ObjectReference {
  apiVersion?: string
  kind?: string
  name: string
  namespace?: string
  uid?: string
  resourceVersion?: string
}

export interface Event extends KubeObject {
  involvedObject: ObjectReference
  reason: string
  message: string
  type: 'Normal' | 'Warning'
  count: number
  firstTimestamp?: string
  lastTimestamp?: string
  source?: { component: string }
}

/** The kind of each resource the API serves, by plural name (the key of resources.ts's table). */
export interface Kinds {
  namespaces: Namespace
  secrets: Secret
  configmaps: ConfigMap
  services: Service
  serviceaccounts: KubeObject
  pods: Pod
  events: Event
  deployments: Deployment
  replicasets: ReplicaSet
}
export type Resource = keyof Kinds

/** An error the API answers with, as a `Status` object. */
export class ApiError extends Error {
  constructor(readonly code: number, readonly reason: string, message: string, readonly details?: JsonObject) {
    super(message)
  }
}

export const isObj = (v: unknown): v is JsonObject => typeof v === 'object' && v !== null && !Array.isArray(v)
export const clone = <T>(v: T): T => (v === undefined ? v : structuredClone(v))
export const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b)
/** API times have second precision. */
export const now = () => new Date().toISOString().replace(/\.\d+Z$/, 'Z')
