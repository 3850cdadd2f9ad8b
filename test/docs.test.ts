// Docs check (npm run docs:check, also part of npm test): links resolve, every flag and
// exit code is documented, CI files are valid YAML that run documented commands and pinned
// tools, every shell example of README.md and docs/ runs as written, docs/port.md names what
// deploy.ts has.
import { after, test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { execFileSync, spawnSync } from 'node:child_process'
import { YAML } from 'zx'
import { startServer, stopServers } from './support/http.ts'
import { FIXTURES, migrationFixture, type FixtureName } from './support/migrating.ts'
import { ROOT, HELM3, PASSWORD, PLANTED, PRIVATE_KEY_LINE, SECRET_TOKEN, GRAFANA_PASSWORD, commit, findLeak, git, gitCryptFilter, makeRepo, runDeploy, standinBin, tempDir, type Rule, type RunResult } from './support/harness.ts'

const read = (file: string) => fs.readFileSync(path.join(ROOT, file), 'utf8')
/** deploy.ts and the modules beside it in lib/. */
const sources = () => ['deploy.ts', ...fs.readdirSync(path.join(ROOT, 'lib')).filter((f) => f.endsWith('.ts')).map((f) => `lib/${f}`)].map(read).join('\n')
const markdown = ['README.md', ...fs.readdirSync(path.join(ROOT, 'docs')).filter((f) => f.endsWith('.md')).map((f) => `docs/${f}`)]

test('relative links in README and docs/ point at files that exist', { timeout: 5_000 }, () => {
  for (const file of markdown) {
    for (const [, target] of read(file).matchAll(/\]\(([^)#\s]+)(?:#[^)]*)?\)/g)) {
      if (/^[a-z]+:/.test(target)) continue
      assert.ok(fs.existsSync(path.join(ROOT, path.dirname(file), target)), `${file} links to missing ${target}`)
    }
  }
})

test('the README documents every flag of --help and every exit code', { timeout: 5_000 }, () => {
  const source = sources()
  const usage = /const USAGE = `([\s\S]*?)`/.exec(source)![1]
  const readme = read('README.md')
  for (const [flag] of usage.matchAll(/--[a-z-]+/g)) assert.ok(readme.includes(flag), `README lacks ${flag}`)
  for (const code of ['0', '1', '2', '3', '130', '143']) assert.match(readme, new RegExp(`\\| ${code}|${code} \\|| ${code} /|/ ${code} `), `exit code ${code}`)
})

test('CI workflow files are valid YAML and call deploy.ts only with documented flags', { timeout: 5_000 }, () => {
  const files = ['.travis.yml', ...(fs.existsSync(path.join(ROOT, '.github/workflows')) ? fs.readdirSync(path.join(ROOT, '.github/workflows')).map((f) => `.github/workflows/${f}`) : [])]
  const readme = read('README.md')
  for (const file of files) {
    const text = read(file)
    assert.doesNotThrow(() => YAML.parse(text), file)
    for (const [, args] of text.matchAll(/deploy\.ts((?: --?[a-z-]+)+)/g)) {
      for (const flag of args.trim().split(/\s+/)) assert.ok(readme.includes(flag), `${file} uses undocumented ${flag}`)
    }
  }
})

// -------------------------------------------------------------------------------------
// docs/plugins.md: its commands, its example plugin and the lines it shows, run as written.

/** The page's fenced blocks (also indented ones, inside lists): language and text. */
const fenced = (text: string) => [...text.matchAll(/^( *)```(\w*)\n([\s\S]*?)^\1```/gm)]
  .map(([, indent, lang, body]) => ({ lang, lines: body.split('\n').map((l) => l.slice(indent.length)).filter(Boolean) }))
const stderrLines = (r: RunResult, prefix: RegExp) => r.stderr.split('\n').filter((l) => prefix.test(l))
const PODS: Rule = { tool: 'kubectl', match: 'get pods', stdout: 'pod/hub-1\npod/proxy-2\n' }

test('docs/plugins.md: every example runs as written', { timeout: 50_000 }, async () => {
  const doc = read('docs/plugins.md')
  const blocks = fenced(doc)
  const example = blocks.find((b) => b.lang === 'ts' && b.lines[0].startsWith('// plugins/freeze.ts'))!
  assert.ok(example, 'the freeze example')
  const repo = makeRepo({ hubs: ['staginghub', 'ea-hub'] })
  commit(repo, { 'plugins/freeze.ts': example.lines.join('\n') + '\n' }, 'the example plugin')

  // The shell commands: `KEY=value ... npx tsx deploy.ts <args>`, with stand-ins for the cluster.
  const commands = blocks.filter((b) => b.lang === 'sh').flatMap((b) => b.lines)
  assert.ok(commands.length >= 2, commands.join('\n'))
  const runs = await Promise.all(commands.map((line) => {
    const m = /^((?:[A-Z_]+=\S+ )*)npx tsx deploy\.ts (.*)$/.exec(line)
    assert.ok(m, `not a deploy.ts command: ${line}`)
    const env = Object.fromEntries(m[1].trim().split(/\s+/).filter(Boolean).map((kv) => kv.split('=') as [string, string]))
    return runDeploy(repo, m[2].split(/\s+/), { env, rules: [HELM3, PODS] })
  }))
  runs.forEach((r, i) => assert.equal(r.code, 0, `${commands[i]}\n${r.stderr}`))

  // The example plugin: refused with the lines the page shows; otherwise it does what it says.
  const shown = /With `DEPLOY_FREEZE="([^"]+)"`[\s\S]*?```\n([\s\S]*?)\n```/.exec(doc.slice(doc.indexOf('## Example')))!
  const args = ['--no-setup', '--deploy', '--plugin', 'freeze', 'ea-hub']
  const [frozen, open] = await Promise.all([
    runDeploy(repo, args, { env: { DEPLOY_FREEZE: shown[1] } }),
    runDeploy(repo, args, { rules: [HELM3, PODS] }),
  ])
  assert.equal(frozen.code, 3, frozen.stderr)
  assert.deepEqual(stderrLines(frozen, /^(ERROR|WARNING):/), shown[2].split('\n'))
  assert.match(frozen.stdout, /^ea-hub\s+-\s+refused/m)
  assert.equal(open.code, 0, open.stderr)
  const upgrade = open.calls.find((c) => c.tool === 'helm' && c.argv[0] === 'upgrade')!
  assert.deepEqual(upgrade.argv.slice(-2), ['--history-max', '20'])
  assert.match(open.stderr, /^INFO:root:freeze: 2 pods running in ea-hub$/m)
  assert.match(open.stderr, /^INFO:root:freeze: ea-hub at [0-9a-f]{7} done in [\d.]+s$/m)

  // The refusal promote-from-staging shows, word for word.
  const refusal = blocks.flatMap((b) => b.lines).find((l) => l.startsWith('ERROR: plugin promote-from-staging'))!
  const chart = (name: string, version: string) =>
    `apiVersion: v2\nname: ${name}\nversion: 1.0.0\ndependencies:\n  - name: jupyterhub\n    version: ${version}\n    repository: https://hub.jupyter.org/helm-chart/\n`
  commit(repo, { 'hub-charts/staginghub/Chart.yaml': chart('staginghub', '3.3.8'), 'hub-charts/ea-hub/Chart.yaml': chart('ea-hub', '3.3.7') })
  const staging = JSON.stringify([{ revision: 2, status: 'deployed', description: JSON.stringify({ commit: '0123456789ab', images: {}, deps: { jupyterhub: '3.3.8' } }) }])
  const promoted = await runDeploy(repo, ['--deploy', '--plugin', 'promote-from-staging', 'ea-hub'], {
    rules: [HELM3, { tool: 'helm', match: '^history staginghub', stdout: staging }],
    env: { PRODUCTION_CHARTS: 'ea-hub' },
  })
  assert.equal(promoted.code, 3, promoted.stderr)
  assert.deepEqual(stderrLines(promoted, /^ERROR:/), [refusal])
})

const ciFiles = ['.travis.yml', '.github/workflows/deploy.yml', '.github/actions/tools/action.yml']

test('CI files pin third-party actions by commit and use one helm and one kubectl version', { timeout: 5_000 }, () => {
  const versions = { helm: new Set<string>(), kubectl: new Set<string>() }
  for (const file of ciFiles) {
    const text = read(file)
    for (const [line, action, ref] of text.matchAll(/uses:\s*([^\s@]+)@(\S+).*/g)) {
      if (action.startsWith('./')) continue
      assert.match(ref, /^[0-9a-f]{40}$/, `${file}: ${action} pinned by tag, not by commit`)
      assert.match(line, /# v\d+\.\d+\.\d+$/, `${file}: ${action} lacks its version in a comment`)
    }
    // Versions outside `uses:` lines: helm is v3.x.y or v4.x.y, kubectl v1.x.y.
    const body = text.split('\n').filter((l) => !/uses:/.test(l)).join('\n')
    for (const [, v] of body.matchAll(/\bv([34]\.\d+\.\d+)\b/g)) versions.helm.add(v)
    for (const [, v] of body.matchAll(/\bv(1\.\d+\.\d+)\b/g)) versions.kubectl.add(v)
    // An apt-get install on a fresh runner needs the package lists first.
    const install = text.search(/apt-get install/)
    if (install >= 0) assert.ok(text.lastIndexOf('apt-get update', install) >= 0, `${file}: apt-get install without apt-get update before it`)
    assert.doesNotMatch(text, /curl[^\n|]*\|\s*(sudo\s+)?(ba)?sh\b/, `${file}: an unpinned installer piped into a shell`)
  }
  // CI installs what a new user gets today, the tests' newer toolchain (the v35 layer package): Helm 4.1 and kubectl 1.35.
  assert.deepEqual([...versions.helm], ['4.1.4'], 'helm versions in CI files')
  assert.deepEqual([...versions.kubectl], ['1.35.2'], 'kubectl versions in CI files')
})

test('CI deploys monitoring after the production hubs and installs the runtime only', { timeout: 5_000 }, () => {
  const workflow = YAML.parse(read('.github/workflows/deploy.yml'))
  assert.deepEqual(workflow.jobs.monitoring.needs, ['changes', 'staging', 'production'])
  assert.match(workflow.jobs.changes.steps.find((s: { id?: string }) => s.id === 'changed').run, /select\(\. != "staginghub" and \. != "monitoring"\)/)
  for (const file of ciFiles.filter((f) => f !== '.travis.yml')) {
    for (const [cmd] of read(file).matchAll(/npm ci\b.*/g)) assert.match(cmd, /--omit=dev/, `${file}: ${cmd}`)
  }
  const travis = read('.travis.yml')
  // Travis: the full install only for pull requests (the docs check); pushes deploy.
  assert.match(travis, /if \[ "\$TRAVIS_PULL_REQUEST" != "false" \]; then npm ci [^;]*; else npm ci --omit=dev/)
  assert.ok(travis.indexOf('--deploy monitoring') > travis.indexOf('--deploy ea-hub'), '.travis.yml: monitoring after the production hubs')
})

test('every page that runs deploy.ts from a URL under Deno gives deno.json of the same commit as the import map', { timeout: 5_000 }, () => {
  const pages = new Set<string>()
  for (const file of markdown) {
    // A command: its lines joined where they end in a backslash.
    for (const command of read(file).replace(/\\\n\s*/g, ' ').split('\n').filter((l) => /deno run .*https?:\/\/\S*deploy\.ts/.test(l))) {
      const map = /--import-map=(\S+)\/deno\.json/.exec(command)
      assert.ok(map, `${file}: runs deploy.ts from a URL without --import-map: ${command.trim()}`)
      assert.ok(command.includes(`${map[1]}/deploy.ts`), `${file}: the import map and deploy.ts from different places: ${command.trim()}`)
      pages.add(file)
    }
  }
  assert.deepEqual([...pages].sort(), ['README.md', 'docs/workflow.md'])
})

/** The deploy commands of a `- >-` entry: one command per line, joined by `&&`. */
const chain = (entry: string) => entry.split('&&').map((c) => c.trim())

test('Travis deploys in one && chain, staging first, and docs/adding-a-hub.md adds a hub inside it, before monitoring', { timeout: 5_000 }, () => {
  const deploys = (YAML.parse(read('.travis.yml')).before_deploy as string[]).filter((entry) => entry.includes('deploy.ts'))
  assert.equal(deploys.length, 1, '.travis.yml: the deploys must be one chained command, so production never follows a failed staging')
  const travis = chain(deploys[0])
  assert.match(travis[0], /--deploy staginghub$/)
  assert.match(travis.at(-1)!, /--deploy monitoring$/)
  // The page's advice, as YAML: the same chain with the new hub's line before monitoring.
  const advice = fenced(read('docs/adding-a-hub.md')).find((b) => b.lang === 'yaml' && b.lines.some((l) => l.includes('--deploy <hub>')))!
  const [entry] = YAML.parse(advice.lines.join('\n')) as string[]
  assert.deepEqual(chain(entry), [...travis.slice(0, -1), 'npx tsx deploy.ts --build --push --deploy <hub>', travis.at(-1)])
})

// Every shell example runs as written. Each fenced `sh` block of README.md and docs/*.md is
// run line by line (a doc's blocks in order, in one fixture) with bash, and must exit 0:
// - the fixture is a git repository holding this repository's files, with planted secrets
//   (the real ones are git-crypt'ed; here committed through a stand-in of git-crypt's filter,
//   as in an unlocked clone) and node_modules linked to this checkout's;
// - the cloud CLIs, helm, kubectl and docker are the recording stand-ins (no cluster here), `npm`
//   is a stand-in whose `npm ci` only checks that node_modules is there: tests reach no
//   registry and must never re-install the shared node_modules;
// - a fenced `ts` block whose first line is `// <path>: ...` is written to <path> first, so
//   examples can run the plugin a doc shows; so is a `yaml` block whose first line is
//   `# <path>: ...` (the fleet file docs/fleet.md shows);
// - `<hub>` stands for a new hub's name: `new-hub`;
// - the hubs the health-check plugin asks are a local server answering as JupyterHub does
//   (HUB_URL_<CHART>): no example reaches beyond 127.0.0.1;
// - a line that cannot run here is marked just above its block with an HTML comment,
//   `<!-- not run by test/docs.test.ts: <the line> (<why>) -->`; the mark must name a line of
//   the block and give a reason, so marks cannot outlive what they excuse;
// - after `<!-- fixture: NAME -->` (until the next `## ` heading) the examples and files are
//   another repository's, one test/support/migrating.ts builds (docs/migrating.md: a
//   repository moving in); there a `text` block of `INFO:root:` lines right after a `sh`
//   block is what its last command prints: each line, in order, among its stderr lines
//   (`<tag>`: the tag of a hub's user image directory, the hub it follows, `<name><hub>:<tag>`,
//   or else the one the line's `--namespace` names; a line ending in ` …` is the start of
//   one), and a `dotenv` block whose
//   first line is `# <path>: ...` is a file, like a `yaml` one.
interface Example { file: string; line: number; command: string; fixture?: FixtureName; expect?: string[] }
interface DocExamples { examples: Example[]; files: Record<string, string>; fixtureFiles: Partial<Record<FixtureName, Record<string, string>>> }

function docExamples(file: string): DocExamples {
  const lines = read(file).split('\n')
  const result: DocExamples = { examples: [], files: {}, fixtureFiles: {} }
  let marks: string[] = []
  let fixture: FixtureName | undefined
  for (let i = 0; i < lines.length; i++) {
    const mark = /^\s*<!-- not run by test\/docs\.test\.ts: (.+) \((.+)\) -->\s*$/.exec(lines[i])
    if (mark) { marks.push(mark[1]); continue }
    const fixtureMark = /^<!-- fixture: (\S+) -->$/.exec(lines[i])
    if (fixtureMark) {
      assert.ok((FIXTURES as readonly string[]).includes(fixtureMark[1]), `${file}:${i + 1}: no fixture ${fixtureMark[1]} in test/support/migrating.ts`)
      fixture = fixtureMark[1] as FixtureName
      continue
    }
    if (lines[i].startsWith('## ')) fixture = undefined
    const fence = /^(\s*)```(\w*)\s*$/.exec(lines[i])
    if (!fence) { if (lines[i].trim()) marks = []; continue }
    const [, indent, lang] = fence
    const body: { line: number; text: string }[] = []
    for (i++; i < lines.length && !/^\s*```\s*$/.test(lines[i]); i++) body.push({ line: i + 1, text: lines[i].slice(indent.length) })
    const named = ({ ts: /^\/\/ ([\w./-]+\.ts):/, yaml: /^# ([\w./-]+\.ya?ml):/, dotenv: /^# ([\w./-]+\.env):/ } as Record<string, RegExp>)[lang]?.exec(body[0]?.text ?? '')
    if (named) (fixture ? (result.fixtureFiles[fixture] ??= {}) : result.files)[named[1]] = body.map((b) => b.text).join('\n') + '\n'
    const last = result.examples.at(-1)
    if (fixture && lang === 'text' && body[0]?.text.startsWith('INFO:root:') && last?.fixture === fixture) last.expect = body.map((b) => b.text)

    if (lang === 'sh') {
      for (let j = 0; j < body.length; j++) {
        let { line, text } = body[j]
        // A command goes on after a trailing backslash and inside an open quote (a JSON argument).
        const open = (t: string) => t.endsWith('\\') || (t.split("'").length - 1) % 2 === 1
        while (open(text) && j + 1 < body.length) text = text.endsWith('\\') ? text.slice(0, -1) + body[++j].text : `${text}\n${body[++j].text}`
        if (!text.trim() || text.trim().startsWith('#')) continue
        const example: Example = { file, line, command: text.trim(), fixture }
        const at = marks.indexOf(example.command.replace(/\s+#.*$/, ''))
        if (at >= 0) marks.splice(at, 1)
        else result.examples.push(example)
      }
      assert.deepEqual(marks, [], `${file}:${body[0]?.line}: a "not run" mark names no line of the block below it`)
    }
    marks = []
  }
  return result
}

/** The fixture: this repository's files in a fresh git repository, secrets planted. */
function docsFixture(files: Record<string, string>): string {
  const repo = tempDir('deploy-docs-')
  const tracked = execFileSync('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard'], { cwd: ROOT, encoding: 'utf8' }).split('\0').filter(Boolean)
  for (const file of tracked) {
    const from = path.join(ROOT, file)
    if (!fs.existsSync(from) || file === 'node_modules') continue
    fs.mkdirSync(path.dirname(path.join(repo, file)), { recursive: true })
    fs.copyFileSync(from, path.join(repo, file))
  }
  git(repo, 'init', '-q', '-b', 'main')
  // Whoever follows the docs can commit (docs/adding-a-hub.md commits the new hub).
  git(repo, 'config', 'user.name', 'docs')
  git(repo, 'config', 'user.email', 'docs@example.org')
  // An unlocked clone, as CI has it: .gitattributes gives secrets/ to git-crypt, so the planted secrets are committed encrypted.
  gitCryptFilter(repo)
  commit(repo, {
    'secrets/dockerhub': `${PASSWORD}\n`,
    'secrets/gke-auth-key.json': JSON.stringify({ type: 'service_account', private_key: `-----BEGIN PRIVATE KEY-----\n${PRIVATE_KEY_LINE}\n-----END PRIVATE KEY-----\n` }),
    ...Object.fromEntries(['staginghub', 'ea-hub'].map((hub) => [`secrets/${hub}.yaml`, `jupyterhub:\n  proxy:\n    secretToken: ${SECRET_TOKEN}\n`])),
    'secrets/monitoring.yaml': `grafana:\n  adminPassword: ${GRAFANA_PASSWORD}\n`,
    ...files,
  }, 'the repository, secrets planted')
  fs.symlinkSync(path.join(ROOT, 'node_modules'), path.join(repo, 'node_modules'))
  return repo
}

function runExample(repo: string, bin: string, work: string, hub: string, command: string) {
  const env: Record<string, string> = {}
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !/^(TRAVIS|GITHUB_|CI$|DEPLOY_|NO_COLOR)/.test(k)) env[k] = v
  Object.assign(env, {
    PATH: `${bin}${path.delimiter}${process.env.PATH}`,
    HOME: path.join(work, 'home'),
    // Deno keeps its package cache under HOME: use the one of whoever runs the tests.
    DENO_DIR: process.env.DENO_DIR ?? path.join(os.homedir(), '.cache', 'deno'),
    STANDIN_LOG: path.join(work, 'calls.jsonl'),
    STANDIN_RULES: path.join(work, 'rules.json'),
    npm_config_update_notifier: 'false',
    HEALTH_CHECK_TIMEOUT: '30s',
  })
  for (const chart of ['staginghub', 'ea-hub', 'new-hub', 'monitoring']) env[`HUB_URL_${chart.toUpperCase().replace(/-/g, '_')}`] = hub
  return spawnSync('bash', ['-c', `set -eo pipefail\n${command.replaceAll('<hub>', 'new-hub')}`], { cwd: repo, env, encoding: 'utf8' })
}

after(() => stopServers(), { timeout: 30_000 })

/** Runs examples in order in `repo`, each to exit 0 and without a planted secret in its output; checks what each shows it prints. */
async function runExamples(repo: string, examples: Example[]) {
  const hub = await startServer([{ body: { version: '5.2.1' } }])
  const work = tempDir('deploy-docs-run-')
  fs.mkdirSync(path.join(work, 'home'))
  // The cluster the stand-ins play: Helm 3, and pods in every namespace.
  fs.writeFileSync(path.join(work, 'rules.json'), JSON.stringify([HELM3, PODS]))
  const bin = standinBin()
  fs.writeFileSync(path.join(bin, 'npm'), '#!/bin/sh\n[ "$1" = ci ] && [ -d node_modules ] && exit 0\necho "npm $*: not available in the docs test" >&2; exit 127\n', { mode: 0o755 })
  // `deno` as a Deno user has it: the real binary on PATH.
  fs.symlinkSync(path.join(ROOT, 'node_modules/deno/deno'), path.join(bin, 'deno'))
  for (const example of examples) {
    const r = runExample(repo, bin, work, hub.origin, example.command)
    const where = `${example.file}:${example.line}: ${example.command}`
    assert.equal(r.status, 0, `${where}\nexit ${r.status}\n${r.stdout.slice(-1500)}\n${r.stderr.slice(-1500)}`)
    const leak = findLeak({ stdout: r.stdout, stderr: r.stderr, calls: [] }, PLANTED)
    assert.equal(leak, undefined, `${where}: ${leak}`)
    if (example.expect) assertPrinted(repo, r.stderr, example.expect, where)
  }
}

/** The lines a page shows a command prints, in order, among its stderr lines (a fleet's `[cluster] ` prefix aside). */
function assertPrinted(repo: string, stderr: string, expected: string[], where: string) {
  const printed = stderr.split('\n').map((l) => l.replace(/^\[[\w.-]+\] /, ''))
  let at = 0
  const tag = (hub: string) => git(repo, 'log', '-n', '1', '--pretty=format:%h', '--', `user-images/${hub}`)
  const hubs = fs.existsSync(path.join(repo, 'user-images')) ? fs.readdirSync(path.join(repo, 'user-images')).sort((a, b) => b.length - a.length) : []
  for (const line of expected) {
    const named = hubs.reduce((l, hub) => l.replaceAll(`${hub}:<tag>`, `${hub}:${tag(hub)}`), line)
    const namespace = /--namespace (\S+)/.exec(line)?.[1]
    const wanted = namespace ? named.replaceAll('<tag>', tag(namespace)) : named
    const matches = (l: string) => (wanted.endsWith(' …') ? l.startsWith(wanted.slice(0, -1)) : l === wanted)
    const found = printed.findIndex((l, i) => i >= at && matches(l))
    assert.ok(found >= 0, `${where}: does not print, after the lines before it on the page:\n${wanted}\n--- it printed:\n${stderr}`)
    at = found + 1
  }
}

for (const file of markdown) {
  const { examples, files, fixtureFiles } = docExamples(file)
  const plain = examples.filter((e) => !e.fixture)
  if (plain.length) {
    test(`${file}: every shell example runs as written`, { timeout: 300_000 }, async () => {
      await runExamples(docsFixture(files), plain)
    })
  }
  for (const fixture of FIXTURES.filter((f) => examples.some((e) => e.fixture === f))) {
    test(`${file}: every shell example of ${fixture} runs as written, on a repository shaped like it`, { timeout: 120_000 }, async () => {
      await runExamples(migrationFixture(fixture, fixtureFiles[fixture]).repo, examples.filter((e) => e.fixture === fixture))
    })
  }
}

test('deploy.ts commands quoted in the prose name only charts this repository has', { timeout: 5_000 }, () => {
  const charts = new Set([...fs.readdirSync(path.join(ROOT, 'hub-charts')), 'monitoring'])
  const valued = new Set(['--parallel', '--changed', '--plugin', '--env-file', '--dotenv', '--cluster', '--observed'])
  // performance.md describes the benchmarks' own fixture charts (hub1 … hub6); migrating.md, the hubs of repositories moving in.
  for (const file of markdown.filter((f) => f !== 'docs/performance.md' && f !== 'docs/migrating.md')) {
    for (const [, args] of read(file).matchAll(/`(?:npx tsx |deno run -A )?deploy\.ts((?: [^`]*)?)`/g)) {
      const words = args.trim().split(/\s+/).filter(Boolean)
      for (let i = 0; i < words.length; i++) {
        const word = words[i]
        if (valued.has(word)) i++
        else if (!/^(--?[a-z-]+|\.\.\.|…|<[^>]+>)$/.test(word)) assert.ok(charts.has(word), `${file}: \`deploy.ts${args}\` names ${word}, which is not a chart here`)
      }
    }
  }
})

test('docs/port.md covers every function of deploy.py and names only functions deploy.ts has', { timeout: 5_000 }, () => {
  const port = read('docs/port.md')
  const headings = [...port.matchAll(/^## (.+)$/gm)].map(([, h]) => h)
  for (const fn of ['setup_auth', 'setup_helm', 'setup_docker', 'last_git_modified', 'get_previous_image_spec', 'image_requires_build', 'build_hub_image', 'build_user_image', 'deploy', 'main']) {
    assert.ok(headings.some((h) => h.split(', ').includes(fn)), `docs/port.md has no section for deploy.py's ${fn}`)
  }
  const source = sources()
  const named = new Set([...port.matchAll(/`([A-Za-z_]\w*)\(\)`/g)].map(([, name]) => name))
  assert.ok(named.size >= 20, `only ${named.size} functions named`)
  for (const name of named) assert.match(source, new RegExp(`^(export )?(async )?function ${name}\\(`, 'm'), `docs/port.md names ${name}(), which deploy.ts does not have`)
  for (const [, name] of port.matchAll(/`([A-Z][A-Za-z_]+)`/g)) {
    if (/^[A-Z_]+$/.test(name) && !/^(HELM_VERSIONS)$/.test(name)) continue // configuration keys and variables
    assert.match(source, new RegExp(`^(export )?(const|class) ${name}\\b`, 'm'), `docs/port.md names ${name}, which deploy.ts does not have`)
  }
})

test('CI: a pull request validates the changed charts, diffs them with read-only access through the configured provider, and comments once', { timeout: 5_000 }, () => {
  const jobs = YAML.parse(read('.github/workflows/deploy.yml')).jobs
  const plan = jobs.plan
  type Step = { id?: string; if?: string; run?: string; uses?: string; with?: Record<string, string> }
  assert.match(plan.if, /github\.event_name == 'pull_request'/)
  assert.deepEqual(plan.permissions, { contents: 'read', 'pull-requests': 'write', 'id-token': 'write' })
  const run = plan.steps.map((s: Step) => s.run ?? '').join('\n')
  assert.match(run, /deploy\.ts --validate \$ACCESS --plugin pr-comment \$CHARTS/)
  assert.equal(plan.env.ACCESS, '--no-setup', 'without read-only access: validation alone')
  // --diff only where read-only access is configured (a key or a keyless identity); that step never deploys.
  const access = plan.steps.find((s: Step) => s.id === 'access')
  assert.match(access.if, /READONLY_KEY != '' \|\| env\.READONLY_LOGIN != ''/)
  assert.match(access.if, /hashFiles\('fleet\.yaml'\) == ''/)
  const diff = plan.steps.find((s: Step) => s.run?.includes('ACCESS=--diff'))
  assert.equal(diff.if, "steps.access.outputs.diff == 'true'")
  // The cluster as the deploy jobs reach it: the tools action (keyless login), then deploy.ts's
  // own setup with .env's provider; no cluster, zone or login of its own, no registry login.
  const tools = plan.steps.find((s: Step) => s.uses === './.github/actions/tools')
  assert.equal(tools.if, "steps.access.outputs.diff == 'true'")
  const deployTools = jobs.staging.steps.find((s: Step) => s.uses === './.github/actions/tools')
  assert.deepEqual(Object.keys(tools.with), Object.keys(deployTools.with))
  assert.doesNotMatch(run, /get-credentials|activate-service-account|--zone|--project|gcloud|aws |az /)
  assert.match(run, /GCLOUD_KEY_FILE=\$key/, 'the read-only key reaches setup as GCLOUD_KEY_FILE')
  assert.equal(plan.env.REGISTRY_PROVIDER, 'none')
  assert.doesNotMatch(run, /--deploy|--push/)
})

test('CI: the monitoring job logs in as the deploy jobs do (keyless when configured)', { timeout: 5_000 }, () => {
  const { jobs } = YAML.parse(read('.github/workflows/deploy.yml'))
  const tools = (job: { steps: Array<{ uses?: string; with?: object }> }) => job.steps.find((s) => s.uses === './.github/actions/tools')!.with
  for (const name of ['production', 'monitoring']) {
    assert.deepEqual(jobs[name].permissions, jobs.staging.permissions, `${name}: permissions`)
    assert.deepEqual(tools(jobs[name]), tools(jobs.staging), `${name}: the tools action's login`)
  }
  assert.equal(jobs.staging.permissions['id-token'], 'write')
})
