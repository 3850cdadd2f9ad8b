/** Many charts in one invocation: each chart's tools, the staging chart first, the summary. */
import process from 'node:process'
import fs from 'node:fs'
import { DeployError, EXIT, HOOKS, HOOK_STEPS, type Phase } from './contract.ts'
import type { Config } from './config.ts'
import { asDeployError, masked } from './secrets.ts'
import { makeExec, writeResult, type Invocation, type Output } from './process.ts'
import { changedCharts, checkRange } from './git.ts'
import type { ChartPlan, ChartRun, ChartState, Request, Tools } from './plan.ts'
import { releaseLock } from './lock.ts'
import { runHook } from './hooks.ts'
import type { Args } from './cli.ts'

/** One chart's phases, as deploy.ts runs them. */
export type RunPhases = (r: ChartRun) => Promise<void>

/** Runs one chart's phases; records how it ended instead of throwing; always cleans up. */
export async function execute(r: ChartRun, runPhases: RunPhases) {
  const { state, invocation } = r
  const start = Date.now()
  state.startedAt = start
  try {
    await runPhases(r)
    state.result = 'ok'
  } catch (e) {
    state.result = 'failed'
    state.error = masked(asDeployError(e, invocation.secrets), invocation.secrets.redact)
    await reportFailure(r, invocation.cancelled ? undefined : (e as DeployError).phase)
  } finally {
    // The lock first, while the run's credentials still exist (also when cancelled).
    await releaseLock(r)
    cleanup(r)
    state.seconds = (Date.now() - start) / 1000
  }
  if (state.result === 'ok') await runHook(r, 'success')
}

/** Prints the error and calls the `fail` hooks; cancelled, only a run that reached a phase gets them. */
async function reportFailure(run: ChartRun, hookPhase: Phase | undefined) {
  const { state, out, invocation } = run
  if (invocation.cancelled) {
    if (state.phase) await runHook(run, 'fail', { error: new DeployError(`cancelled by ${invocation.cancelled}`), failedPhase: state.phase, reason: 'cancelled' })
    return
  }
  out.error(state.error!.message)
  state.error!.reported = true
  await runHook(run, 'fail', { error: state.error!, failedPhase: hookPhase ?? state.phase, reason: 'failed' })
}

/** Removes the run's private config directory (its credentials). */
export function cleanup({ state, invocation }: ChartRun) {
  if (state.privateDir) fs.rmSync(state.privateDir, { recursive: true, force: true })
  invocation.privateDirs.delete(state.privateDir!)
  state.privateDir = undefined
}

/** The staging chart first (nothing else deploys if it fails), then the rest, `parallel` at a time. */
export async function executeAll(runs: ChartRun[], runPhases: RunPhases, { parallel, signal }: { parallel: number; signal: AbortSignal }) {
  const queue = [...runs]
  // Only a deploy waits for staging: validations and diffs of every chart are wanted, whatever staging's.
  const { phases } = queue[0].plan
  const previewOnly = (phases.validate || phases.diff) && !phases.deploy
  if (queue[0].plan.chart === queue[0].plan.config.STAGING_CHART && !previewOnly) {
    const staging = queue.shift()!
    // With other charts to follow, staging's live output is its own group, as their blocks are.
    const title = `deploy ${staging.plan.chart}`
    if (queue.length) staging.out.group('start', title)
    await execute(staging, runPhases)
    if (queue.length) staging.out.group('end', title)
    if (staging.state.result !== 'ok') {
      for (const r of queue) r.state.result = 'skipped'
      return
    }
  }
  const worker = async () => {
    for (let r = queue.shift(); r && !signal.aborted; r = queue.shift()) {
      await execute(r, runPhases)
      r.out.flush(`deploy ${r.plan.chart}`)
    }
  }
  await Promise.all(Array.from({ length: Math.min(parallel, queue.length) }, worker))
}

/** How a chart's run ended, as the summary says it: a refusal (exit 3) is not a failure. */
function resultLabel(plan: ChartPlan, state: ChartState): string {
  if (state.result === 'ok') return plan.dryRun ? 'planned' : 'ok'
  if (state.result === 'failed' && state.error?.exitCode === EXIT.refused) return 'refused'
  return state.result ?? 'not run'
}

export function printSummary(log: Output, runs: ChartRun[]) {
  const rows = [['chart', 'phase reached', 'result', 'duration', 'images', 'revision']]
  for (const { plan, state } of runs) {
    rows.push([
      plan.chart,
      state.phase ?? '-',
      resultLabel(plan, state),
      state.seconds === undefined ? '-' : `${state.seconds.toFixed(1)}s`,
      plan.images.map((i) => i.tag).join(',') || '-',
      state.revision === undefined ? '-' : String(state.revision),
    ])
  }
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)))
  log.print(rows.map((r) => r.map((c, i) => c.padEnd(widths[i])).join('  ').trimEnd()).join('\n'))
}

/**
 * A chart's output and command runner; with several charts, prefixed and (but for the staging
 * chart, which runs alone) held and printed as one block each; with `json`, everything on
 * stderr (stdout carries the JSON document).
 */
export function chartTools(invocation: Invocation, request: Request, chart: string, { many, json }: { many: boolean; json: boolean }): Tools {
  const { config } = request
  const env: NodeJS.ProcessEnv = { ...config.env }
  const prefix = many ? `[${chart}] ` : ''
  const out = json
    ? invocation.output({ prefix, groups: false, stdout: 'stderr' })
    : invocation.output({ prefix, hold: many && chart !== config.STAGING_CHART, groups: !many })
  const heartbeatSeconds = process.stdout.isTTY ? 0 : config.heartbeatSeconds
  return { env, out, invocation, exec: makeExec({ env, dryRun: request.dryRun, out, heartbeatSeconds, invocation }) }
}

/** The dry run's header: what is planned, and which plugins would be called. */
export function printPlan({ plan, out, helm }: ChartRun) {
  out.print(`# dry run: ${plan.chart} at ${plan.commit.slice(0, 12)}, Helm ${plan.helmMajor}; nothing below is executed`)
  if (plan.rollbackOnFailure && plan.phases.deploy) {
    const rollback = helm.repairArgs(plan.chart, 0, plan.config.helmTimeoutSeconds)
    out.print(`# on failure after the upgrade: helm ${rollback.join(' ').replace(' 0 ', ' <the revision live before> ')}`)
  }
  for (const p of plan.plugins) {
    const hooks = HOOKS.filter((h) => typeof p[h] === 'function')
    const called = hooks.filter((h) => HOOK_STEPS[h].dryRun)
    const when = called.length ? `${called.join(', ')} called in this dry run, the others not` : 'not called in a dry run'
    out.print(`# plugin ${p.name}: ${hooks.join(', ') || 'no hooks'} (${when})`)
  }
}

/** `--changed RANGE`: the charts the range changed, as lines or a JSON array. */
export async function printChanged(invocation: Invocation, args: Args, config: Config, charts: string[]) {
  const exec = makeExec({ env: config.env, dryRun: false, out: invocation.log, heartbeatSeconds: 0, invocation })
  const changed = await changedCharts(exec, invocation.log, checkRange(args.changed, '--changed'), charts)
  await writeResult(args.json ? JSON.stringify(changed) + '\n' : changed.map((c) => c + '\n').join(''))
}
