// Build and push phases: image tags from git history, rebuild decisions, cache search.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { makeRepo, runDeploy, commit, git, tempDir, HELM3, type Rule } from './support/harness.ts'

const USER = 'earthlabhubops/ea-k8s-user-staginghub'
const HUB = 'earthlabhubops/ea-k8s-hub-staginghub'
const present = (spec: string): Rule => ({ tool: 'docker', match: `^manifest inspect ${spec}$`, stdout: '{}' })
const missing: Rule = { tool: 'docker', match: '^manifest inspect', exit: 1, stderr: 'no such manifest\n' }
/** The docker calls in order; the cache lookups run at once, so each run of lookups is sorted. */
function dockerCalls(commands: string[]): string[] {
  const out: string[] = []
  let lookups: string[] = []
  for (const c of commands.filter((c) => c.startsWith('docker'))) {
    if (c.startsWith('docker manifest inspect')) {
      lookups.push(c)
      continue
    }
    out.push(...lookups.sort(), c)
    lookups = []
  }
  return [...out, ...lookups.sort()]
}
const lookups = (...specs: string[]) => specs.map((s) => `docker manifest inspect ${s}`).sort()

/** A repo whose user image dir was touched by three commits; returns their tags, oldest first. */
function repoWithHistory() {
  const repo = makeRepo()
  const t1 = git(repo, 'log', '-n', '1', '--pretty=format:%h', '--', 'user-images/staginghub')
  commit(repo, { 'README.md': 'unrelated\n' }, 'unrelated')
  const t2 = commit(repo, { 'user-images/staginghub/Dockerfile': 'FROM scratch\nLABEL v=2\n' })
  commit(repo, { 'hub-charts/staginghub/values.yaml': 'x: 1\n' }, 'chart only')
  const t3 = commit(repo, { 'user-images/staginghub/Dockerfile': 'FROM scratch\nLABEL v=3\n' })
  commit(repo, { 'docs.md': 'later\n' }, 'unrelated, after')
  return { repo, t1, t2, t3 }
}

test('the image tag is the last commit that touched the image dir, not HEAD', { timeout: 15_000 }, async () => {
  const { repo, t3 } = repoWithHistory()
  const r = await runDeploy(repo, ['--no-setup', '--build', 'staginghub'], { rules: [HELM3, present(`${USER}:${t3}`)] })
  assert.equal(r.code, 0, r.stderr)
  assert.notEqual(t3, git(repo, 'rev-parse', '--short=7', 'HEAD'))
  assert.match(r.stdout, new RegExp(`Do not need to rebuild image, using ${USER}:${t3}`))
})

test('range touched the dir: rebuild, cache image looked up without pulling, one pull, then push', { timeout: 20_000 }, async () => {
  const { repo, t1, t2, t3 } = repoWithHistory()
  const r = await runDeploy(repo, ['--no-setup', '--build', '--push', 'staginghub'], {
    env: { TRAVIS_COMMIT_RANGE: `${t2}...${t3}` },
    rules: [HELM3, present(`${USER}:${t2}`), missing],
  })
  assert.equal(r.code, 0, r.stderr)
  assert.deepEqual(dockerCalls(r.commands), [
    ...lookups(`${USER}:${t3}`, `${USER}:${t2}`, `${USER}:${t1}`),
    `docker pull ${USER}:${t2}`,
    `docker build --cache-from ${USER}:${t2} -t ${USER}:${t3} user-images/staginghub`,
    `docker push ${USER}:${t3}`,
  ])
  assert.match(r.stdout, new RegExp(`build completed for image ${USER}:${t3}`))
  assert.match(r.stderr, new RegExp(`INFO:root:Executing docker build --cache-from ${USER}:${t2}`))
})

test('range touched, no candidate in the registry: build without --cache-from and no pull', { timeout: 15_000 }, async () => {
  const { repo, t1, t2, t3 } = repoWithHistory()
  const r = await runDeploy(repo, ['--no-setup', '--build', 'staginghub'], { env: { TRAVIS_COMMIT_RANGE: `${t2}..${t3}` }, rules: [HELM3, missing] })
  assert.equal(r.code, 0, r.stderr)
  assert.deepEqual(dockerCalls(r.commands), [
    ...lookups(`${USER}:${t3}`, `${USER}:${t2}`, `${USER}:${t1}`),
    `docker build -t ${USER}:${t3} user-images/staginghub`,
  ])
})

test('range did not touch the dir and the image exists: no rebuild', { timeout: 15_000 }, async () => {
  const { repo, t3 } = repoWithHistory()
  const head = git(repo, 'rev-parse', 'HEAD')
  const r = await runDeploy(repo, ['--no-setup', '--build', '--push', 'staginghub'], {
    env: { TRAVIS_COMMIT_RANGE: `${head}~1...${head}` },
    rules: [HELM3, present(`${USER}:${t3}`), missing],
  })
  assert.equal(r.code, 0, r.stderr)
  assert.deepEqual(dockerCalls(r.commands), [`docker manifest inspect ${USER}:${t3}`])
  assert.match(r.stdout, /Do not need to rebuild image/)
})

test('range did not touch the dir but the tag was never pushed: rebuild', { timeout: 15_000 }, async () => {
  const { repo, t3 } = repoWithHistory()
  const head = git(repo, 'rev-parse', 'HEAD')
  const r = await runDeploy(repo, ['--no-setup', '--build', 'staginghub'], { env: { TRAVIS_COMMIT_RANGE: `${head}~1...${head}` }, rules: [HELM3, missing] })
  assert.equal(r.code, 0, r.stderr)
  assert.ok(r.commands.includes(`docker build -t ${USER}:${t3} user-images/staginghub`))
  assert.match(r.stderr, /is not in the registry: building it/)
})

test('a tag the registry lacks is built, and is no cache candidate: asked once, the previous tags searched', { timeout: 15_000 }, async () => {
  const { repo, t1, t2, t3 } = repoWithHistory()
  const r = await runDeploy(repo, ['--no-setup', '--build', 'staginghub'], { rules: [HELM3, present(`${USER}:${t2}`), missing] })
  assert.equal(r.code, 0, r.stderr)
  assert.deepEqual(dockerCalls(r.commands), [
    ...lookups(`${USER}:${t3}`, `${USER}:${t2}`, `${USER}:${t1}`),
    `docker pull ${USER}:${t2}`,
    `docker build --cache-from ${USER}:${t2} -t ${USER}:${t3} user-images/staginghub`,
  ])
  assert.equal(r.commands.filter((c) => c === `docker manifest inspect ${USER}:${t3}`).length, 1)
})

test('the dry run plans a new tag: its cache is the newest previous tag, never the tag it builds', { timeout: 20_000 }, async () => {
  const { repo, t2, t3 } = repoWithHistory()
  const [plain, touched] = await Promise.all([
    runDeploy(repo, ['--dry-run', '--no-setup', '--build', 'staginghub'], { rules: [HELM3] }),
    runDeploy(repo, ['--dry-run', '--no-setup', '--build', 'staginghub'], { env: { TRAVIS_COMMIT_RANGE: `${t2}..${t3}` }, rules: [HELM3] }),
  ])
  for (const r of [plain, touched]) {
    assert.equal(r.code, 0, r.stderr)
    const planned = r.stderr.split('\n').filter((l) => /Executing docker (pull|build)/.test(l))
    assert.deepEqual(planned, [
      `INFO:root:Executing docker pull ${USER}:${t2}`,
      `INFO:root:Executing docker build --cache-from ${USER}:${t2} -t ${USER}:${t3} user-images/staginghub`,
    ])
  }
})

test('no commit range: rebuild only when the registry lacks the tag', { timeout: 40_000 }, async () => {
  const { repo, t3 } = repoWithHistory()
  const have = await runDeploy(repo, ['--no-setup', '--build', 'staginghub'], { rules: [HELM3, present(`${USER}:${t3}`), missing] })
  assert.deepEqual(dockerCalls(have.commands), [`docker manifest inspect ${USER}:${t3}`])
  const lack = await runDeploy(repo, ['--no-setup', '--build', 'staginghub'], { rules: [HELM3, missing] })
  assert.ok(lack.commands.some((c) => c.startsWith('docker build')))
})

test('an invalid commit range warns and counts as touched', { timeout: 40_000 }, async () => {
  const { repo, t3 } = repoWithHistory()
  const r = await runDeploy(repo, ['--no-setup', '--build', 'staginghub'], {
    env: { TRAVIS_COMMIT_RANGE: 'deadbeef0000...cafebabe1111' },
    rules: [HELM3, present(`${USER}:${t3}`), missing],
  })
  assert.equal(r.code, 0, r.stderr)
  assert.match(r.stderr, /WARNING: commit range deadbeef0000...cafebabe1111 is not valid here/)
  assert.ok(r.commands.some((c) => c.startsWith('docker build')))
})

test('on GitHub Actions the range comes from the push event', { timeout: 15_000 }, async () => {
  const { repo, t2, t3 } = repoWithHistory()
  const event = path.join(tempDir(), 'event.json')
  const before = git(repo, 'rev-parse', `${t3}~1`)
  fs.writeFileSync(event, JSON.stringify({ before, after: git(repo, 'rev-parse', t3) }))
  const r = await runDeploy(repo, ['--no-setup', '--build', 'staginghub'], {
    env: { GITHUB_EVENT_NAME: 'push', GITHUB_EVENT_PATH: event },
    rules: [HELM3, present(`${USER}:${t3}`), present(`${USER}:${t2}`), missing],
  })
  assert.equal(r.code, 0, r.stderr)
  assert.ok(r.commands.includes(`docker build --cache-from ${USER}:${t3} -t ${USER}:${t3} user-images/staginghub`), r.commands.join('\n'))
})

test('the cache search skips duplicate candidate tags', { timeout: 15_000 }, async () => {
  const repo = makeRepo()
  const only = git(repo, 'log', '-n', '1', '--pretty=format:%h', '--', 'user-images/staginghub')
  const r = await runDeploy(repo, ['--no-setup', '--build', 'staginghub'], { env: { TRAVIS_COMMIT_RANGE: `${only}~1..${only}` }, rules: [HELM3, missing] })
  assert.equal(r.code, 0, r.stderr)
  assert.equal(r.commands.filter((c) => c === `docker manifest inspect ${USER}:${only}`).length, 1)
})

test('one tag candidate per commit, however many of the dir\'s files it touched: the five newest commits, each looked up once', { timeout: 25_000 }, async () => {
  const repo = makeRepo()
  const dir = 'user-images/staginghub'
  const oldest = git(repo, 'log', '-n', '1', '--pretty=format:%h', '--', dir)
  const tags = [
    commit(repo, { [`${dir}/Dockerfile`]: 'FROM scratch\nLABEL v=1\n', [`${dir}/a.txt`]: 'a\n' }),
    commit(repo, { [`${dir}/b.txt`]: 'b\n', [`${dir}/c.txt`]: 'c\n', [`${dir}/d/e.txt`]: 'e\n' }),
    commit(repo, { [`${dir}/Dockerfile`]: 'FROM scratch\nLABEL v=3\n' }),
    commit(repo, { [`${dir}/f.txt`]: 'f\n', [`${dir}/g.txt`]: 'g\n', 'README.md': 'not the dir\n' }),
    commit(repo, { [`${dir}/h.txt`]: 'h\n', [`${dir}/i.txt`]: 'i\n', [`${dir}/j.txt`]: 'j\n' }),
  ]
  const newest = tags.at(-1)!
  const r = await runDeploy(repo, ['--no-setup', '--build', 'staginghub'], { env: { TRAVIS_COMMIT_RANGE: `${newest}~1..${newest}` }, rules: [HELM3, missing] })
  assert.equal(r.code, 0, r.stderr)
  assert.deepEqual(dockerCalls(r.commands), [...lookups(...tags.map((t) => `${USER}:${t}`)), `docker build -t ${USER}:${newest} ${dir}`])
  assert.ok(!r.commands.includes(`docker manifest inspect ${USER}:${oldest}`), 'the sixth commit back is no candidate')
})

test('a dir is matched as a dir: ea-hub2\'s commits and range are not ea-hub\'s', { timeout: 15_000 }, async () => {
  const repo = makeRepo({ hubs: ['ea-hub', 'ea-hub2'] })
  const own = git(repo, 'log', '-n', '1', '--pretty=format:%h', '--', 'user-images/ea-hub')
  const other = commit(repo, { 'user-images/ea-hub2/Dockerfile': 'FROM scratch\nLABEL v=2\n' })
  const image = (hub: string, tag: string) => `earthlabhubops/ea-k8s-user-${hub}:${tag}`
  const r = await runDeploy(repo, ['--no-setup', '--build', 'ea-hub', 'ea-hub2'], { env: { TRAVIS_COMMIT_RANGE: `${other}~1..${other}` }, rules: [HELM3, present(image('ea-hub', own)), missing] })
  assert.equal(r.code, 0, r.stderr)
  assert.match(r.stdout, new RegExp(`Do not need to rebuild image, using ${image('ea-hub', own)}$`, 'm'))
  assert.ok(r.commands.includes(`docker build -t ${image('ea-hub2', other)} user-images/ea-hub2`), r.commands.join('\n'))
  assert.ok(!r.commands.some((c) => c.startsWith('docker build') && c.includes('ea-hub:')), r.commands.join('\n'))
})

test('a hub image is built after the user image and named as such', { timeout: 15_000 }, async () => {
  const repo = makeRepo({ hubImages: ['staginghub'] })
  const hubTag = git(repo, 'log', '-n', '1', '--pretty=format:%h', '--', 'hub-images/staginghub')
  const r = await runDeploy(repo, ['--no-setup', '--build', '--push', 'staginghub'], { rules: [HELM3, missing] })
  assert.equal(r.code, 0, r.stderr)
  const builds = r.commands.filter((c) => c.startsWith('docker build') || c.startsWith('docker push'))
  assert.deepEqual(builds.map((c) => c.split(' ').slice(0, 2).join(' ')), ['docker build', 'docker push', 'docker build', 'docker push'])
  assert.ok(builds[2].includes(`${HUB}:${hubTag}`))
  assert.match(r.stdout, new RegExp(`build completed for hub image ${HUB}:${hubTag}`))
})

test('a failed push exits 1 naming the image', { timeout: 15_000 }, async () => {
  const { repo, t3 } = repoWithHistory()
  const r = await runDeploy(repo, ['--no-setup', '--build', '--push', 'staginghub'], {
    rules: [HELM3, missing, { tool: 'docker', match: '^push', exit: 1, stderr: 'dial tcp 127.0.0.1:5000: connection refused\n' }],
  })
  assert.equal(r.code, 1)
  assert.match(r.stderr, new RegExp(`docker push ${USER}:${t3} failed`))
})

test('USER_IMAGE_PREFIX and HUB_IMAGE_PREFIX name the images', { timeout: 15_000 }, async () => {
  const repo = makeRepo()
  const r = await runDeploy(repo, ['--no-setup', '--build', 'staginghub'], { env: { USER_IMAGE_PREFIX: '127.0.0.1:5000/uni/user-' }, rules: [HELM3, missing] })
  assert.equal(r.code, 0, r.stderr)
  assert.ok(r.commands.some((c) => c.startsWith('docker manifest inspect --insecure 127.0.0.1:5000/uni/user-staginghub:')), r.commands.join('\n'))
})

test('with BuildKit (DOCKER_BUILDKIT=1) the cache is read from the registry: inline cache, no pull', { timeout: 15_000 }, async () => {
  const { repo, t1, t2, t3 } = repoWithHistory()
  const r = await runDeploy(repo, ['--no-setup', '--build', 'staginghub'], {
    env: { DOCKER_BUILDKIT: '1', TRAVIS_COMMIT_RANGE: `${t2}..${t3}` },
    rules: [HELM3, present(`${USER}:${t2}`), missing],
  })
  assert.equal(r.code, 0, r.stderr)
  assert.deepEqual(dockerCalls(r.commands), [
    ...lookups(`${USER}:${t3}`, `${USER}:${t2}`, `${USER}:${t1}`),
    `docker build --cache-from ${USER}:${t2} --build-arg BUILDKIT_INLINE_CACHE=1 -t ${USER}:${t3} user-images/staginghub`,
  ])
})

test('a registry that cannot be asked is said so, not passed off as a missing image', { timeout: 15_000 }, async () => {
  const r = await runDeploy(makeRepo(), ['--no-setup', '--build', 'staginghub'], {
    rules: [HELM3, { tool: 'docker', match: '^manifest', exit: 1, stderr: 'Get "https://registry-1.docker.io/v2/": dial tcp: lookup registry-1.docker.io: no such host\n' }],
  })
  assert.equal(r.code, 0, r.stderr)
  assert.match(r.stderr, /WARNING: could not ask the registry about earthlabhubops\/ea-k8s-user-staginghub:\w+ \(Get .*no such host\): treating it as missing/)
})
