/**
 * The deploy lock: one run changes a chart's release at a time (docs/reliability.md, "The lock").
 *
 * A lease: the ConfigMap deploy-lock in the release's namespace, created by the run that
 * deploys (creation is atomic: a second run gets AlreadyExists), renewed every
 * RENEW_SECONDS while it runs, marked released when it ends. Every write after the
 * creation names the resourceVersion it read, so two runs can never both win a takeover.
 */
import process from 'node:process'
import os from 'node:os'
import { DeployError, type CommandResult } from './contract.ts'
import { REACH_THE_CLUSTER, clusterFault } from './cluster.ts'
import { abortableSleep, ciRunUrl, tail } from './process.ts'
import type { ChartRun } from './plan.ts'

/** A holder that has not renewed its lease for this long (by the waiting run's clock) is gone. */
const LEASE_SECONDS = 120
const RENEW_SECONDS = 20
const LOCK_POLL_SECONDS = 5
const LOCK_NAME = 'deploy-lock'

interface LeaseData {
  holder: string
  commit: string
  acquired: string
  renewed: string
  released: string
}

export interface HeldLease {
  resourceVersion?: string
  data: LeaseData
  timer?: NodeJS.Timeout
  renewing?: Promise<unknown>
  lost?: boolean
}

/** Who this run is, as the lease (and a waiting run's message) names it. */
function holderName(env: NodeJS.ProcessEnv): string {
  const where = ciRunUrl(env) ?? `${os.userInfo().username}@${os.hostname()}`
  return `${where} (pid ${process.pid})`
}

function leaseObject(chart: string, data: LeaseData, resourceVersion?: string): string {
  return JSON.stringify({
    apiVersion: 'v1',
    kind: 'ConfigMap',
    metadata: { name: LOCK_NAME, namespace: chart, labels: { 'app.kubernetes.io/managed-by': 'deploy.ts' }, ...(resourceVersion ? { resourceVersion } : {}) },
    data,
  })
}

const lockCommand = { capture: true, nothrow: true, show: 'probe', timeout: 60 } as const

/** Why a lock command failed: the cluster named when it gave no answer, else kubectl's error line. */
function lockError(r: ChartRun, done: CommandResult, what: string): string {
  const fault = clusterFault(done, what, r)
  return fault ? `${fault}; ${REACH_THE_CLUSTER}` : tail(done.stderr || done.stdout, 1) || `${what} exited with ${done.exitCode}`
}

/** kubectl create or replace of the lease: the resourceVersion it got, or why not. */
async function writeLease(r: ChartRun, verb: 'create' | 'replace', data: LeaseData, { resourceVersion, cleanup = false }: { resourceVersion?: string; cleanup?: boolean } = {}) {
  const { plan, exec } = r
  const input = leaseObject(plan.chart, data, resourceVersion)
  const done = await exec('kubectl', [verb, '--namespace', plan.chart, '-o', 'json', '-f', '-'], { ...lockCommand, input, cleanup })
  if (done.exitCode !== 0) return { error: lockError(r, done, `kubectl ${verb} (the lease)`) }
  let version: string | undefined
  try {
    version = JSON.parse(done.stdout).metadata?.resourceVersion
  } catch {
    // A kubectl wrapper printed something else: renewals then go unconditional.
  }
  return { resourceVersion: version }
}

async function readLease(run: ChartRun): Promise<{ data: Partial<LeaseData>; resourceVersion: string } | undefined> {
  const { plan, exec } = run
  const r = await exec('kubectl', ['get', 'configmap', LOCK_NAME, '--namespace', plan.chart, '-o', 'json', '--ignore-not-found'], { ...lockCommand, readOnly: true })
  const unreadable = (why: string) => new DeployError(`could not read the deploy lock configmap/${LOCK_NAME} in namespace ${plan.chart}: ${why}`)
  if (r.exitCode !== 0) throw unreadable(lockError(run, r, 'kubectl get (the lease)'))
  if (!r.stdout.trim()) return undefined
  try {
    const object = JSON.parse(r.stdout)
    return { data: object.data ?? {}, resourceVersion: String(object.metadata?.resourceVersion ?? '') }
  } catch {
    throw unreadable('kubectl did not print JSON')
  }
}

const ago = (iso: string | undefined) => {
  const ms = Date.now() - Date.parse(iso ?? '')
  return Number.isFinite(ms) ? `${Math.max(0, Math.round(ms / 1000))}s ago` : 'at an unknown time'
}

/**
 * Takes the chart's lease, waiting up to LOCK_TIMEOUT while another run holds it. A lease
 * that is released, or that nobody renewed for LEASE_SECONDS, is taken over.
 */
export async function acquireLock(r: ChartRun) {
  const { plan, out, exec, env, invocation } = r
  const { chart, config } = plan
  if (plan.dryRun) {
    out.print(`# the deploy takes the lock configmap/${LOCK_NAME} in namespace ${chart} (waiting up to LOCK_TIMEOUT=${config.LOCK_TIMEOUT} for another run)`)
    return
  }
  const now = () => new Date().toISOString()
  const data: LeaseData = { holder: holderName(env), commit: plan.commit, acquired: now(), renewed: now(), released: 'false' }
  const deadline = Date.now() + config.lockTimeoutSeconds * 1000
  let seen: { resourceVersion: string; since: number } | undefined
  let lastNote = 0
  for (;;) {
    data.acquired = data.renewed = now()
    const created = await writeLease(r, 'create', data)
    if (!created.error) return holdLock(r, data, created.resourceVersion)
    if (/namespaces? "[^"]*" not found/.test(created.error)) {
      // A first install: the namespace helm would create holds the lease from the start.
      const namespace = JSON.stringify({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: chart } })
      const ns = await exec('kubectl', ['create', '-o', 'name', '-f', '-'], { ...lockCommand, input: namespace })
      if (ns.exitCode !== 0 && !/AlreadyExists/.test(ns.stderr)) throw new DeployError(`could not create namespace ${chart} for the deploy lock: ${lockError(r, ns, 'kubectl create (the namespace)')}`)
      continue
    }
    if (!/AlreadyExists/.test(created.error)) throw new DeployError(`could not take the deploy lock configmap/${LOCK_NAME} in namespace ${chart}: ${created.error}`)
    const lease = await readLease(r)
    if (!lease) continue
    if (lease.resourceVersion !== seen?.resourceVersion) seen = { resourceVersion: lease.resourceVersion, since: Date.now() }
    // Gone: unchanged for a lease's length as we saw it, or renewed long ago by its own clock.
    const gone = Date.now() - seen.since >= LEASE_SECONDS * 1000 || Date.now() - Date.parse(lease.data.renewed ?? '') > 10 * LEASE_SECONDS * 1000
    if (lease.data.released === 'true' || gone) {
      const taken = await writeLease(r, 'replace', data, { resourceVersion: lease.resourceVersion })
      if (!taken.error) {
        if (lease.data.released !== 'true') out.warn(`took over the deploy lock of ${chart} from ${lease.data.holder ?? 'an unknown run'}, which stopped renewing it (last renewed ${ago(lease.data.renewed)})`)
        return holdLock(r, data, taken.resourceVersion)
      }
      if (!/Conflict|modified/.test(taken.error)) throw new DeployError(`could not take the deploy lock configmap/${LOCK_NAME} in namespace ${chart}: ${taken.error}`)
      continue
    }
    const who = `${lease.data.holder ?? 'an unknown run'} (commit ${(lease.data.commit ?? '?').slice(0, 12)}, started ${ago(lease.data.acquired)}, lease renewed ${ago(lease.data.renewed)})`
    if (Date.now() >= deadline) {
      throw new DeployError(`${chart} is being deployed by ${who}: not deploying alongside it after waiting LOCK_TIMEOUT=${config.LOCK_TIMEOUT}; rerun when it has finished, or raise LOCK_TIMEOUT`)
    }
    if (!lastNote || Date.now() - lastNote >= config.heartbeatSeconds * 1000) {
      out.live(`... waiting for the deploy lock of ${chart}, held by ${who}; waiting up to LOCK_TIMEOUT=${config.LOCK_TIMEOUT}`)
      lastNote = Date.now()
    }
    await abortableSleep(invocation.signal)(Math.min(LOCK_POLL_SECONDS * 1000, Math.max(0, deadline - Date.now())))
  }
}

/** Holds the lease: renewed every RENEW_SECONDS until released. */
function holdLock(r: ChartRun, data: LeaseData, resourceVersion: string | undefined) {
  const lease: HeldLease = { data, resourceVersion }
  r.lock.lease = lease
  const renew = async () => {
    data.renewed = new Date().toISOString()
    const w = await writeLease(r, 'replace', data, { resourceVersion: lease.resourceVersion })
    if (!w.error) lease.resourceVersion = w.resourceVersion
    else if (!lease.lost) {
      lease.lost = /Conflict|modified|not found/.test(w.error)
      r.out.warn(`could not renew the deploy lock of ${r.plan.chart} (${w.error})${lease.lost ? ': another run took it over; this run goes on, but check the release' : ''}`)
    }
  }
  lease.timer = setInterval(() => {
    lease.renewing ??= renew().catch(() => undefined).finally(() => (lease.renewing = undefined))
  }, RENEW_SECONDS * 1000)
}

/** Marks the lease released, if it is still ours (the write names our resourceVersion); also after a cancel. */
export async function releaseLock(r: ChartRun) {
  const lease = r.lock.lease
  r.lock.lease = undefined
  if (!lease) return
  clearInterval(lease.timer)
  await lease.renewing
  if (lease.lost) return
  const w = await writeLease(r, 'replace', { ...lease.data, renewed: new Date().toISOString(), released: 'true' }, { resourceVersion: lease.resourceVersion, cleanup: true })
  if (w.error) r.out.warn(`could not release the deploy lock of ${r.plan.chart} (${w.error}): the next run takes it over ${LEASE_SECONDS}s after its last renewal`)
}
