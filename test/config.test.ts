// Configuration: defaults are the original's values, .env then the environment, durations.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { loadConfig, parseDuration, DEFAULTS, DeployError, Secrets } from '../deploy.ts'
import { tempDir, ROOT } from './support/harness.ts'

test('parseDuration reads seconds and Go-style durations', { timeout: 5_000 }, () => {
  assert.equal(parseDuration('600'), 600)
  assert.equal(parseDuration('90s'), 90)
  assert.equal(parseDuration('10m'), 600)
  assert.equal(parseDuration('1h30m'), 5400)
  for (const bad of ['', 'soon', '10 m', '-5', '1.5m']) assert.ok(Number.isNaN(parseDuration(bad)), bad)
})

test('with no .env the configuration is the original\'s hard-coded values', { timeout: 5_000 }, () => {
  const cwd = process.cwd()
  process.chdir(tempDir())
  try {
    const config = loadConfig(undefined, {})
    for (const [key, value] of Object.entries(DEFAULTS)) assert.equal(config[key as keyof typeof DEFAULTS], value, key)
    assert.equal(config.helmTimeoutSeconds, 600)
    assert.equal(config.rolloutTimeoutSeconds, 600)
  } finally {
    process.chdir(cwd)
  }
})

test('.env sets keys and the environment wins', { timeout: 5_000 }, () => {
  const file = path.join(tempDir(), 'x.env')
  fs.writeFileSync(file, '# comment\nGKE_ZONE=europe-west1-b\nexport GKE_CLUSTER="hubs"\nROLLOUT_TIMEOUT=5m\n')
  const config = loadConfig(file, { GKE_ZONE: 'asia-east1-a' })
  assert.equal(config.GKE_ZONE, 'asia-east1-a')
  assert.equal(config.GKE_CLUSTER, 'hubs')
  assert.equal(config.rolloutTimeoutSeconds, 300)
})

test('a timeout that does not parse is a configuration error (exit 2)', { timeout: 5_000 }, () => {
  const file = path.join(tempDir(), 'empty.env')
  fs.writeFileSync(file, '')
  assert.throws(() => loadConfig(file, { HELM_TIMEOUT: 'ten' }), (e: unknown) =>
    e instanceof DeployError && e.exitCode === 2 && /HELM_TIMEOUT=ten: not a duration/.test(e.message))
})

test('every duration key at both edges of the range docs/reliability.md gives it: the ends accepted, one second beyond refused', { timeout: 5_000 }, () => {
  const bounds = fs.readFileSync(path.join(ROOT, 'docs/reliability.md'), 'utf8').split('## Bounds')[1]
  const rows = [...bounds.matchAll(/^\| `([A-Z_]+)` \| `[^`]*` \| (\S+) to (\S+) \|/gm)]
  assert.deepEqual(rows.map((m) => m[1]), ['HELM_TIMEOUT', 'ROLLOUT_TIMEOUT', 'HEARTBEAT_INTERVAL', 'BUILD_TIMEOUT', 'HOOK_TIMEOUT', 'LOCK_TIMEOUT'])
  const property = { HELM_TIMEOUT: 'helmTimeoutSeconds', ROLLOUT_TIMEOUT: 'rolloutTimeoutSeconds', HEARTBEAT_INTERVAL: 'heartbeatSeconds', BUILD_TIMEOUT: 'buildTimeoutSeconds', HOOK_TIMEOUT: 'hookTimeoutSeconds', LOCK_TIMEOUT: 'lockTimeoutSeconds' } as const
  const file = path.join(tempDir(), 'empty.env')
  fs.writeFileSync(file, '')
  for (const [, key, low, high] of rows) {
    const [min, max] = [parseDuration(low === '0' ? '0s' : low), parseDuration(high)]
    const name = property[key as keyof typeof property]
    const range = `from ${low === '0' ? '0s' : low} to ${high}`
    assert.equal(loadConfig(file, { [key]: `${min}s` })[name], min, `${key} at its lower end`)
    assert.equal(loadConfig(file, { [key]: `${max}s` })[name], max, `${key} at its upper end`)
    assert.equal(loadConfig(file, { [key]: high })[name], max, `${key}=${high}`)
    assert.throws(() => loadConfig(file, { [key]: `${max + 1}s` }), (e: unknown) =>
      e instanceof DeployError && e.exitCode === 2 && e.message === `${key}=${max + 1}s: out of range; use a duration ${range}`)
    if (min > 0) {
      assert.throws(() => loadConfig(file, { [key]: `${min - 1}s` }), (e: unknown) =>
        e instanceof DeployError && e.exitCode === 2 && e.message === `${key}=${min - 1}s: out of range; use a duration ${range}`)
    }
  }
})

test('a multi-line quoted value is not a malformed line; an unterminated quote is', { timeout: 5_000 }, () => {
  const dir = tempDir()
  fs.writeFileSync(path.join(dir, 'ok.env'), 'KEY="line one\nline two"\nGKE_ZONE=z\n')
  assert.equal(loadConfig(path.join(dir, 'ok.env'), {}).GKE_ZONE, 'z')
  fs.writeFileSync(path.join(dir, 'bad.env'), 'KEY="never closed\n')
  assert.throws(() => loadConfig(path.join(dir, 'bad.env'), {}), /unterminated/)
})

test('.env.example documents every configuration key', { timeout: 5_000 }, () => {
  const example = fs.readFileSync(path.join(ROOT, '.env.example'), 'utf8')
  for (const key of Object.keys(DEFAULTS)) assert.match(example, new RegExp(`^#? ?${key}=`, 'm'), key)
})

test('redact replaces every registered secret, longest first', { timeout: 5_000 }, () => {
  const secrets = new Secrets()
  secrets.add('abcd1234')
  secrets.add('abcd1234-longer')
  secrets.add('abc')
  // A secret shorter than 4 characters is masked only where it stands alone.
  assert.equal(secrets.redact('x abcd1234-longer y abcd1234 abc xabcx'), 'x *** y *** *** xabcx')
})
