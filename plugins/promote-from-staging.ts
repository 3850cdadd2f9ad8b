/**
 * promote-from-staging: a production chart (PRODUCTION_CHARTS) is deployed only when the
 * staging chart (STAGING_CHART) is healthy and already runs the chart dependency
 * versions production is about to get. See docs/plugins.md.
 *
 * Every deploy of any chart records what it deployed in the release itself, as JSON in
 * `helm upgrade --description`: {"commit":…,"images":{kind:tag},"deps":{name:version}}.
 * The check reads the latest revision of the staging release with `helm history` (ctx.helm).
 */
import fs from 'node:fs'
import YAML from 'yaml'
import type { HookContext, Plugin } from '../deploy.ts'

/** What a deploy records in its release description. */
interface DeployRecord {
  commit: string
  images: Record<string, string>
  deps: Record<string, string>
  override?: true
}

const list = (value: string | undefined) => (value ?? '').split(',').map((s) => s.trim()).filter(Boolean)

/** PROMOTION_OVERRIDE as yes or no; any other value is refused (from verify, before anything changes). */
function overridden(ctx: HookContext): boolean {
  const text = ctx.config.env.PROMOTION_OVERRIDE
  const yes = ctx.parseYesNo(text)
  if (yes === undefined) ctx.refuse(`PROMOTION_OVERRIDE=${text}: neither yes nor no; set it to 1 to deploy despite the check, or unset it`)
  return yes === true
}

/** A problem with a file the plugin reads: deploy.ts ends the run with exit 2 (a configuration error). */
const configError = (message: string) => Object.assign(new Error(message), { exitCode: 2 })

/** The chart's dependencies, name → version: Chart.yaml (Helm 3) or requirements.yaml (Helm 2 charts). */
function dependencies(chartDir: string): Record<string, string> {
  const deps: Record<string, string> = {}
  for (const file of ['Chart.yaml', 'requirements.yaml']) {
    const full = `${chartDir}/${file}`
    if (!fs.existsSync(full)) continue
    // A FIFO would wait for a writer for ever.
    if (!fs.statSync(full).isFile()) throw configError(`${full}: not a file; fix the chart`)
    let doc: { dependencies?: unknown } | null
    try {
      doc = YAML.parse(fs.readFileSync(full, 'utf8'))
    } catch (e) {
      const line = (e as { linePos?: { line: number }[] }).linePos?.[0]?.line
      throw configError(`${full}${line ? `:${line}` : ''}: not valid YAML; fix the chart`)
    }
    const list = doc && typeof doc === 'object' ? doc.dependencies : undefined
    if (list === undefined || list === null) continue
    if (!Array.isArray(list)) {
      throw configError(`${full}: dependencies must be a list of entries (- name: …, version: …, repository: …), not a ${typeof list === 'object' ? 'map' : typeof list}; fix the chart`)
    }
    for (const dep of list as { name?: unknown; version?: unknown; alias?: unknown }[]) {
      if (typeof dep?.name === 'string') deps[typeof dep.alias === 'string' ? dep.alias : dep.name] = String(dep.version ?? '')
    }
  }
  return deps
}

function record(ctx: HookContext): DeployRecord {
  const r: DeployRecord = {
    commit: ctx.commit.slice(0, 12),
    images: Object.fromEntries(ctx.images.map((i) => [i.kind, i.tag])),
    deps: dependencies(ctx.chartDir),
  }
  if (overridden(ctx) && isProduction(ctx)) r.override = true
  return r
}

function parseRecord(description: string | undefined): DeployRecord | undefined {
  try {
    const r = JSON.parse(description ?? '')
    return r && typeof r === 'object' && r.deps && typeof r.deps === 'object' ? r : undefined
  } catch {
    return undefined
  }
}

function isProduction(ctx: HookContext): boolean {
  return list(ctx.config.env.PRODUCTION_CHARTS).includes(ctx.chart) && ctx.chart !== ctx.config.STAGING_CHART
}

/** Why production may not be deployed now; empty when staging is ahead of it. */
async function problems(ctx: HookContext): Promise<string[]> {
  const staging = ctx.config.STAGING_CHART
  // ctx.helm knows each Helm version's history command and status spelling.
  const history = await ctx.helm.history(staging)
  if ('error' in history) return [history.error]
  const latest = history.revisions.at(-1)
  if (!latest) return [`${staging} has never been deployed`]
  if (latest.status !== 'deployed') return [`${staging} revision ${latest.revision} is ${latest.status}, not deployed`]
  const theirs = parseRecord(latest.description)?.deps
  if (!theirs) return [`${staging} revision ${latest.revision} records no chart versions (not deployed with this plugin)`]
  const ours = dependencies(ctx.chartDir)
  const differ: string[] = []
  for (const name of [...new Set([...Object.keys(theirs), ...Object.keys(ours)])].sort()) {
    if (theirs[name] === ours[name]) continue
    differ.push(`${name} ${theirs[name] ?? '(none)'} on ${staging} vs ${ours[name] ?? '(none)'} here`)
  }
  return differ
}

async function check(ctx: HookContext) {
  if (!ctx.phases.deploy || !isProduction(ctx)) return
  const staging = ctx.config.STAGING_CHART
  const found = await problems(ctx)
  if (!found.length) {
    ctx.log.info(`${staging} runs what ${ctx.chart} is about to get`)
    return
  }
  if (overridden(ctx)) {
    ctx.log.warn('!'.repeat(72))
    ctx.log.warn(`PROMOTION_OVERRIDE is set: deploying ${ctx.chart} although ${found.join('; ')}`)
    ctx.log.warn('!'.repeat(72))
    return
  }
  const message = `${found.join('; ')}: deploy ${staging} first (or set PROMOTION_OVERRIDE=1 to deploy ${ctx.chart} anyway)`
  // A refusal ends the run with exit 3 from afterSetup too.
  ctx.refuse(message)
}

const plugin: Plugin = {
  name: 'promote-from-staging',
  // The staging release is read with the run's cluster credentials: when setup runs,
  // they exist only after it, so the check waits for afterSetup (still before any build).
  verify: (ctx) => {
    overridden(ctx)
    // Every deploy records the chart's dependencies: a chart file that cannot say them stops the run before anything changes.
    if (ctx.phases.deploy) dependencies(ctx.chartDir)
    // A dry run reaches no cluster: the local checks above are what it can try.
    if (ctx.dryRun) return
    return ctx.phases.setup ? undefined : check(ctx)
  },
  afterSetup: (ctx) => check(ctx),
  beforeDeploy: (ctx) => ({ helmArgs: ['--description', JSON.stringify(record(ctx))] }),
}

export default plugin
