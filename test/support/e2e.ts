// What every end-to-end suite shares: the matrix of toolchains (forEachToolchain), one list of
// the environment a developer's machine could leak into a run, one bounded deploy.ts runner that
// leaves no child behind, and cluster(t): a simulated Kubernetes API with its own HOME and
// KUBECONFIG, and the real helm and kubectl.
import assert from 'node:assert/strict'
import type { ChildProcess } from 'node:child_process'
import { execFile } from 'node:child_process'
import path from 'node:path'
import { describe, test, type TestContext } from 'node:test'
import { runDeploy, tempDir, type RunOptions, type RunResult } from './harness.ts'
import { startKubeApi, type KubeApi, type KubeApiOptions } from './kube-api.ts'
import { realKubeTools, selectedToolchains, unavailable, type KubeTools, type Toolchain } from './tools.ts'

/** What a run's log shows differently on each toolchain: lib/helm.ts's rows 3 and 4, and what each helm prints. */
export const ON: Record<Toolchain, { wait: string; waitFailed: RegExp }> = {
  helm3: {
    wait: '--wait',
    /** helm --wait giving up on a Deployment: Helm 3 polls, then says only this. */
    waitFailed: /Error: (UPGRADE FAILED: )?context deadline exceeded/,
  },
  helm4: {
    wait: '--wait=watcher',
    // kstatus's verdict on the first object not ready, then the deadline on a line of its own
    waitFailed: /Error: (UPGRADE FAILED: )?resource Deployment\/\S+ not ready\. status: InProgress, message: Available: 0\/1\ncontext deadline exceeded/,
  },
}

/**
 * A suite once per selected toolchain (TEST_TOOLCHAINS, default all; a matrix, not a copy):
 * `describe(title)`, then one `describe(<toolchain's label>)` each, its tests concurrent, its
 * body given that toolchain's real helm and kubectl. Tools missing: a failing test under
 * CI=true, else a skipped one. The toolchains run one after the other (deploy.ts runs are
 * CPU-bound on 2 cores: together they only slow each other), or with `together` at once (for
 * suites that wait on the clock; a hook shared by the toolchains then belongs to the file).
 */
export async function forEachToolchain(title: string, suite: (tools: KubeTools) => void, { together = false } = {}): Promise<void> {
  const chains = await Promise.all(selectedToolchains().map(async (toolchain) => ({ toolchain, tools: await realKubeTools(toolchain) })))
  describe(title, { concurrency: together }, () => {
    for (const { toolchain, tools } of chains) {
      if (tools) describe(tools.label, { concurrency: true }, () => suite(tools))
      else if (process.env.CI === 'true') test(`${toolchain}: the tools are available (CI=true: required)`, { timeout: 5_000 }, () => assert.fail(unavailable(toolchain)))
      else test(toolchain, { skip: unavailable(toolchain), timeout: 5_000 }, () => {})
    }
  })
}

/** Configuration a developer's environment could leak into the run under test: unset in every e2e run. */
const LEAKY = /^(HELM_|KUBE|ROLLOUT_TIMEOUT$|LOCK_TIMEOUT$|HEARTBEAT_INTERVAL$|ROLLBACK_ON_FAILURE$|USER_IMAGE_PREFIX$|HUB_IMAGE_PREFIX$|DOCKER_BUILDKIT$|DOCKER_CONFIG$|DOCKER_REGISTRY$|DEPLOY_PLUGINS$|STAGING_CHART$|CLUSTER_PROVIDER$|REGISTRY_PROVIDER$|GCLOUD_|GKE_|GCP_|HUB_URL_|HEALTH_CHECK_)/

/** The environment's leaky keys, unset. */
export const scrubbed = (): Record<string, undefined> => Object.fromEntries(Object.keys(process.env).filter((k) => LEAKY.test(k)).map((k) => [k, undefined]))

export const show = (r: RunResult) => `exit ${r.code}${r.signal ? ` (${r.signal})` : ''}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`

/** A run of deploy.ts is stopped (SIGTERM) after this long, whatever happens. */
const RUN_LIMIT_MS = 120_000

/**
 * Runs deploy.ts in `repo`, bounded by `limitMs`, the run killed when the test ends (a test that
 * fails must not leave it running).
 */
export async function boundedRun(t: TestContext, repo: string, args: string[], options: RunOptions & { limitMs?: number } = {}): Promise<RunResult> {
  let child: ChildProcess | undefined
  const timer = setTimeout(() => child?.kill('SIGTERM'), options.limitMs ?? RUN_LIMIT_MS)
  const kill = () => child?.kill('SIGKILL')
  t.after(kill)
  try {
    return await runDeploy(repo, args, {
      ...options,
      env: { ...scrubbed(), ...options.env },
      noStandins: true,
      onSpawn: (c) => {
        child = c
        options.onSpawn?.(c)
      },
    })
  } finally {
    clearTimeout(timer)
  }
}

export interface ClusterOptions extends KubeApiOptions {
  /** The helm and kubectl to run (realKubeTools()). */
  tools: KubeTools
  /** Settings of every run on this cluster, after the defaults (HELM_TIMEOUT 60, ROLLOUT_TIMEOUT 60s, USER_IMAGE_PREFIX example/user-). */
  env?: Record<string, string>
  /** Secrets every run must never show (checked by runDeploy). */
  secrets?: string[]
}

export interface Cluster {
  api: KubeApi
  home: string
  kubeconfig: string
  /** Runs deploy.ts in `repo` against this cluster with the real helm and kubectl first on PATH. */
  deploy(repo: string | { repo: string }, args: string[], env?: Record<string, string>, options?: RunOptions & { limitMs?: number }): Promise<RunResult>
  /** The real helm against this cluster, for a test's own checks. */
  helm(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }>
}

/** One simulated cluster for one test, with its own HOME and KUBECONFIG; closed when the test ends. */
export async function cluster(t: TestContext, { tools, env = {}, secrets, ...api }: ClusterOptions): Promise<Cluster> {
  const kube = await startKubeApi({ readyDelayMs: 0, kubernetesVersion: tools.kubernetesVersion, ...api })
  t.after(() => kube.close())
  const home = tempDir('deploy-e2e-home-')
  const kubeconfig = path.join(home, 'kubeconfig')
  await kube.writeKubeconfig(kubeconfig)
  const PATH = `${tools.binDir}${path.delimiter}${process.env.PATH}`
  const base = { HOME: home, KUBECONFIG: kubeconfig, HELM_TIMEOUT: '60', ROLLOUT_TIMEOUT: '60s', USER_IMAGE_PREFIX: 'example/user-', ...env }
  return {
    api: kube,
    home,
    kubeconfig,
    deploy: (repo, args, extra = {}, options = {}) =>
      boundedRun(t, typeof repo === 'string' ? repo : repo.repo, args, { secrets, ...options, env: { ...base, ...extra }, path: PATH }),
    helm: (...args) => new Promise((resolve) => {
      execFile(tools.helm, args, { env: { PATH, HOME: home, KUBECONFIG: kubeconfig }, timeout: 30_000 }, (err, stdout, stderr) =>
        resolve({ code: err ? Number((err as { code?: unknown }).code) || 1 : 0, stdout, stderr }))
    }),
  }
}
