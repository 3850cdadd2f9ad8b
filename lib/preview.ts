/**
 * --validate and --diff: what a deploy would change, checked and shown before it runs
 * (docs/workflow.md). Read-only for the cluster: helm lint/template, and with cluster access
 * `helm status` and `helm upgrade --install --dry-run=server`, which helm runs without writing.
 */
import fs from 'node:fs'
import { DeployError, type ChartValidation, type CommandResult, type ImageInfo, type ValidationProblem } from './contract.ts'
import { notAFile, redactDeep, type Secrets } from './secrets.ts'
import { tail, wholeReason } from './process.ts'
import { imageValuesPath, noClusterAccess, valuesArgs, type ChartPlan, type ChartRun } from './plan.ts'
import { diffManifests, duplicateKeys, imageUse, parseManifest, type DuplicateKey, type ManifestObject } from './manifest.ts'
import { pulledChart, resolvedVersion } from './layout.ts'
import { REACH_THE_CLUSTER, clusterFault } from './cluster.ts'
import { fetchedFirst, localDependencies } from './localcharts.ts'

/** helm's error blocks: `Error: ...` and lint's `[ERROR] ...`, each with its continuation lines. */
function errorBlocks(output: string): string[] {
  const blocks: string[] = []
  let open = false
  for (const line of output.split('\n')) {
    const start = /^(?:Error: |\[ERROR\] )(.*)$/.exec(line)
    if (start) {
      blocks.push(start[1])
      open = true
    } else if (!line.trim() || /^(\[(INFO|WARNING)\]|==> |Use --debug)/.test(line)) {
      open = false
    } else if (open) {
      blocks[blocks.length - 1] += `\n${line}`
    }
  }
  return blocks
}

type Found = (p: Omit<ValidationProblem, 'check' | 'message'>, reason: string) => void

/** Where a schema item is: Helm 3 says `hub.image` or `(root)`, Helm 4 a JSON pointer, `at '/hub/image'`. */
function schemaPath(where: string): string {
  const pointer = /^at '(.*)'$/.exec(where)?.[1]
  if (pointer === undefined) return where === '(root)' ? '' : where
  return pointer.split('/').slice(1).map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~')).join('.')
}

/** A values.schema.json failure: a problem per item, with its values path (a subchart's prefixed). */
function schemaProblems(chart: string, dir: string, list: string, found: Found) {
  let sub = ''
  for (const line of list.split('\n')) {
    const name = /^(\S+):$/.exec(line.trim())?.[1]
    if (name) sub = name
    const item = /^- (at '[^']*'|.+?): (.+)$/.exec(line.trim())
    if (!item) continue
    const own = sub === chart || sub === ''
    const at = schemaPath(item[1])
    const valuesPath = [own ? '' : sub, at].filter(Boolean).join('.') || '(root)'
    // A dependency's schema is inside its archive in charts/: name it instead of a path.
    found(own ? { file: `${dir}/values.schema.json`, valuesPath } : { valuesPath }, own ? item[2] : `${item[2]} (values.schema.json of ${sub})`)
  }
}

/** helm's `<chart>/charts/<sub>/templates/x.yaml` as a repository path, and the subchart values prefix. */
function locate(dir: string, helmPath: string) {
  const rest = helmPath.split('/').slice(1).join('/')
  const subcharts = [...rest.matchAll(/(?:^|\/)charts\/([^/]+)\//g)].map((m) => m[1].replace(/-\d[^/]*\.tgz$/, ''))
  return { file: `${dir}/${rest}`, prefix: subcharts.map((s) => `${s}.`).join('') }
}

/** One error block as problems: the file and values path when the text names them. */
function blockProblems(chart: string, dir: string, check: ValidationProblem['check'], block: string, found: Found) {
  let text = block.replace(/^(UPGRADE FAILED|INSTALLATION FAILED): /, '')
  // Summaries and consequences of a problem reported on its own line.
  if (/^\d+ chart\(s\) linted|^:? ?unable to load chart/.test(text)) return
  // lint names the file relative to the chart: `templates/: ...`, `values.yaml: ...`
  const lintFile = /^([\w./-]+): /.exec(text)
  let file: string | undefined
  if (lintFile && check === 'lint' && !/^(template: |parse error)/.test(text)) {
    text = text.slice(lintFile[0].length)
    if (!lintFile[1].endsWith('/')) file = `${dir}/${lintFile[1]}`
  }
  const load = /^cannot load ([\w./-]+): ([\s\S]*)$/.exec(text)
  if (load) [file, text] = [`${dir}/${load[1]}`, load[2]]
  const badYaml = /^(?:unable to parse YAML: )?error converting YAML to JSON: (?:yaml: )?([\s\S]*)$/.exec(text)
  if (badYaml) text = `not valid YAML: ${badYaml[1]}`
  const schema = /values don't meet the specifications of the schema\(s\) in the following chart\(s\):\n([\s\S]*)/.exec(text)
  if (schema) return schemaProblems(chart, dir, schema[1], found)
  const oneLine = text.replace(/\s*\n\s*/g, ' ').trim()
  const parsed = /^failed to parse ([^:]+): (?:error converting YAML to JSON: )?(.*)$/.exec(oneLine)
  if (parsed) return found({ file: parsed[1] }, `not valid YAML: ${parsed[2].replace(/^yaml: /, '')}`)
  const ref = /(?:template: |parse error at \(|YAML parse error on )([\w.-]+(?:\/[\w.-]+)+?\.(?:ya?ml|tpl|txt|json))((?::\d+){0,2})/.exec(oneLine)
  if (!ref) return found(file ? { file } : {}, oneLine)
  const { file: where, prefix } = locate(dir, ref[1])
  const value = /<\.Values\.([\w.]+)>/.exec(oneLine)?.[1]
  const reason = oneLine
    .replace(/^template: \S+: /, '').replace(/^parse error at \([^)]*\): /, '').replace(/^YAML parse error on \S+: /, '')
    .replace(/executing "[^"]*" /, '')
  found({ file: `${where}${ref[2]}`, ...(value ? { valuesPath: `${prefix}${value}` } : {}) }, reason)
}

/**
 * Problems in helm's output (`Error: ...`, lint's `[ERROR] ...`), each one line naming the
 * chart, the file (as a repository path) and the values path when helm gives them.
 */
export function helmProblems(chart: string, dir: string, check: ValidationProblem['check'], output: string): ValidationProblem[] {
  const problems: ValidationProblem[] = []
  const found: Found = (p, reason) => {
    const where = [p.file, p.valuesPath && `values ${p.valuesPath}`].filter(Boolean).join(': ')
    problems.push({ check, message: `${chart}: ${where ? `${where}: ` : ''}${reason}`, ...p })
  }
  for (const block of errorBlocks(output)) blockProblems(chart, dir, check, block, found)
  return uniqueProblems(problems)
}

/** Problems found twice (lint and template often report the same one): keep the first. */
function uniqueProblems(problems: ValidationProblem[]): ValidationProblem[] {
  const seen = new Set<string>()
  return problems.filter((p) => {
    const key = `${p.file ?? ''}|${p.valuesPath ?? ''}|${p.message.split(': ').at(-1)}`
    return !seen.has(key) && !!seen.add(key)
  })
}


/**
 * The chart validate and diff render, ready once per run: a wrapper chart's directory with
 * its dependencies, or the upstream chart's archive (pulled, or from the cache: lib/layout.ts).
 */
function previewChart(r: ChartRun): Promise<string> {
  const { plan } = r
  r.preview.chart ??= plan.files.source.layout === 'wrapper-chart' ? chartDependencies(r).then(() => plan.files.chartDir) : pulledChart(r)
  return r.preview.chart
}

/** How problems name the chart's own files: its directory, or `<repository>/<chart>@<version>` for the upstream chart. */
function chartLabel({ files }: ChartPlan): string {
  return files.source.layout === 'wrapper-chart' ? files.chartDir : `${files.source.chart}@${files.source.version}`
}

/** Whether charts/ holds `name`'s archive at `version`, a `v` prefix on either side or not (helm resolves `v1.2.3` to 1.2.3). */
function archived(dir: string, name: string, version: string): boolean {
  const bare = resolvedVersion(version)
  return [bare, `v${bare}`].some((v) => fs.existsSync(`${dir}/charts/${name}-${v}.tgz`))
}

/**
 * A wrapper chart's dependencies: none to fetch when charts/ holds every archive Chart.lock
 * names; `helm dep build` from the lock; `helm dep up` without one (or when the lock no
 * longer matches Chart.yaml); versions compare as helm resolves them. With local (`file://`)
 * dependencies, always `helm dep up`, after theirs (lib/localcharts.ts): an archive in charts/
 * may be older than their directory.
 */
async function chartDependencies({ plan, exec, out, invocation }: ChartRun) {
  const dir = plan.files.chartDir
  const { YAML } = invocation.runtime
  // Only regular files (a dry run goes on past a FIFO in the chart, noted in its plan).
  const read = (file: string) => (fs.existsSync(`${dir}/${file}`) && !notAFile(`${dir}/${file}`) ? YAML.parse(fs.readFileSync(`${dir}/${file}`, 'utf8')) ?? {} : {})
  type Dependency = { name: string; version?: string }
  const wanted: Dependency[] = read('Chart.yaml').dependencies ?? read('requirements.yaml').dependencies ?? []
  if (wanted.length === 0) return
  for (const first of fetchedFirst(dir, YAML)) {
    const r = await exec('helm', ['dep', 'up', first], { timeout: 300, capture: true, nothrow: true })
    if (r.exitCode !== 0) throw new DeployError(`${plan.chart}: ${first}: could not fetch the chart's dependencies: ${wholeReason(r.stderr || r.stdout)}`)
  }
  const lockFile = localDependencies(dir, YAML).length ? undefined : ['Chart.lock', 'requirements.lock'].find((f) => fs.existsSync(`${dir}/${f}`))
  const locked: Dependency[] = lockFile ? read(lockFile).dependencies ?? [] : []
  const cached = lockFile && wanted.every((d) => {
    const l = locked.find((x) => x.name === d.name)
    const pinned = d.version && /^v?\d+\.\d+\.\d+$/.test(d.version) ? resolvedVersion(d.version) === resolvedVersion(String(l?.version)) : true
    return l && pinned && archived(dir, d.name, String(l.version))
  })
  if (cached) {
    out.info(`${dir}: dependencies already in ${dir}/charts/ as ${lockFile} names them`)
    return
  }
  const opts = { cwd: dir, timeout: 300, capture: true, nothrow: true } as const
  let r = lockFile ? await exec('helm', ['dep', 'build'], opts) : undefined
  if (!r || /out of sync/.test(r.stderr)) r = await exec('helm', ['dep', 'up'], opts)
  if (r.exitCode !== 0) throw new DeployError(`${plan.chart}: ${dir}: could not fetch the chart's dependencies: ${wholeReason(r.stderr || r.stdout)}`)
}

export interface Preview {
  exitCode: number
  stderr: string
  /** The manifest the upgrade would apply. */
  manifest: string
  /** The cluster gave no answer: which, to what, how long it was waited for (lib/cluster.ts). */
  fault?: string
}

/**
 * `helm upgrade --install --dry-run=server`, with the deploy's values: the API server's view
 * (capabilities, lookups, every object built against its schema), and nothing written.
 * Shared by validate and diff.
 */
function upgradePreview(r: ChartRun): Promise<Preview> {
  const { plan, exec } = r
  const { chart } = plan
  r.preview.upgrade ??= (async () => {
    const args = ['upgrade', '--install', '--namespace', chart, chart, await previewChart(r), '--dry-run=server', '--output', 'json', ...valuesArgs(r)]
    // The output holds every rendered Secret and the values: captured, parsed, never printed.
    const done = await exec('helm', args, { capture: true, nothrow: true, timeout: plan.config.helmTimeoutSeconds })
    if (done.exitCode !== 0 || plan.dryRun) return { exitCode: done.exitCode, stderr: done.stderr, manifest: '', fault: clusterFault(done, 'helm upgrade --dry-run=server', r) }
    try {
      return { exitCode: 0, stderr: done.stderr, manifest: String(JSON.parse(done.stdout).manifest ?? '') }
    } catch {
      return { exitCode: 1, stderr: `Error: helm upgrade --dry-run=server --output json printed no release (${done.stdout.length} bytes)`, manifest: '' }
    }
  })()
  return r.preview.upgrade
}

/** What helm found wrong in a failed command's output; its last line when nothing more precise. */
function commandProblems(chart: string, dir: string, check: ValidationProblem['check'], done: CommandResult): ValidationProblem[] {
  if (done.exitCode === 0) return []
  const found = helmProblems(chart, dir, check, `${done.stderr}\n${done.stdout}`)
  return found.length ? found : [{ check, message: `${chart}: helm ${check} failed: ${tail(done.stderr || done.stdout, 1)}` }]
}

/** `helm lint` and `helm template` with the deploy's values: their problems and warnings; the objects rendered. */
async function lintAndRender(r: ChartRun, result: ChartValidation): Promise<ManifestObject[]> {
  const { plan, exec, helm } = r
  const { chart } = plan
  const [dir, label] = [await previewChart(r), chartLabel(plan)]
  const args = ['--namespace', chart, ...valuesArgs(r)]
  const quiet = { capture: true, nothrow: true, timeout: 300 } as const
  const lint = await exec('helm', ['lint', dir, ...args], quiet)
  for (const m of lint.stdout.matchAll(/^\[WARNING\] (.*)$/gm)) {
    // Helm 4 warns about a chart with no templates of its own, which is what a wrapper chart is
    // (its objects come from its dependencies); the count of objects rendered says whether any do.
    if (m[1] !== 'templates/: directory does not exist') result.warnings.push(`${chart}: ${label}/${m[1]}`)
  }
  const template = await exec('helm', [...helm.templateArgs(chart, dir), ...args], quiet)
  const objects = template.exitCode === 0 && !plan.dryRun ? parseManifest(template.stdout, chart, r.invocation.runtime.YAML) : []
  result.objects = objects.length
  if (template.exitCode === 0 && !plan.dryRun) result.errors.push(...duplicateKeys(template.stdout, r.invocation.runtime.YAML).map((d) => duplicateProblem(chart, dir, d)))
  result.errors.push(...commandProblems(chart, label, 'lint', lint), ...commandProblems(chart, label, 'render', template))
  return objects
}

/**
 * The image you built is the image you deploy: each image of the run (built, or found by its
 * tag) is what the rendered chart runs, by name and by tag. Another image in its place is a
 * problem naming the values path; none at all, a warning (a chart may not run every image).
 */
function checkImages(r: ChartRun, result: ChartValidation, objects: ManifestObject[]) {
  const { plan, state } = r
  const specs = plan.images.map((i) => i.spec)
  for (const image of plan.images) {
    const use = imageUse(objects, image.name, image.tag, { others: specs.filter((s) => s !== image.spec) })
    if (use.used) continue
    const at = imageValuesPath(image, plan.files.source)
    if (!use.instead) {
      result.warnings.push(`${plan.chart}: no rendered object uses the ${image.kind} image ${image.spec}: check that the chart takes values ${at}.name and ${at}.tag`)
      continue
    }
    const valuesPath = `${at}.${use.instead.differs}`
    const built = state.images.get(image.dir)?.built ? 'built' : 'deploys'
    result.errors.push({ check: 'images', valuesPath, message: `${plan.chart}: values ${valuesPath}: the chart runs ${use.instead.image}, not ${image.spec}, the ${image.kind} image this run ${built}; ${imageFix(plan, image, valuesPath, use.instead.differs)}` })
  }
}

/** How to make the chart run the image: configure its prefix (deploy.ts then sets the name), or fix the values. */
function imageFix({ config, files }: ChartPlan, image: ImageInfo, valuesPath: string, differs: 'name' | 'tag'): string {
  const key = image.kind === 'user' ? 'USER_IMAGE_PREFIX' : 'HUB_IMAGE_PREFIX'
  if (differs === 'tag' || config.env[key]) return `the chart does not take its image's ${differs} from values ${valuesPath}: make it do so`
  const where = files.source.layout === 'wrapper-chart' ? `${files.chartDir}/values.yaml` : files.source.valuesFiles.at(-1)
  return `set ${key} (deploy.ts then sets ${valuesPath}), or name ${image.name} there in ${where}`
}

/** A key the chart renders twice: helm renders it, Kubernetes keeps the last one silently. */
function duplicateProblem(chart: string, dir: string, d: DuplicateKey): ValidationProblem {
  const file = d.source ? locate(dir, d.source).file : undefined
  const where = [file, d.object].filter(Boolean).join(': ')
  return { check: 'render', ...(file ? { file } : {}), message: `${chart}: ${where ? `${where}: ` : ''}the key "${d.key}" is written twice in one map; Kubernetes would keep only the last one: remove the other` }
}

/** The API server's check of every object (the server-side dry run), when the cluster can be reached. */
async function serverCheck(r: ChartRun, result: ChartValidation) {
  const { plan, helm, env } = r
  const why = helm.serverDryRun ? noClusterAccess(plan.phases, env) : `Helm ${helm.major} has no server-side dry run`
  if (why) {
    result.serverSideNote = why
    return
  }
  if (result.errors.length) {
    result.serverSideNote = 'the chart did not render'
    return
  }
  const preview = await upgradePreview(r)
  // The docs' promise: a cluster that cannot be reached skips the check (named, with how long it was waited for).
  if (preview.fault) {
    result.serverSideNote = preview.fault
    return
  }
  result.serverSide = 'checked'
  result.errors.push(...commandProblems(plan.chart, chartLabel(plan), 'server', { stdout: '', ...preview }))
}

/** Prints what --validate found, and keeps it masked as the result's text. */
function reportValidation(r: ChartRun, result: ChartValidation, text: string[]) {
  const { plan, out } = r
  const { redact } = r.invocation.secrets
  const say = (line: string, how: 'print' | 'warn' | 'error' = 'print') => {
    text.push(redact(line))
    if (how === 'print') out.print(line)
    else out[how](line)
  }
  for (const w of result.warnings) say(w, 'warn')
  for (const p of result.errors) say(p.message, 'error')
  const server = result.serverSide === 'checked' ? 'checked by the API server' : `server-side check skipped: ${result.serverSideNote}`
  const count = `${result.errors.length} problem${result.errors.length > 1 ? 's' : ''}`
  say(result.valid ? `${plan.chart}: valid (helm lint, ${result.objects} objects rendered, ${server})` : `${plan.chart}: invalid: ${count}`)
  result.text = text.join('\n') + '\n'
  Object.assign(result, redactDeep(result, redact))
  return count
}

/**
 * --validate: dependencies, `helm lint`, a render with the deploy's values, and with cluster
 * access the server-side dry run. Every problem is one ERROR line; an invalid chart fails the
 * run (exit 1). The result is `state.validation` (ctx.validation for plugins).
 */
export async function validate(r: ChartRun) {
  const { plan, state, out } = r
  const { chart } = plan
  const result: ChartValidation = { chart, valid: true, secrets: plan.secretsFile ?? 'used', serverSide: 'skipped', objects: 0, errors: [], warnings: [], text: '' }
  state.validation = result
  const text: string[] = []
  if (result.secrets !== 'used') {
    const line = `${chart}: ${plan.files.secretsFile} is ${result.secrets === 'locked' ? 'locked (git-crypt)' : 'missing'}: validating without it, so values that need it are not checked`
    text.push(r.invocation.secrets.redact(line))
    out.warn(line)
  }
  try {
    await previewChart(r)
  } catch (e) {
    result.errors.push({ check: 'dependencies', message: (e as Error).message })
    result.serverSideNote = 'the chart did not render'
  }
  if (result.errors.length === 0) {
    const objects = await lintAndRender(r, result)
    if (result.errors.length === 0 && objects.length) checkImages(r, result, objects)
    await serverCheck(r, result)
  }
  if (plan.dryRun) {
    state.validation = undefined
    return
  }
  result.errors = uniqueProblems(result.errors)
  result.valid = result.errors.length === 0
  const count = reportValidation(r, result, text)
  if (!result.valid) throw new DeployError(`validation of ${chart} failed: ${count} (listed above)`)
}

interface Release {
  revision: number
  manifest: string
  /** The values the release was installed with (user-supplied, secrets included). */
  config: Record<string, unknown>
}

/**
 * What the release has now, as helm stores it (what `helm get manifest` prints), at the
 * revision an upgrade compares against: the last deployed one (the last one when none is).
 * Undefined when the chart is not installed.
 */
async function currentRelease(r: ChartRun): Promise<Release | undefined> {
  const { plan, exec, helm } = r
  const { chart } = plan
  const status = (extra: string[]) =>
    exec('helm', [...helm.statusArgs(chart), ...extra, '--output', 'json'], { capture: true, nothrow: true, timeout: 60 })
  const parse = (done: CommandResult, what: string) => {
    const fault = clusterFault(done, 'helm status', r)
    if (fault) throw new DeployError(`${chart}: could not read ${what}: ${fault}; ${REACH_THE_CLUSTER}`)
    if (done.exitCode !== 0) throw new DeployError(`${chart}: could not read ${what}: ${tail(done.stderr || done.stdout, 1).replace(/^Error: /, '') || `helm status exited with ${done.exitCode}`}`)
    let release: unknown
    try {
      release = JSON.parse(done.stdout)
    } catch {
      throw new DeployError(`${chart}: could not read ${what}: \`helm status --output json\` printed no JSON`)
    }
    // `null`, a list, an object without a revision: JSON, but no release.
    if (!release || typeof release !== 'object' || typeof (release as { version?: unknown }).version !== 'number') {
      throw new DeployError(`${chart}: could not read ${what}: \`helm status --output json\` printed ${JSON.stringify(release).slice(0, 40)}, not a release`)
    }
    return release as { version: number; manifest?: string; config?: Record<string, unknown>; info?: { status?: string } }
  }
  const last = await status([])
  if (last.exitCode !== 0 && /release: not found/.test(last.stderr)) return undefined
  let release = parse(last, 'the release')
  if (release.info?.status !== 'deployed') {
    const history = await helm.history(chart)
    const deployed = 'revisions' in history ? [...history.revisions].reverse().find((h) => h.status === 'deployed') : undefined
    if (deployed && deployed.revision !== release.version) release = parse(await status(['--revision', String(deployed.revision)]), `revision ${deployed.revision}`)
  }
  return { revision: release.version, manifest: String(release.manifest ?? ''), config: release.config && typeof release.config === 'object' ? release.config : {} }
}

/** The values a deploy sets that are no secret: the images' tags and names (imageSetArgs). */
const IMAGE_VALUE = /^(jupyterhub\.)?(singleuser|hub)\.image\.(tag|name)$/

/** Each leaf of a values tree, by its dotted path. */
function leaves(value: unknown, at: string, visit: (at: string, leaf: unknown) => void) {
  if (value && typeof value === 'object') for (const [k, v] of Object.entries(value)) leaves(v, at ? `${at}.${k}` : k, visit)
  else visit(at, value)
}

/**
 * Registers the values the release was installed with: what a deploy passes is its values
 * files (hub-configs/, no secret), secrets/<chart>.yaml and the images, so the rest are the
 * old secrets, including those the file no longer has. Masked like the new ones.
 */
function addOldSecrets({ plan, invocation }: ChartRun, config: Record<string, unknown>) {
  const plain = new Set<string>()
  // A values file that does not parse is helm's to report, in the dry run that follows.
  const parsed = (file: string) => invocation.runtime.YAML.parseDocument(fs.readFileSync(file, 'utf8'), { logLevel: 'silent' }).toJS()
  for (const file of plan.files.source.valuesFiles) leaves(parsed(file), '', (at) => plain.add(at))
  leaves(config, '', (at, value) => {
    // By the masking rule, as secrets/<chart>.yaml's own values: `true` or `300` stay readable.
    if ((typeof value === 'string' || typeof value === 'number') && !IMAGE_VALUE.test(at) && !plain.has(at)) invocation.secrets.addValue(at.split('.').at(-1) ?? '', value)
  })
}

/**
 * --diff: object by object, the release's manifest against the one the upgrade would apply.
 * Read-only: helm status/history and a server-side dry run. The result is `state.diff`
 * (ctx.diff for plugins); the text goes to the chart's output.
 */
export async function diffChart(r: ChartRun) {
  const { plan, state, exec, out, helm } = r
  const { chart } = plan
  await previewChart(r)
  if (plan.dryRun) {
    await exec('helm', [...helm.statusArgs(chart), '--output', 'json'])
    await upgradePreview(r)
    return
  }
  const current = await currentRelease(r)
  if (current) addOldSecrets(r, current.config)
  const preview = await upgradePreview(r)
  if (preview.fault) throw new DeployError(`${chart}: could not compute the diff: ${preview.fault}; ${REACH_THE_CLUSTER}`)
  if (preview.exitCode !== 0) {
    const first = helmProblems(chart, chartLabel(plan), 'server', preview.stderr)[0]?.message ?? `${chart}: ${tail(preview.stderr, 1)}`
    throw new DeployError(`helm upgrade --dry-run=server failed: ${first}`)
  }
  for (const d of duplicateKeys(preview.manifest, r.invocation.runtime.YAML)) out.warn(duplicateProblem(chart, plan.files.chartDir, d).message)
  const labels: [string, string] = [current ? `(revision ${current.revision})` : '(not installed)', `(${plan.commit.slice(0, 7)})`]
  const found = await diffManifests(current?.manifest, preview.manifest, chart, labels)
  state.diff = redactDeep({ chart, namespace: chart, revision: current?.revision, ...found }, r.invocation.secrets.redact)
  out.print(state.diff.text)
}

/** The stable --json document of --validate/--diff (docs/workflow.md). */
export function previewReport(runs: ChartRun[], redact: Secrets['redact']) {
  return redactDeep({
    version: 1,
    charts: runs.map(({ plan, state }) => ({
      chart: plan.chart,
      result: state.result ?? 'not run',
      error: state.error?.message ?? null,
      validation: state.validation ?? null,
      diff: state.diff ?? null,
    })),
  }, redact)
}
