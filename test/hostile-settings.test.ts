// Hostile input, class 4 of issue 18 (docs/reliability.md, "Settings that fit together"):
// keys of one provider set under another, and a registry host that does not match the
// registry provider, are refused before anything runs (exit 2, one line naming the keys and
// the fix), in a real run and in the dry-run plan alike. A token only ever goes to the host
// it was issued for. The default (no provider keys) stays the original's GKE setup. Each
// case checks (hostileRun) that no planted secret shows in any output or argv.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { makeRepo, HELM3, CLOUD_TOKENS, SETUP_COMMANDS, type Rule } from './support/harness.ts'
import { hostileRun, assertRefused, show, type HostileResult } from './support/hostile.ts'

const ECR_HOST = '123456789012.dkr.ecr.us-west-2.amazonaws.com'
const ECR = { REGISTRY_PROVIDER: 'ecr', AWS_REGION: 'us-west-2', USER_IMAGE_PREFIX: `${ECR_HOST}/user-`, HUB_IMAGE_PREFIX: `${ECR_HOST}/hub-` }
const ECR_RULE: Rule = { tool: 'aws', match: '^ecr get-login-password', stdout: `${CLOUD_TOKENS.ecr}\n` }
const ACR = { REGISTRY_PROVIDER: 'acr', ACR_NAME: 'myacr', USER_IMAGE_PREFIX: 'myacr.azurecr.io/user-', HUB_IMAGE_PREFIX: 'myacr.azurecr.io/hub-', AZURE_CLIENT_ID: 'app-id-1', AZURE_TENANT_ID: 'tenant-1', AZURE_CLIENT_CERTIFICATE_PATH: 'secrets/sp.pem' }
const ACR_RULE: Rule = { tool: 'az', match: '^acr login', stdout: JSON.stringify({ accessToken: CLOUD_TOKENS.acr, loginServer: 'myacr.azurecr.io' }) }
const GAR_RULE: Rule = { tool: 'gcloud', match: '^auth print-access-token', stdout: `${CLOUD_TOKENS.gar}\n` }
const PEM = `-----BEGIN PRIVATE KEY-----\n${CLOUD_TOKENS.certificateKey}\n-----END PRIVATE KEY-----\n`
const EKS = { CLUSTER_PROVIDER: 'eks', EKS_CLUSTER: 'hubs', AWS_REGION: 'us-west-2' }
const DEPLOY = ['--build', '--push', '--deploy', 'staginghub']

/** A repository (with an Azure certificate in secrets/) whose uncommitted .env holds `dotenv`. */
function repoWithEnv(dotenv: Record<string, string> = {}): string {
  const repo = makeRepo({ secrets: { 'secrets/sp.pem': PEM } })
  fs.writeFileSync(path.join(repo, '.env'), Object.entries(dotenv).map(([k, v]) => `${k}=${v}\n`).join(''))
  return repo
}

const warnings = (r: HostileResult) => r.stderr.split('\n').filter((l) => l.startsWith('WARNING: '))
/** No cloud CLI and no docker login ran: nothing got a credential. */
const noLogin = (r: HostileResult) => assert.deepEqual(r.commands.filter((c) => /^(gcloud|aws|az|kubelogin|docker login)/.test(c)), [], show(r))

// ---------------------------------------------------------------------------------------
// Keys of one provider set under another

const misplaced: Array<[string, Record<string, string>, RegExp]> = [
  // The issue's example: the default GKE cluster was set up silently.
  ['EKS_CLUSTER and AWS_REGION without CLUSTER_PROVIDER', { EKS_CLUSTER: 'hubs', AWS_REGION: 'us-west-2' },
    /^ERROR: EKS_CLUSTER, AWS_REGION \(in \.env\) are keys of CLUSTER_PROVIDER=eks, but CLUSTER_PROVIDER=gke \(the default\) is set up: set CLUSTER_PROVIDER=eks, or remove them \(see docs\/clusters\.md\)$/],
  ['EKS_CLUSTER alone', { EKS_CLUSTER: 'hubs' }, /^ERROR: EKS_CLUSTER \(in \.env\) is a key of CLUSTER_PROVIDER=eks, but CLUSTER_PROVIDER=gke \(the default\) is set up: set CLUSTER_PROVIDER=eks, or remove it/],
  ['AWS_REGION alone in .env', { AWS_REGION: 'us-west-2' }, /^ERROR: AWS_REGION \(in \.env\) is a key of CLUSTER_PROVIDER=eks or REGISTRY_PROVIDER=ecr, but CLUSTER_PROVIDER=gke \(the default\) and REGISTRY_PROVIDER=dockerhub \(the default\) are set up/],
  ['AKS keys under gke', { AKS_RESOURCE_GROUP: 'rg', AKS_CLUSTER: 'hubs' }, /^ERROR: AKS_RESOURCE_GROUP, AKS_CLUSTER \(in \.env\) are keys of CLUSTER_PROVIDER=aks, but CLUSTER_PROVIDER=gke \(the default\) is set up: set CLUSTER_PROVIDER=aks/],
  ['AKS_KUBELOGIN under gke', { AKS_KUBELOGIN: 'azurecli' }, /^ERROR: AKS_KUBELOGIN \(in \.env\) is a key of CLUSTER_PROVIDER=aks/],
  ['ACR_NAME under dockerhub', { ACR_NAME: 'myacr' }, /^ERROR: ACR_NAME \(in \.env\) is a key of REGISTRY_PROVIDER=acr, but REGISTRY_PROVIDER=dockerhub \(the default\) is set up: set REGISTRY_PROVIDER=acr, or remove it/],
  ['KUBECONFIG_FILE under gke', { KUBECONFIG_FILE: 'secrets/kubeconfig.yaml' }, /^ERROR: KUBECONFIG_FILE \(in \.env\) is a key of CLUSTER_PROVIDER=kubeconfig, but CLUSTER_PROVIDER=gke \(the default\) is set up/],
  ['GKE keys under eks', { ...EKS, GKE_CLUSTER: 'jhub', GKE_ZONE: 'us-central1-b' }, /^ERROR: GKE_CLUSTER, GKE_ZONE \(in \.env\) are keys of CLUSTER_PROVIDER=gke, but CLUSTER_PROVIDER=eks is set up: set CLUSTER_PROVIDER=gke, or remove them/],
  ['GCP_PROJECT under aks', { CLUSTER_PROVIDER: 'aks', AKS_RESOURCE_GROUP: 'rg', AKS_CLUSTER: 'hubs', AZURE_CLIENT_ID: 'a', AZURE_TENANT_ID: 't', AZURE_CLIENT_CERTIFICATE_PATH: 'secrets/sp.pem', GCP_PROJECT: 'ea-jupyter' },
    /^ERROR: GCP_PROJECT \(in \.env\) is a key of CLUSTER_PROVIDER=gke/],
  ['GCLOUD_KEY_FILE under eks and ecr', { ...EKS, ...ECR, GCLOUD_KEY_FILE: 'secrets/gke-auth-key.json' },
    /^ERROR: GCLOUD_KEY_FILE \(in \.env\) is a key of CLUSTER_PROVIDER=gke or REGISTRY_PROVIDER=gar, but CLUSTER_PROVIDER=eks and REGISTRY_PROVIDER=ecr are set up/],
  ['DOCKER_USERNAME under ecr', { ...ECR, DOCKER_USERNAME: 'me' }, /^ERROR: DOCKER_USERNAME \(in \.env\) is a key of REGISTRY_PROVIDER=dockerhub, but REGISTRY_PROVIDER=ecr is set up: set REGISTRY_PROVIDER=dockerhub, or remove it/],
  ['DOCKER_PASSWORD_FILE under none', { REGISTRY_PROVIDER: 'none', DOCKER_PASSWORD_FILE: 'secrets/dockerhub' }, /^ERROR: DOCKER_PASSWORD_FILE \(in \.env\) is a key of REGISTRY_PROVIDER=dockerhub, but REGISTRY_PROVIDER=none is set up/],
  ['DOCKER_REGISTRY under none (no login at all)', { REGISTRY_PROVIDER: 'none', DOCKER_REGISTRY: 'ghcr.io' }, /^ERROR: DOCKER_REGISTRY \(in \.env\) is a key of REGISTRY_PROVIDER=dockerhub, gar, ecr or acr, but REGISTRY_PROVIDER=none is set up/],
  ['Azure service principal keys with neither aks nor acr', { AZURE_CLIENT_ID: 'a', AZURE_TENANT_ID: 't' }, /^ERROR: AZURE_CLIENT_ID, AZURE_TENANT_ID \(in \.env\) are keys of CLUSTER_PROVIDER=aks or REGISTRY_PROVIDER=acr/],
]

for (const [name, dotenv, message] of misplaced) {
  test(`${name}: exit 2 naming the keys and the provider, before anything runs`, { timeout: 20_000 }, async () => {
    const r = await hostileRun(repoWithEnv(dotenv), DEPLOY, { rules: [HELM3, ECR_RULE, ACR_RULE, GAR_RULE] })
    assertRefused(r, message)
    noLogin(r)
  })
}

test('EKS_CLUSTER in the environment (not .env): refused the same way, naming where it was set', { timeout: 20_000 }, async () => {
  const r = await hostileRun(repoWithEnv(), DEPLOY, { env: { EKS_CLUSTER: 'hubs', AWS_REGION: 'us-west-2' } })
  assertRefused(r, /^ERROR: EKS_CLUSTER, AWS_REGION \(in the environment\) are keys of CLUSTER_PROVIDER=eks, but CLUSTER_PROVIDER=gke \(the default\) is set up/)
})

test('the dry-run plan refuses the same way, with the same line', { timeout: 30_000 }, async () => {
  const [real, dry] = await Promise.all([DEPLOY, ['--dry-run', ...DEPLOY]].map((args) => hostileRun(repoWithEnv({ EKS_CLUSTER: 'hubs', AWS_REGION: 'us-west-2' }), args)))
  assertRefused(dry, /^ERROR: EKS_CLUSTER, AWS_REGION \(in \.env\) are keys of CLUSTER_PROVIDER=eks/)
  assert.equal(dry.stderr, real.stderr)
  assert.doesNotMatch(dry.stdout + dry.stderr, /gcloud/, 'no GKE command planned')
})

test('AWS_REGION or the Azure identity from the environment (set by the CI for its own tools): a warning, the setup is the chosen one', { timeout: 20_000 }, async () => {
  const r = await hostileRun(repoWithEnv(), ['staginghub'], { env: { AWS_REGION: 'us-west-2', AZURE_CLIENT_ID: 'a' } })
  assert.equal(r.code, 0, show(r))
  assert.deepEqual(r.commands, ['helm version --client --short', ...SETUP_COMMANDS[3]])
  assert.deepEqual(warnings(r), [
    'WARNING: AWS_REGION, AZURE_CLIENT_ID (in the environment) are not used: CLUSTER_PROVIDER=gke (the default) and REGISTRY_PROVIDER=dockerhub (the default) are set up; left to the tools that read them (set CLUSTER_PROVIDER or REGISTRY_PROVIDER if you meant another provider; see docs/clusters.md)',
  ])
})

test('--no-setup: the provider keys are not used, so not checked', { timeout: 20_000 }, async () => {
  const r = await hostileRun(repoWithEnv({ EKS_CLUSTER: 'hubs', ACR_NAME: 'x' }), ['--no-setup', '--deploy', 'staginghub'])
  assert.equal(r.code, 0, show(r))
})

test('keys that fit: AWS_REGION of an ecr registry under gke, the Azure identity of an acr registry under eks', { timeout: 30_000 }, async () => {
  const [gkeEcr, eksAcr] = await Promise.all([
    hostileRun(repoWithEnv(ECR), DEPLOY, { rules: [HELM3, ECR_RULE] }),
    hostileRun(repoWithEnv({ ...EKS, ...ACR }), DEPLOY, { rules: [HELM3, ACR_RULE] }),
  ])
  assert.equal(gkeEcr.code, 0, show(gkeEcr))
  assert.ok(gkeEcr.commands.includes(`docker login --username AWS --password-stdin ${ECR_HOST}`), show(gkeEcr))
  assert.equal(eksAcr.code, 0, show(eksAcr))
  assert.ok(eksAcr.commands.includes('docker login --username 00000000-0000-0000-0000-000000000000 --password-stdin myacr.azurecr.io'), show(eksAcr))
})

test('no provider keys at all: the original\'s GKE setup, command for command, no warning', { timeout: 20_000 }, async () => {
  const r = await hostileRun(repoWithEnv(), ['staginghub'])
  assert.equal(r.code, 0, show(r))
  assert.deepEqual(r.commands, ['helm version --client --short', ...SETUP_COMMANDS[3]])
  assert.deepEqual(warnings(r), [])
})

// ---------------------------------------------------------------------------------------
// A registry host that does not match the registry provider: a token goes only where it was issued for

const hosts: Array<[string, Record<string, string>, RegExp]> = [
  // The issue's example: the ECR token went to `docker login ghcr.io`.
  ['ecr with a leftover DOCKER_REGISTRY=ghcr.io', { ...ECR, DOCKER_REGISTRY: 'ghcr.io' },
    /^ERROR: DOCKER_REGISTRY=ghcr\.io is not a registry REGISTRY_PROVIDER=ecr issues tokens for \(an Amazon ECR registry in us-west-2, ACCOUNT\.dkr\.ecr\.us-west-2\.amazonaws\.com\), so its token would go elsewhere: remove DOCKER_REGISTRY \(docker then logs in to the host of USER_IMAGE_PREFIX\), or set REGISTRY_PROVIDER to that registry's own \(see docs\/clusters\.md\)$/],
  ['ecr with image prefixes in another region than AWS_REGION', { ...ECR, USER_IMAGE_PREFIX: '123456789012.dkr.ecr.eu-west-1.amazonaws.com/user-', HUB_IMAGE_PREFIX: '123456789012.dkr.ecr.eu-west-1.amazonaws.com/hub-' },
    /^ERROR: USER_IMAGE_PREFIX=123456789012\.dkr\.ecr\.eu-west-1\.amazonaws\.com\/user- names 123456789012\.dkr\.ecr\.eu-west-1\.amazonaws\.com, not a registry REGISTRY_PROVIDER=ecr issues tokens for \(an Amazon ECR registry in us-west-2/],
  ['ecr with an image prefix on a look-alike host', { ...ECR, USER_IMAGE_PREFIX: '123456789012.dkr.ecr.us-west-2.amazonaws.com.evil.example/user-', HUB_IMAGE_PREFIX: '123456789012.dkr.ecr.us-west-2.amazonaws.com.evil.example/hub-' },
    /^ERROR: USER_IMAGE_PREFIX=\S+ names 123456789012\.dkr\.ecr\.us-west-2\.amazonaws\.com\.evil\.example, not a registry REGISTRY_PROVIDER=ecr issues tokens for/],
  ['ecr with the hub image on another registry than the user image', { ...ECR, HUB_IMAGE_PREFIX: '999999999999.dkr.ecr.us-west-2.amazonaws.com/hub-' },
    /^ERROR: HUB_IMAGE_PREFIX=999999999999\.dkr\.ecr\.us-west-2\.amazonaws\.com\/hub- names 999999999999\.dkr\.ecr\.us-west-2\.amazonaws\.com, but docker logs in to 123456789012\.dkr\.ecr\.us-west-2\.amazonaws\.com only: begin both image prefixes with the same registry host/],
  ['acr with ACR_NAME not the registry of the image prefixes', { ...ACR, ACR_NAME: 'otheracr' },
    /^ERROR: USER_IMAGE_PREFIX=myacr\.azurecr\.io\/user- names myacr\.azurecr\.io, not a registry REGISTRY_PROVIDER=acr issues tokens for \(the registry ACR_NAME=otheracr, otheracr\.azurecr\.io\)/],
  ['acr with DOCKER_REGISTRY=ghcr.io', { ...ACR, DOCKER_REGISTRY: 'ghcr.io' }, /^ERROR: DOCKER_REGISTRY=ghcr\.io is not a registry REGISTRY_PROVIDER=acr issues tokens for/],
  ['gar with DOCKER_REGISTRY=ghcr.io', { REGISTRY_PROVIDER: 'gar', USER_IMAGE_PREFIX: 'us-docker.pkg.dev/p/r/user-', HUB_IMAGE_PREFIX: 'us-docker.pkg.dev/p/r/hub-', DOCKER_REGISTRY: 'ghcr.io' },
    /^ERROR: DOCKER_REGISTRY=ghcr\.io is not a registry REGISTRY_PROVIDER=gar issues tokens for \(Google Artifact Registry or Container Registry: LOCATION-docker\.pkg\.dev, gcr\.io, REGION\.gcr\.io\)/],
  ['gar with image prefixes on GitHub\'s ghcr.io', { REGISTRY_PROVIDER: 'gar', USER_IMAGE_PREFIX: 'ghcr.io/org/user-', HUB_IMAGE_PREFIX: 'ghcr.io/org/hub-' },
    /^ERROR: USER_IMAGE_PREFIX=ghcr\.io\/org\/user- names ghcr\.io, not a registry REGISTRY_PROVIDER=gar issues tokens for/],
  ['gar with a look-alike pkg.dev host', { REGISTRY_PROVIDER: 'gar', USER_IMAGE_PREFIX: 'us-docker.pkg.dev.evil.example/p/user-', HUB_IMAGE_PREFIX: 'us-docker.pkg.dev.evil.example/p/hub-' },
    /^ERROR: USER_IMAGE_PREFIX=\S+ names us-docker\.pkg\.dev\.evil\.example, not a registry REGISTRY_PROVIDER=gar issues tokens for/],
  ['dockerhub (the default) with the images on ECR', { USER_IMAGE_PREFIX: `${ECR_HOST}/user-`, HUB_IMAGE_PREFIX: `${ECR_HOST}/hub-` },
    /^ERROR: USER_IMAGE_PREFIX=\S+ names 123456789012\.dkr\.ecr\.us-west-2\.amazonaws\.com, an Amazon ECR registry, but REGISTRY_PROVIDER=dockerhub \(the default\) logs docker in to Docker Hub: set REGISTRY_PROVIDER=ecr \(see docs\/clusters\.md\)$/],
  ['dockerhub with DOCKER_REGISTRY an ECR host (ECR takes only its own token)', { DOCKER_REGISTRY: ECR_HOST },
    /^ERROR: DOCKER_REGISTRY=123456789012\.dkr\.ecr\.us-west-2\.amazonaws\.com is an Amazon ECR registry, which takes no password, only the token REGISTRY_PROVIDER=ecr gets: set REGISTRY_PROVIDER=ecr \(see docs\/clusters\.md\)$/],
  ['dockerhub with the images on GAR and DOCKER_REGISTRY=ghcr.io', { DOCKER_REGISTRY: 'ghcr.io', USER_IMAGE_PREFIX: 'europe-docker.pkg.dev/p/r/user-' },
    /^ERROR: USER_IMAGE_PREFIX=\S+ names europe-docker\.pkg\.dev, a Google Artifact Registry or Container Registry, but REGISTRY_PROVIDER=dockerhub \(the default\) logs docker in to ghcr\.io: set REGISTRY_PROVIDER=gar/],
]

for (const [name, dotenv, message] of hosts) {
  test(`${name}: exit 2 before any login, naming the host and the fix`, { timeout: 20_000 }, async () => {
    const r = await hostileRun(repoWithEnv(dotenv), DEPLOY, { rules: [HELM3, ECR_RULE, ACR_RULE, GAR_RULE] })
    assertRefused(r, message)
    noLogin(r)
  })
}

test('ecr with a leftover DOCKER_REGISTRY under --dry-run: the same refusal, no token planned for ghcr.io', { timeout: 20_000 }, async () => {
  const r = await hostileRun(repoWithEnv({ ...ECR, DOCKER_REGISTRY: 'ghcr.io' }), ['--dry-run', ...DEPLOY])
  assertRefused(r, /^ERROR: DOCKER_REGISTRY=ghcr\.io is not a registry REGISTRY_PROVIDER=ecr issues tokens for/)
  assert.doesNotMatch(r.stdout + r.stderr, /login/)
})

test('hosts that fit: ACR_NAME in capitals, DOCKER_REGISTRY equal to the image host, gcr.io and REGION.gcr.io, LOCATION-docker.pkg.dev', { timeout: 60_000 }, async () => {
  const gar = (prefix: string) => ({ REGISTRY_PROVIDER: 'gar', USER_IMAGE_PREFIX: `${prefix}/user-`, HUB_IMAGE_PREFIX: `${prefix}/hub-` })
  const cases: Array<[Record<string, string>, string]> = [
    [{ ...ACR, ACR_NAME: 'MyAcr' }, '--password-stdin myacr.azurecr.io'],
    [{ ...ECR, DOCKER_REGISTRY: ECR_HOST }, `--password-stdin ${ECR_HOST}`],
    [gar('gcr.io/proj'), '--password-stdin gcr.io'],
    [gar('eu.gcr.io/proj'), '--password-stdin eu.gcr.io'],
    [gar('europe-west4-docker.pkg.dev/proj/repo'), '--password-stdin europe-west4-docker.pkg.dev'],
    // Docker Hub password logins to a registry that takes a user and password: the user's choice.
    [{ DOCKER_REGISTRY: 'ghcr.io', USER_IMAGE_PREFIX: 'ghcr.io/org/user-' }, 'docker login -u earthlabcu --password-stdin ghcr.io'],
    [{ DOCKER_REGISTRY: 'myacr.azurecr.io', USER_IMAGE_PREFIX: 'myacr.azurecr.io/user-' }, 'docker login -u earthlabcu --password-stdin myacr.azurecr.io'],
  ]
  const results = await Promise.all(cases.map(([dotenv]) => hostileRun(repoWithEnv(dotenv), ['staginghub'], { rules: [HELM3, ECR_RULE, ACR_RULE, GAR_RULE] })))
  results.forEach((r, i) => {
    assert.equal(r.code, 0, show(r))
    const login = r.commands.find((c) => c.startsWith('docker login'))
    assert.ok(login?.endsWith(cases[i][1]), `${login}\n${show(r)}`)
  })
})
