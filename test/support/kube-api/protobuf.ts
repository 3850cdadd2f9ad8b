// Protobuf, just enough to read helm's release Secrets: the 4-byte magic "k8s\0", then a
// runtime.Unknown {1: typeMeta {1: apiVersion, 2: kind}, 2: raw} whose raw bytes are a core/v1
// Secret {1: metadata, 2: data map<string,bytes>, 3: type, 4: stringData}.
import { ApiError, type Secret } from './objects.ts'

type PbValue = bigint | Buffer
type PbField = [number, PbValue]

function pbFields(buf: Buffer): PbField[] {
  const out: PbField[] = []
  let i = 0
  const varint = () => {
    let r = 0n
    for (let shift = 0n; ; shift += 7n) {
      if (i >= buf.length) throw new ApiError(400, 'BadRequest', 'truncated protobuf')
      const b = buf[i++]
      r |= BigInt(b & 0x7f) << shift
      if (!(b & 0x80)) return r
    }
  }
  while (i < buf.length) {
    const tag = Number(varint())
    const wire = tag & 7
    if (wire === 0) out.push([tag >>> 3, varint()])
    else if (wire === 2) {
      const n = Number(varint())
      out.push([tag >>> 3, buf.subarray(i, i + n)])
      i += n
    } else if (wire === 1) i += 8
    else if (wire === 5) i += 4
    else throw new ApiError(400, 'BadRequest', `unsupported protobuf wire type ${wire}`)
  }
  return out
}

const bytes = (v: PbValue | undefined) => (Buffer.isBuffer(v) ? v : Buffer.alloc(0))
const pbGet = (fields: PbField[], n: number) => bytes(fields.find(([f]) => f === n)?.[1])
const pbString = (v: PbValue) => (Buffer.isBuffer(v) ? v.toString('utf8') : String(v))
function pbMapEntry(v: PbValue): [string, Buffer] {
  const fields = pbFields(bytes(v))
  return [pbString(pbGet(fields, 1)), pbGet(fields, 2)]
}

const META_STRINGS: Record<number, 'name' | 'generateName' | 'namespace' | 'resourceVersion'> =
  { 1: 'name', 2: 'generateName', 3: 'namespace', 6: 'resourceVersion' }

export function decodeSecretProtobuf(body: Buffer): Secret {
  if (body.subarray(0, 4).toString('latin1') !== 'k8s\0') throw new ApiError(400, 'BadRequest', 'protobuf body without k8s magic')
  const unknown = pbFields(body.subarray(4))
  const kind = pbString(pbGet(pbFields(pbGet(unknown, 1)), 2))
  if (kind !== 'Secret') throw new ApiError(415, 'UnsupportedMediaType', `protobuf is only supported for Secret, got ${kind}`)
  const secret: Secret = { apiVersion: 'v1', kind: 'Secret', metadata: { name: '' } }
  const entry = (map: Record<string, string> | undefined, v: PbValue, encoding: BufferEncoding) => {
    const [k, val] = pbMapEntry(v)
    return { ...map, [k]: val.toString(encoding) }
  }
  for (const [f, v] of pbFields(pbGet(unknown, 2))) {
    if (f === 1) {
      for (const [mf, mv] of pbFields(bytes(v))) {
        if (META_STRINGS[mf]) secret.metadata[META_STRINGS[mf]] = pbString(mv)
        if (mf === 11) secret.metadata.labels = entry(secret.metadata.labels, mv, 'utf8')
        if (mf === 12) secret.metadata.annotations = entry(secret.metadata.annotations, mv, 'utf8')
      }
    } else if (f === 2) secret.data = entry(secret.data, v, 'base64')
    else if (f === 3) secret.type = pbString(v)
    else if (f === 4) secret.stringData = entry(secret.stringData, v, 'utf8')
  }
  return secret
}
