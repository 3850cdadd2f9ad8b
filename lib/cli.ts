/** The command line: usage, flags, and the checks of what they ask for. */
import fs from 'node:fs'
import { fileURLToPath } from 'node:url'
import minimist from 'minimist'
import { usageError, type Phases } from './contract.ts'
import { CHART_NAME, type Config } from './config.ts'
import { noChartsHere } from './plan.ts'

export const USAGE = `usage: deploy.ts [--no-setup] [--build] [--push] [--deploy] [options] <chartname>...

Builds the chart's images and deploys it with helm, like deploy.py. With several charts,
the staging chart goes first and the others follow only if it succeeds.

  --no-setup        skip setup (use your own gcloud/kubectl/docker configuration)
  --build           build the user and hub images that need it
  --push            push what was built (only with --build)
  --deploy          helm upgrade the chart, then wait for its deployments
  --validate        check the chart without deploying: helm lint and a render with the
                    deploy's values; with cluster access also a server-side dry run.
                    On its own it skips setup
  --diff            show what --deploy would change in the cluster, object by object
                    (read-only; runs before --deploy when both are given)
  --dry-run         announce the commands the run would execute; runs nothing
  --recover         repair a release an interrupted run left pending, then deploy
  --rollback-on-failure
                    when the rollout or a check after the upgrade fails, roll back to the
                    revision live before the run (also ROLLBACK_ON_FAILURE=true)
  --plugin NAME     load plugins/NAME.ts (the repository's, else the one shipped with
                    deploy.ts) or a path; repeatable; also DEPLOY_PLUGINS
  --parallel N      charts deployed at once after the staging chart (default: all, at most 8)
  --changed RANGE   print the charts whose files RANGE changed, one per line
  --json            with --changed or --list: print them as a JSON array (a CI matrix; with
                    a fleet file, one entry per cluster); with --validate, --diff or --plan:
                    print the results as one JSON document
  --waves           with a fleet file (docs/fleet.md) and --deploy: deploy the hubs whose
                    wave is open (the wave before runs the change, soaked), then stop
  --plan            with a fleet file: print each hub's wave, what it runs and when the next
                    wave opens (reads the clusters, changes nothing)
  --cluster NAME    with a fleet file: this cluster's hubs only, with its credentials only
  --observed PATH   with --cluster: the other clusters as their --plan --json saw them
                    (a file, or a directory of them)
  --env-file FILE   read configuration from FILE instead of .env
  --dotenv FILE     the same; prefer it under Node 20, which stops on a missing --env-file itself (exit 9)
  --list            print the charts this repository has
  --verbose         also show read-only probes (registry lookups, helm history)
  --version, --help

Exit codes: 0 success, 1 an external command failed, 2 usage or configuration error
(nothing run), 3 refused by a plugin (its verify hook, or a check such as the staging
promotion), 130/143 interrupted (SIGINT/SIGTERM).`

/**
 * Charts deployed at once after staging when --parallel is not given. helm upgrades wait on
 * the cluster, not on the CPU, so every production chart goes at once; the cap bounds the
 * helm and kubectl clients one job starts (docs/performance.md, P5).
 */
export const DEFAULT_PARALLEL = 8

const FLAGS = {
  boolean: ['setup', 'build', 'push', 'deploy', 'validate', 'diff', 'dry-run', 'recover', 'rollback-on-failure', 'list', 'verbose', 'version', 'help', 'json', 'waves', 'plan'],
  string: ['env-file', 'plugin', 'parallel', 'changed', 'cluster', 'observed'],
}

/** What each flag that takes a value takes, for its messages. */
const VALUES: Record<string, string> = {
  'env-file': 'a file',
  dotenv: 'a file',
  plugin: 'a plugin name or path',
  parallel: 'a whole number of charts, 1 or more',
  changed: 'a commit range such as main..HEAD',
}

/**
 * `--parallel -1` as `--parallel=-1`: minimist would read `-1` as an option of its own and the
 * message would name `-1`, not the flag whose value it is.
 */
function joinValues(argv: string[]): string[] {
  const joined: string[] = []
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--') return [...joined, ...argv.slice(i)]
    const flag = /^--([a-z-]+)$/.exec(argv[i])?.[1]
    if (flag && Object.hasOwn(VALUES, flag) && /^-[^-]/.test(argv[i + 1] ?? '')) joined.push(`--${flag}=${argv[++i]}`)
    else joined.push(argv[i])
  }
  return joined
}

export function parseArgs(argv: string[]) {
  const unknown: string[] = []
  const args = minimist(joinValues(argv), {
    ...FLAGS,
    default: { setup: true },
    alias: { 'env-file': 'dotenv' },
    unknown: (a: string) => (a.startsWith('-') ? (unknown.push(a), false) : true),
  })
  if (unknown.length) throw usageError(`unknown option ${unknown[0]}; see deploy.ts --help`)
  for (const key of ['env-file', 'parallel', 'changed', 'cluster', 'observed']) {
    if (Array.isArray(args[key])) throw usageError(`--${key} given twice; give it once`)
    if (args[key] === '') throw usageError(`--${key} needs a value: ${VALUES[key]}`)
  }
  if (args.parallel !== undefined && !/^[1-9]\d*$/.test(args.parallel)) throw usageError(`--parallel ${args.parallel}: give ${VALUES.parallel}`)
  if ([args.plugin ?? []].flat().some((p: string) => !p.trim())) throw usageError(`--plugin needs a value: ${VALUES.plugin}`)
  // A file or plugin named like an option is written as a path (./-x.ts), so a typo is never taken for one.
  for (const key of ['env-file', 'plugin']) {
    const odd = [args[key] ?? []].flat().find((v: string) => v.startsWith('-'))
    if (odd) throw usageError(`--${key} ${odd}: give ${VALUES[key]}, not an option (a file named so is ./${odd})`)
  }
  checkCombination(args)
  return args
}

/** Flag combinations that would do less than they say are refused, not ignored. */
function checkCombination(args: minimist.ParsedArgs) {
  if (args.help || args.version) return
  const given = (flag: string) => args[flag] === true || typeof args[flag] === 'string'
  const phaseFlags = ['build', 'push', 'deploy', 'validate', 'diff', 'recover', 'dry-run', 'plugin', 'parallel'].filter(given)
  const fleetFlags = ['waves', 'plan', 'cluster', 'observed'].filter(given)
  const drop = [...phaseFlags, ...fleetFlags].length ? `--${[...phaseFlags, ...fleetFlags][0]}` : 'the chart names'
  if (args.changed !== undefined) {
    if (phaseFlags.length || fleetFlags.length || args._.length) throw usageError(`--changed only lists charts: drop ${drop} (run the deploy as its own command)`)
    return
  }
  if (args.json && !args.validate && !args.diff && !args.list && !args.plan) throw usageError('--json only applies to --changed, --list, --plan, --validate or --diff: add one of them or drop --json')
  if (args.list) {
    if (phaseFlags.length || fleetFlags.length || args._.length) throw usageError(`--list only lists charts: drop ${drop}`)
    return
  }
  checkFleetFlags(args, phaseFlags.filter((f) => f !== 'plugin' && f !== 'parallel'))
  if (args.plan) return
  if (args.push && !args.build) throw usageError('--push pushes only what this run builds: add --build (or drop --push)')
  if (args.recover && !args.deploy) throw usageError('--recover repairs a release before deploying it: add --deploy (or drop --recover)')
  if (!args.setup && !args.build && !args.deploy && !args.validate && !args.diff) throw usageError('nothing to do: --no-setup without --build, --deploy, --validate or --diff runs no phase; add one of them')
}

/** --plan only reads; --waves chooses the hubs and deploys them; --observed completes --cluster. */
function checkFleetFlags(args: minimist.ParsedArgs, phaseFlags: string[]) {
  if (args.observed !== undefined && (args.cluster === undefined || (!args.plan && !args.waves))) {
    throw usageError('--observed fills in the clusters a --plan or --waves run with --cluster does not reach: add --cluster NAME and --plan or --waves, or drop --observed')
  }
  if (args.plan && (phaseFlags.length || args.waves || args._.length)) {
    throw usageError(`--plan only reads where the change stands: drop ${args.waves ? '--waves' : phaseFlags.length ? `--${phaseFlags[0]}` : 'the chart names'} (--waves --deploy deploys)`)
  }
  if (args.waves && args._.length) throw usageError('--waves chooses the hubs itself: drop the chart names (or deploy them by name, without --waves)')
  if (args.waves && !args.deploy) throw usageError('--waves deploys the hubs whose wave is open: add --deploy (or look first with --plan)')
}

/** package.json's version; `unknown` where there is none to read (Deno running deploy.ts from an https: URL). */
export function version(): string {
  try {
    return JSON.parse(fs.readFileSync(fileURLToPath(new URL('../package.json', import.meta.url)), 'utf8')).version
  } catch {
    return 'unknown'
  }
}

export type Args = ReturnType<typeof parseArgs>

/** The plugins `--plugin` and DEPLOY_PLUGINS name, in that order, each once. */
export function pluginNames(args: Args, config: Config): string[] {
  const names = [...[args.plugin ?? []].flat(), ...config.DEPLOY_PLUGINS.split(',')].map((s) => s.trim()).filter(Boolean)
  return [...new Set(names)]
}

/** The chart names asked for, checked, the staging chart first (production charts follow only when it succeeded). */
export function chartNames(args: Args, config: Config, charts: string[]): string[] {
  const names: string[] = [...new Set<string>(args._.map(String))]
  if (charts.length === 0) throw usageError(noChartsHere())
  if (names.length === 0) throw usageError(`no chart name given; valid charts: ${charts.join(', ')}`)
  const invalid = names.find((n) => !CHART_NAME.test(n))
  if (invalid !== undefined) throw usageError(`chart name "${invalid}" is not a valid release name (lowercase letters, digits and -, at most 53); valid charts: ${charts.join(', ') || '(none found)'}`)
  const unknown = names.filter((n) => !charts.includes(n))
  if (unknown.length) throw usageError(`unknown chart "${unknown[0]}"; valid charts: ${charts.join(', ')}`)
  return names.sort((a, b) => Number(b === config.STAGING_CHART) - Number(a === config.STAGING_CHART))
}

/** The phases the flags ask for. */
export function phasesOf(args: Args): Phases {
  return {
    // --validate needs no cluster: on its own it skips setup (a kubeconfig of your own still enables the server-side check).
    setup: args.setup && (args.build || args.deploy || args.diff || !args.validate),
    build: args.build,
    push: args.build && args.push,
    deploy: args.deploy,
    validate: args.validate,
    diff: args.diff,
  }
}
