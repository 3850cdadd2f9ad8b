// Docs check (npm run docs:check, also part of npm test): links resolve, every flag and
// exit code is documented, CI files are valid YAML that run documented commands.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { YAML } from 'zx'
import { ROOT } from './support/harness.ts'

const read = (file: string) => fs.readFileSync(path.join(ROOT, file), 'utf8')
const markdown = ['README.md', ...fs.readdirSync(path.join(ROOT, 'docs')).filter((f) => f.endsWith('.md')).map((f) => `docs/${f}`)]

test('relative links in README and docs/ point at files that exist', () => {
  for (const file of markdown) {
    for (const [, target] of read(file).matchAll(/\]\(([^)#\s]+)(?:#[^)]*)?\)/g)) {
      if (/^[a-z]+:/.test(target)) continue
      assert.ok(fs.existsSync(path.join(ROOT, path.dirname(file), target)), `${file} links to missing ${target}`)
    }
  }
})

test('the README documents every flag of --help and every exit code', () => {
  const source = read('deploy.ts')
  const usage = /const USAGE = `([\s\S]*?)`/.exec(source)![1]
  const readme = read('README.md')
  for (const [flag] of usage.matchAll(/--[a-z-]+/g)) assert.ok(readme.includes(flag), `README lacks ${flag}`)
  for (const code of ['0', '1', '2', '3', '130', '143']) assert.match(readme, new RegExp(`\\| ${code}|${code} \\|| ${code} /|/ ${code} `), `exit code ${code}`)
})

test('CI workflow files are valid YAML and call deploy.ts only with documented flags', () => {
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
