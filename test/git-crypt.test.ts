// Secrets committed in clear: a file .gitattributes gives to git-crypt whose committed blob is
// plain text (added before git-crypt was set up) is refused, exit 3, before anything runs.
// Real git repositories built here; git-crypt itself is not needed (its filter is played by
// gitCryptFilter(), an unlocked clone without the cipher).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { GIT_CRYPT_ATTRIBUTES, HELM3, commit, git, gitCryptFilter, makeRepo, runDeploy, type RunResult } from './support/harness.ts'

const refusal = (files: string) => new RegExp(`^ERROR: ${files.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} (is|are) committed in clear although \\.gitattributes gives (it|them) to git-crypt \\(added before git-crypt was set up\\?\\): (its|their) secrets are in the git history, so rotate them; then, in a clone where git-crypt is unlocked, run \`git-crypt status -f\` \\(or \`git rm --cached\` and \`git add\` (it|them) again\\) and commit$`)

function assertRefused(r: RunResult, files: string) {
  assert.equal(r.code, 3, r.stderr)
  const errors = r.stderr.split('\n').filter((l) => l.startsWith('ERROR:'))
  assert.equal(errors.length, 1, r.stderr)
  assert.match(errors[0], refusal(files))
  assert.deepEqual(r.commands, [], 'nothing may run, not even helm version')
}

/** Whether the blob HEAD holds for `file` is encrypted: it starts with git-crypt's header. */
const encrypted = (repo: string, file: string) => git(repo, 'cat-file', 'blob', `HEAD:${file}`).startsWith('\0GITCRYPT\0')

test('secrets committed before git-crypt was set up are refused: exit 3, what happened and the fix, nothing run', { timeout: 30_000 }, async () => {
  // The charts and secrets were committed first; .gitattributes came after.
  const repo = makeRepo()
  commit(repo, { '.gitattributes': GIT_CRYPT_ATTRIBUTES, 'secrets/README.md': 'How the secrets are kept.\n' }, 'git-crypt for secrets/')
  assert.ok(!encrypted(repo, 'secrets/staginghub.yaml'))
  const [deploy, build, validate] = await Promise.all([
    runDeploy(repo, ['--no-setup', '--deploy', 'staginghub'], { rules: [HELM3] }),
    runDeploy(repo, ['--no-setup', '--build', 'staginghub'], { rules: [HELM3] }),
    runDeploy(repo, ['--validate', 'staginghub'], { rules: [HELM3] }),
  ])
  // Every file of HEAD that git-crypt should have encrypted, in git's order; the README is not git-crypt's.
  for (const r of [deploy, build, validate]) assertRefused(r, 'secrets/dockerhub, secrets/gke-auth-key.json, secrets/staginghub.yaml')
})

test('one file in clear among encrypted ones, outside secrets/ too: that file is named', { timeout: 30_000 }, async () => {
  const repo = makeRepo({ gitCrypt: true })
  // A key file given to git-crypt by a later rule, committed before that rule.
  commit(repo, { 'config/deploy.key': 'not-encrypted-key-material\n' }, 'a key')
  // Only .gitattributes is added: `git add -A` could clean (encrypt) the key on the way.
  fs.appendFileSync(path.join(repo, '.gitattributes'), '*.key filter=git-crypt diff=git-crypt\n')
  git(repo, 'add', '.gitattributes')
  git(repo, 'commit', '-q', '-m', 'keys to git-crypt')
  assert.ok(encrypted(repo, 'secrets/staginghub.yaml') && !encrypted(repo, 'config/deploy.key'))
  assertRefused(await runDeploy(repo, ['--no-setup', '--deploy', 'staginghub'], { rules: [HELM3] }), 'config/deploy.key')
})

test('a dry run notes it in its plan, as a real run would stop, and goes on planning', { timeout: 20_000 }, async () => {
  const repo = makeRepo({ hubs: ['staginghub'], noSetupSecrets: true })
  commit(repo, { '.gitattributes': GIT_CRYPT_ATTRIBUTES }, 'git-crypt for secrets/')
  const r = await runDeploy(repo, ['--dry-run', '--no-setup', '--deploy', 'staginghub'], { rules: [HELM3] })
  assert.equal(r.code, 0, r.stderr)
  const [line] = r.stdout.split('\n').filter((l) => l.includes('committed in clear'))
  assert.match(line.replace(/^# /, 'ERROR: ').replace(/ \(a real run stops here, exit 3\)$/, ''), refusal('secrets/staginghub.yaml'))
  assert.match(line, / \(a real run stops here, exit 3\)$/)
  assert.match(r.stderr, /Executing helm upgrade --install/, 'the plan goes on')
})

test('unlocked (clear text in the work tree, encrypted blobs) and locked clones are not refused', { timeout: 30_000 }, async () => {
  const unlocked = makeRepo({ gitCrypt: true })
  assert.ok(encrypted(unlocked, 'secrets/staginghub.yaml'))
  assert.match(fs.readFileSync(path.join(unlocked, 'secrets/staginghub.yaml'), 'utf8'), /^jupyterhub:/, 'the work tree shows clear text')
  // A locked clone: the encrypted blobs in the work tree as well (what a clone without the key checks out).
  const locked = makeRepo({ gitCrypt: true, userImages: [] })
  git(locked, 'config', '--unset', 'filter.git-crypt.smudge')
  git(locked, 'config', '--unset', 'filter.git-crypt.clean')
  git(locked, 'config', '--unset', 'filter.git-crypt.required')
  fs.rmSync(path.join(locked, 'secrets'), { recursive: true })
  git(locked, 'checkout', '--', 'secrets')
  assert.equal(fs.readFileSync(path.join(locked, 'secrets/staginghub.yaml'), 'latin1').slice(0, 9), '\0GITCRYPT')
  const [deploy, build] = await Promise.all([
    runDeploy(unlocked, ['--no-setup', '--deploy', 'staginghub'], { rules: [HELM3] }),
    runDeploy(locked, ['--no-setup', '--build', 'staginghub'], { rules: [HELM3] }),
  ])
  assert.equal(deploy.code, 0, deploy.stderr)
  assert.ok(deploy.commands.some((c) => c.startsWith('helm upgrade --install --namespace staginghub staginghub')), deploy.commands.join('\n'))
  assert.equal(build.code, 0, build.stderr)
  assert.doesNotMatch(build.stderr, /committed in clear/)
})

test('the fix the refusal names: re-added in an unlocked clone and committed, the run goes ahead', { timeout: 30_000 }, async () => {
  const repo = makeRepo()
  commit(repo, { '.gitattributes': GIT_CRYPT_ATTRIBUTES }, 'git-crypt for secrets/')
  assertRefused(await runDeploy(repo, ['--no-setup', '--deploy', 'staginghub'], { rules: [HELM3] }), 'secrets/dockerhub, secrets/gke-auth-key.json, secrets/staginghub.yaml')
  gitCryptFilter(repo)
  git(repo, 'rm', '-r', '-q', '--cached', 'secrets')
  git(repo, 'add', 'secrets')
  git(repo, 'commit', '-q', '-m', 'secrets/ encrypted')
  assert.ok(encrypted(repo, 'secrets/staginghub.yaml'))
  const r = await runDeploy(repo, ['--no-setup', '--deploy', 'staginghub'], { rules: [HELM3] })
  assert.equal(r.code, 0, r.stderr)
  // What the refusal said stays true: the clear text is still in the history.
  assert.match(git(repo, 'show', 'HEAD~2:secrets/staginghub.yaml'), /^jupyterhub:/)
})
