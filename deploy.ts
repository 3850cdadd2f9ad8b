#!/usr/bin/env -S npx tsx
/**
 * deploy.ts — builds the images of a JupyterHub hub and deploys its chart with helm.
 *
 * The port of the Python deploy.py, read beside it: setup, build (and push), deploy,
 * rollout and main, in deploy.py's order, running the original's commands in the original's
 * order (docs/port.md puts each function of the original beside the one here). The
 * machinery lives in lib/, one concern a module: contract (errors, plugin types, hook
 * table), config, secrets, process (invocation, exec), git, helm, plan (preflight),
 * providers, lock, manifest, preview (--validate/--diff), hooks, charts, cli; a fleet of
 * clusters in waves (docs/fleet.md): fleet (the file), waves (--plan, --waves), record.
 * Runs unchanged under `tsx deploy.ts ...` (Node 20) and `deno run -A deploy.ts ...` (Deno 2).
 */
import process from 'node:process'
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { DeployError, EXIT, type ImageInfo, type Phase } from './lib/contract.ts'
import { loadConfig, type Config } from './lib/config.ts'
import { asDeployError } from './lib/secrets.ts'
import { Invocation, emit, inGroup, tail, writeResult } from './lib/process.ts'
import { handlePendingRelease, makeHelm, printDiagnostics, recordLiveRevision, rollBack, warnVersionSkew } from './lib/helm.ts'
import { commitRange, touchedDirs } from './lib/git.ts'
import { chartFiles, chartRun, checkRepository, collectFileSecrets, discoverCharts, noChartsHere, planChart, valuesArgs, type ChartRun, type Request } from './lib/plan.ts'
import { prepareChart, unusedNote, versionArgs } from './lib/layout.ts'
import { privateConfigDir, quietly, setupSteps, takeToken, type StepFacts } from './lib/providers.ts'
import { acquireLock } from './lib/lock.ts'
import { diffChart, previewReport, validate } from './lib/preview.ts'
import { loadPlugins, runHook } from './lib/hooks.ts'
import { chartTools, executeAll, printPlan, printSummary } from './lib/charts.ts'
import { DEFAULT_PARALLEL, USAGE, parseArgs, phasesOf, pluginNames, version, type Args } from './lib/cli.ts'
import { chartGroups, fleetFor, printCharts, type ChartGroup } from './lib/fleet.ts'
import { deployRecord, recordArgs } from './lib/record.ts'
import { runWaves } from './lib/waves.ts'

// What plugins and tests import from deploy.ts.
export * from './lib/contract.ts'
export { DEFAULTS, MAX_DURATION_SECONDS, loadConfig, parseDuration, type Config } from './lib/config.ts'
export { Secrets, ordinaryValue, secretKey } from './lib/secrets.ts'
export { Invocation, Output, makeExec, type ExecSettings } from './lib/process.ts'
export { gitModified } from './lib/git.ts'
export { diffManifests, unifiedDiff } from './lib/manifest.ts'
export { helmProblems } from './lib/preview.ts'
export { chartVersions, deployRecord, parseRecord, type DeployRecord } from './lib/record.ts'

/**
 * Runs the plan's commands. Credentials land in the private directory the run's state
 * holds (removed in one place, when the run ends); tokens stay in this call's memory.
 */
async function setup({ plan, state, exec, env, helm, out, invocation }: ChartRun) {
  const setupPlan = plan.setupPlan!
  const { config } = plan
  state.privateDir = privateConfigDir(env)
  invocation.privateDirs.add(state.privateDir)
  const facts: StepFacts = { config, kubeconfig: env.KUBECONFIG!, host: setupPlan.host }
  const from = setupPlan.cluster.kubeconfigFrom
  if (from) {
    if (plan.dryRun) out.print(`# KUBECONFIG: a private copy of ${config[from]}`)
    else fs.writeFileSync(facts.kubeconfig, setupPlan.secrets[from] ?? '', { mode: 0o600 })
  }
  const held: Record<string, string | undefined> = { ...setupPlan.secrets }
  for (const step of setupSteps(setupPlan, config, helm.setup)) {
    const input = step.stdin && (held[step.stdin] ?? '')
    // A step that prints a token is not stopped by exec: what it printed is masked first, failed or not.
    const r = await exec(step.tool, step.args(facts), { ...quietly, capture: step.capture, input, nothrow: step.yields !== undefined })
    if (step.yields && !plan.dryRun) held[step.yields] = takeToken(step, step.args(facts), r, invocation.secrets)
  }
}

/** A registry on this machine speaks plain HTTP; docker manifest needs --insecure for it. */
function insecureFlag(name: string): string[] {
  return /^(127\.\d+\.\d+\.\d+|localhost)(:\d+)?\//.test(name) ? ['--insecure'] : []
}

/** Whether the registry has `spec`, asked without pulling it; a registry that cannot be asked says no. */
async function imageExists({ exec, out }: ChartRun, name: string, tag: string): Promise<boolean> {
  const r = await exec('docker', ['manifest', 'inspect', ...insecureFlag(name), `${name}:${tag}`], { capture: true, nothrow: true, show: 'probe', readOnly: false, timeout: 60 })
  if (r.exitCode !== 0 && !/no such manifest|manifest unknown|not found/i.test(r.stderr)) {
    out.warn(`could not ask the registry about ${name}:${tag} (${tail(r.stderr, 1)}): treating it as missing`)
  }
  return r.exitCode === 0
}

/** Why an image is built: the range touched its dir, or the registry lacks its tag (a dry run plans for that); undefined: it is not. */
type BuildReason = 'touched' | 'missing' | undefined

async function needsRebuild(r: ChartRun, image: ImageInfo, touched: Set<string> | undefined): Promise<BuildReason> {
  if (touched?.has(image.dir)) return 'touched'
  if (r.plan.dryRun) {
    r.out.print(`# ${image.spec}: built only if the registry lacks it`)
    await imageExists(r, image.name, image.tag)
    return 'missing'
  }
  if (await imageExists(r, image.name, image.tag)) return undefined
  r.out.info(`${image.spec} is not in the registry: building it`)
  return 'missing'
}

/** BuildKit reads --cache-from straight from the registry when images carry inline cache. */
function buildKit(r: ChartRun): boolean {
  return r.env.DOCKER_BUILDKIT === '1'
}

/**
 * The newest of the dir's last five tags that the registry has, for --cache-from: pulled
 * for the legacy builder (which ignores an image it does not have), not for BuildKit. The
 * tag being built is one only when the range touched its dir in a real run (the original's
 * first candidate: an earlier run of this commit may have pushed it); when the registry
 * lacks it, and in a dry run, which plans for a new tag, it is none.
 */
async function findCacheImage(r: ChartRun, image: ImageInfo, reason: BuildReason): Promise<string | undefined> {
  const itself = reason === 'touched' && !r.plan.dryRun
  const candidates = (r.plan.history.get(image.dir) ?? []).filter((tag) => itself || tag !== image.tag)
  // All lookups at once: each costs a registry round trip, whatever the image's size.
  const found = r.plan.dryRun ? candidates.map(() => true) : await Promise.all(candidates.map((tag) => imageExists(r, image.name, tag)))
  const tag = candidates[found.indexOf(true)]
  if (!tag) return undefined
  const spec = `${image.name}:${tag}`
  if (buildKit(r)) return spec
  const pull = await r.exec('docker', ['pull', spec], { nothrow: true, timeout: r.plan.config.buildTimeoutSeconds })
  if (pull.exitCode === 0) return spec
  r.out.warn(`could not pull ${spec}: building without a cache`)
  return undefined
}

/** Fires the push hooks around each push. */
type FireHook = (hook: 'beforePush' | 'afterPush') => Promise<unknown>

async function buildImage(r: ChartRun, image: ImageInfo, touched: Set<string> | undefined, fire: FireHook) {
  const label = image.kind === 'hub' ? 'hub image' : 'image'
  const reason = await needsRebuild(r, image, touched)
  if (!reason) {
    r.out.print(`Do not need to rebuild ${label}, using ${image.spec}`)
    return
  }
  const cache = await findCacheImage(r, image, reason)
  const cacheArgs = cache ? ['--cache-from', cache] : []
  const inlineCache = buildKit(r) ? ['--build-arg', 'BUILDKIT_INLINE_CACHE=1'] : []
  await r.exec('docker', ['build', ...cacheArgs, ...inlineCache, '-t', image.spec, image.dir], { timeout: r.plan.config.buildTimeoutSeconds })
  r.state.images.set(image.dir, { built: true })
  if (r.plan.phases.push) await pushImage(r, image, fire)
  r.out.print(`build completed for ${label} ${image.spec}`)
}

async function pushImage(r: ChartRun, image: ImageInfo, fire: FireHook) {
  await fire('beforePush')
  const pushed = await r.exec('docker', ['push', image.spec], { nothrow: true, timeout: r.plan.config.buildTimeoutSeconds })
  if (pushed.exitCode !== 0) {
    throw new DeployError(`docker push ${image.spec} failed (exit ${pushed.exitCode}): is the registry reachable and are you logged in?`)
  }
  r.state.images.set(image.dir, { built: true, pushed: true })
  await fire('afterPush')
}

/** The original's build_user_image and build_hub_image, in that order; push follows each build. */
async function build(r: ChartRun, fire: FireHook) {
  if (r.plan.images.length === 0) {
    const { user, hub } = r.plan.files.imageDirs
    r.out.print(`no ${user} or ${hub}: nothing to build`)
    return
  }
  const range = commitRange(r.env, r.out)
  const dirs = r.plan.images.map((i) => i.dir)
  const touched = range && dirs.length ? await touchedDirs(r.exec, r.out, range, dirs) : undefined
  for (const image of r.plan.images) await buildImage(r, image, touched, fire)
}

async function deploy(r: ChartRun, pluginArgs: string[]) {
  const { plan, state, exec, helm } = r
  await warnVersionSkew(r)
  await acquireLock(r)
  for (const image of plan.images) r.out.print(`Using ${image.spec} as ${image.kind} image for ${plan.chart}`)
  // The values files, the secrets file, then the images' tags (and names, with a prefix configured); with a fleet file, the record.
  const values = [...versionArgs(plan.files.source), ...valuesArgs(r), ...recordArgs(r, pluginArgs), ...pluginArgs]
  await prepareChart(r)
  if (plan.recover && helm.tracksPending && !plan.dryRun) await handlePendingRelease(r)
  else if (plan.recover) r.out.print(`# --recover: a release left pending-* would be rolled back to its last deployed revision (or uninstalled) first`)
  if (plan.rollbackOnFailure && !plan.dryRun) await recordLiveRevision(r)
  // helm stops waiting at its own --timeout; ours is only a backstop.
  const backstop = plan.config.helmTimeoutSeconds + 120
  const args = helm.upgradeArgs(plan.chart, plan.files.source.chart, plan.config.helmTimeoutSeconds, values)
  const upgrade = await exec('helm', args, { timeout: backstop, cluster: 'helm upgrade' }).catch(async (e: DeployError) => {
    // A pending release is refused by helm before it changes anything: name the state and the repair.
    if (helm.isPendingRefusal(e.output ?? '') && (await handlePendingRelease(r))) throw e
    await printDiagnostics(r)
    throw e
  })
  state.revision = helm.revision(upgrade.stdout) ?? state.revision
}

async function rollout({ plan, exec, out }: ChartRun) {
  const ns = plan.chart
  const { config } = plan
  out.info('Waiting for all deployments to be up and running')
  const list = await exec('kubectl', ['--namespace', ns, 'get', 'deployments', '-o', 'name'], { capture: true, timeout: 120, cluster: 'kubectl get deployments' })
  const timeout = `--timeout=${config.rolloutTimeoutSeconds}s`
  if (plan.dryRun) {
    out.info(`Executing kubectl rollout status --namespace ${ns} --watch <each deployment> ${timeout}`)
    return
  }
  // Names come from the cluster: only `deployment.apps/<name>` may reach kubectl.
  const lines = list.stdout.split('\n').map((l) => l.trim()).filter(Boolean)
  const deployments = lines.filter((l) => /^deployment\.apps\/[a-z0-9][-a-z0-9.]*$/.test(l))
  for (const l of lines.filter((l) => !deployments.includes(l))) out.warn(`not waiting for "${l}": kubectl listed it, but it is not deployment.apps/<name>`)
  if (deployments.length === 0) {
    out.info(`no deployments in namespace ${ns}: nothing to wait for`)
    return
  }
  const results = await Promise.allSettled(deployments.map((d) =>
    exec('kubectl', ['rollout', 'status', '--namespace', ns, '--watch', d, timeout], {
      prefix: `[${d.replace(/^.*\//, '')}] `,
      timeout: config.rolloutTimeoutSeconds + 60,
    })))
  const failed = deployments.filter((_, i) => results[i].status === 'rejected')
  if (failed.length) throw new DeployError(`rollout of ${failed.join(', ')} did not finish within ${config.ROLLOUT_TIMEOUT}`)
}

async function phase<T>({ plan, state, out }: ChartRun, name: Phase, fn: () => Promise<T>): Promise<T> {
  state.phase = name
  const start = Date.now()
  const result = await inGroup(out, name, `${name} ${plan.chart}`, fn)
  state.timings[name] = Date.now() - start
  return result
}

/** The phases in the original's order, each between its hooks. */
async function runPhases(r: ChartRun) {
  const { phases } = r.plan
  await runHook(r, 'verify')
  if (phases.setup) {
    await runHook(r, 'beforeSetup')
    await phase(r, 'setup', () => setup(r))
    await runHook(r, 'afterSetup')
  }
  if (phases.build) {
    await runHook(r, 'beforeBuild')
    await phase(r, 'build', () => build(r, (hook) => runHook(r, hook)))
    await runHook(r, 'afterBuild')
  }
  if (phases.validate) await phase(r, 'validate', () => validate(r))
  if (phases.diff) await phase(r, 'diff', () => diffChart(r))
  if (phases.deploy) {
    const pluginArgs = await runHook(r, 'beforeDeploy')
    try {
      await phase(r, 'deploy', () => deploy(r, pluginArgs))
      await runHook(r, 'afterDeploy')
      await phase(r, 'rollout', () => rollout(r).catch(async (e) => {
        await printDiagnostics(r)
        throw e
      }))
      await runHook(r, 'afterRollout')
    } catch (e) {
      if (r.plan.rollbackOnFailure && !r.invocation.cancelled) await rollBack(r, rollout)
      throw e
    }
  }
}

/**
 * Preflight for every chart of every group (a fleet's clusters), then the runs, each group at
 * its own --parallel cap; signals cancel the invocation from here on.
 */
async function deployCharts(invocation: Invocation, args: Args, groups: ChartGroup[], { record }: { record: boolean }): Promise<number> {
  const { log } = invocation
  // Every secret is known before a plugin loads or a command starts, so none can print one.
  for (const { config, names } of groups) collectFileSecrets(invocation.secrets, config, names, invocation.runtime.YAML)
  // Plugins run in this process from here on: none may end it (Invocation.guardExit).
  invocation.guardExit()
  const plugins = await loadPlugins(pluginNames(args, groups[0].config), invocation.secrets)
  // --json with --validate/--diff: stdout carries one JSON document, everything else goes to stderr.
  const json = args.json && (args.validate || args.diff)
  const many = groups.flatMap((g) => g.names).length > 1
  const planned = await Promise.all(groups.map(async ({ config, names }) => {
    const request: Request = {
      phases: phasesOf(args),
      config,
      dryRun: args['dry-run'],
      recover: args.recover,
      rollbackOnFailure: args['rollback-on-failure'] || config.rollbackOnFailure,
      plugins,
      record,
    }
    const tools = names.map((chart) => chartTools(invocation, request, chart, { many, json }))
    const facts = await checkRepository(request, tools[0])
    return Promise.all(names.map(async (chart, i): Promise<ChartRun> => {
      const plan = await planChart(chart, request, facts, tools[i])
      // A chart whose record cannot be written (its dependencies unreadable) stops here, before anything runs.
      if (record) deployRecord({ ...plan, chartSource: plan.files.source }, invocation.runtime.YAML)
      return chartRun(tools[i], plan, makeHelm(plan.helmMajor, tools[i]))
    }))
  }))
  const runs = planned.flat()
  if (args['dry-run']) runs.forEach(printPlan)
  const untrap = invocation.trapSignals()
  try {
    // A cluster's failure does not stop another's: each group runs its staging chart, then the rest.
    await Promise.all(planned.map((group, i) =>
      executeAll(group, runPhases, { parallel: Number(args.parallel ?? groups[i].parallel ?? DEFAULT_PARALLEL), signal: invocation.signal })))
  } finally {
    untrap()
    if (invocation.cancelled) for (const r of runs) r.out.flush(`deploy ${r.plan.chart}`)
  }
  if (invocation.cancelled) return invocation.cancelled === 'SIGINT' ? EXIT.sigint : EXIT.sigterm
  if (json) await writeResult(JSON.stringify(previewReport(runs, invocation.secrets.redact), null, 2) + '\n')
  printSummary(json ? invocation.output({ stdout: 'stderr' }) : log, runs)
  const failed = runs.find((r) => r.state.result === 'failed')
  // With --json, stdout ends with the JSON document: no `::error::` line after it.
  if (runs.length === 1 && failed && !json) throw failed.state.error
  return failed ? failed.state.error!.exitCode : EXIT.ok
}

/** One invocation: returns its exit code, once no command it started is left; an error ends it with one `ERROR:` line. */
async function main(argv: string[]): Promise<number> {
  const invocation = new Invocation()
  try {
    return await invoke(invocation, argv)
  } finally {
    await invocation.finish()
  }
}

async function invoke(invocation: Invocation, argv: string[]): Promise<number> {
  const { log } = invocation
  invocation.trapCrashes()
  try {
    const args = parseArgs(argv)
    if (args.help || args.version) {
      await writeResult(`${args.help ? USAGE : `deploy.ts ${version()}`}\n`)
      return EXIT.ok
    }
    invocation.verbose = args.verbose
    const config = loadConfig(args['env-file'])
    const charts = discoverCharts()
    // A chart's name is never masked, even where a secret file has a value equal to it.
    invocation.secrets.allow([...charts, config.STAGING_CHART])
    invocation.secrets.addFromEnv(config.env)
    if (args.list && !args.json) {
      if (charts.length === 0) log.warn(noChartsHere())
      else await writeResult(charts.map((c) => `${c}\n`).join(''))
      for (const chart of charts) {
        const { source, unused } = chartFiles(chart, config)
        if (unused) log.warn(unusedNote(chart, source, unused))
      }
      return EXIT.ok
    }
    // Loaded before signals are trapped, so a signal never finds a command between import and spawn.
    await invocation.load()
    const fleet = fleetFor(args, charts, invocation.runtime.YAML)
    if (args.list || args.changed !== undefined) {
      await printCharts(invocation, args, config, charts, fleet)
      return EXIT.ok
    }
    // With a fleet file every deploy records what it deployed: the waves read it back.
    const deployGroups = (groups: ChartGroup[]) => deployCharts(invocation, args, groups, { record: !!fleet })
    if (fleet && (args.waves || args.plan)) return await runWaves(invocation, args, config, charts, fleet, deployGroups)
    return await deployGroups(chartGroups(args, config, charts, fleet))
  } catch (e) {
    const err = asDeployError(e, invocation.secrets)
    const message = invocation.secrets.redact(err.message)
    if (!err.reported) emit('stderr', `ERROR: ${message}\n`)
    if (invocation.ci.github) emit('stdout', `::error::${message.split('\n')[0]}\n`)
    return err.exitCode
  }
}

function isMain(): boolean {
  if ((import.meta as { main?: boolean }).main) return true
  const entry = process.argv[1]
  return !!entry && path.resolve(entry) === fileURLToPath(import.meta.url)
}

if (isMain()) {
  // A reader that goes away (`deploy.ts ... | head -1`) must not stop a deploy: output is
  // dropped from then on, the run goes on and cleans up.
  for (const stream of [process.stdout, process.stderr]) stream.on('error', () => undefined)
  main(process.argv.slice(2)).then((code) => process.exit(code))
}
