/** Git: image tags, the commit range, and what is committed. */
import process from 'node:process'
import fs from 'node:fs'
import { RefusedError, usageError, type Exec, type Logger } from './contract.ts'
import { INSTALL_HINTS, onPath, type Output } from './process.ts'
import { notAFile } from './secrets.ts'
import type { Request, Tools } from './plan.ts'

/**
 * For each dir, the abbreviated hashes of the last five commits that touched it, newest
 * first: the original's own command, `git log -n 5 --pretty=format:%h -- <dir>`, once per
 * dir and all at once. Element n-1 is last_git_modified(dir, n). One `git log --name-only`
 * for every dir cannot give the same answers: git picks a path's commits (merges, reverts,
 * renames) by simplifying the history for that path, which a list of files per commit does
 * not reproduce (a cleanly merged branch lists no files under --cc, and its merge would be lost).
 */
export async function gitModified(exec: Exec, dirs: string[]): Promise<Map<string, string[]>> {
  const logs = await Promise.all(dirs.map((dir) =>
    exec('git', ['log', '-n', '5', '--pretty=format:%h', '--', dir], { capture: true, show: 'silent', readOnly: true, timeout: GIT_TIMEOUT })))
  return new Map(dirs.map((dir, i) => [dir, logs[i].stdout.split('\n').map((l) => l.trim()).filter(Boolean)]))
}

/** Local git commands get this long (a huge repository, a stuck filesystem). */
const GIT_TIMEOUT = 120

/** A revision or range (`main..HEAD`, `a1b2c3...d4e5f6`): never an option, no spaces. */
const COMMIT_RANGE = /^[\w@{}^~:/.-]+$/

/** Refuses a range that is not one, naming where it came from; git also gets --end-of-options. */
export function checkRange(range: string, source: string): string {
  // Either end of a range that starts with `-` would reach git as an option (`abc..--stat`).
  if (!COMMIT_RANGE.test(range) || range.split(/\.{2,3}/).some((end) => end.startsWith('-'))) {
    throw usageError(`${source}=${range}: not a commit range; give one such as main..HEAD or a1b2c3d...e4f5a6b`)
  }
  return range
}

/** The commit range CI built: Travis's variable, or the before..after of a GitHub push. */
export function commitRange(env: NodeJS.ProcessEnv, out: Logger): string | undefined {
  if (env.TRAVIS_COMMIT_RANGE) return checkRange(env.TRAVIS_COMMIT_RANGE, 'TRAVIS_COMMIT_RANGE')
  if (env.GITHUB_EVENT_NAME === 'push' && env.GITHUB_EVENT_PATH) {
    let event: { before?: unknown; after?: unknown }
    // Never opened unless a regular file: a FIFO would wait for a writer for ever.
    const kind = notAFile(env.GITHUB_EVENT_PATH)
    try {
      if (kind) throw new Error(kind)
      event = JSON.parse(fs.readFileSync(env.GITHUB_EVENT_PATH, 'utf8'))
    } catch {
      out.warn(`GITHUB_EVENT_PATH=${env.GITHUB_EVENT_PATH}: ${kind ? `${kind}, ` : ''}not a readable JSON event, so the pushed range is unknown: an image is rebuilt only when its tag is missing from the registry`)
      return undefined
    }
    if (event && typeof event.before === 'string' && typeof event.after === 'string' && event.before && event.after) {
      return checkRange(`${event.before}..${event.after}`, 'GITHUB_EVENT_PATH before..after')
    }
  }
  return undefined
}

/**
 * The files `range` changed (below `paths`, if given), verbatim (-z); undefined, after a
 * warning ending in `fallback`, when git cannot read the range (a force push or a first build).
 */
async function changedFiles(exec: Exec, out: Output, range: string, fallback: string, paths: string[] = []): Promise<string[] | undefined> {
  const only = paths.length ? ['--', ...paths] : []
  const diff = await exec('git', ['diff', '--name-only', '-z', '--end-of-options', range, ...only], { capture: true, nothrow: true, show: 'silent', readOnly: true, timeout: GIT_TIMEOUT })
  if (diff.exitCode === 0) return diff.stdout.split('\0').filter(Boolean)
  // Only a range git does not know means "everything changed"; any other complaint is git's own.
  if (!/bad revision|unknown revision|ambiguous argument|invalid (revision|object|symmetric)|bad object/i.test(diff.stderr)) {
    // Outside a repository git diff only prints its usage: rev-parse says why.
    const why = await exec('git', ['rev-parse', 'HEAD'], { capture: true, nothrow: true, show: 'silent', readOnly: true, timeout: GIT_TIMEOUT })
    throw usageError(gitProblem(why.exitCode !== 0 ? why.stderr : diff.stderr))
  }
  out.warn(`commit range ${range} is not valid here (force push or first build?): ${fallback}`)
  return undefined
}

/**
 * The files under `dirs` with uncommitted changes (untracked files included, ignored ones
 * not): what the run would build or deploy from them is not what the commit says.
 */
export async function dirtyFiles(exec: Exec, dirs: string[], ignore?: RegExp): Promise<string[]> {
  if (dirs.length === 0) return []
  const args = ['status', '--porcelain=v1', '-z', '--untracked-files=all', '--', ...dirs]
  const { stdout } = await exec('git', args, { capture: true, show: 'silent', readOnly: true, timeout: GIT_TIMEOUT })
  // Entries: `XY <path>`; a rename or copy adds its source as the next field.
  const fields = stdout.split('\0')
  const paths: string[] = []
  for (let i = 0; i < fields.length; i++) {
    if (fields[i].length < 4) continue
    paths.push(fields[i].slice(3))
    if (/[RC]/.test(fields[i][0])) paths.push(fields[++i] ?? '')
  }
  return paths.filter((p) => !ignore?.test(p) && dirs.some((dir) => p === dir || p.startsWith(`${dir}/`)))
}

/** The dirs the commit range touched; a range git cannot read touched them all. */
export async function touchedDirs(exec: Exec, out: Output, range: string, dirs: string[]): Promise<Set<string>> {
  const files = await changedFiles(exec, out, range, `treating ${dirs.join(', ')} as changed`, dirs)
  if (!files) return new Set(dirs)
  return new Set(dirs.filter((dir) => files.some((f) => f.startsWith(`${dir}/`))))
}

/** What --changed needs to know of a chart: the paths and configuration keys whose change changes it (ChartFiles). */
export interface Watched {
  chart: string
  /** Files, and dirs ending in `/`. */
  watched: readonly string[]
  keys: readonly string[]
}

/**
 * Charts whose files the commit range changed; deploy.ts, lib/, plugins/, package.json or
 * deno.json mean all. A key a chart watches, changed in the committed env file, changes it.
 */
export async function changedCharts(exec: Exec, out: Output, range: string, charts: Watched[], envFile: string): Promise<string[]> {
  const all = charts.map((c) => c.chart)
  const files = await changedFiles(exec, out, range, 'every chart counts as changed')
  if (!files) return all
  if (files.some((file) => file === 'deploy.ts' || file.startsWith('lib/') || file.startsWith('plugins/') || file === 'package.json' || file === 'package-lock.json' || file === 'deno.json')) return all
  const keys = files.includes(envFile) ? await changedKeys(exec, range, envFile) : new Set<string>()
  const touches = (file: string, w: string) => (w.endsWith('/') ? file.startsWith(w) : file === w)
  return charts.filter((c) => c.keys.some((k) => keys.has(k)) || files.some((file) => c.watched.some((w) => touches(file, w)))).map((c) => c.chart)
}

/** The keys whose lines the range added, changed or removed in a KEY=VALUE file. */
async function changedKeys(exec: Exec, range: string, file: string): Promise<Set<string>> {
  const diff = await exec('git', ['diff', '-U0', '--end-of-options', range, '--', file], { capture: true, show: 'silent', readOnly: true, timeout: GIT_TIMEOUT })
  const keys = diff.stdout.split('\n').filter((l) => /^[-+](?![-+]{2} )/.test(l)).map((l) => /^[-+]\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.-]*)\s*=/.exec(l)?.[1])
  return new Set(keys.filter((k): k is string => !!k))
}

/** The git repository and its commit; a shallow clone would give wrong image tags. */
export async function checkGit(request: Request, { exec, env }: Tools): Promise<string> {
  if (!onPath('git', env)) throw usageError(`git not found on PATH: ${INSTALL_HINTS.git}`)
  const rev = await exec('git', ['rev-parse', '--is-shallow-repository', 'HEAD'], { capture: true, nothrow: true, show: 'silent', readOnly: true, timeout: GIT_TIMEOUT })
  if (rev.exitCode !== 0) throw usageError(gitProblem(rev.stderr))
  const [shallow, commit] = rev.stdout.trim().split('\n')
  if (shallow === 'true' && (request.phases.build || request.phases.deploy || request.phases.diff)) {
    throw usageError('this is a shallow clone, so image tags would be wrong: run `git fetch --unshallow` (in CI, clone with full depth)')
  }
  return commit
}

/** How git-crypt's clean filter begins every blob it encrypts. */
const GIT_CRYPT_HEADER = '\0GITCRYPT\0'

/**
 * The files of HEAD that .gitattributes gives to git-crypt (filter=git-crypt) but whose
 * committed blob is not encrypted: added before git-crypt was set up. The work tree cannot
 * tell (an unlocked clone shows clear text either way); the blob can, without git-crypt.
 */
async function committedInClear(exec: Exec): Promise<string[]> {
  const quiet = { capture: true, show: 'silent', readOnly: true, timeout: GIT_TIMEOUT } as const
  const files = (await exec('git', ['ls-tree', '-r', '-z', '--name-only', 'HEAD'], quiet)).stdout.split('\0').filter(Boolean)
  if (files.length === 0) return []
  // -z: `<path> NUL filter NUL <value> NUL` for each path.
  const attrs = (await exec('git', ['check-attr', '-z', '--stdin', 'filter'], { ...quiet, input: files.join('\0') })).stdout.split('\0')
  const crypted: string[] = []
  for (let i = 0; i + 2 < attrs.length; i += 3) if (attrs[i + 2] === 'git-crypt') crypted.push(attrs[i])
  // A submodule is no blob: cat-file fails, and it is left out.
  const blobs = await Promise.all(crypted.map((file) => exec('git', ['cat-file', 'blob', `HEAD:${file}`], { ...quiet, nothrow: true })))
  return crypted.filter((_, i) => blobs[i].exitCode === 0 && !blobs[i].stdout.startsWith(GIT_CRYPT_HEADER))
}

/**
 * Secrets committed in clear are refused (exit 3) before anything runs, with what happened
 * and the fix; a dry run notes it in its plan.
 */
export async function refuseClearSecrets(request: Request, { exec, out }: Tools) {
  const clear = await committedInClear(exec)
  if (clear.length === 0) return
  const [one, it, its] = clear.length === 1 ? ['is', 'it', 'its'] : ['are', 'them', 'their']
  const error = new RefusedError(`${clear.join(', ')} ${one} committed in clear although .gitattributes gives ${it} to git-crypt (added before git-crypt was set up?): ${its} secrets are in the git history, so rotate them; then, in a clone where git-crypt is unlocked, run \`git-crypt status -f\` (or \`git rm --cached\` and \`git add\` ${it} again) and commit`)
  if (!request.dryRun) throw error
  out.print(`# ${error.message} (a real run stops here, exit 3)`)
}

/** Why git cannot read the repository here, in git's own words, with the fix. */
function gitProblem(stderr: string): string {
  const said = stderr.split('\n').map((l) => l.replace(/^(fatal|error): /, '').trim()).filter(Boolean)
  const first = said[0] ?? 'git rev-parse failed'
  const where = process.cwd()
  if (/dubious ownership/.test(first)) {
    return `git refuses ${where}: ${first} (owned by another user); if you trust it, run \`git config --global --add safe.directory ${where}\``
  }
  if (/not a git repository/i.test(first)) return `${where} is not a git repository (git: ${first}): run deploy.ts from the root of the ops repository`
  if (/ambiguous argument 'HEAD'|unknown revision/.test(first)) return `${where} is a git repository without commits: commit the charts first`
  return `git cannot read the repository in ${where}: ${first}`
}
