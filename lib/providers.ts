/**
 * Setup's providers: credentials for the cluster and the registry, each provider a row of
 * data (docs/clusters.md); one function plans them (preflight), deploy.ts's setup() runs them.
 */
import fs from 'node:fs'
import type YAMLModule from 'yaml'
import os from 'node:os'
import path from 'node:path'
import { DeployError, usageError, type CommandResult, type Helm } from './contract.ts'
import type { Config, DEFAULTS } from './config.ts'
import { secretFileFor, secretKey, tokenLike, type Secrets } from './secrets.ts'
import { tail, type Invocation, type Output } from './process.ts'

type Key = keyof typeof DEFAULTS

/** What a setup step's arguments are made of. */
export interface StepFacts {
  config: Config
  /** The run's private kubeconfig, which every later command uses. */
  kubeconfig: string
  /** The registry docker logs in to: DOCKER_REGISTRY, else the host of USER_IMAGE_PREFIX. */
  host: string
}

/**
 * One setup command. Secrets never enter its argv: `stdin` feeds it a value held in memory
 * (the contents of the file a key names, or the token an earlier step printed), and
 * `yields` takes its captured output as that token, masked from then on.
 */
interface SetupStep {
  tool: string
  args: (f: StepFacts) => string[]
  /** Output captured, not streamed (logins print account details). */
  capture?: boolean
  stdin?: Key | 'token'
  yields?: 'token'
  /** The token in the captured output (default: all of it). */
  parse?: (stdout: string) => string | undefined
  /** Runs only when this holds. */
  when?: (config: Config) => boolean
}

/** A secret file setup needs: read before anything runs (refused while git-crypt-locked), masked, kept in memory. */
interface SecretFile {
  key: Key
  what: string
  /** The secret parts of its text (default: all of it). */
  masks?: (text: string, YAML: typeof YAMLModule) => Array<string | undefined>
}

/** One way to log a cloud CLI in: the first form whose keys are set and whose `when` holds is used. */
interface LoginForm {
  name: string
  keys: Key[]
  files: SecretFile[]
  when?: (files: Record<string, string | undefined>) => boolean
  steps: SetupStep[]
}

interface Provider {
  /** The cloud CLI it needs logged in (once per run, whichever provider needs it first). */
  cli?: CloudCli
  /** Keys that must be set. */
  keys: Key[]
  files: SecretFile[]
  steps: SetupStep[]
}

interface ClusterProvider extends Provider {
  /** The kubeconfig comes from this file of the repository instead of a CLI. */
  kubeconfigFrom?: Key
  /** Helm 2 (and its tiller setup) is allowed here; elsewhere it is refused (see CLUSTERS). */
  helm2?: boolean
}

interface RegistryProvider extends Provider {
  /** Logs in to a registry host, which the image prefixes must name. */
  needsHost?: boolean
}

type CloudCli = 'gcloud' | 'aws' | 'az'

export const quietly = { show: 'silent', timeout: 300 } as const

/** The type of a Google credential file: `service_account` (a key) or `external_account` (keyless). */
function credentialType(text: string | undefined): string | undefined {
  try {
    return JSON.parse(text ?? '{}').type
  } catch {
    return undefined // gcloud names a file it cannot read
  }
}

/** A Google credential file's secrets: a key's private key; an OIDC file's request headers. */
function googleCredentialSecrets(text: string): string[] {
  try {
    const doc = JSON.parse(text)
    const headers = Object.values(doc.credential_source?.headers ?? {}).map(String)
    return [doc.private_key, ...headers, ...headers.map((h) => h.replace(/^Bearer\s+/i, ''))].filter(Boolean)
  } catch {
    return []
  }
}

/** The key of a PEM file (certificate plus private key). */
const pemPrivateKey = (text: string) => [/-----BEGIN [A-Z ]*PRIVATE KEY-----([\s\S]*?)-----END/.exec(text)?.[1]]

/** The credentials in a kubeconfig: tokens, client keys, passwords; never server names or users. */
/** An exec plugin's environment: the values of secret-looking names, and every credential-like value. */
function envSecrets(env: unknown[]): string[] {
  return env.flatMap((e) => {
    const { name, value } = (e ?? {}) as { name?: unknown; value?: unknown }
    return typeof value === 'string' && (secretKey(String(name)) || tokenLike(value)) ? [value] : []
  })
}

/** The values of `--token x`, `--password=x` and the like in an argument list. */
function flagValues(args: string[]): string[] {
  const secretFlag = /^--?[\w-]*(token|password|secret|key)[\w-]*$/i
  return args.flatMap((a, i) => {
    const [flag, value] = a.includes('=') ? [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)] : [a, args[i + 1]]
    return secretFlag.test(flag) && value && !value.startsWith('-') ? [value] : []
  })
}

function kubeconfigSecrets(text: string, YAML: typeof YAMLModule): string[] {
  const found: string[] = []
  const walk = (v: unknown) => {
    if (!v || typeof v !== 'object') return
    for (const [k, child] of Object.entries(v)) {
      if (/^(token|client-key-data|password|id-token|refresh-token|client-secret|access-token)$/.test(k) && typeof child === 'string') found.push(child)
      // An exec plugin's environment and its --token-style arguments carry credentials too.
      else if (k === 'env' && Array.isArray(child)) found.push(...envSecrets(child))
      else if (k === 'args' && Array.isArray(child)) found.push(...flagValues(child.map(String)))
      else walk(child)
    }
  }
  try {
    for (const doc of YAML.parseAllDocuments(text)) walk(doc.toJS())
  } catch {
    // kubectl names a kubeconfig it cannot read
  }
  return found
}

/**
 * The token a login step printed, masked before anything can print it: every token-like word
 * of its output (also when it failed after printing one, as `az acr login --expose-token`
 * can), then the token itself. A failure or a missing token is one line, the token masked.
 */
export function takeToken(step: SetupStep, args: string[], r: CommandResult, secrets: Secrets): string {
  for (const word of `${r.stdout}\n${r.stderr}`.match(/[A-Za-z0-9._~+/=-]{16,}/g) ?? []) if (tokenLike(word)) secrets.add(word)
  const what = `${step.tool} ${args.slice(0, 2).join(' ')}`
  if (r.exitCode !== 0) throw new DeployError(secrets.redact(`${what} exited with ${r.exitCode}: ${tail(r.stderr || r.stdout, 1)}`))
  let token: string | undefined
  try {
    token = (step.parse ?? ((text: string) => text))(r.stdout)?.trim()
  } catch {
    token = undefined
  }
  if (!token) throw new DeployError(`${what} printed no token: check its login and permissions (${CLUSTERS_DOC})`)
  secrets.add(token)
  return token
}

const GCLOUD_KEY: SecretFile = { key: 'GCLOUD_KEY_FILE', what: 'the Google Cloud credential file', masks: googleCredentialSecrets }

/** How each cloud CLI logs in, without a secret in argv. */
export const LOGINS: Record<CloudCli, LoginForm[]> = {
  gcloud: [
    {
      // Workload identity federation (GitHub's OIDC setup for Google Cloud writes this file): no key at all.
      name: 'workload identity federation',
      keys: ['GCLOUD_KEY_FILE'],
      files: [GCLOUD_KEY],
      when: (files) => credentialType(files.GCLOUD_KEY_FILE) === 'external_account',
      steps: [{ tool: 'gcloud', args: (f) => ['auth', 'login', `--cred-file=${f.config.GCLOUD_KEY_FILE}`], capture: true }],
    },
    {
      name: 'service account key',
      keys: ['GCLOUD_KEY_FILE'],
      files: [GCLOUD_KEY],
      steps: [{ tool: 'gcloud', args: (f) => ['auth', 'activate-service-account', `--key-file=${f.config.GCLOUD_KEY_FILE}`], capture: true }],
    },
  ],
  // The AWS CLI reads its credentials from the environment (AWS_PROFILE, the keys, or the role GitHub's OIDC action assumed).
  aws: [{ name: 'the environment', keys: [], files: [], steps: [] }],
  az: [
    {
      // `@-` makes az read the value from stdin: the token never enters argv.
      name: 'federated token',
      keys: ['AZURE_CLIENT_ID', 'AZURE_TENANT_ID', 'AZURE_FEDERATED_TOKEN_FILE'],
      files: [{ key: 'AZURE_FEDERATED_TOKEN_FILE', what: 'the federated (OIDC) token' }],
      steps: [{
        tool: 'az',
        args: (f) => ['login', '--service-principal', '--username', f.config.AZURE_CLIENT_ID, '--tenant', f.config.AZURE_TENANT_ID, '--federated-token', '@-'],
        capture: true,
        stdin: 'AZURE_FEDERATED_TOKEN_FILE',
      }],
    },
    {
      name: 'certificate',
      keys: ['AZURE_CLIENT_ID', 'AZURE_TENANT_ID', 'AZURE_CLIENT_CERTIFICATE_PATH'],
      files: [{ key: 'AZURE_CLIENT_CERTIFICATE_PATH', what: 'the service principal certificate (PEM with its private key)', masks: pemPrivateKey }],
      steps: [{
        tool: 'az',
        args: (f) => ['login', '--service-principal', '--username', f.config.AZURE_CLIENT_ID, '--tenant', f.config.AZURE_TENANT_ID, '--certificate', f.config.AZURE_CLIENT_CERTIFICATE_PATH],
        capture: true,
      }],
    },
  ],
}

/**
 * Cluster providers (CLUSTER_PROVIDER). Helm 2 stays GKE-only: tiller's manifests use
 * APIs that Kubernetes 1.16 removed, so `helm init` fails on any EKS or AKS cluster one
 * can create today; the original's GKE setup keeps it for the parity.
 */
export const CLUSTERS: Record<string, ClusterProvider> = {
  gke: {
    cli: 'gcloud',
    keys: ['GKE_CLUSTER', 'GKE_ZONE', 'GCP_PROJECT'],
    files: [],
    helm2: true,
    steps: [{ tool: 'gcloud', args: ({ config: c }) => ['container', 'clusters', 'get-credentials', c.GKE_CLUSTER, `--zone=${c.GKE_ZONE}`, `--project=${c.GCP_PROJECT}`] }],
  },
  eks: {
    cli: 'aws',
    keys: ['EKS_CLUSTER', 'AWS_REGION'],
    files: [],
    // Writes the KUBECONFIG of the environment: the private one.
    steps: [{ tool: 'aws', args: ({ config: c }) => ['eks', 'update-kubeconfig', '--name', c.EKS_CLUSTER, '--region', c.AWS_REGION] }],
  },
  aks: {
    cli: 'az',
    keys: ['AKS_RESOURCE_GROUP', 'AKS_CLUSTER'],
    files: [],
    steps: [
      // Older az versions ignore KUBECONFIG and write ~/.kube/config: name the private file.
      { tool: 'az', args: ({ config: c, kubeconfig }) => ['aks', 'get-credentials', '--resource-group', c.AKS_RESOURCE_GROUP, '--name', c.AKS_CLUSTER, '--file', kubeconfig] },
      // Entra ID clusters: kubectl gets its token from the az login above instead of a browser.
      { tool: 'kubelogin', args: ({ config: c, kubeconfig }) => ['convert-kubeconfig', '--login', c.AKS_KUBELOGIN, '--kubeconfig', kubeconfig], when: (c) => !!c.AKS_KUBELOGIN },
    ],
  },
  kubeconfig: {
    keys: ['KUBECONFIG_FILE'],
    files: [{ key: 'KUBECONFIG_FILE', what: 'the cluster\'s kubeconfig', masks: kubeconfigSecrets }],
    kubeconfigFrom: 'KUBECONFIG_FILE',
    steps: [],
  },
}

/** `docker login` with a token from `yields`, on stdin. */
const tokenLogin = (user: string): SetupStep => ({ tool: 'docker', args: (f) => ['login', '--username', user, '--password-stdin', f.host], capture: true, stdin: 'token' })

/** Registry providers (REGISTRY_PROVIDER): tokens pass from the cloud CLI to docker on stdin. */
export const REGISTRIES: Record<string, RegistryProvider> = {
  dockerhub: {
    keys: ['DOCKER_USERNAME'],
    files: [{ key: 'DOCKER_PASSWORD_FILE', what: 'the Docker Hub password' }],
    steps: [{
      tool: 'docker',
      args: ({ config: c }) => ['login', '-u', c.DOCKER_USERNAME, '--password-stdin', ...(c.DOCKER_REGISTRY ? [c.DOCKER_REGISTRY] : [])],
      capture: true,
      stdin: 'DOCKER_PASSWORD_FILE',
    }],
  },
  gar: {
    cli: 'gcloud',
    keys: [],
    files: [],
    needsHost: true,
    steps: [
      { tool: 'gcloud', args: () => ['auth', 'print-access-token'], capture: true, yields: 'token' },
      tokenLogin('oauth2accesstoken'),
    ],
  },
  ecr: {
    cli: 'aws',
    keys: ['AWS_REGION'],
    files: [],
    needsHost: true,
    steps: [
      { tool: 'aws', args: ({ config: c }) => ['ecr', 'get-login-password', '--region', c.AWS_REGION], capture: true, yields: 'token' },
      tokenLogin('AWS'),
    ],
  },
  acr: {
    cli: 'az',
    keys: ['ACR_NAME'],
    files: [],
    needsHost: true,
    steps: [
      {
        tool: 'az',
        args: ({ config: c }) => ['acr', 'login', '--name', c.ACR_NAME, '--expose-token', '--output', 'json'],
        capture: true,
        yields: 'token',
        parse: (stdout) => JSON.parse(stdout).accessToken,
      },
      // ACR's token login takes this fixed user name.
      tokenLogin('00000000-0000-0000-0000-000000000000'),
    ],
  },
  none: { keys: [], files: [], steps: [] },
}

/** The registry host in an image prefix (`us-docker.pkg.dev/p/r/user-` → `us-docker.pkg.dev`); Docker Hub names have none. */
function registryHost(config: Config): string | undefined {
  if (config.DOCKER_REGISTRY) return config.DOCKER_REGISTRY
  const first = config.USER_IMAGE_PREFIX.split('/')[0]
  return config.USER_IMAGE_PREFIX.includes('/') && /[.:]|^localhost$/.test(first) ? first : undefined
}

/** The chosen providers, checked, with their secrets in memory: what setup needs and nothing else. */
export interface SetupPlan {
  readonly cluster: ClusterProvider
  readonly registry: RegistryProvider
  readonly logins: Partial<Record<CloudCli, LoginForm>>
  /** Secret files' contents by the key that names them. */
  readonly secrets: Readonly<Record<string, string | undefined>>
  readonly host: string
}

/** Where each provider's keys are explained. */
export const CLUSTERS_DOC = 'see docs/clusters.md'

/** Picks a provider row by its key's value; an unknown name is a usage error listing the known ones. */
export function pickProvider<T>(table: Record<string, T>, key: 'CLUSTER_PROVIDER' | 'REGISTRY_PROVIDER', config: Config): T {
  const name = config[key]
  if (!Object.hasOwn(table, name)) throw usageError(`${key}=${name}: unknown provider; use one of ${Object.keys(table).join(', ')}`)
  return table[name]
}

/**
 * Setup's preflight: the providers exist, their keys are set, their secret files readable
 * (and masked from now on). Runs before any command; bad input is one line, exit 2.
 */
export function planSetup(request: { readonly config: Config; readonly dryRun: boolean }, { out, invocation }: { out: Output; invocation: Invocation }): SetupPlan {
  const { config } = request
  const cluster = pickProvider(CLUSTERS, 'CLUSTER_PROVIDER', config)
  const registry = pickProvider(REGISTRIES, 'REGISTRY_PROVIDER', config)
  const secrets: Record<string, string | undefined> = {}
  const read = (file: SecretFile) => {
    if (file.key in secrets) return
    const fix = `create it, set ${file.key} in .env to where it is, or run with --no-setup`
    const text = secretFileFor(request, out, config[file.key], `${file.key} (${file.what})`, fix, (content) => {
      if (!content.trim()) throw usageError(`${config[file.key]}: ${file.key} (${file.what}) is empty; put the credential in it`)
      if (file.key === 'GCLOUD_KEY_FILE' && credentialType(content) === undefined) {
        throw usageError(`${config[file.key]}: ${file.key} (${file.what}) is not valid JSON; download it again (its content is not shown: it holds secrets)`)
      }
    })?.trim()
    for (const s of text === undefined ? [] : file.masks?.(text, invocation.runtime.YAML) ?? [text]) invocation.secrets.add(s)
    secrets[file.key] = text
  }
  const logins: SetupPlan['logins'] = {}
  for (const [key, provider] of [['CLUSTER_PROVIDER', cluster], ['REGISTRY_PROVIDER', registry]] as const) {
    const missing = provider.keys.find((k) => !config[k])
    if (missing) throw usageError(`${missing} is not set: ${key}=${config[key]} needs it; set it in .env (${CLUSTERS_DOC})`)
    provider.files.forEach(read)
    if (provider.cli && !logins[provider.cli]) logins[provider.cli] = pickLogin(provider.cli, key, config, read, secrets)
  }
  const host = registryHost(config)
  if (registry.needsHost && !host) {
    throw usageError(`USER_IMAGE_PREFIX=${config.USER_IMAGE_PREFIX} names no registry host, which REGISTRY_PROVIDER=${config.REGISTRY_PROVIDER} logs in to: begin both image prefixes with it (or set DOCKER_REGISTRY)`)
  }
  return { cluster, registry, logins, secrets, host: host ?? '' }
}

/** The first login form of `cli` whose keys are set; none is a usage error naming what to set. */
function pickLogin(cli: CloudCli, by: 'CLUSTER_PROVIDER' | 'REGISTRY_PROVIDER', config: Config, read: (f: SecretFile) => void, secrets: SetupPlan['secrets']): LoginForm {
  const forms = LOGINS[cli]
  for (const form of forms.filter((f) => f.keys.every((k) => config[k]))) {
    form.files.forEach(read)
    if (!form.when || form.when(secrets)) return form
  }
  const closest = [...forms].sort((a, b) => a.keys.filter((k) => !config[k]).length - b.keys.filter((k) => !config[k]).length)[0]
  const ways = forms.map((f) => `${f.name} (${f.keys.join(', ')})`).join(' or ')
  throw usageError(`${closest.keys.find((k) => !config[k])} is not set: ${by}=${config[by]} logs ${cli} in by ${ways}; set it in .env (${CLUSTERS_DOC})`)
}

/** The plan's commands in the original's order: cluster login and credentials, Helm's own (tiller), registry login. */
export function setupSteps(plan: SetupPlan, config: Config, helmSetup: Helm['setup']): SetupStep[] {
  const { cluster, registry, logins } = plan
  const login = (cli?: CloudCli) => (cli ? logins[cli]!.steps : [])
  return [
    ...login(cluster.cli),
    ...cluster.steps,
    ...helmSetup.map(([tool, ...args]): SetupStep => ({ tool, args: () => args })),
    ...(registry.cli === cluster.cli ? [] : login(registry.cli)),
    ...registry.steps,
  ].filter((step) => !step.when || step.when(config))
}

/** Points kubectl, helm, gcloud, az and docker at a fresh private directory for this run. */
export function privateConfigDir(env: NodeJS.ProcessEnv): string {
  let dir: string
  try {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'deploy-'))
  } catch (e) {
    throw new DeployError(`cannot create the private credentials directory in ${os.tmpdir()} (${(e as { code?: string }).code ?? String(e)}): set TMPDIR to a writable directory`)
  }
  fs.chmodSync(dir, 0o700)
  const docker = path.join(dir, 'docker')
  fs.mkdirSync(docker)
  // Docker finds CLI plugins (buildx) under DOCKER_CONFIG: keep the user's reachable.
  const plugins = path.join(env.DOCKER_CONFIG ?? path.join(os.homedir(), '.docker'), 'cli-plugins')
  if (fs.existsSync(plugins)) fs.symlinkSync(plugins, path.join(docker, 'cli-plugins'))
  Object.assign(env, {
    KUBECONFIG: path.join(dir, 'kubeconfig'),
    CLOUDSDK_CONFIG: path.join(dir, 'gcloud'),
    AZURE_CONFIG_DIR: path.join(dir, 'azure'),
    DOCKER_CONFIG: docker,
  })
  return dir
}
