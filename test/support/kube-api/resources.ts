// The resources the API serves, as one table, and the discovery and OpenAPI documents derived
// from it. Serving a new kind: one row here and its type in objects.ts's `Kinds`.
import { ApiError, type JsonObject, type Resource } from './objects.ts'

export interface ResourceType {
  group: string
  version: string
  resource: Resource
  kind: string
  namespaced: boolean
  shortNames: string[]
  /** In the `all` category (`kubectl get all`). */
  all: boolean
}

function type(gv: string, resource: Resource, kind: string, shortName: string, all = false, namespaced = true): ResourceType {
  const [group, version] = gv.includes('/') ? gv.split('/') : ['', gv]
  return { group, version, resource, kind, namespaced, shortNames: shortName ? [shortName] : [], all }
}

export const TYPES: ResourceType[] = [
  type('v1', 'namespaces', 'Namespace', 'ns', false, false),
  type('v1', 'secrets', 'Secret', ''),
  type('v1', 'configmaps', 'ConfigMap', 'cm'),
  type('v1', 'services', 'Service', 'svc', true),
  type('v1', 'serviceaccounts', 'ServiceAccount', 'sa'),
  type('v1', 'pods', 'Pod', 'po', true),
  type('v1', 'events', 'Event', 'ev'),
  type('apps/v1', 'deployments', 'Deployment', 'deploy', true),
  type('apps/v1', 'replicasets', 'ReplicaSet', 'rs', true),
]

export const gvOf = (t: ResourceType) => (t.group ? `${t.group}/${t.version}` : t.version)
const GROUP_VERSIONS = [...new Set(TYPES.map(gvOf))]
const gvPath = (gv: string) => (gv === 'v1' ? 'api/v1' : `apis/${gv}`)

export function typeOf(resource: string): ResourceType {
  const t = TYPES.find((x) => x.resource === resource)
  if (!t) throw new Error(`kube-api: unknown resource ${resource} (known: ${TYPES.map((x) => x.resource).join(', ')})`)
  return t
}

export const typeOfKind = (apiVersion: string | undefined, kind: string | undefined) =>
  TYPES.find((x) => x.kind === kind && (apiVersion === undefined || gvOf(x) === apiVersion))

export const notFound = (t: ResourceType, name: string) =>
  new ApiError(404, 'NotFound', `${t.resource}${t.group ? `.${t.group}` : ''} "${name}" not found`, { name, group: t.group, kind: t.resource })

const VERBS = ['create', 'delete', 'deletecollection', 'get', 'list', 'patch', 'update', 'watch']

function groups() {
  return [...new Set(TYPES.filter((t) => t.group).map((t) => t.group))].map((name) => {
    const versions = [...new Set(TYPES.filter((t) => t.group === name).map((t) => t.version))]
      .map((version) => ({ groupVersion: `${name}/${version}`, version }))
    return { name, versions, preferredVersion: versions[0] }
  })
}

const resourceList = (gv: string) => ({
  kind: 'APIResourceList', apiVersion: 'v1', groupVersion: gv,
  resources: TYPES.filter((t) => gvOf(t) === gv).map((t) => ({
    name: t.resource, singularName: t.kind.toLowerCase(), namespaced: t.namespaced, kind: t.kind,
    verbs: VERBS, shortNames: t.shortNames, ...(t.all ? { categories: ['all'] } : {}),
  })),
})

// OpenAPI v3: helm downloads it to decide between client-side schema validation (which would
// need the full schema) and server-side validation; these documents say "the server supports
// ?fieldValidation" for every kind, so helm validates nothing itself.
function openApiDocument(gv: string, version: string) {
  const paths: JsonObject = {}
  for (const t of TYPES.filter((x) => gvOf(x) === gv)) {
    paths[`/${gvPath(gv)}${t.namespaced ? '/namespaces/{namespace}' : ''}/${t.resource}/{name}`] = {
      patch: {
        'x-kubernetes-group-version-kind': { group: t.group, version: t.version, kind: t.kind },
        parameters: [{ name: 'fieldValidation', in: 'query', schema: { type: 'string', uniqueItems: true } }],
        responses: { 200: { description: 'OK' } },
      },
    }
  }
  return { openapi: '3.0.0', info: { title: 'Kubernetes (simulated)', version: `v${version}.0` }, paths, components: { schemas: {} } }
}

/** The discovery or OpenAPI document at `path` (legacy, non-aggregated discovery) of a Kubernetes `version` (`1.32`), if any. */
export function discovery(path: string, host: string, version: string): unknown {
  if (path === '/version') {
    const [major, minor] = version.split('.')
    return { major, minor, gitVersion: `v${version}.0-sim`, gitCommit: 'sim', gitTreeState: 'clean', platform: 'linux/amd64' }
  }
  if (path === '/api') return { kind: 'APIVersions', versions: ['v1'], serverAddressByClientCIDRs: [{ clientCIDR: '0.0.0.0/0', serverAddress: host }] }
  if (path === '/apis') return { kind: 'APIGroupList', apiVersion: 'v1', groups: groups() }
  const group = groups().find((g) => path === `/apis/${g.name}`)
  if (group) return { kind: 'APIGroup', apiVersion: 'v1', ...group }
  const gv = GROUP_VERSIONS.find((v) => path === `/${gvPath(v)}`)
  if (gv) return resourceList(gv)
  if (path === '/openapi/v3') {
    return { paths: Object.fromEntries(GROUP_VERSIONS.map((v) => [gvPath(v), { serverRelativeURL: `/openapi/v3/${gvPath(v)}?hash=SIM` }])) }
  }
  const doc = GROUP_VERSIONS.find((v) => path === `/openapi/v3/${gvPath(v)}`)
  return doc ? openApiDocument(doc, version) : undefined
}

/** The resource a request path names: /api/v1/... or /apis/GROUP/VERSION/..., optionally namespaced. */
export interface Target {
  type: ResourceType
  namespace?: string
  name?: string
}

export function parsePath(pathname: string): Target | undefined {
  const m = pathname.match(/^\/(?:api\/(v1)|apis\/([^/]+)\/([^/]+))\/(.*)$/)
  if (!m) return undefined
  const [group, version] = m[1] ? ['', 'v1'] : [m[2], m[3]]
  const seg = m[4].split('/').filter(Boolean)
  let namespace: string | undefined
  if (seg[0] === 'namespaces' && seg.length >= 3) {
    namespace = seg[1]
    seg.splice(0, 2)
  }
  const [resource, name, sub] = seg
  const t = TYPES.find((x) => x.group === group && x.version === version && x.resource === resource)
  if (!t || sub || (namespace && !t.namespaced)) throw new ApiError(404, 'NotFound', 'the server could not find the requested resource')
  return { type: t, namespace, name }
}
