// Image tags from git history: one `git log` for all image dirs must give what the
// original's `git log -n N --pretty=format:%h <dir>` gives for each dir, merges included.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { gitModified, makeExec, Invocation } from '../deploy.ts'
import { makeRepo, commit, git } from './support/harness.ts'

/** The original's last_git_modified(dir, n) for n = 1..5, newest first. */
function original(repo: string, dir: string): string[] {
  const lines = git(repo, 'log', '-n', '5', '--pretty=format:%h', '--', dir).split('\n').filter(Boolean)
  return lines
}

test('one git log gives each dir the last five commits the original would find', { timeout: 20_000 }, async () => {
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

  const cwd = process.cwd()
  process.chdir(repo)
  try {
    const invocation = new Invocation()
    const exec = makeExec({ env: process.env, dryRun: false, out: invocation.log, heartbeatSeconds: 0, invocation })
    const dirs = ['user-images/staginghub', 'hub-images/staginghub']
    const found = await gitModified(exec, dirs)
    for (const dir of dirs) assert.deepEqual(found.get(dir), original(repo, dir), dir)
  } finally {
    process.chdir(cwd)
  }
})
