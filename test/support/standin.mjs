#!/usr/bin/env node
// Recording stand-in for gcloud, aws, az, kubelogin, helm, kubectl and docker (symlinked under those names).
// Appends one JSON line per call to $STANDIN_LOG: the tool, its argv, its cwd, the
// sha256 of its stdin and of the kubeconfig it would use, and the config dirs it was given; then answers from the first
// rule in $STANDIN_RULES (a JSON array) whose tool matches and whose `match` (a regular
// expression) matches the joined argv. Rule fields: stdout, stderr, exit, sleepMs,
// touch (an env var naming a file to create, e.g. KUBECONFIG), every (with sleepMs: also
// print stdout every this many ms while sleeping, a command that keeps printing).
import fs from 'node:fs'
import path from 'node:path'
import crypto from 'node:crypto'

const tool = path.basename(process.argv[1])
const argv = process.argv.slice(2)
let stdin = null
const st = fs.fstatSync(0)
if (st.isFIFO() || st.isFile() || st.isSocket()) stdin = fs.readFileSync(0)
const entry = {
  tool,
  pid: process.pid,
  startedAt: Date.now(),
  argv,
  cwd: process.cwd(),
  stdinSha256: stdin && stdin.length ? crypto.createHash('sha256').update(stdin).digest('hex') : null,
  dockerPluginsLinked: process.env.DOCKER_CONFIG ? fs.existsSync(path.join(process.env.DOCKER_CONFIG, 'cli-plugins')) : null,
  kubeconfigSha256: process.env.KUBECONFIG && fs.existsSync(process.env.KUBECONFIG) ? crypto.createHash('sha256').update(fs.readFileSync(process.env.KUBECONFIG)).digest('hex') : null,
  env: Object.fromEntries(['KUBECONFIG', 'CLOUDSDK_CONFIG', 'AZURE_CONFIG_DIR', 'DOCKER_CONFIG', 'DOCKER_BUILDKIT'].map((k) => [k, process.env[k] ?? null])),
}
if (process.env.STANDIN_LOG) fs.appendFileSync(process.env.STANDIN_LOG, JSON.stringify(entry) + '\n')
const rules = process.env.STANDIN_RULES ? JSON.parse(fs.readFileSync(process.env.STANDIN_RULES, 'utf8')) : []
const joined = argv.join(' ')
const rule = rules.find((r) => r.tool === tool && (!r.match || new RegExp(r.match).test(joined))) ?? {}
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
