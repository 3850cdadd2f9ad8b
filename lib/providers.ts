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
  /** Keys it reads when they are set. */
  optional?: Key[]
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
  /** Logs in with a user and password, to DOCKER_REGISTRY or Docker Hub. */
  passwordLogin?: boolean
  /** Logs in with a token issued for these registry hosts only, which the image prefixes must name. */
  tokenHosts?: TokenHosts
}

/** The registry hosts a provider's token is issued for: docker logs in to no other host with it. */
interface TokenHosts {
  /** Such a registry, in a message: `an Amazon ECR registry`. */
  kind: string
  /** Any registry host of this kind, whoever's (to recognise one under another provider). */
  any: RegExp
  /** Whether this run's token is valid for `host` (lower case), and how such hosts look. */
  issued: (config: Config) => { fits: (host: string) => boolean; looks: string }
  /** Whether such a registry also takes a user and password (dockerhub's login). */
  takesPassword: boolean
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
    optional: ['AKS_KUBELOGIN'],
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

/** Registry hosts by their owner: `LOCATION-docker.pkg.dev`, `gcr.io`, `REGION.gcr.io`; `ACCOUNT.dkr.ecr.REGION.amazonaws.com`; `NAME.azurecr.io`. */
const GOOGLE_REGISTRY = /^(?:[a-z0-9-]+-docker\.pkg\.dev|(?:[a-z]+\.)?gcr\.io)$/
const ECR_REGISTRY = /^\d{12}\.dkr\.ecr(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$/
const AZURE_REGISTRY = /^([a-z0-9]+)\.azurecr\.(?:io|cn|us)$/

/** `docker login` with a token from `yields`, on stdin. */
const tokenLogin = (user: string): SetupStep => ({ tool: 'docker', args: (f) => ['login', '--username', user, '--password-stdin', f.host], capture: true, stdin: 'token' })

/** Registry providers (REGISTRY_PROVIDER): tokens pass from the cloud CLI to docker on stdin. */
export const REGISTRIES: Record<string, RegistryProvider> = {
  dockerhub: {
    passwordLogin: true,
    keys: ['DOCKER_USERNAME'],
    optional: ['DOCKER_REGISTRY'],
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
    optional: ['DOCKER_REGISTRY'],
    files: [],
    tokenHosts: {
      kind: 'a Google Artifact Registry or Container Registry',
      any: GOOGLE_REGISTRY,
      // A Google access token works for every Google registry the account may use.
      issued: () => ({ fits: (host) => GOOGLE_REGISTRY.test(host), looks: 'Google Artifact Registry or Container Registry: LOCATION-docker.pkg.dev, gcr.io, REGION.gcr.io' }),
      takesPassword: true,
    },
    steps: [
      { tool: 'gcloud', args: () => ['auth', 'print-access-token'], capture: true, yields: 'token' },
      tokenLogin('oauth2accesstoken'),
    ],
  },
  ecr: {
    cli: 'aws',
    keys: ['AWS_REGION'],
    optional: ['DOCKER_REGISTRY'],
    files: [],
    tokenHosts: {
      kind: 'an Amazon ECR registry',
      any: ECR_REGISTRY,
      // get-login-password's token is for the registries of its --region.
      issued: (c) => ({ fits: (host) => ECR_REGISTRY.exec(host)?.[1] === c.AWS_REGION, looks: `an Amazon ECR registry in ${c.AWS_REGION}, ACCOUNT.dkr.ecr.${c.AWS_REGION}.amazonaws.com` }),
      takesPassword: false,
    },
    steps: [
      { tool: 'aws', args: ({ config: c }) => ['ecr', 'get-login-password', '--region', c.AWS_REGION], capture: true, yields: 'token' },
      tokenLogin('AWS'),
    ],
  },
  acr: {
    cli: 'az',
    keys: ['ACR_NAME'],
    optional: ['DOCKER_REGISTRY'],
    files: [],
    tokenHosts: {
      kind: 'an Azure Container Registry',
      any: AZURE_REGISTRY,
      // `az acr login --name` issues a token for that one registry.
      issued: (c) => ({ fits: (host) => AZURE_REGISTRY.exec(host)?.[1] === c.ACR_NAME.toLowerCase(), looks: `the registry ACR_NAME=${c.ACR_NAME}, ${c.ACR_NAME.toLowerCase()}.azurecr.io` }),
      takesPassword: true,
    },
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

/** The registry host an image prefix names (`us-docker.pkg.dev/p/r/user-` → `us-docker.pkg.dev`), lower case; Docker Hub names have none. */
function prefixHost(prefix: string): string | undefined {
  const first = prefix.split('/')[0]
  return prefix.includes('/') && /[.:]|^localhost$/.test(first) ? first.toLowerCase() : undefined
}

/** The registry docker logs in to: DOCKER_REGISTRY, else the host of USER_IMAGE_PREFIX. */
function registryHost(config: Config): string | undefined {
  return config.DOCKER_REGISTRY || prefixHost(config.USER_IMAGE_PREFIX)
}

type ProviderKey = 'CLUSTER_PROVIDER' | 'REGISTRY_PROVIDER'

/** Every key a provider reads: its own, its secret files', and those of its cloud CLI's logins. */
function usedKeys(provider: Provider): Key[] {
  const logins = provider.cli ? LOGINS[provider.cli].flatMap((form) => [...form.keys, ...form.files.map((f) => f.key)]) : []
  return [...provider.keys, ...(provider.optional ?? []), ...provider.files.map((f) => f.key), ...logins]
}

/** The providers that read `key`, as `CLUSTER_PROVIDER=eks`. */
function owners(key: Key): string[] {
  const tables: Array<[ProviderKey, Record<string, Provider>]> = [['CLUSTER_PROVIDER', CLUSTERS], ['REGISTRY_PROVIDER', REGISTRIES]]
  return tables.flatMap(([by, table]) => Object.entries(table).filter(([, p]) => usedKeys(p).includes(key)).map(([name]) => `${by}=${name}`))
}

/** `a`, `a or b`, `a, b or c`. */
const orList = (items: string[]) => (items.length > 1 ? `${items.slice(0, -1).join(', ')} or ${items.at(-1)}` : items[0])

/** `CLUSTER_PROVIDER=eks or REGISTRY_PROVIDER=ecr`; `REGISTRY_PROVIDER=dockerhub, gar, ecr or acr`. */
function ownersText(list: string[]): string {
  const by = (key: ProviderKey) => list.filter((o) => o.startsWith(`${key}=`)).map((o) => o.slice(key.length + 1))
  return (['CLUSTER_PROVIDER', 'REGISTRY_PROVIDER'] as const).filter((key) => by(key).length).map((key) => `${key}=${orList(by(key))}`).join(' or ')
}

/** `CLUSTER_PROVIDER=gke (the default)`. */
const chosen = (config: Config, key: ProviderKey) => `${key}=${config[key]}${config.setIn[key] ? '' : ' (the default)'}`

/**
 * The cloud tools' own variables (the AWS CLI's, the Azure SDKs'): a CI or a cloud machine may
 * set them in the environment for other tools, so there they only get a warning.
 */
const CLOUD_TOOL_VARIABLES: Key[] = ['AWS_REGION', 'AZURE_CLIENT_ID', 'AZURE_TENANT_ID', 'AZURE_FEDERATED_TOKEN_FILE', 'AZURE_CLIENT_CERTIFICATE_PATH']

/**
 * Keys of a provider that is not set up (EKS_CLUSTER under the default gke) are refused: the
 * run would set up another cluster or registry than the one they describe.
 */
function checkProviderKeys(config: Config, cluster: Provider, registry: Provider, out: Output) {
  const used = new Set([...usedKeys(cluster), ...usedKeys(registry)])
  const misplaced = (Object.keys(config.setIn) as Key[]).filter((k) => owners(k).length && !used.has(k))
  const ambient = (k: Key) => CLOUD_TOOL_VARIABLES.includes(k) && config.setIn[k] === 'the environment'
  const setUp = (kinds: ProviderKey[]) => {
    const list = kinds.map((kind) => chosen(config, kind))
    return `${list.join(' and ')} ${list.length > 1 ? 'are' : 'is'} set up`
  }
  const where = (keys: Key[]) => {
    const places = new Set(keys.map((k) => config.setIn[k]))
    return places.size === 1 ? `in ${[...places][0]}` : keys.map((k) => `${k} in ${config.setIn[k]}`).join(', ')
  }
  const first = misplaced.find((k) => !ambient(k))
  if (!first) {
    if (misplaced.length) out.warn(`${misplaced.join(', ')} (${where(misplaced)}) ${misplaced.length > 1 ? 'are' : 'is'} not used: ${setUp(['CLUSTER_PROVIDER', 'REGISTRY_PROVIDER'])}; left to the tools that read ${misplaced.length > 1 ? 'them' : 'it'} (set CLUSTER_PROVIDER or REGISTRY_PROVIDER if you meant another provider; ${CLUSTERS_DOC})`)
    return
  }
  // The keys that one provider would all read, in that provider's order: the fix is to choose it.
  let common = owners(first)
  const keys = [first]
  for (const k of misplaced.filter((m) => m !== first)) {
    const both = common.filter((o) => owners(k).includes(o))
    if (!both.length) continue
    common = both
    keys.push(k)
  }
  const [by, name] = common[0].split('=') as [ProviderKey, string]
  const order = usedKeys((by === 'CLUSTER_PROVIDER' ? CLUSTERS : REGISTRIES)[name])
  keys.sort((a, b) => order.indexOf(a) - order.indexOf(b))
  const kinds = (['CLUSTER_PROVIDER', 'REGISTRY_PROVIDER'] as const).filter((kind) => common.some((o) => o.startsWith(`${kind}=`)))
  const many = keys.length > 1
  throw usageError(`${keys.join(', ')} (${where(keys)}) ${many ? 'are keys' : 'is a key'} of ${ownersText(common)}, but ${setUp(kinds)}: set ${ownersText(common)}, or remove ${many ? 'them' : 'it'} (${CLUSTERS_DOC})`)
}

/** The registry provider whose token hosts `host` is one of, with its name. */
function tokenProviderOf(host: string): [string, TokenHosts] | undefined {
  for (const [name, p] of Object.entries(REGISTRIES)) if (p.tokenHosts?.any.test(host)) return [name, p.tokenHosts]
  return undefined
}

/**
 * A token goes only to the host it was issued for, and the images go where docker logs in:
 * with gar, ecr or acr, DOCKER_REGISTRY and the image prefixes' hosts must be hosts of the
 * token; with dockerhub, an image prefix on a cloud registry needs that registry's provider.
 */
function checkRegistryHosts(config: Config, registry: RegistryProvider) {
  const by = `REGISTRY_PROVIDER=${config.REGISTRY_PROVIDER}`
  const prefixes = (['USER_IMAGE_PREFIX', 'HUB_IMAGE_PREFIX'] as const).map((key) => [key, prefixHost(config[key])] as const)
  const named = config.DOCKER_REGISTRY.toLowerCase()
  const token = registry.tokenHosts
  if (token) {
    const login = named || prefixes[0][1]
    if (!login) throw usageError(`USER_IMAGE_PREFIX=${config.USER_IMAGE_PREFIX} names no registry host, which ${by} logs in to: begin both image prefixes with it (or set DOCKER_REGISTRY)`)
    const { fits, looks } = token.issued(config)
    if (named && !fits(named)) {
      throw usageError(`DOCKER_REGISTRY=${config.DOCKER_REGISTRY} is not a registry ${by} issues tokens for (${looks}), so its token would go elsewhere: remove DOCKER_REGISTRY (docker then logs in to the host of USER_IMAGE_PREFIX), or set REGISTRY_PROVIDER to that registry's own (${CLUSTERS_DOC})`)
    }
    for (const [key, host] of prefixes) {
      if (!host) continue
      if (!fits(host)) throw usageError(`${key}=${config[key]} names ${host}, not a registry ${by} issues tokens for (${looks}): begin the image prefixes with such a host, or set REGISTRY_PROVIDER to ${host}'s own (${CLUSTERS_DOC})`)
      if (host !== login) throw usageError(`${key}=${config[key]} names ${host}, but docker logs in to ${login} only: begin both image prefixes with the same registry host`)
    }
    return
  }
  if (!registry.passwordLogin) return
  const cloud = named ? tokenProviderOf(named) : undefined
  if (cloud && !cloud[1].takesPassword) {
    throw usageError(`DOCKER_REGISTRY=${config.DOCKER_REGISTRY} is ${cloud[1].kind}, which takes no password, only the token REGISTRY_PROVIDER=${cloud[0]} gets: set REGISTRY_PROVIDER=${cloud[0]} (${CLUSTERS_DOC})`)
  }
  for (const [key, host] of prefixes) {
    const owner = host && host !== named ? tokenProviderOf(host) : undefined
    if (owner) throw usageError(`${key}=${config[key]} names ${host}, ${owner[1].kind}, but ${chosen(config, 'REGISTRY_PROVIDER')} logs docker in to ${named || 'Docker Hub'}: set REGISTRY_PROVIDER=${owner[0]} (${CLUSTERS_DOC})`)
  }
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
  checkProviderKeys(config, cluster, registry, out)
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
  checkRegistryHosts(config, registry)
  const host = registryHost(config)
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
