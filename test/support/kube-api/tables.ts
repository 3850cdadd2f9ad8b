// kubectl get asks for `meta.k8s.io/v1` Tables; these columns mimic the real server's printers.
import type { Deployment, Event, KubeObject, Pod } from './objects.ts'
import type { ResourceType } from './resources.ts'

type Column = [name: string, type: string, cell: (o: KubeObject) => unknown]

function age(ts: string | undefined): string {
  if (!ts) return '<unknown>'
  const s = Math.max(0, Math.round((Date.now() - Date.parse(ts)) / 1000))
  return s < 120 ? `${s}s` : s < 7200 ? `${Math.floor(s / 60)}m` : `${Math.floor(s / 3600)}h`
}

/** Columns of one kind: cells read the object as that kind. */
const columns = <T extends KubeObject>(cols: Array<[string, string, (o: T) => unknown]>) => cols as Column[]

const nameCol: Column = ['Name', 'string', (o) => o.metadata.name]
const ageCol: Column = ['Age', 'string', (o) => age(o.metadata.creationTimestamp)]
const podStatus = (p: Pod) =>
  p.status?.containerStatuses?.find((c) => c.state.waiting)?.state.waiting?.reason ?? p.status?.phase ?? 'Unknown'

const COLUMNS: Record<string, Column[]> = {
  pods: [nameCol, ...columns<Pod>([
    ['Ready', 'string', (p) => `${(p.status?.containerStatuses ?? []).filter((c) => c.ready).length}/${p.spec.containers.length}`],
    ['Status', 'string', podStatus], ['Restarts', 'string', () => '0'],
  ]), ageCol],
  events: columns<Event>([
    ['Last Seen', 'string', (e) => age(e.lastTimestamp)], ['Type', 'string', (e) => e.type], ['Reason', 'string', (e) => e.reason],
    ['Object', 'string', (e) => `${String(e.involvedObject.kind).toLowerCase()}/${e.involvedObject.name}`], ['Message', 'string', (e) => e.message],
  ]),
  deployments: [nameCol, ...columns<Deployment>([
    ['Ready', 'string', (d) => `${d.status.readyReplicas ?? 0}/${d.spec.replicas}`],
    ['Up-to-date', 'integer', (d) => d.status.updatedReplicas ?? 0], ['Available', 'integer', (d) => d.status.availableReplicas ?? 0],
  ]), ageCol],
}

export function toTable(t: ResourceType, items: KubeObject[], resourceVersion: string) {
  const cols = COLUMNS[t.resource] ?? [nameCol, ageCol]
  return {
    kind: 'Table', apiVersion: 'meta.k8s.io/v1', metadata: { resourceVersion },
    columnDefinitions: cols.map(([name, type]) => ({ name, type, format: name === 'Name' ? 'name' : '', description: name, priority: 0 })),
    // kubectl --sort-by sorts on rows[].object, so always include the full object
    rows: items.map((o) => ({ cells: cols.map(([, , cell]) => cell(o)), object: o })),
  }
}
