// End-to-end: `deploy.ts --no-setup --build --push <hub>` with a real Docker engine and the
// registry on 127.0.0.1:5000 of test/services.sh (see docs/notes-docker-testbed.md): those
// already running are used; missing ones are started for this run and stopped after it. The `docker` on PATH is /usr/bin/docker (the 20.10 client,
// BuildKit built in); no stand-ins. Images go to 127.0.0.1:5000/e2e-<random>/ so runs never
// collide. Run: node --import tsx --test test/e2e/build.test.ts
import assert from 'node:assert/strict'
import { execFile, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { after, describe, test } from 'node:test'
import { commit, git, runDeploy, tempDir, type RunResult } from '../support/harness.ts'
import { dockerServices, PREFERRED_DOCKER, registryHasTag, writeFixtureContext } from '../support/docker.ts'
import { scrubbed, show } from '../support/e2e.ts'

const services = await dockerServices()
const { engine } = services
const NO_REGISTRY = '127.0.0.1:5999' // nothing listens here


// ---------------------------------------------------------------------------------------
// Fixture repository, built by code: a chart (preflight wants one) and a user image whose
// context is a static busybox `FROM scratch`, so builds need no network and no base image.

interface Fixture {
  repo: string
  hub: string
  dir: string
}

async function makeFixture(): Promise<Fixture> {
  const repo = tempDir('build-e2e-repo-')
  const hub = `e2e${randomBytes(3).toString('hex')}`
  const dir = `user-images/${hub}`
  git(repo, 'init', '-q', '-b', 'main')
  commit(repo, { [`hub-charts/${hub}/Chart.yaml`]: `apiVersion: v2\nname: ${hub}\nversion: 0.1.0\n` }, 'chart')
  await writeFixtureContext({ dir: path.join(repo, dir), marker: 'v1' })
  commit(repo, {}, 'user image')
  return { repo, hub, dir }
}

const head = (f: Fixture) => git(f.repo, 'rev-parse', 'HEAD')
/** The tag deploy.ts computes: abbreviated hash of the last commit touching the image dir. */
const tagOf = (f: Fixture) => git(f.repo, 'log', '-n', '1', '--pretty=format:%h', '--', f.dir)

// ---------------------------------------------------------------------------------------
// deploy.ts with /usr/bin/docker first on PATH

/** PATH with a bin dir whose `docker` is /usr/bin/docker first (made on first use). */
let PATH = ''
function dockerPath(): string {
  if (!PATH) {
    const bin = tempDir('build-e2e-bin-')
    fs.symlinkSync(PREFERRED_DOCKER, path.join(bin, 'docker'))
    PATH = `${bin}${path.delimiter}${process.env.PATH}`
  }
  return PATH
}
const children = new Set<ChildProcess>()
const localImages = new Set<string>()


async function build(f: Fixture, prefix: string, env: Record<string, string> = {}): Promise<RunResult> {
  let child: ChildProcess | undefined
  const timer = setTimeout(() => child?.kill('SIGTERM'), 120_000)
  try {
    const r = await runDeploy(f.repo, ['--no-setup', '--build', '--push', f.hub], {
      env: { ...scrubbed(), USER_IMAGE_PREFIX: prefix, DOCKER_BUILDKIT: '1', ...env },
      path: dockerPath(), noStandins: true,
      onSpawn: (c) => children.add((child = c)),
    })
    return r
  } finally {
    clearTimeout(timer)
    if (child) children.delete(child)
  }
}

function exits(r: RunResult, code: number) {
  assert.equal(r.code, code, `expected exit ${code}: ${show(r)}`)
}
const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
const dockerBuilds = (r: RunResult) => r.stderr.split('\n').filter((l) => /Executing docker build /.test(l))

if (!engine) {
  const reason = 'reason' in services ? services.reason : ''
  if (process.env.CI === 'true') test('Docker engine and registry are available (CI=true: required)', { timeout: 5_000 }, () => assert.fail(reason))
  else test('deploy.ts --build --push with a real Docker engine and registry', { skip: reason, timeout: 5_000 }, () => {})
} else {
  describe('deploy.ts --no-setup --build --push with a real Docker engine and registry', { concurrency: true }, () => {
    after(async () => {
      for (const child of children) child.kill('SIGKILL')
      // best effort: do not leave the test images in the engine
      if (localImages.size) await new Promise((resolve) => execFile(engine.docker, ['image', 'rm', '-f', ...localImages], () => resolve(undefined)))
      if ('stop' in services) await services.stop() // only what this run started
    }, { timeout: 30_000 })

    for (const builder of ['BuildKit', 'legacy'] as const) {
      test(`${builder} builder: builds and pushes, skips an unchanged image, rebuilds a changed one with the previous as cache`, { timeout: 60_000 }, async () => {
        const f = await makeFixture()
        const prefix = `${engine.registry}/e2e-${randomBytes(4).toString('hex')}/user-`
        const name = `${prefix}${f.hub}`
        const env = { DOCKER_BUILDKIT: builder === 'BuildKit' ? '1' : '0' }
        const tag1 = tagOf(f)
        localImages.add(`${name}:${tag1}`)

        const first = await build(f, prefix, env)
        exits(first, 0)
        assert.match(first.stderr, new RegExp(`${esc(`${name}:${tag1}`)} is not in the registry: building it`))
        const build1 = dockerBuilds(first)
        assert.equal(build1.length, 1, show(first))
        assert.match(build1[0], new RegExp(`Executing docker build (.* )?-t ${esc(`${name}:${tag1}`)} ${esc(f.dir)}$`))
        assert.doesNotMatch(build1[0], /--cache-from/, 'no earlier image to use as cache')
        assert.match(first.stderr, new RegExp(`Executing docker push ${esc(`${name}:${tag1}`)}\\n`))
        assert.match(first.stdout, new RegExp(`build completed for image ${esc(`${name}:${tag1}`)}`))
        assert.ok(await registryHasTag(name, tag1), `the registry has ${name}:${tag1}`)

        // nothing touched the image: a commit elsewhere, and the registry has the tag
        const before = head(f)
        commit(f.repo, { 'README.md': 'unrelated\n' }, 'docs')
        const second = await build(f, prefix, { ...env, TRAVIS_COMMIT_RANGE: `${before}..${head(f)}` })
        exits(second, 0)
        assert.match(second.stdout, new RegExp(`Do not need to rebuild image, using ${esc(`${name}:${tag1}`)}`))
        assert.deepEqual(dockerBuilds(second), [], 'no docker build')
        assert.doesNotMatch(second.stderr, /Executing docker push/)

        // the Dockerfile changed in the commit range: rebuilt with the previous image as cache
        const old = head(f)
        fs.appendFileSync(path.join(f.repo, f.dir, 'Dockerfile'), 'LABEL version=2\n')
        commit(f.repo, {}, 'user image v2')
        const tag2 = tagOf(f)
        assert.notEqual(tag2, tag1)
        localImages.add(`${name}:${tag2}`)
        const third = await build(f, prefix, { ...env, TRAVIS_COMMIT_RANGE: `${old}..${head(f)}` })
        exits(third, 0)
        const build3 = dockerBuilds(third)
        assert.equal(build3.length, 1, show(third))
        assert.match(build3[0], new RegExp(`Executing docker build --cache-from ${esc(`${name}:${tag1}`)} (.* )?-t ${esc(`${name}:${tag2}`)} ${esc(f.dir)}$`))
        if (builder === 'BuildKit') {
          assert.match(third.stderr, new RegExp(`importing cache manifest from ${esc(`${name}:${tag1}`)}`), 'BuildKit read the cache image')
        } else {
          // the legacy builder only uses a --cache-from image it has locally
          assert.match(third.stderr, new RegExp(`Executing docker pull ${esc(`${name}:${tag1}`)}\\n`), 'the cache image was pulled first')
        }
        assert.match(third.stdout, new RegExp(`build completed for image ${esc(`${name}:${tag2}`)}`))
        assert.ok(await registryHasTag(name, tag2), `the registry has ${name}:${tag2}`)
        assert.ok(await registryHasTag(name, tag1), 'the previous tag is still there')
      })
    }

    test('a push to a registry that does not answer fails, naming the image', { timeout: 60_000 }, async () => {
      const f = await makeFixture()
      const name = `${NO_REGISTRY}/e2e-${randomBytes(4).toString('hex')}/user-${f.hub}`
      const spec = `${name}:${tagOf(f)}`
      localImages.add(spec)
      const r = await build(f, `${NO_REGISTRY}/${name.split('/')[1]}/user-`)
      assert.notEqual(r.code, 0, show(r))
      assert.equal(r.code, 1, show(r))
      assert.match(r.stderr, new RegExp(`Executing docker build (.* )?-t ${esc(spec)} `), 'it was built')
      assert.match(r.stderr, /connection refused/, "docker's reason is relayed")
      const last = r.stderr.trim().split('\n').at(-1) ?? ''
      assert.ok(last.startsWith('ERROR: ') && last.includes(spec), `the final error names ${spec}: ${last}`)
      assert.doesNotMatch(r.stdout, /build completed/)
    })
  })
}
