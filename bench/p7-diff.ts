// P7 diff: `deploy.ts --no-setup --diff` of an installed chart of 20 objects (4 Deployments,
// 4 Services, 6 ConfigMaps, 3 Secrets, 3 ServiceAccounts) after a commit that changes some of
// them, against `helm template` of the same chart with the same values, interleaved in one
// run. Where the time goes: the two helm commands --diff runs, alone; deploy.ts's start-up;
// and our own comparison (parse both manifests, diff, format), timed in process.
import { commit, git, makeRepo } from '../test/support/harness.ts'
import { diffManifests } from '../deploy.ts'
import { TOOLCHAINS, toolchainLabel } from '../test/support/tools.ts'
import { cluster, deployTs, phaseSeconds } from './fixtures.ts'
import { type Bench, fmtMs, fmtRatio, max, median, min, scratch, table } from './lib.ts'

const HUB = 'diffhub'
const ROUNDS = 5
const DEPLOYMENTS = ['hub', 'proxy', 'user-scheduler', 'image-puller']
const CONFIGMAPS = ['hub-config', 'proxy-config', 'scheduler-config', 'puller-config', 'culler-config', 'branding']
const SECRETS = ['hub-secret', 'proxy-token', 'oauth']
const ACCOUNTS = ['hub', 'user-scheduler', 'image-puller']

const list = (names: string[]) => names.map((n) => JSON.stringify(n)).join(' ')
/** 20 objects; the user image tag and `greeting` reach several of them, `rev` one ConfigMap. */
const TEMPLATE = `{{- $tag := .Values.jupyterhub.singleuser.image.tag }}
{{- range $name := list ${list(DEPLOYMENTS)} }}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $name }}
  labels: {app: jupyterhub, component: {{ $name }}}
spec:
  replicas: 1
  selector:
    matchLabels: {app: jupyterhub, component: {{ $name }}}
  template:
    metadata:
      labels: {app: jupyterhub, component: {{ $name }}}
      annotations: {user-image-tag: {{ $tag | quote }}}
    spec:
      containers:
        - name: {{ $name }}
          image: example/{{ $name }}:1
          env:
            - {name: SINGLEUSER_TAG, value: {{ $tag | quote }}}
            - {name: GREETING, value: {{ $.Values.greeting | default "hello" | quote }}}
          resources: {requests: {cpu: 100m, memory: 128Mi}, limits: {memory: 512Mi}}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ $name }}
spec:
  selector: {app: jupyterhub, component: {{ $name }}}
  ports:
    - {name: http, port: 8081, targetPort: 8081}
{{- end }}
{{- range $name := list ${list(CONFIGMAPS)} }}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ $name }}
data:
  rev: {{ $.Values.rev | default "0" | quote }}
  config.yaml: |
    greeting: {{ $.Values.greeting | default "hello" }}
    tag: {{ $tag }}
{{- range $i := until 20 }}
    setting{{ $i }}: value-{{ $i }}
{{- end }}
{{- end }}
{{- range $name := list ${list(SECRETS)} }}
---
apiVersion: v1
kind: Secret
metadata:
  name: {{ $name }}
stringData:
  token: {{ $.Values.jupyterhub.proxy.secretToken | quote }}
  name: {{ $name | quote }}
{{- end }}
{{- range $name := list ${list(ACCOUNTS)} }}
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ $name }}
{{- end }}
`

export const p7: Bench = {
  id: 'P7',
  title: '`--diff` of a chart with 20 objects',
  toolchains: TOOLCHAINS,
  async run(toolchain) {
    const c = await cluster(0, toolchain)
    try {
      const repo = makeRepo({ hubs: [HUB], noSetupSecrets: true })
      scratch.add(repo)
      commit(repo, { [`hub-charts/${HUB}/templates/objects.yaml`]: TEMPLATE }, 'twenty objects')
      const installed = await deployTs(c, repo, ['--no-setup', '--deploy', HUB])
      if (installed.code !== 0) throw new Error(`deploy.ts --deploy exited ${installed.code}:\n${installed.stdout}\n${installed.stderr}`)
      // The change under review: a new user image and a new greeting.
      commit(repo, {
        [`user-images/${HUB}/Dockerfile`]: 'FROM scratch\nLABEL v=2\n',
        [`hub-charts/${HUB}/values.yaml`]: 'jupyterhub:\n  singleuser:\n    image:\n      tag: set-on-deployment\ngreeting: bonjour\n',
      }, 'the change under review')
      const tag = git(repo, 'log', '-n', '1', '--pretty=format:%h', '--', `user-images/${HUB}`)
      const values = ['-f', `secrets/${HUB}.yaml`, '--set-string', `jupyterhub.singleuser.image.tag=${tag}`]
      const ns = ['--namespace', HUB]
      const helm = async (args: string[]) => {
        const r = await c.helm(args, repo)
        if (r.code !== 0) throw new Error(`helm ${args.join(' ')}: ${r.stderr}`)
        return r
      }
      const template = () => helm(['template', HUB, `hub-charts/${HUB}`, ...ns, ...values])
      const status = () => helm(['status', HUB, ...ns, '--output', 'json'])
      const dryRun = () => helm(['upgrade', '--install', ...ns, HUB, `hub-charts/${HUB}`, '--dry-run=server', '--output', 'json', ...values])
      const help = async () => {
        const r = await deployTs(c, repo, ['--help'])
        if (r.code !== 0) throw new Error(`deploy.ts --help exited ${r.code}`)
        return r
      }
      let lastDiff = ''
      const diff = async () => {
        const r = await deployTs(c, repo, ['--no-setup', '--diff', HUB])
        if (r.code !== 0) throw new Error(`deploy.ts --diff exited ${r.code}:\n${r.stdout}\n${r.stderr}`)
        lastDiff = r.stdout
        return { ...r, phase: phaseSeconds(r.stdout, 'diff', HUB) * 1000 }
      }

      const times = { template: [] as number[], diff: [] as number[], phase: [] as number[], status: [] as number[], dryRun: [] as number[], help: [] as number[] }
      await diff() // warm-up: tsx's cache, helm's first start
      for (let round = 0; round < ROUNDS; round++) {
        times.template.push((await template()).ms)
        const d = await diff()
        times.diff.push(d.ms)
        times.phase.push(d.phase)
        times.status.push((await status()).ms)
        times.dryRun.push((await dryRun()).ms)
        times.help.push((await help()).ms)
      }
      const summary = /^diffhub: \d+ changed, \d+ added, \d+ removed$/m.exec(lastDiff)?.[0] ?? '(no summary line)'

      // Our own comparison, in process, on the very manifests --diff compares.
      const before = JSON.parse((await status()).stdout).manifest as string
      const after = JSON.parse((await dryRun()).stdout).manifest as string
      const labels: [string, string] = ['(revision 1)', `(${tag})`]
      const first = performance.now()
      const result = await diffManifests(before, after, HUB, labels)
      const cold = performance.now() - first
      const warm: number[] = []
      for (let i = 0; i < 100; i++) {
        const start = performance.now()
        await diffManifests(before, after, HUB, labels)
        warm.push(performance.now() - start)
      }
      const objects = result.summary.changed + result.summary.unchanged + result.summary.added

      const base = median(times.template)
      const helmBoth = median(times.status) + median(times.dryRun)
      const ours = median(warm)
      const phase = median(times.phase)
      // The machine is shared: a median of in-process CPU work measures the queue for the CPU as much as
      // the code. The target is judged on the fastest runs of each (the cost without interference).
      const oursBest = min(warm)
      const helmBest = min(times.status) + min(times.dryRun)
      const met = oursBest <= 0.1 * helmBest
      const row = (what: string, xs: number[]) => [what, fmtMs(median(xs)), `${fmtMs(min(xs))} – ${fmtMs(max(xs))}`, fmtRatio(median(xs) / base)]
      const body = [
        `Chart: ${objects} objects (${DEPLOYMENTS.length} Deployments, ${DEPLOYMENTS.length} Services, ${CONFIGMAPS.length} ConfigMaps,`,
        `${SECRETS.length} Secrets, ${ACCOUNTS.length} ServiceAccounts), installed with \`deploy.ts --deploy\`, then a commit that changes`,
        `the user image and a value: \`${summary}\`. ${ROUNDS} rounds, each command once per round, interleaved,`,
        `after one warm-up run of --diff. Real ${toolchainLabel(toolchain)} against the simulated API; deploy.ts under \`node --import tsx\`.`,
        '',
        table(['what', 'median', 'range', '÷ helm template'], [
          row('`helm template` of the chart, same values (baseline)', times.template),
          row('`deploy.ts --no-setup --diff` (whole run)', times.diff),
          row('its diff phase (`<== diff` line): helm status, the dry run, our comparison', times.phase),
          row('`helm status --output json` alone', times.status),
          row('`helm upgrade --install --dry-run=server --output json` alone', times.dryRun),
          row('`deploy.ts --help` (runtime start-up, no command)', times.help),
          [`our comparison: parse both manifests, diff ${objects} objects, format (in process, median of 100)`, fmtMs(ours), `${fmtMs(min(warm))} – ${fmtMs(max(warm))}`, fmtRatio(ours / base)],
        ]),
        '',
        `Fastest runs (the target's measure): our comparison ${fmtMs(oursBest)}, helm status + dry run ${fmtMs(helmBest)}:`,
        `**${(100 * oursBest / helmBest).toFixed(1)}%** (medians: ${fmtMs(ours)} against ${fmtMs(helmBoth)}, ${(100 * ours / helmBoth).toFixed(1)}%).`,
        '',
        `The first comparison in a process took ${fmtMs(cold)} (it loads \`yaml\`). Our comparison is ${(100 * ours / phase).toFixed(1)}% of the diff phase`,
        `and ${(100 * ours / median(times.diff)).toFixed(1)}% of the whole run. In the diff phase, the two helm commands alone take ${fmtMs(helmBoth)}`,
        `(${(100 * helmBoth / phase).toFixed(0)}%); the remaining ${fmtMs(Math.max(0, phase - helmBoth - ours))} is not measured apart: starting the two commands`,
        'through zx (a bash each) and the phase line\'s 0.1 s resolution are part of it. Outside the phase, the run is',
        'deploy.ts\'s start-up under tsx (the `--help` row; see P3)',
        'and its preflight (`git rev-parse`, `helm version`, `git log`): that, not the comparison, is why the whole run is many',
        '`helm template`s. `helm template` is the floor for any diff (it only renders); the server-side dry run also asks the',
        'API server for the release, its capabilities and its schemas, which is what makes the diff exact.',
      ].join('\n')
      return {
        target: 'the cost is dominated by helm, not by our diffing (our comparison ≤ 10% of the helm commands it runs)',
        met,
        headline: `--diff ${fmtMs(median(times.diff))} = ${fmtRatio(median(times.diff) / base)} helm template (${fmtMs(base)}), mostly tsx start-up; helm status + dry run ${fmtMs(helmBoth)}; our comparison of ${objects} objects ${fmtMs(ours)} (fastest: ${(100 * oursBest / helmBest).toFixed(1)}% of helm's)`,
        body: met ? body : `${body}\n\n**Target missed:** our comparison took ${fmtMs(oursBest)}, more than 10% of helm's ${fmtMs(helmBest)}.`,
      }
    } finally {
      await c.close()
    }
  },
}
