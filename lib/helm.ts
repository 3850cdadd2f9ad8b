/**
 * The Helm adapter (what differs between Helm 2, 3 and 4, as data), and what deploy.ts does
 * to a release beyond the upgrade: --recover, --rollback-on-failure, diagnostics.
 */
import { DeployError, EXIT, type Exec, type Helm, type HelmMajor, type ReleaseRevision } from './contract.ts'
import { findOnPath, inGroup, onPath } from './process.ts'
import { REACH_THE_CLUSTER, clusterFault } from './cluster.ts'
import type { ChartRun, Tools } from './plan.ts'

/** Helm 3, which Helm 4 follows but for its --wait. */
const HELM3 = {
  namespaced: true,
  upgradeFlags: [],
  wait: ['--wait'],
  createNamespace: ['--create-namespace'],
  seconds: (s: number) => `${s}s`,
  template: (release: string, dir: string) => ['template', release, dir],
  serverDryRun: true,
  uninstall: ['uninstall'],
  /** Downloads a chart archive from a repository (--validate, --diff of an upstream chart). */
  pull: ['pull'],
  setup: [],
  // How helm refuses to upgrade a release that is pending-install/upgrade/rollback.
  pendingRefusal: /another operation \(install\/upgrade\/rollback\) is in progress/,
} as const

/** What each Helm version does its own way. */
export const HELM_VERSIONS = {
  2: {
    // Releases live in tiller: no --namespace for them.
    namespaced: false,
    upgradeFlags: ['--force'],
    wait: ['--wait'],
    createNamespace: [],
    seconds: (s: number) => String(s),
    template: (release: string, dir: string) => ['template', dir, '--name', release],
    serverDryRun: false,
    uninstall: ['delete', '--purge'],
    pull: ['fetch'],
    // Setup installs or upgrades tiller, then waits for it.
    setup: [
      ['helm', 'init', '--upgrade'],
      ['kubectl', 'rollout', 'status', '--namespace', 'kube-system', '--watch', 'deployment', 'tiller-deploy'],
    ],
    pendingRefusal: undefined,
  },
  3: HELM3,
  4: {
    ...HELM3,
    // Helm 4's --wait takes a strategy. `watcher` waits, with watches, until every object is
    // ready as kstatus judges it (a Deployment's new pods available, a Job complete); a bare
    // --wait means the same, said here so the log reads what helm does. `legacy` is Helm 3's
    // polling; the default, `hookOnly`, would not wait for the hub at all.
    wait: ['--wait=watcher'],
  },
} as const

/** The Helm versions deploy.ts knows, as a refusal names them. */
const SUPPORTED = `Helm ${Object.keys(HELM_VERSIONS).join(', ').replace(/, (\d)$/, ' or $1')}`

export function makeHelm(major: HelmMajor, tools: Pick<Tools, 'exec' | 'env' | 'invocation'>): Helm {
  const v = HELM_VERSIONS[major]
  const ns = (release: string) => (v.namespaced ? ['--namespace', release] : [])
  return {
    major,
    tracksPending: v.pendingRefusal !== undefined,
    setup: v.setup,
    upgradeArgs: (release, chart, timeoutSeconds, values) => [
      'upgrade', '--install', '--namespace', release, release, chart, ...v.upgradeFlags,
      ...v.wait, '--timeout', v.seconds(timeoutSeconds), '--cleanup-on-fail', ...v.createNamespace,
      ...values,
    ],
    statusArgs: (release) => ['status', release, ...ns(release)],
    templateArgs: (release, dir) => [...v.template(release, dir)],
    serverDryRun: v.serverDryRun,
    repairArgs: (release, revision, timeoutSeconds) => revision === undefined
      ? [...v.uninstall, release, ...ns(release)]
      : ['rollback', release, String(revision), ...ns(release), ...v.wait, '--timeout', v.seconds(timeoutSeconds)],
    history: (release) => releaseHistory(tools, ['history', release, ...ns(release), '-o', 'json'], release),
    revision: (output) => {
      const found = /^REVISION: (\d+)$/m.exec(output)?.[1]
      return found ? Number(found) : undefined
    },
    isPendingRefusal: (output) => v.pendingRefusal?.test(output) ?? false,
  }
}

/** How helm says a release does not exist: `release: not found` (Helm 3 and 4), `release: "x" not found` (Helm 2). */
const NO_RELEASE = /release: ("[^"]*" )?not found/

/**
 * `helm history -o json` of either version, oldest first, statuses as Helm 3 spells them; an
 * error says why not (`missing` when helm said the release does not exist).
 */
async function releaseHistory(tools: Pick<Tools, 'exec' | 'env' | 'invocation'>, args: string[], release: string): ReturnType<Helm['history']> {
  const r = await tools.exec('helm', args, { capture: true, nothrow: true, show: 'probe', readOnly: true, timeout: 60 })
  if (r.exitCode !== 0) {
    const fault = clusterFault(r, 'helm history', tools)
    const why = fault ?? ((r.stderr || r.stdout).trim().split('\n').at(-1) || `exit ${r.exitCode}`)
    return { error: `could not read the history of ${release} (${why})`, ...(!fault && NO_RELEASE.test(why) ? { missing: true } : {}) }
  }
  let list: unknown
  try {
    list = JSON.parse(r.stdout || '[]')
  } catch {
    list = undefined
  }
  if (!Array.isArray(list)) return { error: `\`helm ${args.join(' ')}\` did not print a JSON list` }
  const revisions = (list as ReleaseRevision[]).map((rev) => ({ ...rev, revision: Number(rev.revision), status: String(rev.status).toLowerCase().replace(/_/g, '-') }))
  return { revisions: revisions.sort((a, b) => a.revision - b.revision) }
}

/** A local probe (`helm version`) answers in milliseconds: this bound only catches a stuck one. */
const LOCAL_PROBE_SECONDS = 15

/**
 * Helm's version from the client alone: `--client` keeps Helm 2 from asking tiller, and
 * Helm 4, which has no tiller and no `--client`, is asked again without it. Undefined when
 * helm is not on PATH; `major` unset when helm printed a version deploy.ts does not know.
 */
export async function helmVersion(exec: Exec, env: NodeJS.ProcessEnv): Promise<{ major?: HelmMajor; said: string; problem?: string } | undefined> {
  if (!onPath('helm', env)) return undefined
  const probe = (args: string[]) => exec('helm', args, { capture: true, nothrow: true, show: 'probe', readOnly: true, timeout: LOCAL_PROBE_SECONDS })
  let r = await probe(['version', '--client', '--short'])
  if (r.exitCode !== 0 && /unknown flag: --client/.test(r.stderr)) r = await probe(['version', '--short'])
  if (r.timedOut) {
    return { said: '', problem: `helm version (a local command that answers at once) did not answer within ${LOCAL_PROBE_SECONDS}s: check the helm on PATH, ${findOnPath('helm', env)}` }
  }
  const said = (r.stdout.trim() || r.stderr.trim() || `exit ${r.exitCode}`).split('\n')[0].slice(0, 200)
  const major = /^(?:Client: )?v(\d+)\.\d+/m.exec(r.stdout)?.[1]
  return { major: major && Object.hasOwn(HELM_VERSIONS, major) ? (Number(major) as HelmMajor) : undefined, said }
}

/** Why deploy.ts cannot work with the helm it found, naming what it printed. */
export function unsupportedHelm(said: string): string {
  return `helm version printed "${said}": deploy.ts supports ${SUPPORTED}; install one of them (https://helm.sh/docs/intro/install/)`
}

/**
 * A release an interrupted run left pending-*: with --recover, rolled back to the last
 * deployed revision (or uninstalled if it never deployed); otherwise an error naming the
 * state and the repair. Returns whether the release was pending.
 */
export async function handlePendingRelease({ plan, exec, out, helm }: ChartRun): Promise<boolean> {
  const { chart } = plan
  const history = await helm.history(chart)
  const revisions = 'revisions' in history ? history.revisions : []
  const last = revisions.at(-1)
  if (!last || !last.status.startsWith('pending-')) return false
  // Only a whole revision number may reach `helm rollback` (the history is helm's output, not ours).
  const deployed = [...revisions].reverse().find((r) => (r.status === 'deployed' || r.status === 'superseded') && Number.isInteger(r.revision) && r.revision > 0)
  const repair = helm.repairArgs(chart, deployed?.revision, plan.config.helmTimeoutSeconds)
  if (!plan.recover) {
    throw new DeployError(`release ${chart} is stuck in ${last.status} (revision ${last.revision}, an earlier run was interrupted): repair with \`helm ${repair.join(' ')}\` or rerun with --recover`)
  }
  out.warn(`release ${chart} is stuck in ${last.status}: recovering with helm ${repair.join(' ')}`)
  await exec('helm', repair, { timeout: deployed ? plan.config.helmTimeoutSeconds + 120 : 300, cluster: `helm ${repair[0]}` })
  return true
}

/**
 * One line when kubectl is more than one minor version away from the cluster's (kubectl's
 * supported skew): helm and kubectl then talk to an API they were not tested against.
 */
export async function warnVersionSkew(run: ChartRun) {
  const { plan, exec, out } = run
  if (plan.dryRun) return // a probe, not a step of the plan
  const r = await exec('kubectl', ['version', '-o', 'json'], { capture: true, nothrow: true, show: 'probe', timeout: 60 })
  // The first word with the cluster: one that does not answer stops the deploy here, before the lock.
  const fault = clusterFault(r, 'kubectl version', run)
  if (fault) throw new DeployError(`${fault}: not deploying ${plan.chart}; ${REACH_THE_CLUSTER}`)
  let versions: { clientVersion?: { minor?: string }; serverVersion?: { minor?: string } } = {}
  try {
    versions = JSON.parse(r.stdout)
  } catch {
    return // no cluster answer (a dry run, a stand-in): the deploy says what is wrong
  }
  const minor = (v?: { minor?: string }) => Number.parseInt(v?.minor ?? '', 10)
  const [client, server] = [minor(versions.clientVersion), minor(versions.serverVersion)]
  if (Math.abs(client - server) > 1) out.warn(`kubectl 1.${client} is more than one minor version away from the cluster's Kubernetes 1.${server}: install kubectl 1.${server - 1} to 1.${server + 1} (https://kubernetes.io/releases/version-skew-policy/)`)
}

/** What the cluster says about the namespace, printed after a failed upgrade or rollout (not when cancelled). */
export async function printDiagnostics(run: ChartRun) {
  const { plan, exec, out, helm, invocation } = run
  if (invocation.cancelled) return
  const ns = plan.chart
  out.error(`diagnostics for namespace ${ns}:`)
  const opts = { nothrow: true, timeout: 60 } as const
  for (const [tool, args] of [['kubectl', ['get', 'events', '--namespace', ns, '--sort-by=.lastTimestamp']], ['kubectl', ['get', 'pods', '--namespace', ns]], ['helm', helm.statusArgs(ns)]] as const) {
    const r = await exec(tool, [...args], opts)
    // A cluster that does not answer one question answers none: the rest would wait as long.
    const fault = clusterFault(r, `${tool} ${args.slice(0, 2).join(' ')}`, run)
    if (fault) return out.warn(`diagnostics stopped: ${fault}`)
  }
}

/** Just before the upgrade: the revision live now, to go back to, and the newest, to tell whether the upgrade made one. */
export async function recordLiveRevision({ plan, state, helm }: ChartRun) {
  const history = await helm.history(plan.chart)
  // Not knowing the release is not a first install: without a revision to go back to, the flag's promise cannot be kept.
  if ('error' in history && !history.missing) {
    throw new DeployError(`${plan.chart}: not deploying under --rollback-on-failure without the revision to go back to: ${history.error}; without --rollback-on-failure it would deploy, with no rollback if it fails`, EXIT.refused)
  }
  const revisions = 'revisions' in history ? history.revisions : []
  state.before = {
    live: [...revisions].reverse().find((rev) => rev.status === 'deployed')?.revision,
    newest: revisions.at(-1)?.revision ?? 0,
  }
}

/**
 * After a failure that may have changed the release: back to the revision live before the
 * run, whose rollout is then waited for. Records the outcome for the fail hooks; never
 * throws (the run ends with its own error).
 */
export async function rollBack(r: ChartRun, rollout: (r: ChartRun) => Promise<void>) {
  const { plan, state, out, helm } = r
  const { chart } = plan
  const before = state.before
  if (!before) return // failed before the upgrade started: the release was not touched
  if (before.live === undefined) {
    out.warn(before.newest === 0
      ? `${chart}: this was its first install, so there is no earlier revision to roll back to; the release is left as it is (\`helm ${helm.repairArgs(chart, undefined, 0).join(' ')}\` removes it)`
      : `${chart}: no revision was deployed before this run, so there is none to roll back to; the release is left as it is`)
    return
  }
  const history = state.revision === undefined ? await helm.history(chart) : undefined
  const to = before.live
  if (history && 'error' in history) {
    // Whether the upgrade made a revision is unknown: going back to the known one is safe either way.
    out.warn(`${chart} failed, and whether helm upgrade made a new revision is unknown (${history.error}): rolling back to revision ${to}, the one live before this run`)
  } else {
    const made = state.revision ?? (history?.revisions.at(-1)?.revision ?? 0)
    if (made <= before.newest) {
      out.info(`${chart} is still on revision ${before.live} (the upgrade made no new revision): nothing to roll back`)
      return
    }
    out.warn(`${chart} failed after helm upgrade made revision ${made}: rolling back to revision ${to}, the one live before this run`)
  }
  try {
    await inGroup(out, 'rollback', `rollback ${chart}`, async () => {
      const seconds = plan.config.helmTimeoutSeconds
      // helm stops waiting at its own --timeout; ours is only a backstop.
      await r.exec('helm', helm.repairArgs(chart, to, seconds), { timeout: seconds + 120, cluster: 'helm rollback' })
      await rollout(r)
    })
    state.rolledBackTo = to
    out.warn(`${chart} rolled back to revision ${to}`)
  } catch (e) {
    state.rollbackError = `rollback of ${chart} to revision ${to} failed: ${(e as Error)?.message ?? e}`
    out.error(state.rollbackError)
    await printDiagnostics(r)
  }
}
