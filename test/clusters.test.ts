// Setup for every cluster and registry provider: the exact command lists, tokens only on
// stdin, the private kubeconfig, preflight refusals, and the dry-run plan.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import crypto from 'node:crypto'
import {
  makeRepo, runDeploy, tempDir, standinBin, assertUsageError, HELM2, HELM3, CLOUD_TOKENS, PASSWORD, SETUP_COMMANDS, ROOT,
  type RunResult, type Rule,
} from './support/harness.ts'

const sha256 = (s: string) => crypto.createHash('sha256').update(s).digest('hex')
const HELM_VERSION = 'helm version --client --short'

/** The commands, with the run's private kubeconfig path written as $KUBECONFIG. */
function commands(r: RunResult): string[] {
  const kubeconfig = r.calls.find((c) => c.env.KUBECONFIG)?.env.KUBECONFIG
  return kubeconfig ? r.commands.map((c) => c.split(kubeconfig).join('$KUBECONFIG')) : r.commands
}

const call = (r: RunResult, start: string) => r.calls.find((c) => [c.tool, ...c.argv].join(' ').startsWith(start))!

/** The KUBECONFIG every call got: one private file outside HOME, gone after the run. */
function assertPrivateKubeconfig(r: RunResult) {
  const [first, ...rest] = r.calls.filter((c) => !(c.tool === 'helm' && c.argv[0] === 'version'))
  const kubeconfig = first.env.KUBECONFIG
  assert.ok(kubeconfig?.startsWith(os.tmpdir()) && !kubeconfig.startsWith(r.home), String(kubeconfig))
  for (const c of rest) assert.equal(c.env.KUBECONFIG, kubeconfig, `${c.tool} ${c.argv.join(' ')}`)
  assert.ok(!fs.existsSync(path.dirname(kubeconfig!)), 'the private dir is removed after the run')
}

const AWS = { CLUSTER_PROVIDER: 'eks', EKS_CLUSTER: 'hubs', AWS_REGION: 'us-west-2' }
const ECR_HOST = '123456789012.dkr.ecr.us-west-2.amazonaws.com'
const ECR = { REGISTRY_PROVIDER: 'ecr', AWS_REGION: 'us-west-2', USER_IMAGE_PREFIX: `${ECR_HOST}/ea-k8s-user-`, HUB_IMAGE_PREFIX: `${ECR_HOST}/ea-k8s-hub-` }
const ECR_RULE: Rule = { tool: 'aws', match: '^ecr get-login-password', stdout: `${CLOUD_TOKENS.ecr}\n` }

/** A GitHub OIDC credential file for Google Cloud, as google-github-actions/auth writes it. */
const WIF_FILE = JSON.stringify({
  type: 'external_account',
  audience: '//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/github/providers/github',
  subject_token_type: 'urn:ietf:params:oauth:token-type:jwt',
  token_url: 'https://sts.googleapis.com/v1/token',
  credential_source: { url: 'https://token.actions.githubusercontent.example/?audience=x', headers: { Authorization: `Bearer ${CLOUD_TOKENS.oidcRequest}` }, format: { type: 'json', subject_token_field_name: 'value' } },
})

/** Azure's service principal, logging in with a federated token from a file outside the repository. */
function azureFederated(): Record<string, string> {
  const file = path.join(tempDir(), 'azure-token')
  fs.writeFileSync(file, `${CLOUD_TOKENS.federated}\n`)
  return { AZURE_CLIENT_ID: 'app-id-1', AZURE_TENANT_ID: 'tenant-1', AZURE_FEDERATED_TOKEN_FILE: file }
}

const AKS = { CLUSTER_PROVIDER: 'aks', AKS_RESOURCE_GROUP: 'hubs-rg', AKS_CLUSTER: 'hubs' }
const ACR = { REGISTRY_PROVIDER: 'acr', ACR_NAME: 'hubsacr', USER_IMAGE_PREFIX: 'hubsacr.azurecr.io/user-', HUB_IMAGE_PREFIX: 'hubsacr.azurecr.io/hub-' }
const ACR_RULE: Rule = { tool: 'az', match: '^acr login', stdout: JSON.stringify({ accessToken: CLOUD_TOKENS.acr, loginServer: 'hubsacr.azurecr.io' }) }

const KUBECONFIG_YAML = `apiVersion: v1
kind: Config
clusters: [{ name: hubs, cluster: { server: 'https://hubs.example.org' } }]
users: [{ name: deployer, user: { token: ${CLOUD_TOKENS.kubeconfig} } }]
contexts: [{ name: hubs, context: { cluster: hubs, user: deployer } }]
current-context: hubs
`

test('the default, gke + dockerhub, named explicitly, is still the original\'s setup (Helm 2 and 3)', { timeout: 25_000 }, async () => {
  const env = { CLUSTER_PROVIDER: 'gke', REGISTRY_PROVIDER: 'dockerhub' }
  for (const [rule, major] of [[HELM2, 2], [HELM3, 3]] as const) {
    const r = await runDeploy(makeRepo(), ['staginghub'], { rules: [rule], env })
    assert.equal(r.code, 0, r.stderr)
    assert.deepEqual(r.commands, [HELM_VERSION, ...SETUP_COMMANDS[major]])
  }
})

test('gke with a workload identity federation file logs in keyless with gcloud auth login --cred-file', { timeout: 20_000 }, async () => {
  const repo = makeRepo({ secrets: { 'secrets/gke-wif.json': WIF_FILE } })
  const r = await runDeploy(repo, ['staginghub'], {
    env: { GCLOUD_KEY_FILE: 'secrets/gke-wif.json' },
    rules: [HELM3, { tool: 'gcloud', match: '^auth login', stderr: `using ${CLOUD_TOKENS.oidcRequest}\n`, exit: 1 }],
  })
  // The request token gcloud would print in an error is masked like every secret of the file.
  assert.equal(r.code, 1)
  assert.match(r.stderr, /using \*\*\*/)
  const ok = await runDeploy(repo, ['staginghub'], { env: { GCLOUD_KEY_FILE: 'secrets/gke-wif.json' } })
  assert.equal(ok.code, 0, ok.stderr)
  assert.deepEqual(ok.commands, [
    HELM_VERSION,
    'gcloud auth login --cred-file=secrets/gke-wif.json',
    'gcloud container clusters get-credentials jhub --zone=us-central1-b --project=ea-jupyter',
    'docker login -u earthlabcu --password-stdin',
  ])
})

test('eks + ecr: update-kubeconfig into the private KUBECONFIG, the ECR password piped to docker login', { timeout: 15_000 }, async () => {
  const r = await runDeploy(makeRepo(), ['staginghub'], { env: { ...AWS, ...ECR }, rules: [HELM3, ECR_RULE] })
  assert.equal(r.code, 0, r.stderr)
  assert.deepEqual(r.commands, [
    HELM_VERSION,
    'aws eks update-kubeconfig --name hubs --region us-west-2',
    'aws ecr get-login-password --region us-west-2',
    `docker login --username AWS --password-stdin ${ECR_HOST}`,
  ])
  assert.equal(call(r, 'docker login').stdinSha256, sha256(CLOUD_TOKENS.ecr))
  assert.equal(call(r, 'aws ecr').stdinSha256, null)
  assertPrivateKubeconfig(r)
})

test('aks + acr with a federated token: the token reaches az on stdin (@-), the ACR token reaches docker on stdin', { timeout: 15_000 }, async () => {
  const r = await runDeploy(makeRepo(), ['staginghub'], { env: { ...AKS, ...ACR, ...azureFederated() }, rules: [HELM3, ACR_RULE] })
  assert.equal(r.code, 0, r.stderr)
  assert.deepEqual(commands(r), [
    HELM_VERSION,
    'az login --service-principal --username app-id-1 --tenant tenant-1 --federated-token @-',
    'az aks get-credentials --resource-group hubs-rg --name hubs --file $KUBECONFIG',
    'az acr login --name hubsacr --expose-token --output json',
    'docker login --username 00000000-0000-0000-0000-000000000000 --password-stdin hubsacr.azurecr.io',
  ])
  assert.equal(call(r, 'az login').stdinSha256, sha256(CLOUD_TOKENS.federated))
  assert.equal(call(r, 'docker login').stdinSha256, sha256(CLOUD_TOKENS.acr))
  // az keeps its login in the private dir too, never in ~/.azure.
  const azureDir = call(r, 'az login').env.AZURE_CONFIG_DIR!
  assert.equal(path.dirname(azureDir), path.dirname(call(r, 'az login').env.KUBECONFIG!))
  assertPrivateKubeconfig(r)
})

test('aks with a certificate and kubelogin, registry none: no password anywhere, no docker login', { timeout: 15_000 }, async () => {
  const pem = path.join(tempDir(), 'sp.pem')
  fs.writeFileSync(pem, `-----BEGIN PRIVATE KEY-----\n${CLOUD_TOKENS.certificateKey}\n-----END PRIVATE KEY-----\n-----BEGIN CERTIFICATE-----\nMIIBcert\n-----END CERTIFICATE-----\n`)
  const r = await runDeploy(makeRepo(), ['staginghub'], {
    env: { ...AKS, AZURE_CLIENT_ID: 'app-id-1', AZURE_TENANT_ID: 'tenant-1', AZURE_CLIENT_CERTIFICATE_PATH: pem, AKS_KUBELOGIN: 'azurecli', REGISTRY_PROVIDER: 'none' },
    rules: [HELM3, { tool: 'az', match: '^login', stdout: `[{"cloudName": "AzureCloud", "debug": "${CLOUD_TOKENS.certificateKey}"}]\n` }],
  })
  assert.equal(r.code, 0, r.stderr)
  assert.deepEqual(commands(r), [
    HELM_VERSION,
    `az login --service-principal --username app-id-1 --tenant tenant-1 --certificate ${pem}`,
    'az aks get-credentials --resource-group hubs-rg --name hubs --file $KUBECONFIG',
    'kubelogin convert-kubeconfig --login azurecli --kubeconfig $KUBECONFIG',
  ])
})

test('kubeconfig + gar: the repository\'s kubeconfig copied privately, a gcloud access token piped to docker login', { timeout: 20_000 }, async () => {
  const repo = makeRepo({ secrets: { 'secrets/kubeconfig.yaml': KUBECONFIG_YAML } })
  const r = await runDeploy(repo, ['--deploy', 'staginghub'], {
    env: { CLUSTER_PROVIDER: 'kubeconfig', REGISTRY_PROVIDER: 'gar', USER_IMAGE_PREFIX: 'us-docker.pkg.dev/hubs/images/user-', HUB_IMAGE_PREFIX: 'us-docker.pkg.dev/hubs/images/hub-' },
    rules: [
      HELM3,
      { tool: 'gcloud', match: '^auth print-access-token', stdout: `${CLOUD_TOKENS.gar}\n` },
      // A tool that echoes the registry token or the kubeconfig's token has it masked.
      { tool: 'helm', match: '^upgrade', stdout: `token ${CLOUD_TOKENS.gar} ${CLOUD_TOKENS.kubeconfig}\n` },
      { tool: 'kubectl', match: 'get deployments', stdout: '' },
    ],
  })
  assert.equal(r.code, 0, r.stderr)
  assert.deepEqual(commands(r).slice(0, 4), [
    HELM_VERSION,
    'gcloud auth activate-service-account --key-file=secrets/gke-auth-key.json',
    'gcloud auth print-access-token',
    'docker login --username oauth2accesstoken --password-stdin us-docker.pkg.dev',
  ])
  assert.equal(call(r, 'docker login').stdinSha256, sha256(CLOUD_TOKENS.gar))
  assert.equal(call(r, 'kubectl').kubeconfigSha256, sha256(KUBECONFIG_YAML.trim()))
  assert.match(r.stdout, /token \*\*\* \*\*\*/)
  assertPrivateKubeconfig(r)
})

test('kubeconfig + none needs no cloud CLI at all', { timeout: 15_000 }, async () => {
  const bin = standinBin(['helm', 'kubectl', 'docker'])
  for (const tool of ['git', 'bash', 'node']) {
    const real = (process.env.PATH ?? '').split(':').map((d) => path.join(d, tool)).find((p) => fs.existsSync(p))!
    fs.symlinkSync(real, path.join(bin, tool))
  }
  const repo = makeRepo({ secrets: { 'secrets/kubeconfig.yaml': KUBECONFIG_YAML } })
  const r = await runDeploy(repo, ['staginghub'], { path: bin, noStandins: true, env: { CLUSTER_PROVIDER: 'kubeconfig', REGISTRY_PROVIDER: 'none' } })
  assert.equal(r.code, 0, r.stderr)
  assert.deepEqual(r.commands, [HELM_VERSION])
})

test('preflight: an unknown provider, a missing key or file, a missing CLI is one line, exit 2, nothing run', { timeout: 45_000 }, async () => {
  const repo = makeRepo()
  const cases: Array<[Record<string, string>, string, string[]?]> = [
    [{ CLUSTER_PROVIDER: 'gcp' }, 'CLUSTER_PROVIDER=gcp: unknown provider; use one of gke, eks, aks, kubeconfig'],
    [{ REGISTRY_PROVIDER: 'quay' }, 'REGISTRY_PROVIDER=quay: unknown provider; use one of dockerhub, gar, ecr, acr, none'],
    [{ CLUSTER_PROVIDER: 'eks', AWS_REGION: 'us-west-2' }, 'EKS_CLUSTER is not set: CLUSTER_PROVIDER=eks needs it; set it in .env'],
    [{ ...AKS, AZURE_CLIENT_ID: 'app-id-1' }, 'AZURE_TENANT_ID is not set: CLUSTER_PROVIDER=aks logs az in by federated token (AZURE_CLIENT_ID, AZURE_TENANT_ID, AZURE_FEDERATED_TOKEN_FILE) or certificate'],
    [{ ...AKS, AZURE_CLIENT_ID: 'a', AZURE_TENANT_ID: 't', AZURE_FEDERATED_TOKEN_FILE: '/nonexistent/token' }, '/nonexistent/token: AZURE_FEDERATED_TOKEN_FILE (the federated (OIDC) token) not found'],
    [{ ...AWS, REGISTRY_PROVIDER: 'ecr' }, 'USER_IMAGE_PREFIX=earthlabhubops/ea-k8s-user- names no registry host, which REGISTRY_PROVIDER=ecr logs in to'],
    [{ CLUSTER_PROVIDER: 'kubeconfig' }, 'secrets/kubeconfig.yaml: KUBECONFIG_FILE (the cluster\'s kubeconfig) not found'],
    [{ ...AWS }, 'aws not found on PATH: install the AWS CLI v2 (https://', ['gcloud', 'az', 'helm', 'kubectl', 'docker']],
    [{ ...AKS, ...azureFederated(), AKS_KUBELOGIN: 'azurecli' }, 'kubelogin not found on PATH: install kubelogin', ['gcloud', 'aws', 'az', 'helm', 'kubectl', 'docker']],
  ]
  for (const [env, message, tools] of cases) {
    const bin = tools && standinBin(tools)
    if (bin) for (const tool of ['git', 'bash', 'node']) {
      const real = (process.env.PATH ?? '').split(':').map((d) => path.join(d, tool)).find((p) => fs.existsSync(p))!
      fs.symlinkSync(real, path.join(bin, tool))
    }
    const r = await runDeploy(repo, ['--deploy', 'staginghub'], bin ? { env, path: bin, noStandins: true } : { env })
    assertUsageError(r, message)
  }
})

test('Helm 2 stays GKE-only: another provider with Helm 2 is refused before setup', { timeout: 15_000 }, async () => {
  const r = await runDeploy(makeRepo(), ['staginghub'], { env: AWS, rules: [HELM2] })
  assertUsageError(r, 'CLUSTER_PROVIDER=eks needs Helm 3: Helm 2\'s tiller is set up only on gke')
})

test('--no-setup ignores the provider keys (the user\'s own credentials) but still checks the provider names', { timeout: 15_000 }, async () => {
  // A phase is needed (--no-setup alone does nothing and is refused); the dry run runs only the Helm probe.
  const ok = await runDeploy(makeRepo(), ['--dry-run', '--no-setup', '--deploy', 'staginghub'], { env: { CLUSTER_PROVIDER: 'eks', REGISTRY_PROVIDER: 'ecr' } })
  assert.equal(ok.code, 0, ok.stderr)
  assert.deepEqual(ok.commands, [HELM_VERSION])
  assertUsageError(await runDeploy(makeRepo(), ['--no-setup', '--deploy', 'staginghub'], { env: { CLUSTER_PROVIDER: 'EKS' } }), 'CLUSTER_PROVIDER=EKS: unknown provider')
})

test('--dry-run shows the chosen providers\' commands and runs none of them', { timeout: 20_000 }, async () => {
  // A dry run announces each command it skips as a real run announces what it runs.
  const plan = (r: RunResult) => r.stderr.split('\n').filter((l) => l.startsWith('INFO:root:Executing')).map((l) => l.replace(/^INFO:root:Executing (and capturing )?/, ''))
  const eks = await runDeploy(makeRepo(), ['--dry-run', 'staginghub'], { env: { ...AWS, ...ECR } })
  assert.equal(eks.code, 0, eks.stderr)
  assert.deepEqual(eks.commands, [HELM_VERSION])
  assert.deepEqual(plan(eks), [
    'aws eks update-kubeconfig --name hubs --region us-west-2',
    'aws ecr get-login-password --region us-west-2',
    `docker login --username AWS --password-stdin ${ECR_HOST}`,
  ])
  const aks = await runDeploy(makeRepo(), ['--dry-run', 'staginghub'], { env: { ...AKS, ...ACR, ...azureFederated() } })
  assert.equal(aks.code, 0, aks.stderr)
  assert.deepEqual(plan(aks).map((l) => l.replace(/--file \S+/, '--file $KUBECONFIG')), [
    'az login --service-principal --username app-id-1 --tenant tenant-1 --federated-token @-',
    'az aks get-credentials --resource-group hubs-rg --name hubs --file $KUBECONFIG',
    'az acr login --name hubsacr --expose-token --output json',
    'docker login --username 00000000-0000-0000-0000-000000000000 --password-stdin hubsacr.azurecr.io',
  ])
  const repo = makeRepo({ secrets: { 'secrets/kubeconfig.yaml': KUBECONFIG_YAML } })
  const kube = await runDeploy(repo, ['--dry-run', 'staginghub'], { env: { CLUSTER_PROVIDER: 'kubeconfig' } })
  assert.equal(kube.code, 0, kube.stderr)
  assert.match(kube.stdout, /^# KUBECONFIG: a private copy of secrets\/kubeconfig\.yaml$/m)
  assert.deepEqual(plan(kube), ['docker login -u earthlabcu --password-stdin'])
  assert.ok(!(kube.stdout + kube.stderr).includes(PASSWORD))
})

test('a cloud CLI that prints no token fails the run naming the command, before docker login', { timeout: 15_000 }, async () => {
  const r = await runDeploy(makeRepo(), ['staginghub'], { env: { ...AWS, ...ECR }, rules: [HELM3, { tool: 'aws', match: '^ecr', stdout: '' }] })
  assert.equal(r.code, 1)
  assert.match(r.stderr, /aws ecr get-login-password printed no token/)
  assert.ok(!r.commands.some((c) => c.startsWith('docker login')))
})

test('docs/clusters.md: its deploy.ts example runs as written and plans the provider\'s commands', { timeout: 15_000 }, async () => {
  const doc = fs.readFileSync(path.join(ROOT, 'docs/clusters.md'), 'utf8')
  const lines = doc.split('\n').filter((l) => /npx tsx deploy\.ts /.test(l))
  assert.ok(lines.length >= 1)
  for (const line of lines) {
    const m = /^((?:[A-Z_]+=\S+ )*)npx tsx deploy\.ts (.*)$/.exec(line)!
    const env = Object.fromEntries(m[1].trim().split(/\s+/).map((kv) => kv.split('=') as [string, string]))
    const r = await runDeploy(makeRepo(), m[2].split(/\s+/), { env })
    assert.equal(r.code, 0, r.stderr)
    assert.match(r.stderr, new RegExp(`^INFO:root:Executing aws eks update-kubeconfig --name ${env.EKS_CLUSTER} --region ${env.AWS_REGION}$`, 'm'))
  }
})
