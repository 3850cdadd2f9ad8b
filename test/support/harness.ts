// Test harness: real git repositories in temp dirs, recording stand-ins on PATH, and a
// runner that starts deploy.ts the way users do (tsx, or Deno with DEPLOY_RUNTIME=deno).
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { spawn, execFileSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import assert from 'node:assert/strict'

export const ROOT = fileURLToPath(new URL('../../', import.meta.url))
export const DEPLOY = path.join(ROOT, 'deploy.ts')
const STANDIN = fileURLToPath(new URL('./standin.mjs', import.meta.url))
const TSX_LOADER = path.join(ROOT, 'node_modules/tsx/dist/esm/index.mjs')

/** Temp dirs made by this test process: removed when it exits (Deno's test runner fires `unload`, not `exit`). */
const made: string[] = []
const removeMade = () => {
  for (const dir of made.splice(0)) fs.rmSync(dir, { recursive: true, force: true })
}
process.on('exit', removeMade)
const runtime: { addEventListener?: (type: 'unload', listener: () => void) => void } = globalThis
runtime.addEventListener?.('unload', removeMade)

export function tempDir(prefix = 'deploy-test-'): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix))
  made.push(dir)
  return dir
}

function withoutGitLocation(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(env).filter(([k]) => !/^GIT_(DIR|WORK_TREE|INDEX_FILE|OBJECT_DIRECTORY|COMMON_DIR)$/.test(k)))
}

export function git(cwd: string, ...args: string[]): string {
  return execFileSync('git', args, {
    cwd,
    encoding: 'utf8',
    // Without the caller's GIT_DIR and friends (set under `git bisect run`, hooks): a fixture's
    // `git init` must not reach the repository the tests run from.
    env: { ...withoutGitLocation(process.env), GIT_AUTHOR_NAME: 't', GIT_AUTHOR_EMAIL: 't@example.org', GIT_COMMITTER_NAME: 't', GIT_COMMITTER_EMAIL: 't@example.org' },
  }).trim()
}

export interface RepoOptions {
  hubs?: string[]
  userImages?: string[]
  hubImages?: string[]
  monitoring?: boolean
  /** Contents of secrets/<name>: every hub gets `secrets/<hub>.yaml` unless listed here. */
  secrets?: Record<string, string>
  noSetupSecrets?: boolean
  /** secrets/ given to git-crypt in .gitattributes, and the clone unlocked (gitCryptFilter) before the first commit. */
  gitCrypt?: boolean
}

/** Writes files (relative path → content) into the repo and commits them. */
export function commit(repo: string, files: Record<string, string>, message = 'change'): string {
  for (const [file, content] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(repo, file)), { recursive: true })
    fs.writeFileSync(path.join(repo, file), content)
  }
  git(repo, 'add', '-A')
  git(repo, 'commit', '-q', '-m', message)
  return git(repo, 'rev-parse', '--short=7', 'HEAD')
}

export const PASSWORD = 'dockerhub-pa55word-xyz'
export const SECRET_TOKEN = 'proxy-secret-token-0123456789'
export const PRIVATE_KEY_LINE = 'MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7'
export const GRAFANA_PASSWORD = 'grafana-admin-pw'
/** Tokens the cloud stand-ins print and credential files hold (test/clusters.test.ts plants them). */
export const CLOUD_TOKENS = {
  gar: 'ya29.gar-access-token-0123456789',
  ecr: 'ecr-login-password-0123456789',
  acr: 'acr-access-token-0123456789',
  federated: 'eyJ.azure-federated-token-0123456789',
  oidcRequest: 'actions-id-token-request-0123456789',
  kubeconfig: 'kubeconfig-bearer-token-0123456789',
  certificateKey: 'MIIEcertificatePrivateKeyLine0123456789abcdef',
}
/** Secret values planted in every fixture: no run may print them or pass them in argv. */
export const PLANTED = [PASSWORD, SECRET_TOKEN, PRIVATE_KEY_LINE, GRAFANA_PASSWORD, ...Object.values(CLOUD_TOKENS)]

/** The ops repository's .gitattributes: everything under secrets/ goes to git-crypt, but its README. */
export const GIT_CRYPT_ATTRIBUTES = 'secrets/** filter=git-crypt diff=git-crypt\nsecrets/README.md !filter !diff\n'

/**
 * git-crypt's filter as an unlocked clone has it, without the cipher (git-crypt is not
 * installed here): a committed blob starts with git-crypt's header, the work tree shows
 * clear text. Like git-crypt's, the smudge leaves a blob without the header as it is.
 */
export function gitCryptFilter(repo: string) {
  git(repo, 'config', 'filter.git-crypt.clean', "printf '\\000GITCRYPT\\000'; cat")
  git(repo, 'config', 'filter.git-crypt.smudge', 'f=$(mktemp); cat >"$f"; if [ "$(head -c 9 "$f" | tail -c 8)" = GITCRYPT ]; then tail -c +11 "$f"; else cat "$f"; fi; rm -f "$f"')
  git(repo, 'config', 'filter.git-crypt.required', 'true')
}

/** A real git repository shaped like the ops repo, one commit per part. */
export function makeRepo(options: RepoOptions = {}): string {
  const repo = tempDir('deploy-repo-')
  git(repo, 'init', '-q', '-b', 'main')
  const hubs = options.hubs ?? ['staginghub']
  // Like the ops repo: plugins/*.ts are ES modules.
  const files: Record<string, string> = { 'package.json': '{ "type": "module" }\n' }
  if (options.gitCrypt) {
    gitCryptFilter(repo)
    files['.gitattributes'] = GIT_CRYPT_ATTRIBUTES
  }
  for (const hub of hubs) {
    files[`hub-charts/${hub}/Chart.yaml`] = `apiVersion: v2\nname: ${hub}\nversion: 0.1.0\n`
    files[`hub-charts/${hub}/values.yaml`] = `jupyterhub:\n  singleuser:\n    image:\n      tag: set-on-deployment\n`
    files[`secrets/${hub}.yaml`] = `jupyterhub:\n  proxy:\n    secretToken: ${SECRET_TOKEN}\n`
  }
  if (options.monitoring) {
    files['monitoring/Chart.yaml'] = 'apiVersion: v2\nname: monitoring\nversion: 0.1.0\n'
    files['secrets/monitoring.yaml'] = `grafana:\n  adminPassword: ${GRAFANA_PASSWORD}\n`
  }
  if (!options.noSetupSecrets) {
    files['secrets/dockerhub'] = `${PASSWORD}\n`
    files['secrets/gke-auth-key.json'] = JSON.stringify({ type: 'service_account', private_key: `-----BEGIN PRIVATE KEY-----\n${PRIVATE_KEY_LINE}\n-----END PRIVATE KEY-----\n` })
  }
  Object.assign(files, options.secrets ?? {})
  commit(repo, files, 'charts and secrets')
  for (const hub of options.userImages ?? hubs) commit(repo, { [`user-images/${hub}/Dockerfile`]: `FROM scratch\nLABEL hub=${hub}\n` }, `user image ${hub}`)
  for (const hub of options.hubImages ?? []) commit(repo, { [`hub-images/${hub}/Dockerfile`]: `FROM scratch\nLABEL hub-image=${hub}\n` }, `hub image ${hub}`)
  return repo
}

export interface Rule {
  tool: 'gcloud' | 'aws' | 'az' | 'kubelogin' | 'helm' | 'kubectl' | 'docker'
  match?: string
  stdout?: string
  stderr?: string
  exit?: number
  sleepMs?: number
  /** With sleepMs: print stdout every this many ms while sleeping. */
  every?: number
  touch?: string
  /** Wait, without a clock, until this many matching calls run at once (standin.mjs, barrier()). */
  barrier?: number
  /** Answer only the first this many matching calls; later ones go to the next matching rule. */
  upTo?: number
}

export interface Call {
  tool: string
  pid: number
  startedAt: number
  argv: string[]
  cwd: string
  /** What it got on stdin: `none`, `read` (fed, to its end), or `open` (a pipe nobody fed nor closed: left unread). */
  stdin: 'none' | 'read' | 'open'
  stdinSha256: string | null
  /** sha256 of the file KUBECONFIG names, when it exists. */
  kubeconfigSha256?: string | null
  dockerPluginsLinked: boolean | null
  env: Record<string, string | null>
  /** With a barrier rule: the most matching calls seen running at once, and how many had ended when this one started. */
  peak?: number
  departedBefore?: number
}

/** The setup phase as the spec lists it (docker login fixed to --password-stdin); Helm 3 has no tiller. */
const GCLOUD_SETUP = [
  'gcloud auth activate-service-account --key-file=secrets/gke-auth-key.json',
  'gcloud container clusters get-credentials jhub --zone=us-central1-b --project=ea-jupyter',
]
const TILLER_SETUP = ['helm init --upgrade', 'kubectl rollout status --namespace kube-system --watch deployment tiller-deploy']
const DOCKER_LOGIN = 'docker login -u earthlabcu --password-stdin'
export const SETUP_COMMANDS = {
  2: [...GCLOUD_SETUP, ...TILLER_SETUP, DOCKER_LOGIN],
  3: [...GCLOUD_SETUP, DOCKER_LOGIN],
}

export const HELM3: Rule = { tool: 'helm', match: '^version', stdout: 'v3.17.2+gcc0bbbd\n' }
export const HELM2: Rule = { tool: 'helm', match: '^version', stdout: 'Client: v2.16.12+g47f0b88\n' }

/** A bin dir whose cloud CLIs, helm, kubectl and docker are the recording stand-in. */
export function standinBin(tools = ['gcloud', 'aws', 'az', 'kubelogin', 'helm', 'kubectl', 'docker']): string {
  const bin = tempDir('deploy-bin-')
  for (const tool of tools) fs.symlinkSync(STANDIN, path.join(bin, tool))
  return bin
}

/** A signal a stand-in received (it then died of it). */
export interface Signalled {
  tool: string
  pid: number
  signal: NodeJS.Signals
}

export interface RunResult {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
  calls: Call[]
  signals: Signalled[]
  /** Every call as `tool arg arg ...`, in order. */
  commands: string[]
  home: string
}

export interface RunOptions {
  rules?: Rule[]
  env?: Record<string, string | undefined>
  /** Replaces PATH entirely (the stand-in bin dir is still put first unless noStandins). */
  path?: string
  noStandins?: boolean
  /** More secret values this scenario plants (webhook URLs, tokens): scanned like PLANTED. */
  secrets?: string[]
  /** Called with the child once it started (to send signals). */
  onSpawn?: (child: ReturnType<typeof spawn>) => void
  /**
   * deploy.ts's stdin is a pipe this test never writes to nor closes (default: none, so the
   * test runner's stdin never reaches deploy.ts or its commands).
   */
  openStdin?: boolean
  /** A file descriptor deploy.ts writes its stdout to (e.g. /dev/full's) instead of a pipe; `stdout` is then ''. */
  stdoutFd?: number
}

/** The secret scan every scenario gets: output and every recorded argv. */
export function findLeak(r: Pick<RunResult, 'stdout' | 'stderr' | 'calls'>, secrets: string[]): string | undefined {
  for (const secret of secrets) {
    if (r.stdout.includes(secret) || r.stderr.includes(secret)) return `${secret.slice(0, 4)}... in the output`
    const call = r.calls.find((c) => c.argv.some((a) => a.includes(secret)))
    if (call) return `${secret.slice(0, 4)}... in the argv of ${call.tool}`
  }
  return undefined
}

/** Exit 2 with exactly one ERROR line that mentions `text`, and no external command run. */
export function assertUsageError(r: RunResult, text: string | RegExp) {
  assert.equal(r.code, 2, r.stderr)
  const errors = r.stderr.split('\n').filter((l) => l.startsWith('ERROR:'))
  assert.equal(errors.length, 1, r.stderr)
  assert.match(errors[0], typeof text === 'string' ? new RegExp(text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')) : text)
  assert.deepEqual(r.commands.filter((c) => !c.startsWith('helm version')), [], 'nothing may run')
}

/** The deno binary npm ci installed: the binary itself, as node_modules/.bin/deno is a Node shim that would swallow signals. */
export function denoBinary(): string {
  return ['node_modules/deno/deno', `node_modules/@deno/${process.platform}-${process.arch}-glibc/deno`]
    .map((p) => path.join(ROOT, p)).find((p) => fs.existsSync(p)) ?? path.join(ROOT, 'node_modules/.bin/deno')
}

/** The command that starts deploy.ts under the runtime the suite runs for. */
export function deployCommand(): string[] {
  if (process.env.DEPLOY_RUNTIME === 'deno') {
    const binary = denoBinary()
    // The packages npm ci installed (the versions deno.json pins; test/install.test.ts checks):
    // tests reach no registry. .ci/run proves that Deno alone resolves them without node_modules.
    return [binary, 'run', '-A', '--quiet', '--node-modules-dir=manual', DEPLOY]
  }
  return [process.execPath, '--import', TSX_LOADER, DEPLOY]
}

function jsonLines<T>(file: string): T[] {
  return fs.existsSync(file) ? fs.readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l)) : []
}

/** Runs deploy.ts in `repo` with stand-ins first on PATH and a fresh HOME. */
export function runDeploy(repo: string, args: string[], options: RunOptions = {}): Promise<RunResult> {
  const work = tempDir('deploy-run-')
  const home = path.join(work, 'home')
  fs.mkdirSync(home)
  const logFile = path.join(work, 'calls.jsonl')
  const rulesFile = path.join(work, 'rules.json')
  fs.writeFileSync(rulesFile, JSON.stringify(options.rules ?? [HELM3]))
  const basePath = options.path ?? process.env.PATH ?? ''
  const PATH = options.noStandins ? basePath : `${standinBin()}${path.delimiter}${basePath}`
  const env: Record<string, string> = {}
  for (const [k, v] of Object.entries({ ...process.env, HOME: home, PATH, STANDIN_LOG: logFile, STANDIN_RULES: rulesFile, ...options.env })) {
    // CI variables and cloud credentials of the machine running the tests must not leak into the run under test.
    if (v !== undefined && !/^(TRAVIS|GITHUB_|CI$|AWS_|AZURE_|CLUSTER_PROVIDER$|REGISTRY_PROVIDER$)/.test(k)) env[k] = v
  }
  for (const [k, v] of Object.entries(options.env ?? {})) if (v !== undefined) env[k] = v
  const [cmd, ...pre] = deployCommand()
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, [...pre, ...args], { cwd: repo, env, stdio: [options.openStdin ? 'pipe' : 'ignore', options.stdoutFd ?? 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout?.on('data', (d) => (stdout += d))
    child.stderr!.on('data', (d) => (stderr += d))
    child.on('error', reject)
    options.onSpawn?.(child)
    child.on('close', (code, signal) => {
      child.stdin?.destroy()
      const calls = jsonLines<Call>(logFile)
      const result = { code, signal, stdout, stderr, calls, signals: jsonLines<Signalled>(`${logFile}.signals`), commands: calls.map((c) => [c.tool, ...c.argv].join(' ')), home }
      const leak = findLeak(result, [...PLANTED, ...(options.secrets ?? [])])
      // Outside the tests a command given a stdin nobody feeds (a terminal, CI's pipe) may wait on it for ever.
      const open = calls.find((c) => c.stdin === 'open')
      if (leak) reject(new Error(`secret leaked: ${leak}`))
      else if (open) reject(new Error(`${open.tool} ${open.argv.join(' ')} was given a stdin that stayed open and silent: deploy.ts passed its own on`))
      else resolve(result)
    })
  })
}
