// The suite itself: every test has its own time limit (a bug that makes something wait fails
// that test in seconds, not after a 900 s bound), and the recording stand-ins never wait on a
// stdin nobody feeds (an open one would hang a whole file of tests instead of failing one).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import ts from 'typescript'
import { ROOT, standinBin, tempDir, type Call } from './support/harness.ts'

/** Node runs a test (or hook) without a limit unless given one; Deno's node:test honours a test's too. */
const LIMITED = new Set(['test', 'it', 'before', 'after', 'beforeEach', 'afterEach'])
const FROM_NODE_TEST = new Set([...LIMITED, 'describe', 'suite', 'mock', 'run'])
/** No test needs more: an e2e run with real helm is minutes at worst. */
const LONGEST_MS = 600_000
const SHORTEST_MS = 1_000

/** Every place in `source` that defines a test or hook without a limit of its own, as `file:line: why`. */
function unlimited(file: string, source: string): string[] {
  const sf = ts.createSourceFile(file, source, ts.ScriptTarget.Latest, true, ts.ScriptKind.TS)
  const problems: string[] = []
  const at = (node: ts.Node, why: string) => problems.push(`${file}:${sf.getLineAndCharacterOfPosition(node.getStart()).line + 1}: ${why}`)
  /** Local name -> node:test export, for the functions that need a limit. */
  const local = new Map<string, string>()
  for (const statement of sf.statements) {
    if (!ts.isImportDeclaration(statement) || (statement.moduleSpecifier as ts.StringLiteral).text !== 'node:test') continue
    const clause = statement.importClause
    if (clause?.isTypeOnly) continue
    if (clause?.name || (clause?.namedBindings && !ts.isNamedImports(clause.namedBindings))) {
      at(statement, 'import node:test\'s functions by name (`import { test } from \'node:test\'`), so every test call can be checked')
      continue
    }
    for (const element of (clause?.namedBindings as ts.NamedImports | undefined)?.elements ?? []) {
      const imported = (element.propertyName ?? element.name).text
      if (element.isTypeOnly) continue
      if (!FROM_NODE_TEST.has(imported)) at(element, `node:test's ${imported} is not known to this check: teach test/suite.test.ts about it`)
      if (LIMITED.has(imported)) local.set(element.name.text, imported)
    }
  }
  /** The TestContext parameters in scope (`async (t) => ...`): their `t.test(...)` are subtests. */
  const contexts = new Set<string>()
  const check = (call: ts.CallExpression, what: string) => {
    const options = call.arguments.find(ts.isObjectLiteralExpression)
    const timeout = options?.properties.find((p): p is ts.PropertyAssignment => ts.isPropertyAssignment(p) && p.name.getText(sf) === 'timeout')
    if (!timeout) return at(call, `${what} without { timeout: ms }`)
    const value = timeout.initializer
    if (!ts.isNumericLiteral(value)) return at(value, `${what}: the timeout must be a number of milliseconds written out, not ${value.getText(sf)}`)
    const ms = Number(value.text)
    if (ms < SHORTEST_MS || ms > LONGEST_MS) at(value, `${what}: a timeout of ${value.getText(sf)} ms is outside ${SHORTEST_MS} to ${LONGEST_MS}`)
  }
  const visit = (node: ts.Node) => {
    let added: string | undefined
    if (ts.isCallExpression(node)) {
      const callee = node.expression
      // test(...), and test.only / test.skip / test.todo (...)
      const base = ts.isPropertyAccessExpression(callee) && ts.isIdentifier(callee.expression) && local.has(callee.expression.text) ? callee.expression : callee
      if (ts.isIdentifier(base) && local.has(base.text)) {
        check(node, `${callee.getText(sf)}(...)`)
        const fn = node.arguments.find((a) => ts.isArrowFunction(a) || ts.isFunctionExpression(a)) as ts.ArrowFunction | ts.FunctionExpression | undefined
        const param = fn?.parameters[0]?.name
        if (param && ts.isIdentifier(param) && !contexts.has(param.text)) contexts.add((added = param.text))
      } else if (ts.isPropertyAccessExpression(callee) && ts.isIdentifier(callee.expression) && contexts.has(callee.expression.text) && callee.name.text === 'test') {
        check(node, `${callee.getText(sf)}(...)`)
      }
    }
    ts.forEachChild(node, visit)
    if (added) contexts.delete(added)
  }
  visit(sf)
  return problems
}

const testFiles = () => ['test', 'test/e2e'].flatMap((dir) =>
  fs.readdirSync(path.join(ROOT, dir)).filter((f) => f.endsWith('.test.ts')).map((f) => `${dir}/${f}`))

test('every test and hook in test/ and test/e2e/ has its own time limit', { timeout: 30_000 }, () => {
  const files = testFiles()
  assert.ok(files.length > 20 && files.includes('test/e2e/lock.test.ts'), files.join(' '))
  assert.deepEqual(files.flatMap((f) => unlimited(f, fs.readFileSync(path.join(ROOT, f), 'utf8'))), [])
})

test('the time-limit check finds what it must', { timeout: 10_000 }, () => {
  const found = (source: string) => unlimited('x.test.ts', source).map((p) => p.replace(/^x\.test\.ts:\d+: /, ''))
  const header = "import { test as check, describe, after, type TestContext } from 'node:test'\n"
  assert.deepEqual(found(`${header}
describe('suite', () => {
  check('limited', { timeout: 5_000 }, async (t) => { await t.test('sub', { timeout: 2000 }, () => {}) })
  check({ timeout: 3000 }, () => {})
  after(() => {}, { timeout: 1000 })
  /x/.test('not a test')
})
`), [])
  assert.deepEqual(found(`${header}
check('none', () => {})
check('no timeout', { concurrency: 2 }, () => {})
check.skip('skipped', () => {})
check('computed', { timeout: 5 * 1000 }, () => {})
check('forever', { timeout: 3_600_000 }, () => {})
check('parent', { timeout: 9000 }, async (t) => { await t.test('sub', () => {}) })
after(() => {})
`), [
    'check(...) without { timeout: ms }',
    'check(...) without { timeout: ms }',
    'check.skip(...) without { timeout: ms }',
    'check(...): the timeout must be a number of milliseconds written out, not 5 * 1000',
    'check(...): a timeout of 3_600_000 ms is outside 1000 to 600000',
    't.test(...) without { timeout: ms }',
    'after(...) without { timeout: ms }',
  ])
  assert.match(found("import * as nt from 'node:test'\nnt.test('x', () => {})\n")[0], /import node:test's functions by name/)
})

test('a stand-in given a stdin nobody feeds goes on without it; fed input is read to its end', { timeout: 30_000 }, async () => {
  const log = path.join(tempDir(), 'calls.jsonl')
  const helm = path.join(standinBin(['helm']), 'helm')
  const run = (input: string | undefined) => new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve, reject) => {
    // Killed after 20 s: were the stand-in to wait on the pipe, this test fails instead of hanging its file.
    const child = spawn(helm, ['version'], { env: { ...process.env, STANDIN_LOG: log, STANDIN_RULES: '' }, stdio: ['pipe', 'ignore', 'ignore'], timeout: 20_000, killSignal: 'SIGKILL' })
    if (input !== undefined) child.stdin!.end(input)
    child.on('error', reject)
    child.on('close', (code, signal) => {
      child.stdin!.destroy()
      resolve({ code, signal })
    })
  })
  // The pipe stays open and silent: the stand-in must not wait for its end.
  assert.deepEqual(await run(undefined), { code: 0, signal: null })
  assert.deepEqual(await run('the lease\n'), { code: 0, signal: null })
  const calls: Call[] = fs.readFileSync(log, 'utf8').trim().split('\n').map((l) => JSON.parse(l))
  assert.deepEqual(calls.map((c) => [c.stdin, c.stdinSha256 !== null]), [['open', false], ['read', true]])
})
