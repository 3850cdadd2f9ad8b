// Image tags from git history: gitModified must give what the original's
// `git log -n N --pretty=format:%h <dir>` gives for each dir, for every history shape.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { gitModified, makeExec, Invocation } from '../deploy.ts'
import { makeRepo, commit, git } from './support/harness.ts'

/** The original's last_git_modified(dir, n) for n = 1..5, newest first. */
function original(repo: string, dir: string): string[] {
  const lines = git(repo, 'log', '-n', '5', '--pretty=format:%h', '--', dir).split('\n').filter(Boolean)
  return lines
}

test('each dir gets the last five commits the original would find', { timeout: 60_000 }, async () => {
  const repo = makeRepo({ hubImages: ['staginghub'] })
  for (let i = 0; i < 4; i++) {
    commit(repo, { 'user-images/staginghub/Dockerfile': `FROM scratch\nLABEL v=${i}\n` })
    commit(repo, { 'docs/notes.md': `${i}\n` })
    if (i % 2) commit(repo, { 'hub-images/staginghub/Dockerfile': `FROM scratch\nLABEL h=${i}\n`, 'user-images/staginghub/extra': `${i}\n` })
  }
  // A merge whose result differs from both parents in the user image dir (a resolved conflict).
  git(repo, 'checkout', '-q', '-b', 'side')
  commit(repo, { 'user-images/staginghub/Dockerfile': 'FROM scratch\nLABEL side=1\n' })
  git(repo, 'checkout', '-q', 'main')
  commit(repo, { 'user-images/staginghub/Dockerfile': 'FROM scratch\nLABEL main=1\n' })
  try {
    git(repo, 'merge', '-q', 'side')
  } catch {
    commit(repo, { 'user-images/staginghub/Dockerfile': 'FROM scratch\nLABEL merged=1\n' }, 'merge side')
  }
  // A merge that only brings in a side branch's change to the hub image.
  git(repo, 'checkout', '-q', '-b', 'side2')
  commit(repo, { 'hub-images/staginghub/Dockerfile': 'FROM scratch\nLABEL side2=1\n' })
  git(repo, 'checkout', '-q', 'main')
  commit(repo, { 'docs/other.md': 'x\n' })
  git(repo, 'merge', '-q', '--no-edit', 'side2')

  await assertLikeOriginal(repo, ['user-images/staginghub', 'hub-images/staginghub'])
})

/** gitModified in `repo` gives, for each dir, the original's answers. */
async function assertLikeOriginal(repo: string, dirs: string[], what = '') {
  const cwd = process.cwd()
  process.chdir(repo)
  try {
    const invocation = new Invocation()
    const exec = makeExec({ env: process.env, dryRun: false, out: invocation.log, heartbeatSeconds: 0, invocation })
    const found = await gitModified(exec, dirs)
    for (const dir of dirs) assert.deepEqual(found.get(dir), original(repo, dir), `${what} ${dir}`)
  } finally {
    process.chdir(cwd)
  }
}

const USER = 'user-images/staginghub'
const HUB = 'hub-images/staginghub'
const side = (repo: string, branch: string, files: Record<string, string>) => {
  git(repo, 'checkout', '-q', '-b', branch)
  commit(repo, files)
  git(repo, 'checkout', '-q', 'main')
}

test('a branch merged with a merge commit after another branch touched the dir: the merge is the tag (issue 18)', { timeout: 60_000 }, async () => {
  // B touches the dir first, A later; A is merged first; then B with a clean merge commit.
  const repo = makeRepo()
  side(repo, 'b', { [`${USER}/b.txt`]: 'b\n' })
  side(repo, 'a', { [`${USER}/a.txt`]: 'a\n' })
  git(repo, 'merge', '-q', '--no-ff', '--no-edit', 'a')
  git(repo, 'merge', '-q', '--no-ff', '--no-edit', 'b')
  const merge = git(repo, 'log', '-n', '1', '--pretty=format:%h')
  assert.equal(original(repo, USER)[0], merge, 'the original tags the merge')
  await assertLikeOriginal(repo, [USER, HUB])
})

test('octopus merges, reverts and renames into and out of the dir give the original\'s tags', { timeout: 60_000 }, async () => {
  const repo = makeRepo({ hubImages: ['staginghub'] })
  side(repo, 'o1', { [`${USER}/o1`]: '1\n' })
  side(repo, 'o2', { [`${HUB}/o2`]: '2\n' })
  side(repo, 'o3', { 'docs/o3.md': '3\n' })
  git(repo, 'merge', '-q', '--no-edit', 'o1', 'o2', 'o3')
  await assertLikeOriginal(repo, [USER, HUB], 'octopus')
  commit(repo, { [`${USER}/Dockerfile`]: 'FROM scratch\nLABEL reverted=1\n' })
  git(repo, 'revert', '--no-edit', 'HEAD')
  await assertLikeOriginal(repo, [USER, HUB], 'revert')
  commit(repo, { 'elsewhere/moved.txt': 'moved in\n' })
  git(repo, 'mv', 'elsewhere/moved.txt', `${USER}/moved.txt`)
  git(repo, 'commit', '-q', '-m', 'rename into the dir')
  await assertLikeOriginal(repo, [USER, HUB], 'rename in')
  git(repo, 'mv', `${HUB}/o2`, 'elsewhere/o2')
  git(repo, 'commit', '-q', '-m', 'rename out of the dir')
  await assertLikeOriginal(repo, [USER, HUB], 'rename out')
})

test('generated histories with merges: every dir, every n, as the original', { timeout: 120_000 }, async () => {
  // A small deterministic generator: commits on main and on branches, merged with and without
  // fast-forward, touching the image dirs, other files or both.
  let seed = 7
  // An LCG's low bits cycle quickly: take the high ones.
  const random = (n: number) => Math.floor((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 16) % n
  for (let round = 0; round < 6; round++) {
    const repo = makeRepo({ hubImages: ['staginghub'] })
    const places = [`${USER}/f`, `${HUB}/f`, 'docs/f.md', `${USER}/g`]
    for (let step = 0; step < 14; step++) {
      const branch = `br${round}-${step}`
      const files = Object.fromEntries([places[random(4)], places[random(4)]].map((p) => [p, `${round}.${step}.${random(1000)}\n`]))
      if (random(3) === 0) {
        commit(repo, files)
        continue
      }
      side(repo, branch, files)
      // Main moves on too, most often in the same dirs, so many merges are clean merges of both.
      if (random(3) !== 0) commit(repo, { [places[random(4)]]: `main ${step}\n` })
      try {
        git(repo, 'merge', '-q', ...(random(2) ? ['--no-ff'] : []), '--no-edit', branch)
      } catch {
        // A conflict: resolve it as a person would, with a file of both.
        commit(repo, Object.fromEntries(places.map((p) => [p, `resolved ${step}\n`])), `merge ${branch}`)
      }
    }
    await assertLikeOriginal(repo, [USER, HUB], `round ${round}`)
  }
})
