// P2 rollout: 4 Deployments that each take T to become ready (kube-api readyDelayMs = T).
// Every round first applies a new pod template to all four with `helm upgrade` (no --wait),
// so the four rollouts start together; then the wait alone is timed:
// - ours: what deploy.ts's rollout phase runs: `kubectl get deployments -o name`, then one
//   `kubectl rollout status --watch` per deployment, all at once;
// - original: the same list, then the same rollout status commands one after another.
// Rounds alternate between the two methods. deploy.ts itself is also driven end to end
// (`--no-setup --deploy`, with a new user image tag each time) and its `<== rollout` line read.
// On each toolchain (Helm 4's --wait waits for every pod, so there helm does the waiting).
import { commit } from '../test/support/harness.ts'
import { TOOLCHAINS, type Toolchain } from '../test/support/tools.ts'
import { benchRepo, cluster, deployTs, phaseSeconds } from './fixtures.ts'
import { type Bench, fmtMs, fmtRatio, max, median, min, table } from './lib.ts'

const T = Number(process.env.BENCH_P2_T ?? 3000)
const ROUNDS = 3
const HUB = 'rollhub'
const DEPLOYMENTS = ['hub', 'proxy', 'user-scheduler', 'image-puller']

/** Who waits in the deploy.ts runs, whose helm upgrade has --wait (maxUnavailable 1). */
const WHO_WAITS: Record<Toolchain, string> = {
  helm3: '`maxUnavailable: 1` so that\n`helm upgrade --wait` does not do the waiting',
  helm4: '`maxUnavailable: 1`, which Helm 4\'s\n`--wait=watcher` ignores: it waits for every pod, so in the deploy.ts runs helm does the waiting and the\nrollout phase only confirms it',
}

export const p2: Bench = {
  id: 'P2',
  title: 'Rollout wait: 4 deployments, each ready after T',
  toolchains: TOOLCHAINS,
  async run(toolchain) {
    const c = await cluster(T, toolchain)
    try {
      const repo = benchRepo([HUB], DEPLOYMENTS, 1)
      const chart = `hub-charts/${HUB}`
      const ns = ['--namespace', HUB]
      const timeout = '--timeout=120s'
      let rev = 0
      const apply = async () => {
        const r = await c.helm(['upgrade', '--install', ...ns, '--create-namespace', HUB, chart, '--set-string', `rev=${++rev}`], repo)
        if (r.code !== 0) throw new Error(`helm upgrade: ${r.stderr}`)
      }
      const list = async () => {
        const r = await c.kubectl([...ns.slice(0, 2), 'get', 'deployments', '-o', 'name'])
        if (r.code !== 0) throw new Error(`kubectl get deployments: ${r.stderr}`)
        const names = r.stdout.split('\n').map((l) => l.trim()).filter(Boolean)
        if (names.length !== DEPLOYMENTS.length) throw new Error(`expected ${DEPLOYMENTS.length} deployments, got ${names.join(' ')}`)
        return names
      }
      const status = async (d: string) => {
        const r = await c.kubectl(['rollout', 'status', ...ns, '--watch', d, timeout])
        if (r.code !== 0 || !/successfully rolled out/.test(r.stdout)) throw new Error(`rollout status ${d}: ${r.stdout}${r.stderr}`)
      }
      const methods = {
        ours: async () => {
          await Promise.all((await list()).map(status))
        },
        original: async () => {
          for (const d of await list()) await status(d)
        },
      }
      // a first install, waited for, so every measured round is an upgrade (as in CI)
      await apply()
      await methods.ours()
      const times: Record<keyof typeof methods, number[]> = { ours: [], original: [] }
      for (let round = 0; round < ROUNDS; round++) {
        for (const name of round % 2 ? (['original', 'ours'] as const) : (['ours', 'original'] as const)) {
          await apply()
          const start = performance.now()
          await methods[name]()
          times[name].push(performance.now() - start)
        }
      }

      // deploy.ts end to end: a new user image tag each run means a new rollout of all four
      const phases: { deploy: number; rollout: number; wall: number }[] = []
      for (let i = 0; i < 2; i++) {
        commit(repo, { [`user-images/${HUB}/Dockerfile`]: `FROM scratch\nLABEL run=${i}\n` }, `user image ${i}`)
        const r = await deployTs(c, repo, ['--no-setup', '--deploy', HUB])
        if (r.code !== 0) throw new Error(`deploy.ts exited ${r.code}:\n${r.stdout}\n${r.stderr}`)
        const started = [...r.stderr.matchAll(/Executing kubectl rollout status /g)].length
        if (started !== DEPLOYMENTS.length) throw new Error(`deploy.ts started ${started} rollout waits`)
        phases.push({ deploy: phaseSeconds(r.stdout, 'deploy', HUB) * 1000, rollout: phaseSeconds(r.stdout, 'rollout', HUB) * 1000, wall: r.ms })
      }

      const ours = median(times.ours)
      const original = median(times.original)
      const rollout = median(phases.map((p) => p.rollout))
      const both = median(phases.map((p) => p.deploy + p.rollout))
      const met = ours <= 1.2 * T && rollout <= 1.2 * T
      const row = (what: string, xs: number[]) => [what, fmtMs(median(xs)), `${fmtMs(min(xs))} – ${fmtMs(max(xs))}`, `${(median(xs) / T).toFixed(2)}·T`]
      const body = [
        `T = readyDelayMs = ${fmtMs(T)}; ${DEPLOYMENTS.length} deployments (1 replica each, ${WHO_WAITS[toolchain]}); each round upgrades all four to a new pod template`,
        `without --wait, then times the wait alone. ${ROUNDS} rounds per method, alternating.`,
        '',
        table(['method', 'median', 'range', 'in T'], [
          row('ours: list + 4 × `kubectl rollout status --watch` at once', times.ours),
          row('original: list + 4 × `kubectl rollout status --watch` one after another', times.original),
          row('deploy.ts `--no-setup --deploy`: rollout phase (`<== rollout` line)', phases.map((p) => p.rollout)),
          row('deploy.ts `--no-setup --deploy`: deploy + rollout phases', phases.map((p) => p.deploy + p.rollout)),
        ]),
        '',
        `Ours against the original, same run: **${fmtRatio(original / ours)}** faster (${fmtMs(original)} → ${fmtMs(ours)}).`,
        '',
        original / T < 2
          ? [
            `**Measured, not assumed: the original's one-after-another wait is not 4·T here** (${(original / T).toFixed(2)}·T).`,
            'The four rollouts start together (one `helm upgrade`), so while the original waits for the first,',
            'the other three become ready too, and each later `rollout status` returns at once: waiting one by one',
            'only adds one kubectl start-up and watch set-up per deployment. 4·T would need each rollout to start',
            'only when its wait starts, which neither the original nor deploy.ts does (the original even runs',
            '`helm upgrade --wait` first, which waits for all of them together). So on a healthy cluster the',
            'concurrent wait saves only those per-deployment overheads; its other gains are not speed: a stuck',
            'deployment no longer hides the state of the ones behind it, and all progress is shown at once.',
          ].join('\n')
          : `The original's one-after-another wait took ${(original / T).toFixed(2)}·T.`,
        '',
        `deploy.ts: its deploy phase (helm dep up, helm upgrade, helm history) took ${fmtMs(both - rollout)}, its rollout phase`,
        `${fmtMs(rollout)}; the rollout line alone does not count the part of T that passes during the deploy phase, the last row does.`,
      ].join('\n')
      return {
        target: '≤1.2·T (original: 4·T)',
        met,
        headline: `ours ${(ours / T).toFixed(2)}·T, original ${(original / T).toFixed(2)}·T${original / T < 2 ? ' (not 4·T: the rollouts start together)' : ''}; deploy.ts rollout phase ${(rollout / T).toFixed(2)}·T, deploy+rollout ${(both / T).toFixed(2)}·T`,
        body: met ? body : `${body}\n\n**Target missed:** ours ${(ours / T).toFixed(2)}·T, deploy.ts rollout phase ${(rollout / T).toFixed(2)}·T.`,
      }
    } finally {
      await c.close()
    }
  },
}
