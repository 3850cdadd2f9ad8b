/**
 * Secrets: the masking rule (docs/reliability.md), the secret values of one invocation, and
 * the secret files a run reads. Every line deploy.ts prints or relays passes through redact().
 */
import fs from 'node:fs'
import type YAMLModule from 'yaml'
import { DeployError, usageError } from './contract.ts'

/** One line for any thrown value: its message's first line, masked and at most 500 characters; never a stack. */
export function errorLine(e: unknown, secrets: Secrets): string {
  const message = (e as Error)?.message ?? e
  return secrets.redact(String(message).trim().split('\n')[0] || String(e), 500)
}

/** A DeployError for anything thrown: an unexpected error becomes one masked line, exit 1. */
export const asDeployError = (e: unknown, secrets: Secrets) => (e instanceof DeployError ? e : new DeployError(errorLine(e, secrets)))

/** Words of a key name (`secretToken`, `DOCKER_PASSWORD`, `client-secret`), lower-cased. */
const keyWords = (key: string) => key.replace(/([a-z0-9])([A-Z])/g, '$1 $2').toLowerCase().split(/[^a-z0-9]+/).filter(Boolean)
const SECRET_WORDS = new Set(['token', 'tokens', 'secret', 'secrets', 'password', 'passwords', 'passwd', 'pass', 'passphrase', 'key', 'keys', 'apikey', 'privatekey', 'auth', 'authorization', 'credential', 'credentials', 'cookie', 'webhook', 'signature', 'salt', 'dsn', 'pwd', 'pat', 'jwt'])
/** Secret only after another word (`MYSQL_PWD`, `GITHUB_PAT`, `CI_JOB_JWT`): alone, `PWD` is the working directory. */
const QUALIFIED_WORDS = new Set(['pwd', 'pat', 'jwt'])
/** The long secret words count fused to another word too (`PGPASSWORD`, `APITOKEN`). */
const FUSED_WORD = /(password|passwd|passphrase|token|secret|credential)s?$/
/** A last word that makes the key name a place or an identity, not the secret itself (`GCLOUD_KEY_FILE`). */
const NOT_SECRET_TAILS = new Set(['file', 'path', 'dir', 'directory', 'name', 'username', 'user', 'type', 'url', 'sock', 'socket', 'timeout', 'interval', 'enabled'])

/** Whether a key's value is a secret by the key's name alone. */
export function secretKey(key: string): boolean {
  // A number after a word is a second of the same kind (`DB_PASSWORD2`).
  const words = keyWords(key).map((w) => w.replace(/(?<=[a-z])\d+$/, ''))
  if (words.includes('webhook')) return true
  const secret = (w: string, i: number) => (SECRET_WORDS.has(w) ? !QUALIFIED_WORDS.has(w) || i > 0 : FUSED_WORD.test(w))
  return words.some(secret) && !NOT_SECRET_TAILS.has(words.at(-1)!)
}

/**
 * Whether a word looks like a credential (a token, a key): long, of the characters tokens are
 * made of, and not a host name or a path, which stay readable.
 */
export function tokenLike(word: string): boolean {
  return word.length >= 16 && /^[A-Za-z0-9._~+/=-]+$/.test(word) && !/^[a-z0-9.-]+$/.test(word) && !word.includes('/')
}

/** Never a secret, whatever its key: booleans, null, small numbers (docs/reliability.md). */
const NEVER_SECRET = /^(true|false|yes|no|on|off|null|none|~|[-+]?\d{1,6}(\.\d+)?)$/i

/** Text that is never a secret by itself: booleans, null, small numbers (with a unit), short words. */
export function ordinaryValue(text: string): boolean {
  const t = text.trim()
  return t.length < 4 || /^(true|false|yes|no|on|off|null|none|~)$/i.test(t) ||
    /^[-+]?\d{1,6}(\.\d+)?[a-zA-Z]{0,2}$/.test(t) || /^[A-Za-z]{1,10}$/.test(t)
}

/** The parts of base64(text) that do not depend on what surrounds text in the encoded data. */
function base64Cores(text: string): string[] {
  const bytes = new TextEncoder().encode(text)
  const cores: string[] = []
  for (let skip = 0; skip < 3; skip++) {
    const padded = new Uint8Array(skip + bytes.length)
    padded.set(bytes, skip)
    let binary = ''
    for (const b of padded) binary += String.fromCharCode(b)
    const b64 = btoa(binary)
    const core = b64.slice(Math.ceil((8 * skip) / 6), Math.floor((8 * (skip + bytes.length)) / 6))
    if (core.length >= 4) cores.push(core, core.replace(/\+/g, '-').replace(/\//g, '_'))
  }
  return cores
}

const escapeRegExp = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
/** userinfo of any URL (`scheme://user:password@host`); as URL parsers read it, the last `@` before the host ends it. */
const URL_USERINFO = /\b([a-z][a-z0-9+.-]*:\/\/)[^\s/?#'"<>]*@/gi

/** From this length on a secret is masked wherever it stands: glued to other text it still leaks. */
const MASK_INSIDE_WORDS = 8

/** A short form masked only as a whole token (no letter or digit glued to an edge that is one), a long one anywhere. */
const tokenPattern = (form: string) => form.length >= MASK_INSIDE_WORDS
  ? escapeRegExp(form)
  : `${/^[A-Za-z0-9]/.test(form) ? '(?<![A-Za-z0-9])' : ''}${escapeRegExp(form)}${/[A-Za-z0-9]$/.test(form) ? '(?![A-Za-z0-9])' : ''}`

/** The secret values of one invocation: each is printed as ***. */
export class Secrets {
  /** Secrets and their encodings: short ones masked as whole tokens, the rest anywhere. */
  private readonly values = new Set<string>()
  /** The parts of their base64 forms, masked wherever they stand (inside a longer base64 text too). */
  private readonly cores = new Set<string>()
  /** Names that are never secrets (the charts'): a value equal to one is not registered. */
  private readonly names = new Set<string>()
  /** The masking expressions, built again after a registration. */
  private pattern: { tokens?: RegExp; cores?: RegExp } | undefined

  /** Registers a secret value: from now on it is printed as ***, in every common encoding. */
  add(value: string | number | boolean | undefined | null) {
    if (value === undefined || value === null) return
    const v = String(value).trim()
    if (!v || NEVER_SECRET.test(v) || this.names.has(v)) return
    const forms = new Set([v, JSON.stringify(v).slice(1, -1), encodeURIComponent(v), encodeURIComponent(v).replace(/%20/g, '+')])
    // Multi-line secrets (private keys) may be relayed line by line; their armor lines are not secret.
    for (const line of v.split(/\\n|\r?\n/)) {
      const l = line.trim()
      if (l.length >= 4 && !/^-----(BEGIN|END) [A-Z ]+-----$/.test(l) && !this.names.has(l)) forms.add(l)
    }
    for (const form of forms) this.values.add(form)
    if (v.length >= 4) for (const core of base64Cores(v)) this.cores.add(core)
    this.pattern = undefined
  }

  /** Names that are never masked, whatever a file says (a chart's name, equal to some value, stays readable). */
  allow(names: Iterable<string>) {
    for (const name of names) this.names.add(name)
  }

  /** Registers a value found under `key` in a secret file (or a release's values), by the masking rule. */
  addValue(key: string, value: unknown) {
    if (value === undefined || value === null) return
    const text = String(value)
    if (secretKey(key) || !ordinaryValue(text)) this.add(text)
  }

  /** One expression for all tokens and one for all base64 parts, longest first. */
  private expressions() {
    if (this.pattern) return this.pattern
    const longestFirst = (set: Set<string>) => [...set].sort((a, b) => b.length - a.length)
    const tokens = longestFirst(this.values).map(tokenPattern)
    const cores = longestFirst(this.cores).map(escapeRegExp)
    this.pattern = {
      tokens: tokens.length ? new RegExp(tokens.join('|'), 'g') : undefined,
      cores: cores.length ? new RegExp(cores.join('|'), 'g') : undefined,
    }
    return this.pattern
  }

  /**
   * Masks every registered secret, and the userinfo of every URL, as ***. With `max`, the
   * result is shortened to at most that many characters after masking, and a cut that
   * ends inside a secret masks the part left.
   */
  redact = (text: string, max?: number): string => {
    const { tokens, cores } = this.expressions()
    let out = String(text).replace(URL_USERINFO, '$1***@')
    if (tokens) out = out.replace(tokens, '***')
    if (cores) out = out.replace(cores, '***')
    if (max === undefined || out.length <= max) return out
    let cut = out.slice(0, Math.max(0, max - 1))
    for (const s of [...this.values, ...this.cores]) {
      for (let k = Math.min(s.length - 1, cut.length); k >= 3; k--) {
        if (cut.endsWith(s.slice(0, k))) {
          cut = cut.slice(0, cut.length - k) + '***'
          break
        }
      }
    }
    return `${cut}…`
  }

  /** Registers the values of .env and environment keys that look secret, and every URL's password. */
  addFromEnv(env: Record<string, string | undefined>) {
    for (const [key, value] of Object.entries(env)) {
      if (!value) continue
      if (secretKey(key)) this.add(value)
      for (const m of value.matchAll(/[a-z][a-z0-9+.-]*:\/\/([^\s/?#]+)@/gi)) this.addUserinfo(m[1])
    }
  }

  /** A URL's `user:password`: the password (as written and decoded) is a secret. */
  private addUserinfo(userinfo: string) {
    const password = userinfo.includes(':') ? userinfo.slice(userinfo.indexOf(':') + 1) : userinfo
    this.add(password)
    try {
      this.add(decodeURIComponent(password))
    } catch {
      // Not percent-encoded.
    }
  }

  /** Registers every leaf of a YAML secret file by the masking rule: its value, and a plain scalar as written (`12345678901234567890`). */
  addYaml(text: string, YAML: typeof YAMLModule) {
    const doc = YAML.parseDocument(text, { logLevel: 'silent' })
    if (doc.errors.length) return this.addLines(text)
    YAML.visit(doc, {
      Scalar: (key, node, ancestors) => {
        if (key === 'key') return
        const pair = [...ancestors].reverse().find((a) => YAML.isPair(a)) as { key?: unknown } | undefined
        const name = pair && YAML.isScalar(pair.key) ? String(pair.key.value) : ''
        this.addValue(name, node.value)
        if (node.type === 'PLAIN' && node.range) this.addValue(name, text.slice(node.range[0], node.range[1]))
      },
    })
  }

  /**
   * Registers the secrets of a file that did not parse, line by line: the value of each
   * `key: value` (or `"key": "value",`) line by the masking rule, any other line as a value.
   */
  addLines(text: string) {
    for (const line of text.split(/\r?\n/)) {
      const m = /^\s*(?:-\s+)?(?:["']?([\w.-]+)["']?\s*:\s+)?(.*?)\s*$/.exec(line)
      if (!m || !m[2]) continue
      this.addValue(m[1] ?? '', m[2])
      this.addValue(m[1] ?? '', m[2].replace(/^[[{"'|>\s]+|[\]}"',\s]+$/g, ''))
    }
  }
}

/** A secret file's text, or undefined when it is missing, unreadable or still encrypted. */
/**
 * What `file` is when it exists but is not a regular file (`a FIFO (named pipe)`, `a
 * directory`); undefined for a regular file or none. Reading a FIFO waits for a writer for ever.
 */
export function notAFile(file: string): string | undefined {
  let stat: fs.Stats
  try {
    stat = fs.statSync(file)
  } catch {
    return undefined
  }
  if (stat.isFile()) return undefined
  return stat.isDirectory() ? 'a directory' : stat.isFIFO() ? 'a FIFO (named pipe)' : stat.isSocket() ? 'a socket' : 'a device'
}

export function readIfPlain(file: string): string | undefined {
  if (notAFile(file)) return undefined
  try {
    const bytes = fs.readFileSync(file)
    return bytes.subarray(0, 9).toString('latin1') === '\0GITCRYPT' ? undefined : bytes.toString('utf8')
  } catch {
    return undefined
  }
}

/** Reads a secret file, refusing one that git-crypt has not unlocked. */
export function readSecretFile(file: string, what: string, fix: string): string {
  if (!fs.existsSync(file)) throw usageError(`${file}: ${what} not found; ${fix}`)
  const kind = notAFile(file)
  if (kind) throw usageError(`${file}: ${what} is ${kind}, not a file; ${fix}`)
  const bytes = fs.readFileSync(file)
  if (bytes.subarray(0, 9).toString('latin1') === '\0GITCRYPT') {
    throw usageError(`${file} is encrypted: run \`git-crypt unlock\` first`)
  }
  return bytes.toString('utf8')
}

/**
 * Refuses a secrets YAML file that does not parse, naming the file and line, never its
 * content; and one sops encrypted (hubploy's secrets: docs/migrating.md), whose `ENC[...]`
 * values helm would deploy as they are.
 */
export function checkSecretsYaml(file: string, text: string, YAML: typeof YAMLModule) {
  const doc = YAML.parseDocument(text, { logLevel: 'silent' })
  const error = doc.errors[0]
  if (error) {
    const line = error.linePos?.[0]?.line
    const what = error.code.toLowerCase().replace(/_/g, ' ')
    throw usageError(`${file}${line ? `:${line}` : ''}: not valid YAML (${what}); fix the file (its content is not shown: it holds secrets)`)
  }
  const sops = (doc.toJS() as { sops?: unknown } | null)?.sops
  if (sops && typeof sops === 'object' && 'mac' in sops) {
    throw usageError(`${file} is encrypted with sops: helm would deploy its ENC[...] values as they are; decrypt it (sops --decrypt --in-place ${file}) and let git-crypt encrypt it (docs/migrating.md#from-hubploy)`)
  }
}

/** Reads a secret file the run needs; a dry run notes a missing or locked one and goes on. */
export function secretFileFor(request: { readonly dryRun: boolean }, out: { print(text: string): void }, file: string, what: string, fix: string, check?: (text: string) => void): string | undefined {
  try {
    const text = readSecretFile(file, what, fix)
    check?.(text)
    return text
  } catch (e) {
    if (!request.dryRun) throw e
    out.print(`# ${(e as Error).message} (a real run stops here, exit 2)`)
    return undefined
  }
}

/** Applies `redact` to every string of a JSON-like value (text reaches other systems: mask it all). */
export function redactDeep<T>(value: T, redact: Secrets['redact']): T {
  if (typeof value === 'string') return redact(value) as T
  if (Array.isArray(value)) return value.map((v) => redactDeep(v, redact)) as T
  if (value && typeof value === 'object') return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, redactDeep(v, redact)])) as T
  return value
}

/**
 * The error as the `fail` hooks and the summary get it: message, command and output with
 * every secret masked, whatever threw it (a plugin's error text is not redacted yet).
 */
export function masked(e: DeployError, redact: Secrets['redact']): DeployError {
  const copy = new DeployError(redact(e.message), e.exitCode, { phase: e.phase, command: e.command && redact(e.command), output: e.output && redact(e.output) })
  copy.reported = e.reported
  return copy
}
