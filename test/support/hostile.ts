// Hostile-input suite support: secrets planted in unlikely-to-collide random-looking forms,
// and the checks every hostile case makes: no planted secret in any output or argv (whole,
// any 6-character piece of it, base64, URL-encoded, JSON-escaped), no stack trace, no
// credentials dir left behind, nothing run that changes anything.
import assert from 'node:assert/strict'
import fs from 'node:fs'
import { runDeploy, tempDir, PLANTED, type RunOptions, type RunResult, type Call } from './harness.ts'

/** Secrets this suite plants: random-looking, so a 6-character piece of one cannot occur by chance. */
export const HOSTILE = {
  token: 'Zq7vK2mXw9pR4tLsB8nY',
  password: 'Hj3#kP9!mW2@xQ7$',
  number: '98765432109876543210',
  multiline: 'Lx8Qm2Vz7Kp4Rt9W\nNb5Yc3Jd6Hf1Gs0T\nEa2Wq8Zu4Io7Py5M',
  url: 'Uv4Rk8Tn2Mq6Wz9X',
}

/** The encoded forms charts and tools commonly give a secret. */
export function encodedForms(secret: string): string[] {
  const b64 = (s: string) => Buffer.from(s).toString('base64')
  return [
    b64(secret), b64(`${secret}\n`), b64(`user:${secret}`), b64(secret).replace(/=+$/, ''),
    encodeURIComponent(secret), JSON.stringify(secret).slice(1, -1),
  ].filter((f) => f !== secret)
}

/** Every 6-character piece of a secret (each line of a multi-line one). */
export function piecesOf(secret: string, size = 6): string[] {
  const pieces = new Set<string>()
  for (const line of secret.split('\n')) for (let i = 0; i + size <= line.length; i++) pieces.add(line.slice(i, i + size))
  return [...pieces]
}

/**
 * Where a secret shows, whole, encoded or (with `pieces`: for random-looking secrets only,
 * whose pieces cannot occur by chance) in part; undefined when nowhere.
 */
export function leakOf(r: Pick<RunResult, 'stdout' | 'stderr' | 'calls'>, secret: string, pieces: boolean): string | undefined {
  const texts: Array<[string, string]> = [['stdout', r.stdout], ['stderr', r.stderr], ...r.calls.map((c: Call) => [`argv of ${c.tool}`, c.argv.join(' ')] as [string, string])]
  const forms = [[secret, 'whole'], ...encodedForms(secret).map((f) => [f, 'encoded']), ...(pieces ? piecesOf(secret) : []).map((p) => [p, 'a piece'])]
  for (const [form, kind] of forms) {
    const where = texts.find(([, t]) => t.includes(form))
    if (where) return `${kind} of ${secret.slice(0, 3)}... (${form}) in ${where[0]}`
  }
  return undefined
}

export interface HostileResult extends RunResult {
  /** The run's TMPDIR: the private credentials dir was made there. */
  tmp: string
}

/**
 * Runs deploy.ts with a private TMPDIR, then checks what holds for every hostile case:
 * no planted secret in any form, no stack trace or JavaScript error name, nothing left
 * in TMPDIR (the credentials dir is removed however the run ends).
 */
export async function hostileRun(repo: string, args: string[], options: RunOptions & { secrets?: string[] } = {}): Promise<HostileResult> {
  const tmp = tempDir('deploy-tmp-')
  const r = await runDeploy(repo, args, { ...options, env: { TMPDIR: tmp, ...options.env } })
  for (const secret of PLANTED) assert.equal(leakOf(r, secret, false), undefined, `secret leaked\n${show(r)}`)
  for (const secret of options.secrets ?? []) assert.equal(leakOf(r, secret, true), undefined, `secret leaked\n${show(r)}`)
  assert.doesNotMatch(r.stdout + r.stderr, /^\s+at .+[:(].*\d+:\d+\)?$/m, `stack trace in the output\n${show(r)}`)
  assert.doesNotMatch(r.stdout + r.stderr, /\b(TypeError|ReferenceError|SyntaxError|RangeError|YAMLParseError)\b|Uncaught|node:internal/, `JavaScript error in the output\n${show(r)}`)
  assert.deepEqual(fs.readdirSync(tmp).filter((f) => f.startsWith('deploy-')), [], `credentials dir left in TMPDIR\n${show(r)}`)
  return { ...r, tmp }
}

/** The run in one block, for assertion messages. */
export function show(r: Pick<RunResult, 'code' | 'stdout' | 'stderr' | 'commands'>): string {
  return `exit ${r.code}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}\n--- commands\n${r.commands.join('\n')}`
}

/** Commands that read only (Helm's version, registry and release lookups). */
const READ_ONLY = /^(helm version|helm history|docker manifest inspect)/

/** Asserts exit 2 (or `code`) with exactly one ERROR line matching `message`, and that nothing but read-only probes ran. */
export function assertRefused(r: HostileResult, message: RegExp, code = 2) {
  assert.equal(r.code, code, show(r))
  const errors = r.stderr.split('\n').filter((l) => l.startsWith('ERROR: '))
  assert.equal(errors.length, 1, `one ERROR line expected\n${show(r)}`)
  assert.match(errors[0], message, show(r))
  assert.deepEqual(r.commands.filter((c) => !READ_ONLY.test(c)), [], `nothing may run\n${show(r)}`)
}
