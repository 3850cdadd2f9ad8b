// The deploy lock with the REAL helm and kubectl of each toolchain (helm 3.17 + kubectl 1.32,
// helm 4.1 + kubectl 1.35) against the simulated Kubernetes API: two runs of one chart never
// change its release at once, --recover never touches a
// release a live run is changing, a stale or released lease is taken over.
// Run: node --import tsx --test test/e2e/lock.test.ts
// No timing assumptions: the first run is held in `helm upgrade --wait` by pods that are
// not ready until the test heals them, after it saw what the second run did. One test waits
// on the clock: the documented renewal (every 20 s) and takeover (120 s) times are what it pins.
import assert from 'node:assert/strict'
import type { ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import path from 'node:path'
import { test, type TestContext } from 'node:test'
import { commit, git, runDeploy, tempDir, type RunResult } from '../support/harness.ts'
import { startKubeApi, type KubeApi } from '../support/kube-api.ts'
import type { KubeTools } from '../support/tools.ts'
import { forEachToolchain, scrubbed, show } from '../support/e2e.ts'

const TEMPLATE = `apiVersion: apps/v1
kind: Deployment
metadata:
  name: hub
spec:
  replicas: 1
  selector:
    matchLabels: {app: hub, release: {{ .Release.Name }}}
  template:
    metadata:
      labels: {app: hub, release: {{ .Release.Name }}}
    spec:
      containers:
        - name: hub
          image: "example/user:{{ .Values.jupyterhub.singleuser.image.tag }}"
`

/** A hub chart with one deployment and no dependencies (helm dep up needs no network). */
function makeFixture(): { repo: string; hub: string } {
  const repo = tempDir('deploy-lock-repo-')
  const hub = `lock${randomBytes(3).toString('hex')}`
  git(repo, 'init', '-q', '-b', 'main')
  commit(repo, {
    '.gitignore': 'hub-charts/*/charts/\nhub-charts/*/Chart.lock\n',
    [`hub-charts/${hub}/Chart.yaml`]: `apiVersion: v2\nname: ${hub}\nversion: 0.1.0\n`,
    [`hub-charts/${hub}/values.yaml`]: 'jupyterhub:\n  singleuser:\n    image:\n      tag: set-on-deployment\n',
    [`hub-charts/${hub}/templates/hub.yaml`]: TEMPLATE,
    [`secrets/${hub}.yaml`]: `jupyterhub:\n  proxy:\n    secretToken: ${randomBytes(12).toString('hex')}\n`,
  }, 'chart')
  commit(repo, { [`user-images/${hub}/Dockerfile`]: 'FROM scratch\n' }, 'user image')
  return { repo, hub }
}


interface Started {
  child: Promise<ChildProcess>
  done: Promise<RunResult>
  /** Resolves once the run's output (stdout + stderr) matches. */
  saw(pattern: RegExp): Promise<void>
}

async function cluster(t: TestContext, tools: KubeTools) {
  const api = await startKubeApi({ readyDelayMs: 0, kubernetesVersion: tools.kubernetesVersion })
  t.after(() => api.close())
  const home = tempDir('deploy-lock-home-')
  const kubeconfig = path.join(home, 'kubeconfig')
  await api.writeKubeconfig(kubeconfig)
  const PATH = `${tools.binDir}${path.delimiter}${process.env.PATH}`
  const env = { ...scrubbed(), HOME: home, KUBECONFIG: kubeconfig, HELM_TIMEOUT: '120', ROLLOUT_TIMEOUT: '60s', HEARTBEAT_INTERVAL: '1s' }
  /** Starts a run, killed after `limitMs` whatever happens (a test that fails must not leave it running). */
  const start = (repo: string, args: string[], extra: Record<string, string> = {}, { limitMs = 150_000 } = {}): Started => {
    let output = ''
    const waiters: Array<[RegExp, () => void]> = []
    let resolveChild: (c: ChildProcess) => void
    const child = new Promise<ChildProcess>((resolve) => (resolveChild = resolve))
    const done = runDeploy(repo, args, {
      env: { ...env, ...extra }, path: PATH, noStandins: true,
      onSpawn: (c) => {
        resolveChild(c)
        const timer = setTimeout(() => c.kill('SIGKILL'), limitMs)
        c.on('close', () => clearTimeout(timer))
        const feed = (d: Buffer) => {
          output += d
          for (const w of [...waiters]) if (w[0].test(output)) waiters.splice(waiters.indexOf(w), 1), w[1]()
        }
        c.stdout!.on('data', feed)
        c.stderr!.on('data', feed)
      },
    })
    return {
      child,
      done,
      saw: (pattern) => new Promise<void>((resolve, reject) => {
        if (pattern.test(output)) return resolve()
        waiters.push([pattern, resolve])
        done.then(() => reject(new Error(`run ended without printing ${pattern}:\n${output}`)), reject)
      }),
    }
  }
  return { api, start }
}

const revisions = (api: KubeApi, hub: string) => api.helmReleases(hub, hub).map((r) => [r.version, r.info.status])
const lease = (api: KubeApi, hub: string) => api.get('configmaps', hub, 'deploy-lock')?.data
const finalError = (r: RunResult) => r.stderr.trim().split('\n').at(-1) ?? ''

await forEachToolchain('the deploy lock with real helm and kubectl', (tools) => {
  test('a second deploy while one is live, LOCK_TIMEOUT=0: stops naming the live run, changes nothing', { timeout: 90_000 }, async (t) => {
    const { api, start } = await cluster(t, tools)
    const f = makeFixture()
    api.setNeverReady(() => true)
    const first = start(f.repo, ['--no-setup', '--deploy', f.hub])
    await first.saw(/Executing helm upgrade/)
    const second = await start(f.repo, ['--no-setup', '--deploy', f.hub], { LOCK_TIMEOUT: '0' }).done
    const pid = (await first.child).pid
    assert.equal(second.code, 1, show(second))
    assert.match(finalError(second), new RegExp(`^ERROR: ${f.hub} is being deployed by \\S+@\\S+ \\(pid ${pid}\\) \\(commit [0-9a-f]{12}, started \\d+s ago, lease renewed \\d+s ago\\): not deploying alongside it after waiting LOCK_TIMEOUT=0; rerun when it has finished, or raise LOCK_TIMEOUT$`))
    assert.doesNotMatch(second.stderr, /Executing helm (dep|upgrade)/, 'the second run ran no helm command')
    api.setNeverReady(undefined)
    const r = await first.done
    assert.equal(r.code, 0, show(r))
    assert.deepEqual(revisions(api, f.hub), [[1, 'deployed']])
    assert.equal(lease(api, f.hub)?.released, 'true', 'the live run released its lease at the end')
  })

  test('a second deploy waits for the live one (LOCK_TIMEOUT), then deploys after it', { timeout: 125_000 }, async (t) => {
    const { api, start } = await cluster(t, tools)
    const f = makeFixture()
    api.setNeverReady(() => true)
    const first = start(f.repo, ['--no-setup', '--deploy', f.hub])
    await first.saw(/Executing helm upgrade/)
    const second = start(f.repo, ['--no-setup', '--deploy', f.hub], { LOCK_TIMEOUT: '2m' })
    await second.saw(/\.\.\. waiting for the deploy lock of \S+, held by .*; waiting up to LOCK_TIMEOUT=2m/)
    assert.deepEqual(revisions(api, f.hub), [[1, 'pending-install']], 'the waiting run has not touched the release')
    api.setNeverReady(undefined)
    const [a, b] = await Promise.all([first.done, second.done])
    assert.equal(a.code, 0, show(a))
    assert.equal(b.code, 0, show(b))
    assert.deepEqual(revisions(api, f.hub), [[1, 'superseded'], [2, 'deployed']], 'one after the other')
    assert.equal(lease(api, f.hub)?.released, 'true')
    assert.match(lease(api, f.hub)?.holder ?? '', new RegExp(`\\(pid ${(await second.child).pid}\\)$`), 'the second run held it last')
  })

  test('a live holder is never taken over: it renews its lease well within the takeover time, and a run waiting past that time still waits', { timeout: 300_000 }, async (t) => {
    // docs/reliability.md: renewed every 20 s; taken over when a waiter saw it unchanged for 120 s.
    const RENEWAL_GAP_MS = 30_000
    const { api, start } = await cluster(t, tools)
    const f = makeFixture()
    api.setNeverReady(() => true)
    const first = start(f.repo, ['--no-setup', '--deploy', f.hub], { HELM_TIMEOUT: '270' }, { limitMs: 280_000 })
    await first.saw(/Executing helm upgrade/)
    const holder = `(pid ${(await first.child).pid})`
    // The waiter gives up 15 s after the earliest a takeover could come.
    const waiter = start(f.repo, ['--no-setup', '--deploy', f.hub], { LOCK_TIMEOUT: '135s' }, { limitMs: 250_000 })
    let renewed = lease(api, f.hub)?.renewed
    let renewedAt = Date.now()
    const gaps: number[] = []
    let watch: NodeJS.Timeout | undefined
    // Fails at once when the lease changes hands or goes unrenewed too long, not when the waiter ends.
    const watched = new Promise<never>((_, reject) => {
      watch = setInterval(() => {
        const now = lease(api, f.hub)
        if (!now?.holder?.endsWith(holder)) reject(new Error(`the live run's lease was taken over: ${JSON.stringify(now)}`))
        else if (now.renewed !== renewed) {
          gaps.push(Date.now() - renewedAt)
          ;[renewed, renewedAt] = [now.renewed, Date.now()]
        } else if (Date.now() - renewedAt > RENEWAL_GAP_MS) reject(new Error(`the live run did not renew its lease for ${RENEWAL_GAP_MS / 1000} s (renewals seen after ${gaps.join(', ') || 'none'} ms)`))
      }, 250)
    })
    try {
      const second = await Promise.race([waiter.done, watched])
      assert.equal(second.code, 1, show(second))
      assert.match(finalError(second), new RegExp(`^ERROR: ${f.hub} is being deployed by .*${holder.replace(/[()]/g, '\\$&')} .*: not deploying alongside it after waiting LOCK_TIMEOUT=135s`))
      assert.doesNotMatch(second.stderr, /took over|Executing helm (dep|upgrade)/)
      assert.ok(gaps.length >= 5, `renewals seen after ${gaps.join(', ')} ms`)
      assert.deepEqual(revisions(api, f.hub), [[1, 'pending-install']], 'the waiter never touched the release')
    } catch (e) {
      ;(await first.child).kill('SIGKILL')
      throw e
    } finally {
      clearInterval(watch)
      ;(await waiter.child).kill('SIGKILL')
    }
    api.setNeverReady(undefined)
    const r = await first.done
    assert.equal(r.code, 0, show(r))
    assert.doesNotMatch(r.stderr, /could not renew/)
    assert.deepEqual(revisions(api, f.hub), [[1, 'deployed']])
  })

  test('--recover while a live run is installing: never uninstalls or rolls back its release', { timeout: 100_000 }, async (t) => {
    const { api, start } = await cluster(t, tools)
    const f = makeFixture()
    api.setNeverReady(() => true)
    const first = start(f.repo, ['--no-setup', '--deploy', f.hub])
    await first.saw(/Executing helm upgrade/)
    const recover = await start(f.repo, ['--no-setup', '--deploy', '--recover', f.hub], { LOCK_TIMEOUT: '0' }).done
    assert.equal(recover.code, 1, show(recover))
    assert.match(finalError(recover), new RegExp(`^ERROR: ${f.hub} is being deployed by .*\\(pid ${(await first.child).pid}\\)`))
    assert.doesNotMatch(recover.stderr, /Executing helm (uninstall|rollback|upgrade)/)
    assert.deepEqual(revisions(api, f.hub), [[1, 'pending-install']])
    api.setNeverReady(undefined)
    const r = await first.done
    assert.equal(r.code, 0, show(r))
    assert.deepEqual(revisions(api, f.hub), [[1, 'deployed']], 'the live run finished its own install')
  })

  test('a run stopped by SIGTERM releases its lease: the next run, LOCK_TIMEOUT=0, is not held up', { timeout: 125_000 }, async (t) => {
    const { api, start } = await cluster(t, tools)
    const f = makeFixture()
    api.setNeverReady(() => true)
    const first = start(f.repo, ['--no-setup', '--deploy', f.hub])
    await first.saw(/Executing helm upgrade/)
    ;(await first.child).kill('SIGTERM')
    const stopped = await first.done
    assert.equal(stopped.code, 143, show(stopped))
    assert.equal(lease(api, f.hub)?.released, 'true', 'released on the way out')
    assert.match(lease(api, f.hub)?.holder ?? '', new RegExp(`\\(pid ${(await first.child).pid}\\)$`))
    api.setNeverReady(undefined)
    const next = await start(f.repo, ['--no-setup', '--deploy', '--recover', f.hub], { LOCK_TIMEOUT: '0' }).done
    assert.equal(next.code, 0, show(next))
    assert.doesNotMatch(next.stderr, /being deployed by/)
    assert.equal(revisions(api, f.hub).at(-1)?.[1], 'deployed')
  })

  test('a lease nobody renews any more is taken over, naming its old holder', { timeout: 85_000 }, async (t) => {
    const { api, start } = await cluster(t, tools)
    const f = makeFixture()
    const old = new Date(Date.now() - 3600_000).toISOString()
    api.put({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: f.hub } })
    api.put({
      apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'deploy-lock', namespace: f.hub },
      data: { holder: 'ci-job-that-died (pid 4242)', commit: 'abc', acquired: old, renewed: old, released: 'false' },
    })
    const r = await start(f.repo, ['--no-setup', '--deploy', f.hub], { LOCK_TIMEOUT: '0' }).done
    assert.equal(r.code, 0, show(r))
    assert.match(r.stderr, /WARNING: took over the deploy lock of \S+ from ci-job-that-died \(pid 4242\), which stopped renewing it \(last renewed 3\d{3}s ago\)/)
    assert.deepEqual(revisions(api, f.hub), [[1, 'deployed']])
    assert.equal(lease(api, f.hub)?.released, 'true')
    assert.doesNotMatch(lease(api, f.hub)?.holder ?? '', /ci-job-that-died/)
  })
}, { together: true }) // the takeover test waits on the clock for minutes: both toolchains in that one window
