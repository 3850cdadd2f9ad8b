// Helm release Secrets: data.release is base64(gzip(release JSON)), base64'd again by JSON.
import { gunzipSync, gzipSync } from 'node:zlib'
import { clone, type JsonObject, type Secret } from './objects.ts'

/** The release JSON helm stores (the fields tests read; the rest is kept as is). */
export interface HelmRelease {
  name: string
  namespace: string
  version: number
  info: { status: string; description?: string; first_deployed?: string; last_deployed?: string; deleted?: string; [field: string]: unknown }
  manifest: string
  config: JsonObject
  chart: JsonObject
  [field: string]: unknown
}

export function decodeRelease(secret: Secret): HelmRelease {
  let raw = Buffer.from(Buffer.from(secret.data?.release ?? '', 'base64').toString('utf8'), 'base64')
  if (raw[0] === 0x1f && raw[1] === 0x8b) raw = gunzipSync(raw)
  return JSON.parse(raw.toString('utf8'))
}

const encodeRelease = (release: HelmRelease) => Buffer.from(gzipSync(JSON.stringify(release)).toString('base64')).toString('base64')

export const isRelease = (s: Secret, name: string) =>
  s.type === 'helm.sh/release.v1' && s.metadata.labels?.name === name && s.metadata.labels?.owner === 'helm'

export interface SeedReleaseOptions {
  name: string
  namespace: string
  /** Helm status label and release status, e.g. "pending-upgrade". */
  status: string
  /** Revision number; default: latest stored revision + 1 (or 1). */
  version?: number
  description?: string
  /** When it was deployed (ISO 8601, as helm history's `updated` shows it); default now. */
  deployedAt?: string
}

/** The Secret of a release revision as helm would write it, from the previous revision if any. */
export function releaseSecret({ name, namespace, status, version, description, deployedAt }: SeedReleaseOptions, previous?: HelmRelease): Secret {
  const ts = deployedAt ?? new Date().toISOString()
  const release: HelmRelease = previous ? clone(previous) : {
    name, namespace, version: 0, config: {}, manifest: '',
    chart: { metadata: { apiVersion: 'v2', name: 'seeded', version: '0.0.0' }, lock: null, templates: [], values: {}, schema: null, files: [] },
    info: { status, first_deployed: ts },
  }
  release.version = version ?? (previous?.version ?? 0) + 1
  release.info = { ...release.info, last_deployed: ts, deleted: '', status, description: description ?? 'Preparing upgrade' }
  return {
    apiVersion: 'v1', kind: 'Secret', type: 'helm.sh/release.v1',
    metadata: {
      name: `sh.helm.release.v1.${name}.v${release.version}`, namespace,
      labels: { name, owner: 'helm', status, version: String(release.version), createdAt: String(Math.floor(Date.now() / 1000)) },
    },
    data: { release: encodeRelease(release) },
  }
}
