// P6 install: size and time of `npm ci` in a fresh clone, before and after the light install
// (no aws-cdk-lib peer, tsx a runtime dependency), for the full install (tests, development)
// and for a deploy job's install. Before, a deploy job needed the full install: tsx was a
// devDependency, and `npm ci --omit=dev` left `npx tsx deploy.ts` without tsx.
// "Before" is the parent of the commit that took aws-cdk-lib out of package-lock.json
// (BENCH_P6_BEFORE overrides it); "after" is HEAD. Each install gets an empty npm cache
// (cold: everything downloaded from the registry), then runs again on that cache (warm, as
// CI's npm cache gives it).
import fs from 'node:fs'
import path from 'node:path'
import { tempDir } from '../test/support/harness.ts'
import { type Bench, fmtMs, fmtRatio, must, ROOT, scratch, sh, table } from './lib.ts'

const TARGET_MB = 25
const PLAN = ['tsx', 'deploy.ts', '--dry-run', '--build', '--push', '--deploy', 'staginghub']

interface Install {
  cold: number
  warm: number
  /** node_modules, MB (du, 2^20 bytes). */
  mb: number
  packages: number
  cdk: boolean
  /** `npx --no-install tsx deploy.ts --dry-run ...` after this install exits 0. */
  plans: boolean
}

/**
 * The environment without npm's: under `npm run bench`, npm exports this checkout's config
 * (npm_config_legacy_peer_deps from .npmrc among it), which would apply to the "before" clone.
 */
const cleanEnv = (): NodeJS.ProcessEnv => ({
  ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^npm_/i.test(k))),
  npm_config_update_notifier: 'false',
})

async function beforeCommit(): Promise<string> {
  if (process.env.BENCH_P6_BEFORE) return process.env.BENCH_P6_BEFORE
  const removed = (await must('git', ['log', '-1', '--format=%H', '-S', '"node_modules/aws-cdk-lib"', '--', 'package-lock.json'], { cwd: ROOT })).stdout.trim()
  if (!removed) throw new Error('no commit changed aws-cdk-lib in package-lock.json: set BENCH_P6_BEFORE')
  return (await must('git', ['rev-parse', `${removed}^`], { cwd: ROOT })).stdout.trim()
}

async function duMb(dir: string): Promise<number> {
  const r = await must('du', ['-sk', dir])
  return Number(r.stdout.split('\t')[0]) / 1024
}

async function install(commit: string, omitDev: boolean): Promise<Install> {
  const work = tempDir('bench-p6-')
  scratch.add(work)
  const clone = path.join(work, 'clone')
  await must('git', ['clone', '-q', '--no-checkout', ROOT, clone])
  await must('git', ['checkout', '-q', commit], { cwd: clone })
  const args = ['ci', '--no-audit', '--no-fund', '--cache', path.join(work, 'npm-cache'), ...(omitDev ? ['--omit=dev'] : [])]
  const env = cleanEnv()
  const cold = await must('npm', args, { cwd: clone, env })
  const mb = await duMb(path.join(clone, 'node_modules'))
  const lock = JSON.parse(fs.readFileSync(path.join(clone, 'node_modules/.package-lock.json'), 'utf8'))
  const packages = Object.keys(lock.packages).length
  const cdk = fs.existsSync(path.join(clone, 'node_modules/aws-cdk-lib'))
  const plan = await sh('npx', ['--no-install', ...PLAN], { cwd: clone, env })
  const warm = await must('npm', args, { cwd: clone, env })
  return { cold: cold.ms, warm: warm.ms, mb, packages, cdk, plans: plan.code === 0 }
}

export const p6: Bench = {
  id: 'P6',
  title: 'Install: full and deploy-job `npm ci`, before and after',
  async run() {
    const before = await beforeCommit()
    const after = (await must('git', ['rev-parse', 'HEAD'], { cwd: ROOT })).stdout.trim()
    const bFull = await install(before, false)
    const bOmit = await install(before, true)
    const aFull = await install(after, false)
    const aOmit = await install(after, true)
    const mb = (x: number) => `${x.toFixed(1)} MB`
    const row = (what: string, i: Install) => [what, mb(i.mb), String(i.packages), fmtMs(i.cold), fmtMs(i.warm), i.cdk ? 'yes' : 'no', i.plans ? 'yes' : '**no**']
    const deployBefore = bFull // the deploy job's install before: tsx was a devDependency
    const met = aOmit.mb <= TARGET_MB && aOmit.plans
    const body = [
      `Before: ${before.slice(0, 7)}; after: ${after.slice(0, 7)}. Each row: a fresh clone, \`npm ci\` with an empty npm cache`,
      '(cold), then again on that cache (warm). Size: `du` of node_modules. Times include the registry',
      '(the npm registry as reachable from this machine); the cold/warm difference is the download. Times vary with',
      'the load of the shared machine (given above) and the registry; sizes and package counts do not.',
      '',
      table(['install', 'node_modules', 'packages', 'cold', 'warm', 'aws-cdk-lib', '`npx tsx deploy.ts` plans'], [
        row('before: `npm ci` (tests; also every deploy job)', bFull),
        row('before: `npm ci --omit=dev` (not usable: no tsx)', bOmit),
        row('after: `npm ci` (tests, development)', aFull),
        row('after: `npm ci --omit=dev` (deploy jobs)', aOmit),
      ]),
      '',
      `Full install: ${mb(bFull.mb)} → ${mb(aFull.mb)} (${fmtRatio(bFull.mb / aFull.mb)} smaller), cold ${fmtMs(bFull.cold)} → ${fmtMs(aFull.cold)}:`,
      '`.npmrc` sets `legacy-peer-deps=true`, so the kubectl layer package no longer pulls in its peer `aws-cdk-lib`',
      '(the tests use only its `layer.zip`).',
      `Deploy job: ${mb(deployBefore.mb)} → ${mb(aOmit.mb)} (${fmtRatio(deployBefore.mb / aOmit.mb)} smaller), cold ${fmtMs(deployBefore.cold)} → ${fmtMs(aOmit.cold)}`,
      `(${fmtRatio(deployBefore.cold / aOmit.cold)} faster): tsx is a runtime dependency, so the workflow and Travis install with`,
      '`npm ci --omit=dev` (zx, minimist, dotenv, yaml, tsx and esbuild for this platform).',
      `Deno needs no install at all: \`deno run -A deploy.ts\` fetches the four runtime packages that deno.json pins.`,
    ].join('\n')
    return {
      target: `deploy-job install ≤ ${TARGET_MB} MB, \`npx tsx deploy.ts\` still works`,
      met,
      headline: `deploy job ${mb(deployBefore.mb)} → ${mb(aOmit.mb)}, cold ${fmtMs(deployBefore.cold)} → ${fmtMs(aOmit.cold)}; full install ${mb(bFull.mb)} → ${mb(aFull.mb)}, cold ${fmtMs(bFull.cold)} → ${fmtMs(aFull.cold)}`,
      body,
    }
  },
}
