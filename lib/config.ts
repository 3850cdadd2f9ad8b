/** Configuration: .env, then the environment (which wins); defaults are the original's values. */
import process from 'node:process'
import fs from 'node:fs'
import dotenv from 'dotenv'
import { usageError } from './contract.ts'

export const DEFAULTS = {
  GCLOUD_KEY_FILE: 'secrets/gke-auth-key.json',
  GKE_CLUSTER: 'jhub',
  GKE_ZONE: 'us-central1-b',
  GCP_PROJECT: 'ea-jupyter',
  // Other clusters and registries (docs/clusters.md); the defaults are the original's.
  CLUSTER_PROVIDER: 'gke',
  REGISTRY_PROVIDER: 'dockerhub',
  AWS_REGION: '',
  EKS_CLUSTER: '',
  AZURE_CLIENT_ID: '',
  AZURE_TENANT_ID: '',
  AZURE_FEDERATED_TOKEN_FILE: '',
  AZURE_CLIENT_CERTIFICATE_PATH: '',
  AKS_RESOURCE_GROUP: '',
  AKS_CLUSTER: '',
  AKS_KUBELOGIN: '',
  ACR_NAME: '',
  KUBECONFIG_FILE: 'secrets/kubeconfig.yaml',
  DOCKER_USERNAME: 'earthlabcu',
  DOCKER_PASSWORD_FILE: 'secrets/dockerhub',
  DOCKER_REGISTRY: '',
  USER_IMAGE_PREFIX: 'earthlabhubops/ea-k8s-user-',
  HUB_IMAGE_PREFIX: 'earthlabhubops/ea-k8s-hub-',
  // A hub kept as values on an upstream chart (hub-configs/<hub>.yaml): the chart, as the
  // upstream deploy.py deploys it (docs/adding-a-hub.md).
  HUB_CHART: 'jupyterhub/jupyterhub',
  HUB_CHART_REPO: 'https://jupyterhub.github.io/helm-chart/',
  HUB_CHART_VERSION: '0.10.6',
  HELM_TIMEOUT: '600',
  ROLLOUT_TIMEOUT: '10m',
  HEARTBEAT_INTERVAL: '60s',
  BUILD_TIMEOUT: '60m',
  HOOK_TIMEOUT: '15m',
  LOCK_TIMEOUT: '10m',
  STAGING_CHART: 'staginghub',
  ROLLBACK_ON_FAILURE: 'false',
  DEPLOY_PLUGINS: '',
}

export type Config = typeof DEFAULTS & {
  /** HELM_TIMEOUT and ROLLOUT_TIMEOUT in seconds. */
  helmTimeoutSeconds: number
  rolloutTimeoutSeconds: number
  heartbeatSeconds: number
  buildTimeoutSeconds: number
  hookTimeoutSeconds: number
  lockTimeoutSeconds: number
  /** ROLLBACK_ON_FAILURE (also --rollback-on-failure). */
  rollbackOnFailure: boolean
  /** Everything from .env and the environment, for plugins' own keys. */
  env: Record<string, string | undefined>
  /** Where each key of DEFAULTS that is set was set: `the environment`, or the env file's name. */
  setIn: Readonly<Partial<Record<keyof typeof DEFAULTS, string>>>
}

/** Seconds in a duration such as `600`, `90s`, `10m`, `1h30m`, however large; NaN when it does not parse. */
function durationSeconds(text: string): number {
  const t = text.trim()
  if (/^\d+$/.test(t)) return Number(t)
  const match = /^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$/.exec(t)
  if (!match || !t) return NaN
  const [, h = '0', m = '0', s = '0'] = match
  return Number(h) * 3600 + Number(m) * 60 + Number(s)
}

/** No duration may exceed this: Node's timers overflow past 2^31-1 ms (24.8 days) and then fire at once. */
export const MAX_DURATION_SECONDS = 7 * 24 * 3600

/** Seconds in a duration such as `600`, `90s`, `10m`, `1h30m`; NaN when it does not parse or exceeds 7 days. */
export function parseDuration(text: string): number {
  const s = durationSeconds(text)
  return s <= MAX_DURATION_SECONDS ? s : NaN
}

/** The sane range of each duration key, in seconds (docs/reliability.md, "Bounds"). */
const DURATION_RANGES = {
  HELM_TIMEOUT: [1, 24 * 3600],
  ROLLOUT_TIMEOUT: [1, 24 * 3600],
  HEARTBEAT_INTERVAL: [1, 3600],
  BUILD_TIMEOUT: [1, 24 * 3600],
  HOOK_TIMEOUT: [1, 24 * 3600],
  LOCK_TIMEOUT: [0, 24 * 3600],
} as const

/** `90s`, `5m`, `1h30m`: how a range's ends are shown. */
export function formatDuration(seconds: number): string {
  const h = Math.floor(seconds / 3600)
  const m = Math.floor((seconds % 3600) / 60)
  const s = seconds % 60
  return `${h ? `${h}h` : ''}${m ? `${m}m` : ''}${s || (!h && !m) ? `${s}s` : ''}`
}

/**
 * A duration setting checked against its range: one line naming the key, the range and
 * the fix otherwise (a usage error, exit 2; plugins get it as ctx.duration).
 */
export function checkDuration(key: string, text: string, [min, max]: readonly [number, number]): number {
  const s = durationSeconds(text)
  const range = `from ${formatDuration(min)} to ${formatDuration(max)}`
  if (Number.isNaN(s)) throw usageError(`${key}=${text}: not a duration; use one ${range}, e.g. 600, 90s, 10m, 1h30m`)
  if (s < min || s > max) throw usageError(`${key}=${text}: out of range; use a duration ${range}`)
  return s
}

/** A chart name is a Helm release name and a namespace: a DNS label (so never an option). */
export const CHART_NAME = /^[a-z0-9]([-a-z0-9]{0,51}[a-z0-9])?$/

/**
 * Settings that reach a tool as an argument: each must look like what it names, so none
 * can reach gcloud, docker or helm as an option (docs/reliability.md).
 */
const TOOL_VALUES: Partial<Record<keyof typeof DEFAULTS, [RegExp, string]>> = {
  GKE_CLUSTER: [/^[a-z]([-a-z0-9]*[a-z0-9])?$/, 'a GKE cluster name (lowercase letters, digits, -)'],
  GKE_ZONE: [/^[a-z][-a-z0-9]*$/, 'a zone or region such as us-central1-b'],
  GCP_PROJECT: [/^[a-z][-a-z0-9.:]*$/, 'a project id such as ea-jupyter'],
  DOCKER_USERNAME: [/^[A-Za-z0-9][-A-Za-z0-9._@+]*$/, 'a registry user name'],
  DOCKER_REGISTRY: [/^[A-Za-z0-9][-A-Za-z0-9.]*(:\d+)?$/, 'a registry host such as ghcr.io or 127.0.0.1:5000'],
  USER_IMAGE_PREFIX: [/^[a-z0-9]([-a-z0-9._:]|\/(?!\/))*$/, 'an image name prefix such as earthlabhubops/ea-k8s-user-'],
  HUB_IMAGE_PREFIX: [/^[a-z0-9]([-a-z0-9._:]|\/(?!\/))*$/, 'an image name prefix such as earthlabhubops/ea-k8s-hub-'],
  STAGING_CHART: [CHART_NAME, 'a chart name (lowercase letters, digits, -)'],
  HUB_CHART: [/^[a-z0-9][-a-z0-9._]*\/[a-z0-9][-a-z0-9._]*$/, 'a chart as <repository name>/<chart name>, such as jupyterhub/jupyterhub'],
  // Credentials in the URL would reach helm's command line.
  HUB_CHART_REPO: [/^https?:\/\/[^\s@/]+(\/[^\s@]*)?$/, 'the http(s) URL of a chart repository, without credentials, such as https://jupyterhub.github.io/helm-chart/'],
  // A range would deploy whatever is newest when the run happens.
  HUB_CHART_VERSION: [/^v?\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$/, 'an exact chart version such as 0.10.6'],
  AWS_REGION: [/^[a-z][-a-z0-9]*$/, 'an AWS region such as us-east-1'],
  EKS_CLUSTER: [/^[A-Za-z0-9][-A-Za-z0-9_]*$/, 'an EKS cluster name'],
  AZURE_CLIENT_ID: [/^[A-Za-z0-9][-A-Za-z0-9.]*$/, 'an application (client) id'],
  AZURE_TENANT_ID: [/^[A-Za-z0-9][-A-Za-z0-9.]*$/, 'a tenant id or domain'],
  AKS_RESOURCE_GROUP: [/^[\w.()][-\w.()]*$/, 'an Azure resource group name'],
  AKS_CLUSTER: [/^[A-Za-z0-9][-A-Za-z0-9_]*$/, 'an AKS cluster name'],
  AKS_KUBELOGIN: [/^[a-z]+$/, 'a kubelogin login mode such as azurecli or workloadidentity'],
  ACR_NAME: [/^[A-Za-z0-9]+$/, 'an ACR registry name (letters and digits)'],
  GCLOUD_KEY_FILE: [/^[^-\s]/, 'a file path'],
  DOCKER_PASSWORD_FILE: [/^[^-\s]/, 'a file path'],
  KUBECONFIG_FILE: [/^[^-\s]/, 'a file path'],
  AZURE_FEDERATED_TOKEN_FILE: [/^[^-\s]/, 'a file path'],
  AZURE_CLIENT_CERTIFICATE_PATH: [/^[^-\s]/, 'a file path'],
}

function checkToolValues(values: typeof DEFAULTS) {
  for (const [key, [pattern, what]] of Object.entries(TOOL_VALUES) as [keyof typeof DEFAULTS, [RegExp, string]][]) {
    const value = values[key]
    if (value && !pattern.test(value)) throw usageError(`${key}=${value}: not ${what}; fix it in .env or the environment`)
  }
}

/** What `value` should be when `key` reaches a tool as an argument and it is not that (the fleet file's checks); else undefined. */
export function toolValueProblem(key: string, value: string): string | undefined {
  const rule = (TOOL_VALUES as Record<string, [RegExp, string]>)[key]
  return rule && !rule[0].test(value) ? `not ${rule[1]}` : undefined
}

/** Reads a .env file strictly: dotenv skips lines it cannot parse, we name them instead. */
function readEnvFile(file: string, { required }: { required: boolean }): Record<string, string> {
  if (!fs.existsSync(file)) {
    if (required) throw usageError(`${file}: no such env file (check --env-file)`)
    return {}
  }
  if (!fs.statSync(file).isFile()) throw usageError(`${file}: not a file; ${required ? 'give --env-file a file' : 'remove it or make it a KEY=VALUE file'}`)
  // CRLF (a file saved on Windows) and CR line ends read as dotenv reads them.
  const text = fs.readFileSync(file, 'utf8').replace(/\r\n?/g, '\n')
  let quote = ''
  text.split('\n').forEach((line, i) => {
    if (quote) {
      if (line.includes(quote)) quote = ''
      return
    }
    if (/^\s*(#.*)?$/.test(line)) return
    const m = /^\s*(?:export\s+)?[A-Za-z_][A-Za-z0-9_.-]*\s*=\s*(["'`]?)(.*)$/.exec(line)
    if (!m) throw usageError(`${file}:${i + 1}: not a KEY=VALUE line; fix or remove it`)
    if (m[1] && !m[2].includes(m[1])) quote = m[1]
  })
  if (quote) throw usageError(`${file}: unterminated ${quote}-quoted value; close the quote`)
  return dotenv.parse(text)
}

/**
 * Variables that make a shell or a tool run code or read another repository: a `.env`
 * file may not set them (exit 2), and the shell-startup ones (also ENV, which sh sources)
 * never reach a command we start, whoever set them (we start tools, not shell sessions).
 */
const RUNS_CODE = /^(BASH_ENV|SHELLOPTS|BASHOPTS|PS4|PROMPT_COMMAND|BASH_FUNC_.*|GIT_(DIR|WORK_TREE|INDEX_FILE|OBJECT_DIRECTORY|ALTERNATE_OBJECT_DIRECTORIES|CONFIG.*|EXEC_PATH|SSH.*|ASKPASS|EXTERNAL_DIFF|PAGER|EDITOR|CEILING_DIRECTORIES|DISCOVERY_ACROSS_FILESYSTEM|NAMESPACE|REPLACE_REF_BASE|TRACE.*)|LD_PRELOAD|LD_LIBRARY_PATH|LD_AUDIT|DYLD_.*|NODE_OPTIONS|PYTHONSTARTUP|PYTHONPATH|PERL5OPT|PERL5LIB|RUBYOPT|HELM_PLUGINS|KUBECTL_PLUGINS_PATH)$/
export const SHELL_STARTUP = /^(BASH_ENV|ENV|SHELLOPTS|BASHOPTS|PS4|PROMPT_COMMAND|BASH_FUNC_.*)$/

export function loadConfig(envFile: string | undefined, environment = process.env): Config {
  const file = envFile ?? '.env'
  const fromFile = readEnvFile(file, { required: envFile !== undefined })
  const runsCode = Object.keys(fromFile).find((k) => RUNS_CODE.test(k))
  if (runsCode) throw usageError(`${file}: ${runsCode} would make the commands deploy.ts starts run other code or read elsewhere; remove it from ${file} (set it in the environment if you really mean it)`)
  const env = { ...fromFile, ...environment }
  const values = { ...DEFAULTS }
  const setIn: Partial<Record<keyof typeof DEFAULTS, string>> = {}
  for (const key of Object.keys(DEFAULTS) as (keyof typeof DEFAULTS)[]) {
    // Empty is the default of some keys (DOCKER_REGISTRY: Docker Hub); set empty, any other key is a mistake.
    if (env[key] === '' && DEFAULTS[key] !== '') {
      const where = environment[key] === '' ? 'in the environment' : `in ${file}`
      throw usageError(`${key} is set but empty (${where}): give it a value, or remove it to use the default (${DEFAULTS[key]})`)
    }
    if (env[key] !== undefined && env[key] !== '') {
      values[key] = env[key]!
      setIn[key] = environment[key] ? 'the environment' : file
    }
  }
  checkToolValues(values)
  const seconds = (key: keyof typeof DURATION_RANGES) => checkDuration(key, values[key], DURATION_RANGES[key])
  const flag = (key: 'ROLLBACK_ON_FAILURE') => {
    if (/^(true|1|yes|on)$/i.test(values[key])) return true
    if (/^(false|0|no|off)$/i.test(values[key])) return false
    throw usageError(`${key}=${values[key]}: use true or false`)
  }
  return {
    ...values,
    helmTimeoutSeconds: seconds('HELM_TIMEOUT'),
    rolloutTimeoutSeconds: seconds('ROLLOUT_TIMEOUT'),
    heartbeatSeconds: seconds('HEARTBEAT_INTERVAL'),
    buildTimeoutSeconds: seconds('BUILD_TIMEOUT'),
    hookTimeoutSeconds: seconds('HOOK_TIMEOUT'),
    lockTimeoutSeconds: seconds('LOCK_TIMEOUT'),
    rollbackOnFailure: flag('ROLLBACK_ON_FAILURE'),
    env,
    setIn,
  }
}
