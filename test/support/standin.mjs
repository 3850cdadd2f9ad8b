#!/usr/bin/env node
// Recording stand-in for gcloud, aws, az, kubelogin, helm, kubectl and docker (symlinked under those names).
// Appends one JSON line per call to $STANDIN_LOG: the tool, its argv, its cwd, what it got on
// stdin (see readStdin) and the sha256 of that and of the kubeconfig it would use, and the
// config dirs it was given; then answers from the first
// rule in $STANDIN_RULES (a JSON array) whose tool matches and whose `match` (a regular
// expression) matches the joined argv. Rule fields: stdout, stderr, exit, sleepMs,
// touch (an env var naming a file to create, e.g. KUBECONFIG), every (with sleepMs: also
// print stdout every this many ms while sleeping, a command that keeps printing), barrier
// (a number N: wait, without a clock, until N such calls are running at once, or until a
// call arrives after N others came: how a test sees concurrency whatever the load; the log
// line is then written on leaving, with `peak` and `departedBefore`: see barrier()).
// upTo (a number N: the rule answers only the first N calls it matches, counted in
// $STANDIN_LOG.upto; later calls go to the next rule that matches: a history that changes).
// A SIGINT or SIGTERM it gets is appended to $STANDIN_LOG.signals as { tool, pid, signal }
// before it dies of that signal, as it would without the record.
import fs from 'node:fs'
import path from 'node:path'
import crypto from 'node:crypto'

/** How long a stdin pipe may stay silent and open before it counts as one nobody feeds. */
const STDIN_GRACE_MS = 5000

const tool = path.basename(process.argv[1])
const argv = process.argv.slice(2)
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    if (process.env.STANDIN_LOG) fs.appendFileSync(`${process.env.STANDIN_LOG}.signals`, JSON.stringify({ tool, pid: process.pid, signal }) + '\n')
    process.removeAllListeners(signal)
    process.kill(process.pid, signal)
  })
}
const startedAt = Date.now()
const stdin = await readStdin()
const entry = {
  tool,
  pid: process.pid,
  startedAt,
  argv,
  cwd: process.cwd(),
  stdin: stdin.kind,
  stdinSha256: stdin.data.length ? crypto.createHash('sha256').update(stdin.data).digest('hex') : null,
  dockerPluginsLinked: process.env.DOCKER_CONFIG ? fs.existsSync(path.join(process.env.DOCKER_CONFIG, 'cli-plugins')) : null,
  kubeconfigSha256: process.env.KUBECONFIG && fs.existsSync(process.env.KUBECONFIG) ? crypto.createHash('sha256').update(fs.readFileSync(process.env.KUBECONFIG)).digest('hex') : null,
  env: Object.fromEntries(['KUBECONFIG', 'CLOUDSDK_CONFIG', 'AZURE_CONFIG_DIR', 'DOCKER_CONFIG', 'DOCKER_BUILDKIT'].map((k) => [k, process.env[k] ?? null])),
}
const rules = process.env.STANDIN_RULES ? JSON.parse(fs.readFileSync(process.env.STANDIN_RULES, 'utf8')) : []
const joined = argv.join(' ')
const rule = pickRule()
const record = () => process.env.STANDIN_LOG && fs.appendFileSync(process.env.STANDIN_LOG, JSON.stringify(entry) + '\n')
if (rule.barrier && process.env.STANDIN_LOG) await barrier(rule.barrier, `${process.env.STANDIN_LOG}.barrier`)
record()
if (rule.touch && process.env[rule.touch]) {
  fs.mkdirSync(path.dirname(process.env[rule.touch]), { recursive: true })
  fs.writeFileSync(process.env[rule.touch], `written by ${tool}\n`)
}
const finish = () => {
  if (rule.stdout) process.stdout.write(rule.stdout)
  if (rule.stderr) process.stderr.write(rule.stderr)
  process.exitCode = rule.exit ?? 0
}
if (rule.sleepMs) {
  const ticker = rule.every ? setInterval(() => process.stdout.write(rule.stdout ?? '.\n'), rule.every) : undefined
  setTimeout(() => {
    clearInterval(ticker)
    finish()
  }, rule.sleepMs)
} else finish()

/** The first rule for this call; a rule with `upTo` only while it has answered fewer calls. */
function pickRule() {
  const counts = `${process.env.STANDIN_LOG}.upto`
  const used = (i) => (fs.existsSync(counts) ? fs.readFileSync(counts, 'utf8').split('\n').filter((l) => l === String(i)).length : 0)
  const i = rules.findIndex((r) => r.tool === tool && (!r.match || new RegExp(r.match).test(joined)) && (r.upTo === undefined || used(rules.indexOf(r)) < r.upTo))
  if (i >= 0 && rules[i].upTo !== undefined && process.env.STANDIN_LOG) fs.appendFileSync(counts, `${i}\n`)
  return rules[i] ?? {}
}

/**
 * What the caller gave on stdin: `none` (no stdin, or /dev/null), `read` (a file, or a pipe
 * read to its end: what the caller fed, maybe nothing), or `open` (a pipe still open and silent
 * after STDIN_GRACE_MS: a stdin passed on that nobody feeds, left unread instead of waited on
 * for ever).
 */
function readStdin() {
  let st
  try {
    st = fs.fstatSync(0)
  } catch {
    return { kind: 'none', data: Buffer.alloc(0) }
  }
  if (st.isFile()) return { kind: 'read', data: fs.readFileSync(0) }
  if (!st.isFIFO() && !st.isSocket()) return { kind: 'none', data: Buffer.alloc(0) }
  return new Promise((resolve) => {
    const chunks = []
    let timer
    const done = (kind) => {
      clearTimeout(timer)
      process.stdin.removeAllListeners('data').pause()
      if (kind === 'open') process.stdin.destroy()
      resolve({ kind, data: Buffer.concat(chunks) })
    }
    const silent = () => {
      clearTimeout(timer)
      timer = setTimeout(() => done('open'), STDIN_GRACE_MS)
    }
    process.stdin.on('data', (chunk) => {
      chunks.push(chunk)
      silent()
    })
    process.stdin.once('end', () => done('read'))
    process.stdin.once('error', () => done('read'))
    silent()
  })
}

/**
 * Enters the barrier and waits until `count` calls were inside at once (the first to see it
 * leaves a mark for the rest), or leaves at once when it came after `count` others (a
 * latecomer). `entry.peak`: the most calls it saw inside; `entry.departedBefore`: how many
 * had left when it arrived.
 */
async function barrier(count, dir) {
  const inside = path.join(dir, 'inside')
  const full = path.join(dir, 'full')
  const departures = path.join(dir, 'departures')
  const lines = (file) => (fs.existsSync(file) ? fs.readFileSync(file, 'utf8').split('\n').filter(Boolean).length : 0)
  fs.mkdirSync(inside, { recursive: true })
  entry.departedBefore = lines(departures)
  fs.appendFileSync(path.join(dir, 'arrivals'), `${process.pid}\n`)
  fs.writeFileSync(path.join(inside, String(process.pid)), '')
  const latecomer = lines(path.join(dir, 'arrivals')) > count
  const safety = Date.now() + 120_000
  entry.peak = 0
  for (;;) {
    const now = fs.readdirSync(inside).length
    entry.peak = Math.max(entry.peak, now)
    if (now >= count) fs.writeFileSync(full, '')
    if (latecomer || fs.existsSync(full) || Date.now() > safety) break
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  // Held a little longer, so that a call beyond `count` that runs alongside (a broken cap)
  // arrives while they are inside. Only how sure a broken cap is seen depends on this, never a
  // correct run's result.
  const hold = Date.now() + 2000
  while (!latecomer && lines(path.join(dir, 'arrivals')) <= count && Date.now() < hold) {
    entry.peak = Math.max(entry.peak, fs.readdirSync(inside).length)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  entry.peak = Math.max(entry.peak, fs.readdirSync(inside).length)
  fs.rmSync(path.join(inside, String(process.pid)), { force: true })
  fs.appendFileSync(departures, `${process.pid}\n`)
}
