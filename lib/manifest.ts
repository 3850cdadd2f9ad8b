/** Rendered manifests as objects, and the object-by-object diff of two of them (pure: no I/O). */
import { Buffer } from 'node:buffer'
import type YAMLModule from 'yaml'
import { DeployError, type ChartDiff, type ObjectChange } from './contract.ts'

/** A Kubernetes object of a rendered manifest, identified by group, kind, namespace and name. */
export interface ManifestObject {
  key: string
  kind: string
  namespace: string
  name: string
  body: Record<string, unknown>
}

/** Kinds that live outside namespaces: shown as `Kind/name`. */
const CLUSTER_SCOPED = new Set([
  'Namespace', 'Node', 'PersistentVolume', 'StorageClass', 'PriorityClass', 'ClusterRole', 'ClusterRoleBinding',
  'CustomResourceDefinition', 'IngressClass', 'MutatingWebhookConfiguration', 'ValidatingWebhookConfiguration',
  'APIService', 'RuntimeClass', 'PodSecurityPolicy', 'CSIDriver', 'VolumeSnapshotClass',
])

/** `Kind/namespace/name`, or `Kind/name` for a cluster-scoped object. */
function objectId(o: Pick<ManifestObject, 'kind' | 'namespace' | 'name'>): string {
  return o.namespace ? `${o.kind}/${o.namespace}/${o.name}` : `${o.kind}/${o.name}`
}

/**
 * The objects of a multi-document manifest, in order. Objects without a namespace get the
 * release's (as helm applies them); the API group, not the version, identifies an object,
 * so a moved apiVersion is a change, not a removal and an addition.
 */
export function parseManifest(text: string, namespace: string, YAML: typeof YAMLModule): ManifestObject[] {
  const objects: ManifestObject[] = []
  const add = (doc: unknown) => {
    if (!doc || typeof doc !== 'object') return
    const body = doc as { apiVersion?: string; kind?: string; metadata?: { name?: string; namespace?: string }; items?: unknown[] }
    if (body.kind === 'List' && Array.isArray(body.items)) return body.items.forEach(add)
    if (!body.kind || !body.metadata?.name) return
    const ns = CLUSTER_SCOPED.has(body.kind) ? '' : body.metadata.namespace ?? namespace
    const group = String(body.apiVersion ?? '').includes('/') ? String(body.apiVersion).split('/')[0] : ''
    objects.push({ key: `${group}|${body.kind}|${ns}|${body.metadata.name}`, kind: body.kind, namespace: ns, name: body.metadata.name, body: body as Record<string, unknown> })
  }
  // A key written twice is read as Kubernetes reads it, the last one winning (duplicateKeys names it).
  for (const doc of YAML.parseAllDocuments(text, { uniqueKeys: false })) {
    if (doc.errors.length) throw new DeployError(`manifest is not valid YAML: ${doc.errors[0].message.split('\n')[0]}`)
    add(doc.toJS())
  }
  return objects
}

/** A key written twice in one map of a rendered manifest. */
export interface DuplicateKey {
  /** The template it came from, as helm's `# Source:` line names it (`staginghub/templates/hub.yaml`). */
  source?: string
  /** `ConfigMap/hub-config`, when the document says. */
  object?: string
  /** The key (never its value: a Secret's values are secret). */
  key: string
}

/**
 * Keys written twice in one map (helm renders them; Kubernetes keeps the last silently, so
 * what is deployed is not what the template seems to say).
 */
export function duplicateKeys(text: string, YAML: typeof YAMLModule): DuplicateKey[] {
  const lines = text.split('\n')
  const found: DuplicateKey[] = []
  for (const doc of YAML.parseAllDocuments(text)) {
    for (const error of doc.errors.filter((e) => e.code === 'DUPLICATE_KEY')) {
      const at = error.linePos?.[0]
      if (!at) continue
      const key = /^\s*(?:-\s+)?["']?([^"':]+)/.exec(lines[at.line - 1].slice(at.col - 1))?.[1]?.trim() ?? '?'
      const source = lines.slice(0, at.line).reverse().find((l) => l.startsWith('# Source: '))?.slice('# Source: '.length).trim()
      const body = doc.toJS() as { kind?: unknown; metadata?: { name?: unknown } } | null
      const object = body && typeof body.kind === 'string' && typeof body.metadata?.name === 'string' ? `${body.kind}/${body.metadata.name}` : undefined
      found.push({ key, ...(source ? { source } : {}), ...(object ? { object } : {}) })
    }
  }
  return found
}

/** A Secret's values by key (stringData over data, both as bytes), and the object without them. */
function splitSecret(body: Record<string, unknown>): { rest: Record<string, unknown>; values: Map<string, string> } {
  const { data, stringData, ...rest } = body as { data?: Record<string, unknown>; stringData?: Record<string, unknown> }
  const values = new Map<string, string>()
  for (const [k, v] of Object.entries(data ?? {})) values.set(k, Buffer.from(String(v ?? ''), 'base64').toString('latin1'))
  for (const [k, v] of Object.entries(stringData ?? {})) values.set(k, Buffer.from(String(v ?? ''), 'utf8').toString('latin1'))
  return { rest, values }
}

const isSecret = (o: ManifestObject) => o.kind === 'Secret'

/** Where a pod spec lists containers: each entry's `image` is an image the object runs. */
const CONTAINER_LISTS = new Set(['containers', 'initContainers', 'ephemeralContainers'])

/** The images an object's containers run, and every string it holds (a Secret's values decoded), split into words. */
function imageRefs(o: ManifestObject): { containers: string[]; words: Set<string> } {
  const containers: string[] = []
  const words = new Set<string>()
  const walk = (value: unknown, key: string) => {
    if (typeof value === 'string') for (const w of value.split(/[\s"'`,;={}[\]]+/)) words.add(w)
    if (!value || typeof value !== 'object') return
    if (CONTAINER_LISTS.has(key) && Array.isArray(value)) {
      for (const c of value) if (typeof c?.image === 'string') containers.push(c.image)
    }
    for (const [k, v] of Object.entries(value)) walk(v, k)
  }
  if (isSecret(o)) {
    const { rest, values } = splitSecret(o.body)
    walk(rest, '')
    for (const v of values.values()) walk(v, '')
  } else walk(o.body, '')
  return { containers, words }
}

/** How a rendered manifest uses an image: or which other image stands where it should, differing in name or in tag. */
export type ImageUse = { used: true } | { used: false; instead?: { image: string; differs: 'name' | 'tag' } }

/**
 * Whether the objects use the image `name:tag`: a container runs it, or a string names it
 * (a hub's image spec such as KubeSpawner's), or one string holds both its name and its tag
 * (the values a chart hands its hub). Otherwise the image in its place, a container first;
 * `others` (the run's other images) are never that.
 */
export function imageUse(objects: ManifestObject[], name: string, tag: string, { others = [] }: { others?: string[] } = {}): ImageUse {
  const refs = objects.map(imageRefs)
  const spec = `${name}:${tag}`
  if (refs.some((r) => r.containers.includes(spec) || r.words.has(spec) || (r.words.has(name) && r.words.has(tag)))) return { used: true }
  // The run's other images (a hub image built in the same commit has the same tag) stand for themselves.
  const candidates = [...refs.flatMap((r) => r.containers), ...refs.flatMap((r) => [...r.words])].filter((c) => !others.includes(c))
  for (const image of candidates) {
    const at = image.lastIndexOf(':')
    if (at <= 0 || image.slice(at).includes('/')) continue
    const [n, t] = [image.slice(0, at), image.slice(at + 1)]
    if (t === tag && n !== name) return { used: false, instead: { image, differs: 'name' } }
    if (n === name && t !== tag && t) return { used: false, instead: { image, differs: 'tag' } }
  }
  return { used: false }
}

/** The object as YAML with sorted keys, so that a reordered map is no change. */
function objectYaml(body: Record<string, unknown>, YAML: typeof YAMLModule): string {
  return YAML.stringify(body, { sortMapEntries: true, lineWidth: 0 })
}

/** Equal JSON-like values, map order ignored. */
function sameValue(a: unknown, b: unknown): boolean {
  if (a === b) return true
  if (typeof a !== 'object' || typeof b !== 'object' || !a || !b || Array.isArray(a) !== Array.isArray(b)) return false
  const ka = Object.keys(a)
  const kb = Object.keys(b)
  return ka.length === kb.length && ka.every((k) => Object.hasOwn(b, k) && sameValue((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k]))
}

type EditOp = [' ' | '-' | '+', string]

/** Beyond this many differing lines the edit script is "replace all" (Myers' trace grows as D·(N+M)). */
const MAX_EDIT_DISTANCE = 2000

/** The shortest line edit script from x to y (Myers' O((N+M)·D) algorithm). */
function editScript(x: string[], y: string[]): EditOp[] {
  const n = x.length
  const m = y.length
  const max = n + m
  const v = new Int32Array(2 * max + 2)
  const trace: Int32Array[] = []
  search: for (let d = 0; d <= Math.min(max, MAX_EDIT_DISTANCE); d++) {
    trace.push(v.slice())
    for (let k = -d; k <= d; k += 2) {
      let i = k === -d || (k !== d && v[max + k - 1] < v[max + k + 1]) ? v[max + k + 1] : v[max + k - 1] + 1
      let j = i - k
      while (i < n && j < m && x[i] === y[j]) i++, j++
      v[max + k] = i
      if (i >= n && j >= m) break search
    }
    if (d === MAX_EDIT_DISTANCE) return [...x.map((l) => ['-', l] as EditOp), ...y.map((l) => ['+', l] as EditOp)]
  }
  const ops: EditOp[] = []
  let i = n
  let j = m
  for (let d = trace.length - 1; d >= 0; d--) {
    const w = trace[d]
    const k = i - j
    const prevK = k === -d || (k !== d && w[max + k - 1] < w[max + k + 1]) ? k + 1 : k - 1
    const prevI = w[max + prevK]
    const prevJ = prevI - prevK
    while (i > prevI && j > prevJ) ops.push([' ', x[--i]]), j--
    if (d > 0) ops.push(i === prevI ? ['+', y[--j]] : ['-', x[--i]])
  }
  return ops.reverse()
}

/** A unified diff of two texts (`---`/`+++` labels, hunks with `context` lines); '' when equal. */
export function unifiedDiff(before: string, after: string, labels: [string, string], context = 3): string {
  const lines = (t: string) => (t === '' ? [] : t.replace(/\n$/, '').split('\n'))
  const ops = editScript(lines(before), lines(after))
  if (ops.every(([op]) => op === ' ')) return ''
  const out = [`--- ${labels[0]}`, `+++ ${labels[1]}`]
  // Line numbers (1-based) of each op in both texts.
  let a = 1
  let b = 1
  const numbered = ops.map(([op, text]) => {
    const at = { op, text, a, b }
    if (op !== '+') a++
    if (op !== '-') b++
    return at
  })
  const changed = numbered.map((o, i) => (o.op === ' ' ? -1 : i)).filter((i) => i >= 0)
  let start = 0
  while (start < changed.length) {
    let end = start
    while (end + 1 < changed.length && changed[end + 1] - changed[end] <= 2 * context) end++
    const from = Math.max(0, changed[start] - context)
    const to = Math.min(numbered.length - 1, changed[end] + context)
    const hunk = numbered.slice(from, to + 1)
    const aLen = hunk.filter((o) => o.op !== '+').length
    const bLen = hunk.filter((o) => o.op !== '-').length
    const aStart = aLen ? hunk.find((o) => o.op !== '+')!.a : hunk[0].a - 1
    const bStart = bLen ? hunk.find((o) => o.op !== '-')!.b : hunk[0].b - 1
    out.push(`@@ -${aStart},${aLen} +${bStart},${bLen} @@`, ...hunk.map((o) => `${o.op}${o.text}`))
    start = end + 1
  }
  return out.join('\n') + '\n'
}

/**
 * Object by object, what changes from the release's manifest to the one the upgrade would
 * apply. A Secret's `data`/`stringData` never reach the diff: only which keys changed.
 */
function diffObjects(current: ManifestObject[], next: ManifestObject[], labels: [string, string], YAML: typeof YAMLModule): ObjectChange[] {
  const old = new Map(current.map((o) => [o.key, o]))
  const seen = new Set<string>()
  const changes: ObjectChange[] = []
  const secretKeys = (a: Map<string, string>, b: Map<string, string>) => ({
    added: [...b.keys()].filter((k) => !a.has(k)).sort(),
    removed: [...a.keys()].filter((k) => !b.has(k)).sort(),
    changed: [...b.keys()].filter((k) => a.has(k) && a.get(k) !== b.get(k)).sort(),
  })
  const entry = (o: ManifestObject, change: ObjectChange['change'], diff = '', keys?: ObjectChange['secretKeys']): ObjectChange =>
    ({ id: objectId(o), kind: o.kind, namespace: o.namespace, name: o.name, change, diff, ...(keys ? { secretKeys: keys } : {}) })
  for (const o of next) {
    seen.add(o.key)
    const before = old.get(o.key)
    const none = new Map<string, string>()
    if (!before) {
      changes.push(entry(o, 'added', '', isSecret(o) ? secretKeys(none, splitSecret(o.body).values) : undefined))
      continue
    }
    if (isSecret(o)) {
      const [a, b] = [splitSecret(before.body), splitSecret(o.body)]
      const keys = secretKeys(a.values, b.values)
      const keysChanged = keys.added.length + keys.removed.length + keys.changed.length > 0
      if (sameValue(a.rest, b.rest) && !keysChanged) continue
      const id = objectId(o)
      changes.push(entry(o, 'changed', unifiedDiff(objectYaml(a.rest, YAML), objectYaml(b.rest, YAML), [`${id} ${labels[0]}`, `${id} ${labels[1]}`]), keys))
    } else if (!sameValue(before.body, o.body)) {
      const id = objectId(o)
      changes.push(entry(o, 'changed', unifiedDiff(objectYaml(before.body, YAML), objectYaml(o.body, YAML), [`${id} ${labels[0]}`, `${id} ${labels[1]}`])))
    }
  }
  for (const o of current) {
    if (!seen.has(o.key)) changes.push(entry(o, 'removed', '', isSecret(o) ? secretKeys(splitSecret(o.body).values, new Map()) : undefined))
  }
  return changes
}

/** The summary line: `staginghub: 2 changed, 1 added, 0 removed`. */
function diffSummary(chart: string, s: ChartDiff['summary']): string {
  return `${chart}: ${s.changed} changed, ${s.added} added, ${s.removed} removed`
}

/** The text --diff prints for a chart: a header per object, its unified diff, the summary line. */
function formatDiff(chart: string, objects: ObjectChange[], summary: ChartDiff['summary'], installed: boolean): string {
  const lines: string[] = []
  if (!installed) lines.push(`${chart} is not installed: every object is added`)
  for (const o of objects) {
    lines.push(`${o.id}: ${o.change}`)
    if (o.diff) lines.push(o.diff.replace(/\n$/, ''))
    const k = o.secretKeys
    if (k) {
      const parts = [['added', k.added], ['removed', k.removed], ['changed', k.changed]].filter(([, keys]) => keys.length)
        .map(([what, keys]) => `${what} ${(keys as string[]).join(', ')}`)
      if (parts.length) lines.push(`  secret keys ${parts.join('; ')} (values not shown)`)
    }
  }
  lines.push(diffSummary(chart, summary))
  return lines.join('\n') + '\n'
}

/**
 * The whole comparison of a release's manifest (undefined: not installed) with the next one,
 * in the release's namespace `chart`: objects, summary and text, not yet masked.
 */
export async function diffManifests(current: string | undefined, next: string, chart: string, labels: [string, string]): Promise<Pick<ChartDiff, 'summary' | 'objects' | 'text'>> {
  const { default: YAML } = await import('yaml')
  const after = parseManifest(next, chart, YAML)
  const objects = diffObjects(parseManifest(current ?? '', chart, YAML), after, labels, YAML)
  const count = (c: ObjectChange['change']) => objects.filter((o) => o.change === c).length
  const summary = { changed: count('changed'), added: count('added'), removed: count('removed'), unchanged: 0 }
  summary.unchanged = after.length - summary.changed - summary.added
  return { summary, objects, text: formatDiff(chart, objects, summary, current !== undefined) }
}
