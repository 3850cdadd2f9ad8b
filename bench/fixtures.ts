// Fixture repositories and simulated clusters for the deploy benchmarks (P2, P5, P7), on either toolchain.
import fs from 'node:fs'
import path from 'node:path'
import { commit, makeRepo, tempDir } from '../test/support/harness.ts'
import { startKubeApi, type KubeApi } from '../test/support/kube-api.ts'
import { realKubeTools, unavailable, type KubeTools, type Toolchain } from '../test/support/tools.ts'
import { ROOT, scratch, sh, type Proc } from './lib.ts'

/**
 * A chart template with the given Deployments (1 replica each). The pod template carries the
 * user image tag deploy.ts sets and a `rev` value, so every upgrade that changes either starts
 * a new rollout. `maxUnavailable: 1` lets Helm 3's `helm upgrade --wait` return before any pod
 * is ready (then the rollout phase does the waiting); without it helm --wait waits for
 * readiness. Helm 4's `--wait=watcher` waits for every pod either way.
 */
export function deploymentsTemplate(names: string[], maxUnavailable?: number): string {
  const strategy = maxUnavailable === undefined ? '' : `\n  strategy: {type: RollingUpdate, rollingUpdate: {maxUnavailable: ${maxUnavailable}}}`
  return `{{- range $name := list ${names.map((n) => JSON.stringify(n)).join(' ')} }}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $name }}
  labels: {app: bench, component: {{ $name }}}
spec:
  replicas: 1${strategy}
  selector:
    matchLabels: {app: bench, component: {{ $name }}}
  template:
    metadata:
      labels: {app: bench, component: {{ $name }}}
      annotations:
        rev: {{ $.Values.rev | default "0" | quote }}
        user-image-tag: {{ $.Values.jupyterhub.singleuser.image.tag | quote }}
    spec:
      containers:
        - name: {{ $name }}
          image: example/{{ $name }}:1
{{- end }}
`
}

/** An ops repository (harness.makeRepo) whose hub charts render `deployments` Deployments each. */
export function benchRepo(hubs: string[], deployments: string[], maxUnavailable?: number): string {
  const repo = makeRepo({ hubs, userImages: hubs, noSetupSecrets: true })
  const files: Record<string, string> = {}
  for (const hub of hubs) files[`hub-charts/${hub}/templates/deployments.yaml`] = deploymentsTemplate(deployments, maxUnavailable)
  files['.gitignore'] = 'hub-charts/*/charts/\nhub-charts/*/Chart.lock\n'
  commit(repo, files, 'bench templates')
  scratch.add(repo)
  return repo
}

export interface Cluster {
  api: KubeApi
  tools: KubeTools
  env: NodeJS.ProcessEnv
  kubectl(args: string[]): Promise<Proc>
  helm(args: string[], cwd?: string): Promise<Proc>
  close(): Promise<void>
}

/** Configuration of the machine running the bench that must not reach the runs measured. */
const LEAKY = /^(HELM_|KUBE|ROLLOUT_TIMEOUT$|USER_IMAGE_PREFIX$|HUB_IMAGE_PREFIX$|DEPLOY_PLUGINS$|STAGING_CHART$|GCLOUD_|GKE_|GCP_|TRAVIS|GITHUB_|CI$|DOCKER_)/

/** A simulated cluster (readyDelayMs) with its own HOME and KUBECONFIG, the toolchain's real helm/kubectl first on PATH. */
export async function cluster(readyDelayMs: number, toolchain: Toolchain): Promise<Cluster> {
  const tools = await realKubeTools(toolchain)
  if (!tools) throw new Error(unavailable(toolchain))
  const api = await startKubeApi({ readyDelayMs, kubernetesVersion: tools.kubernetesVersion })
  const home = tempDir('bench-home-')
  const kubeconfig = path.join(home, 'kubeconfig')
  await api.writeKubeconfig(kubeconfig)
  const env: NodeJS.ProcessEnv = {}
  for (const [k, v] of Object.entries(process.env)) if (!LEAKY.test(k)) env[k] = v
  Object.assign(env, {
    HOME: home, KUBECONFIG: kubeconfig, PATH: `${tools.binDir}${path.delimiter}${process.env.PATH}`,
    HELM_TIMEOUT: '120', ROLLOUT_TIMEOUT: '120s', NO_COLOR: '1',
  })
  return {
    api, tools, env,
    kubectl: (args) => sh(tools.kubectl, args, { env, timeoutMs: 180_000 }),
    helm: (args, cwd) => sh(tools.helm, args, { env, cwd, timeoutMs: 180_000 }),
    async close() {
      await api.close()
      fs.rmSync(home, { recursive: true, force: true })
    },
  }
}

/**
 * `node --import tsx deploy.ts ...` (how CI starts it), in `repo`, against the cluster. With
 * `trace`, under `strace --seccomp-bpf -f -e execve` (only execve stops: little overhead), writing
 * a timestamped line per process started to that file (see execTimeline).
 */
export function deployTs(c: Cluster, repo: string, args: string[], trace?: string): Promise<Proc> {
  const argv = [process.execPath, '--import', path.join(ROOT, 'node_modules/tsx/dist/esm/index.mjs'), path.join(ROOT, 'deploy.ts'), ...args]
  const [cmd, ...rest] = trace ? ['strace', '--seccomp-bpf', '-f', '-qq', '-ttt', '-e', 'trace=execve', '-e', 'signal=none', '-o', trace, ...argv] : argv
  return sh(cmd, rest, { cwd: repo, env: c.env, timeoutMs: 300_000 })
}

export interface Exec {
  /** Seconds since deploy.ts's own exec. */
  at: number
  program: string
  argv: string[]
}

/** The processes a traced run started, in order (shells left out: bash execs the tool in place). */
export function execTimeline(trace: string): Exec[] {
  const lines = fs.readFileSync(trace, 'utf8').split('\n').filter((l) => /execve\(/.test(l) && / = 0$/.test(l))
  const parsed = lines.map((l) => {
    const [, ts, rest] = /^\d+\s+(\d+\.\d+)\s+(.*)$/.exec(l) ?? []
    const program = /execve\("([^"]*)"/.exec(rest ?? '')?.[1] ?? ''
    const argv = [...(/\[(.*?)\]/.exec(rest ?? '')?.[1] ?? '').matchAll(/"((?:[^"\\]|\\.)*)"/g)].map((m) => m[1])
    return { ts: Number(ts), program: path.basename(program), argv }
  })
  const t0 = parsed[0]?.ts ?? 0
  return parsed.slice(1).filter((e) => !/^(ba|da)?sh$/.test(e.program)).map((e) => ({ at: e.ts - t0, program: e.program, argv: e.argv.slice(1) }))
}

/** strace on PATH, or undefined. */
export function straceAvailable(): boolean {
  return (process.env.PATH ?? '').split(path.delimiter).some((d) => fs.existsSync(path.join(d, 'strace')))
}

/** Seconds a phase took, from deploy.ts's `<== <phase> <chart> (Ns)` line. */
export function phaseSeconds(stdout: string, phase: string, chart: string): number {
  const m = new RegExp(`<== ${phase} ${chart} \\((\\d+\\.\\d)s\\)`).exec(stdout)
  if (!m) throw new Error(`no "<== ${phase} ${chart}" line in:\n${stdout}`)
  return Number(m[1])
}
