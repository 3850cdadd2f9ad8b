// Field ownership and server-side apply, as the API server's field manager does them (Helm 4
// applies every object this way; kubectl apply --server-side too):
// - every write records, in metadata.managedFields, which manager set which fields: an update
//   (POST, PUT, a non-apply PATCH) gives its manager the fields it changed and takes them from
//   the others; an apply makes its manager's set exactly the fields of its configuration;
// - an apply that would change a field another manager owns is refused with a 409 Status naming
//   each manager and field, unless ?force=true, which takes those fields over;
// - fields a manager applied before and applies no more are removed, unless another one owns them.
// Fields are paths in structured-merge-diff's notation: `.data.tag`,
// `.spec.template.spec.containers[name="hub"].image`; lists merged by key have one member per item.
import { ApiError, isObj, now, same, type JsonObject, type KubeObject, type ManagedFieldsEntry } from './objects.ts'
import { listKey, strategicMerge } from './patch.ts'

/** A field name, or an item of a list merged by key. */
type Segment = string | { key: string; value: unknown }
type Path = Segment[]
/** Paths by their string form. */
type FieldSet = Map<string, Path>

/** Never owned: identity and server-set metadata, and status (written through its subresource). */
const UNOWNED = new Set(['.apiVersion', '.kind', '.status', ...['name', 'namespace', 'uid', 'resourceVersion', 'generation', 'creationTimestamp', 'managedFields', 'selfLink'].map((f) => `.metadata.${f}`)])

const text = (path: Path) => path.map((s) => (typeof s === 'string' ? `.${s}` : `[${s.key}=${JSON.stringify(s.value)}]`)).join('')

/** The fields `obj` sets: leaves (scalars, atomic lists, empty maps) and the items of keyed lists. */
function fieldsOf(obj: unknown): FieldSet {
  const set: FieldSet = new Map()
  const add = (path: Path) => set.set(text(path), path)
  const walk = (v: unknown, path: Path) => {
    if (UNOWNED.has(text(path))) return
    const field = path.at(-1)
    const key = Array.isArray(v) && typeof field === 'string' ? listKey(field, v) : undefined
    if (isObj(v) && Object.keys(v).length) for (const [k, x] of Object.entries(v)) walk(x, [...path, k])
    else if (key && (v as unknown[]).every((i) => isObj(i) && i[key] !== undefined)) {
      for (const item of v as JsonObject[]) {
        const at = [...path, { key, value: item[key] }]
        add(at)
        walk(item, at)
      }
    } else if (path.length) add(path)
  }
  walk(obj, [])
  return set
}

function valueAt(obj: unknown, path: Path): unknown {
  let v = obj
  for (const s of path) {
    if (typeof s === 'string') v = isObj(v) ? v[s] : undefined
    else v = Array.isArray(v) ? v.find((i) => isObj(i) && same(i[s.key], s.value)) : undefined
  }
  return v
}

function removeAt(obj: unknown, path: Path) {
  const parent = valueAt(obj, path.slice(0, -1))
  const last = path.at(-1)!
  if (typeof last === 'string') {
    if (isObj(parent)) delete parent[last]
  } else if (Array.isArray(parent)) {
    const i = parent.findIndex((x) => isObj(x) && same(x[last.key], last.value))
    if (i >= 0) parent.splice(i, 1)
  }
}

/** FieldsV1: `f:<field>` and `k:<key as JSON>` nodes; `.` marks a list item owned as a whole. */
function encode(set: FieldSet): JsonObject {
  const root: JsonObject = {}
  for (const path of set.values()) {
    let node = root
    for (const s of path) node = (node[typeof s === 'string' ? `f:${s}` : `k:${JSON.stringify({ [s.key]: s.value })}`] ??= {}) as JsonObject
    if (typeof path.at(-1) !== 'string') node['.'] = {}
  }
  return root
}

function decode(fields: unknown): FieldSet {
  const set: FieldSet = new Map()
  const walk = (node: unknown, path: Path) => {
    const entries = isObj(node) ? Object.entries(node) : []
    if (!entries.length && path.length) set.set(text(path), path)
    for (const [k, child] of entries) {
      if (k === '.') set.set(text(path), path)
      else if (k.startsWith('f:')) walk(child, [...path, k.slice(2)])
      else if (k.startsWith('k:')) {
        const [[key, value]] = Object.entries(JSON.parse(k.slice(2)) as JsonObject)
        walk(child, [...path, { key, value }])
      }
    }
  }
  walk(fields, [])
  return set
}

const entriesOf = (obj: KubeObject | undefined) => obj?.metadata.managedFields ?? []
const isManager = (e: ManagedFieldsEntry, manager: string, operation: ManagedFieldsEntry['operation']) => e.manager === manager && e.operation === operation
const entry = (manager: string, operation: ManagedFieldsEntry['operation'], apiVersion: string | undefined, set: FieldSet): ManagedFieldsEntry =>
  ({ manager, operation, apiVersion, time: now(), fieldsType: 'FieldsV1', fieldsV1: encode(set) })
const without = (e: ManagedFieldsEntry, drop: Iterable<string>): ManagedFieldsEntry => {
  const set = decode(e.fieldsV1)
  const before = set.size
  for (const p of drop) set.delete(p)
  return set.size === before ? e : { ...e, fieldsV1: encode(set) }
}
const nonEmpty = (e: ManagedFieldsEntry) => decode(e.fieldsV1).size > 0

/**
 * After an update by `manager`: it owns the fields it changed, which the other managers lose;
 * fields the update removed are nobody's. Sets `next.metadata.managedFields`. An update that
 * writes managedFields itself replaces the stored ones (Helm 4 does, to turn Helm 3's update
 * entries into apply entries before its first server-side apply of a release).
 */
export function recordUpdate(old: KubeObject | undefined, next: KubeObject, manager: string) {
  const before = fieldsOf(old ?? {})
  const after = fieldsOf(next)
  const changed = [...after.keys()].filter((p) => !before.has(p) || !same(valueAt(old, after.get(p)!), valueAt(next, after.get(p)!)))
  const gone = [...before.keys()].filter((p) => !after.has(p))
  const current = entriesOf(next).length ? entriesOf(next) : entriesOf(old)
  const others = current.filter((e) => !isManager(e, manager, 'Update')).map((e) => without(e, [...changed, ...gone]))
  const mine = current.find((e) => isManager(e, manager, 'Update'))
  const owned = mine ? decode(mine.fieldsV1) : new Map<string, Path>()
  for (const p of gone) owned.delete(p)
  for (const p of changed) owned.set(p, after.get(p)!)
  const updated = changed.length || gone.length ? entry(manager, 'Update', next.apiVersion, owned) : mine
  next.metadata.managedFields = [...others, ...(updated ? [updated] : [])].filter(nonEmpty)
}

/** The Status of a refused apply, worded as the API server's. */
function conflictError(conflicts: Array<{ manager: ManagedFieldsEntry; field: string }>): ApiError {
  const who = (e: ManagedFieldsEntry) => (e.operation === 'Update' ? `"${e.manager}" using ${e.apiVersion}` : `"${e.manager}"`)
  const causes = conflicts.map((c) => ({ type: 'FieldManagerConflict', message: `conflict with ${who(c.manager)}`, field: c.field }))
  let message: string
  if (conflicts.length === 1) message = `Apply failed with 1 conflict: conflict with ${who(conflicts[0].manager)}: ${conflicts[0].field}`
  else {
    const managers = [...new Set(conflicts.map((c) => who(c.manager)))].sort()
    const lines = managers.flatMap((m) => [`conflicts with ${m}:`, ...conflicts.filter((c) => who(c.manager) === m).map((c) => `- ${c.field}`)])
    message = `Apply failed with ${conflicts.length} conflicts: ${lines.join('\n')}`
  }
  return new ApiError(409, 'Conflict', message, { causes })
}

export interface ApplyOptions {
  manager: string
  /** Take over the fields other managers own instead of refusing. */
  force: boolean
}

/**
 * The object after applying `config` to `live` (undefined: the apply creates it), with its
 * managedFields; throws the 409 conflict unless `force`.
 */
export function applyConfig(live: KubeObject | undefined, config: KubeObject, { manager, force }: ApplyOptions): KubeObject {
  const applied = fieldsOf(config)
  const others = entriesOf(live).filter((e) => !isManager(e, manager, 'Apply'))
  const conflicts = others.flatMap((e) => [...decode(e.fieldsV1).entries()]
    .filter(([p, path]) => applied.has(p) && typeof path.at(-1) === 'string' && !same(valueAt(live, path), valueAt(config, path)))
    .map(([p]) => ({ manager: e, field: p })))
  if (conflicts.length && !force) throw conflictError(conflicts)
  const taken = conflicts.map((c) => c.field)
  const kept = others.map((e) => without(e, taken)).filter(nonEmpty)
  const base = structuredClone(live ?? { metadata: { name: config.metadata.name } })
  // what this manager applied before and applies no more goes, unless another manager owns it
  const before = entriesOf(live).find((e) => isManager(e, manager, 'Apply'))
  const ownedElsewhere = new Set(kept.flatMap((e) => [...decode(e.fieldsV1).keys()]))
  for (const [p, path] of before ? decode(before.fieldsV1) : []) if (!applied.has(p) && !ownedElsewhere.has(p)) removeAt(base, path)
  const merged = strategicMerge(base, config) as KubeObject
  merged.metadata.managedFields = [...kept, entry(manager, 'Apply', config.apiVersion, applied)]
  return merged
}
