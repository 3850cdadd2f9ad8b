// labelSelector (=, ==, !=, in, notin, exists, !exists) and fieldSelector (=, ==, != on dotted
// paths such as metadata.name or involvedObject.name).
import { ApiError, isObj, type KubeObject, type Labels } from './objects.ts'

function splitTerms(s: string): string[] {
  const out = ['']
  let depth = 0 // commas inside "in (a,b)" do not split
  for (const c of s) {
    depth += c === '(' ? 1 : c === ')' ? -1 : 0
    if (c === ',' && depth === 0) out.push('')
    else out[out.length - 1] += c
  }
  return out.map((t) => t.trim()).filter(Boolean)
}

function labelTest(term: string): (l: Labels) => boolean {
  let m = term.match(/^!\s*(\S+)$/)
  if (m) {
    const key = m[1]
    return (l) => !(key in l)
  }
  m = term.match(/^(\S+)\s+(in|notin)\s+\((.*)\)$/)
  if (m) {
    const [, key, op, list] = m
    const values = list.split(',').map((v) => v.trim())
    return op === 'in' ? (l) => values.includes(l[key]) : (l) => !values.includes(l[key])
  }
  m = term.match(/^([^!=\s]+)\s*(==|=|!=)\s*(.*)$/)
  if (m) {
    const [, key, op, value] = m
    return op === '!=' ? (l) => l[key] !== value : (l) => l[key] === value
  }
  return (l) => term in l
}

export function labelMatcher(selector: string | null): (labels: Labels | undefined) => boolean {
  if (!selector) return () => true
  const tests = splitTerms(selector).map(labelTest)
  return (labels) => tests.every((test) => test(labels ?? {}))
}

const fieldAt = (obj: unknown, path: string) =>
  String(path.split('.').reduce<unknown>((v, k) => (isObj(v) ? v[k] : undefined), obj) ?? '')

export function fieldMatcher(selector: string | null): (obj: KubeObject) => boolean {
  if (!selector) return () => true
  const tests = splitTerms(selector).map((term) => {
    const m = term.match(/^([^!=]+)(==|=|!=)(.*)$/)
    if (!m) throw new ApiError(400, 'BadRequest', `invalid field selector: ${term}`)
    const [, path, op, value] = m
    return op === '!=' ? (o: KubeObject) => fieldAt(o, path) !== value : (o: KubeObject) => fieldAt(o, path) === value
  })
  return (obj) => tests.every((test) => test(obj))
}

/** Both selectors of a list or watch request. */
export function queryMatcher(q: URLSearchParams): (obj: KubeObject) => boolean {
  const fields = fieldMatcher(q.get('fieldSelector'))
  const labels = labelMatcher(q.get('labelSelector'))
  return (obj) => fields(obj) && labels(obj.metadata.labels)
}
