// Helpers for the deploy lock and the hostile-input suite (test/hostile-deploy.test.ts).
import type { Rule } from './harness.ts'

/** The kubectl calls of the deploy lock: the lease is written from stdin, read by name. */
const LOCK_CALL = /^kubectl (?:(?:create|replace) --namespace \S+ -o json -f -|create -o name -f -|get configmap deploy-lock .*)$/
/** The deploy's read-only probe of kubectl's and the cluster's versions (a skew warning). */
const VERSION_PROBE = 'kubectl version -o json'

/** Commands without the lock's kubectl calls and the version probe, for tests about the phases' own commands. */
export function withoutLock(commands: string[]): string[] {
  return commands.filter((c) => !LOCK_CALL.test(c) && c !== VERSION_PROBE)
}

export function lockCalls(commands: string[]): string[] {
  return commands.filter((c) => LOCK_CALL.test(c))
}

/** Stand-in rules for a lease another run holds and renews (seen once; the stand-in has no state). */
export function heldLease(holder: string, renewedSecondsAgo = 1): Rule[] {
  const renewed = new Date(Date.now() - renewedSecondsAgo * 1000).toISOString()
  const lease = {
    apiVersion: 'v1', kind: 'ConfigMap',
    metadata: { name: 'deploy-lock', namespace: 'staginghub', resourceVersion: '42' },
    data: { holder, commit: 'abcdef0123456789', acquired: renewed, renewed, released: 'false' },
  }
  return [
    { tool: 'kubectl', match: '^create --namespace \\S+ -o json -f -$', exit: 1, stderr: 'Error from server (AlreadyExists): error when creating "STDIN": configmaps "deploy-lock" already exists\n' },
    { tool: 'kubectl', match: '^get configmap deploy-lock', stdout: JSON.stringify(lease) },
  ]
}
