/**
 * The cluster kubectl and helm talk to, and how a wait on it that got no answer is named:
 * which cluster, what was waited for and for how long (docs/reliability.md, "Faults named").
 */
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import type YAMLModule from 'yaml'
import type { CommandResult } from './contract.ts'
import { formatDuration } from './config.ts'
import type { Invocation } from './process.ts'

/**
 * kubectl's and helm's words when no answer came from the API server, as opposed to an answer
 * refusing something (an admission webhook the API server could not reach says `dial tcp`
 * too, but it is the API server's answer).
 */
export const UNREACHABLE = /Kubernetes cluster unreachable|Unable to connect to the server|The connection to the server \S+ was refused|couldn't get current server API group list/

type Kubeconfig = {
  'current-context'?: unknown
  contexts?: Array<{ name?: unknown; context?: { cluster?: unknown } }>
  clusters?: Array<{ name?: unknown; cluster?: { server?: unknown } }>
}

/** The kubeconfig files kubectl and helm read: KUBECONFIG's list, else ~/.kube/config. */
function kubeconfigFiles(env: NodeJS.ProcessEnv): string[] {
  return (env.KUBECONFIG || path.join(env.HOME ?? os.homedir(), '.kube', 'config')).split(path.delimiter).filter(Boolean)
}

/**
 * `the cluster of context hubs (https://hubs.example.org)`, as the kubeconfig names it (the
 * first current context among its files, as kubectl merges them); the files' names when it
 * names none.
 */
export function clusterName(env: NodeJS.ProcessEnv, YAML: typeof YAMLModule): string {
  const files = kubeconfigFiles(env)
  const docs = files.flatMap((file): Kubeconfig[] => {
    try {
      // Only a regular file: reading a FIFO would wait for a writer.
      const doc = fs.statSync(file).isFile() ? YAML.parse(fs.readFileSync(file, 'utf8')) : undefined
      return doc && typeof doc === 'object' ? [doc] : []
    } catch {
      return []
    }
  })
  const list = <T>(key: 'contexts' | 'clusters') => docs.flatMap((d) => (Array.isArray(d[key]) ? d[key] as T[] : []))
  const current = docs.map((d) => d['current-context']).find((c) => typeof c === 'string' && c) as string | undefined
  const cluster = list<NonNullable<Kubeconfig['contexts']>[number]>('contexts').find((c) => c?.name === current)?.context?.cluster
  const server = list<NonNullable<Kubeconfig['clusters']>[number]>('clusters').find((c) => c?.name === cluster)?.cluster?.server
  if (current && typeof server === 'string') return `the cluster of context ${current} (${server})`
  return `the cluster of ${current ? `context ${current} in ` : ''}KUBECONFIG=${files.join(path.delimiter)}`
}

/**
 * Why a command on the cluster got no answer, as one phrase naming the cluster, what was
 * waited for (`what`) and how long; undefined when the cluster answered (a failure then is
 * its answer, which the caller names).
 */
export function clusterFault(r: CommandResult, what: string, { env, invocation }: { env: NodeJS.ProcessEnv; invocation: Invocation }): string | undefined {
  const waited = formatDuration(Math.max(1, Math.round(r.seconds ?? 0)))
  if (r.timedOut) return `${clusterName(env, invocation.runtime.YAML)} did not answer ${what} within ${waited}`
  if (r.exitCode === 0) return undefined
  const said = `${r.stderr}\n${r.stdout}`.split('\n').map((l) => l.trim()).filter((l) => UNREACHABLE.test(l)).at(-1)
  if (!said) return undefined
  return `${clusterName(env, invocation.runtime.YAML)} could not be reached for ${what} (after ${waited}: ${said.replace(/^(?:Error|error): |^E\d{4} [\d:.]+ +\d+ \S+\] /, '')})`
}

/** The fix a cluster fault's error line ends with. */
export const REACH_THE_CLUSTER = 'check that its API server is up and reachable from here'
