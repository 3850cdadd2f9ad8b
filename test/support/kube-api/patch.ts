// Patches. Helm 3.17 sends client-side three-way strategic merge patches for built-in kinds;
// kubectl sends strategic merge patches for rollout restart / patch. JSON merge patch and JSON
// patch are served too; server-side apply (Helm 4) is apply.ts, which merges with strategicMerge.
import { ApiError, clone, isObj, same, type JsonObject } from './objects.ts'

// Lists merged by key (the patchMergeKey of the Kubernetes types we serve); all other lists are
// replaced. `ports` is keyed by containerPort in containers and by port in Services.
const MERGE_KEYS: Record<string, string> = {
  containers: 'name', initContainers: 'name', ephemeralContainers: 'name', env: 'name', volumes: 'name',
  volumeMounts: 'mountPath', volumeDevices: 'devicePath', imagePullSecrets: 'name', hostAliases: 'ip',
  ownerReferences: 'uid', conditions: 'type', topologySpreadConstraints: 'topologyKey', ports: 'port',
}

function stripDirectives(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(stripDirectives)
  if (!isObj(v)) return v
  return Object.fromEntries(Object.entries(v).filter(([k]) => !k.startsWith('$')).map(([k, x]) => [k, stripDirectives(x)]))
}

export function strategicMerge(target: unknown, patch: unknown): unknown {
  if (!isObj(patch)) return clone(patch)
  if (patch.$patch === 'replace') return stripDirectives(patch)
  const out: JsonObject = isObj(target) ? { ...target } : {}
  for (const [k, v] of Object.entries(patch)) {
    if (k.startsWith('$deleteFromPrimitiveList/')) {
      const field = k.slice('$deleteFromPrimitiveList/'.length)
      const current = out[field]
      if (Array.isArray(current) && Array.isArray(v)) out[field] = current.filter((x) => !v.includes(x))
    } else if (k.startsWith('$')) {
      continue // $patch, $retainKeys, $setElementOrder/*: handled below or only about ordering
    } else if (v === null || (isObj(v) && v.$patch === 'delete')) {
      delete out[k]
    } else if (Array.isArray(v)) {
      const order = patch[`$setElementOrder/${k}`]
      out[k] = mergeList(k, out[k], v, Array.isArray(order) ? order.filter(isObj) : undefined)
    } else {
      out[k] = isObj(v) ? strategicMerge(out[k], v) : v
    }
  }
  const retain = patch.$retainKeys
  if (Array.isArray(retain)) for (const k of Object.keys(out)) if (!retain.includes(k)) delete out[k]
  return out
}

/** The key a list named `field` is merged by (its items as hints), if it is merged by key. */
export function listKey(field: string, hints: unknown[]): string | undefined {
  if (field === 'ports' && hints.some((i) => isObj(i) && 'containerPort' in i)) return 'containerPort'
  return MERGE_KEYS[field]
}

function mergeList(field: string, current: unknown, patch: unknown[], order?: JsonObject[]): unknown {
  const replaces = (i: unknown) => isObj(i) && i.$patch === 'replace'
  if (patch.some(replaces)) return stripDirectives(patch.filter((i) => !replaces(i)))
  if (field === 'finalizers' && Array.isArray(current)) return [...new Set([...current, ...patch])]
  const key = listKey(field, [...patch, ...(order ?? [])])
  const items = patch.filter(isObj)
  if (!key || !Array.isArray(current) || patch.length === 0 || items.length !== patch.length) return stripDirectives(patch)
  const out = current.map((x) => clone(x))
  for (const item of items) {
    const i = out.findIndex((o) => isObj(o) && same(o[key], item[key]))
    if (item.$patch === 'delete') {
      if (i >= 0) out.splice(i, 1)
    } else if (i >= 0) out[i] = strategicMerge(out[i], item)
    else out.push(strategicMerge({}, item))
  }
  if (order) {
    const rank = (o: unknown) => {
      const r = isObj(o) ? order.findIndex((x) => same(x[key], o[key])) : -1
      return r < 0 ? order.length : r
    }
    out.sort((a, b) => rank(a) - rank(b)) // stable: unknown items keep their relative order
  }
  return out
}

export function mergePatch(target: unknown, patch: unknown): unknown {
  if (!isObj(patch)) return clone(patch)
  const out: JsonObject = isObj(target) ? { ...target } : {}
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k]
    else out[k] = mergePatch(out[k], v)
  }
  return out
}

type Container = JsonObject | unknown[]
const isContainer = (v: unknown): v is Container => isObj(v) || Array.isArray(v)
const invalid = (message: string) => new ApiError(422, 'Invalid', `json patch: ${message}`)

export function jsonPatch(doc: unknown, ops: unknown): unknown {
  if (!Array.isArray(ops)) throw new ApiError(400, 'BadRequest', 'json patch: the body is not a list of operations')
  const root: JsonObject = { doc: clone(doc) }
  const locate = (pointer: unknown, mustExist: boolean): [Container, string] => {
    const parts = ['doc', ...String(pointer).split('/').slice(1).map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'))]
    const last = parts.pop() ?? ''
    const parent = parts.reduce<unknown>((o, p) => (isContainer(o) ? (o as JsonObject)[p] : undefined), root)
    if (!isContainer(parent) || (mustExist && !(last in parent))) throw invalid(`path ${pointer} does not exist`)
    return [parent, last]
  }
  const read = (pointer: unknown) => {
    const [p, k] = locate(pointer, true)
    return clone((p as JsonObject)[k])
  }
  const remove = (pointer: unknown) => {
    const [p, k] = locate(pointer, true)
    if (Array.isArray(p)) p.splice(Number(k), 1)
    else delete p[k]
  }
  const add = (pointer: unknown, value: unknown) => {
    const [p, k] = locate(pointer, false)
    if (Array.isArray(p)) p.splice(k === '-' ? p.length : Number(k), 0, value)
    else p[k] = value
  }
  for (const op of ops.filter(isObj)) {
    if (op.op === 'add') add(op.path, clone(op.value))
    else if (op.op === 'remove') remove(op.path)
    else if (op.op === 'replace') (remove(op.path), add(op.path, clone(op.value)))
    else if (op.op === 'move') {
      const v = read(op.from)
      remove(op.from)
      add(op.path, v)
    } else if (op.op === 'copy') add(op.path, read(op.from))
    else if (op.op === 'test') {
      if (!same(read(op.path), op.value)) throw invalid(`test failed at ${op.path}`)
    } else throw new ApiError(400, 'BadRequest', `json patch: unknown op ${op.op}`)
  }
  return root.doc
}

/** The patch functions by Content-Type. */
export const PATCHES: Record<string, (current: unknown, patch: unknown) => unknown> = {
  'application/strategic-merge-patch+json': strategicMerge,
  'application/merge-patch+json': mergePatch,
  'application/json-patch+json': jsonPatch,
}
