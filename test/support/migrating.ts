// Repositories shaped like the four that docs/migrating.md moves in, built by code: the
// original deploy.py's (earthlab/hub-ops before 2021: hub-charts/, Travis), the upstream
// deploy.py's at its head (earthlab/hub-ops at 108871a: hub-configs/, GitHub Actions),
// hubploy's (a folder per deployment under deployments/, one shared chart hub/) and
// mybinder.org-deploy's (one chart mybinder/, a values file per environment). Each is a git
// repository of its own in `<work>/<name>`, beside `<work>/deploy-ts`, a link to this
// checkout: the clone of this repository the page copies deploy.ts from. Secrets are the
// planted ones (git-crypt'ed in the real repositories, plain here, with no .gitattributes
// for them). test/docs.test.ts runs the page's commands in them; test/migrating.test.ts
// checks what deploy.ts makes of them.
import fs from 'node:fs'
import path from 'node:path'
import { GRAFANA_PASSWORD, PASSWORD, PRIVATE_KEY_LINE, ROOT, SECRET_TOKEN, commit, git, tempDir } from './harness.ts'

export const FIXTURES = ['original', 'upstream', 'hubploy', 'mybinder'] as const
export type FixtureName = typeof FIXTURES[number]

const serviceAccountKey = JSON.stringify({ type: 'service_account', private_key: `-----BEGIN PRIVATE KEY-----\n${PRIVATE_KEY_LINE}\n-----END PRIVATE KEY-----\n` })
const stub = (what: string) => `#!/usr/bin/env python3\n# ${what} (a stand-in: the fixture needs the file, not its code)\n`
const dockerfile = (hub: string) => `FROM scratch\nLABEL hub=${hub}\n`

/** A Helm 2 wrapper chart as the original repository keeps it: Chart.yaml, requirements.yaml, values under `jupyterhub:`. */
function helm2Chart(hub: string, image = `earthlabhubops/ea-k8s-user-${hub}`): Record<string, string> {
  return {
    [`hub-charts/${hub}/Chart.yaml`]: `apiVersion: v1\nname: ${hub}\nversion: 0.1.0\ndescription: The ${hub} JupyterHub\n`,
    [`hub-charts/${hub}/requirements.yaml`]: 'dependencies:\n  - name: jupyterhub\n    version: 0.8.2\n    repository: https://jupyterhub.github.io/helm-chart\n',
    [`hub-charts/${hub}/values.yaml`]: `jupyterhub:\n  singleuser:\n    image:\n      name: ${image}\n      tag: set-on-deployment\n  hub:\n    baseUrl: /${hub}/\n`,
  }
}

const MONITORING = {
  'monitoring/Chart.yaml': 'apiVersion: v1\nname: monitoring\nversion: 0.1.0\n',
  'monitoring/requirements.yaml': 'dependencies:\n  - name: prometheus\n    version: 11.0.2\n    repository: https://prometheus-community.github.io/helm-charts\n  - name: grafana\n    version: 5.0.13\n    repository: https://grafana.github.io/helm-charts\n',
  'secrets/monitoring.yaml': `grafana:\n  adminPassword: ${GRAFANA_PASSWORD}\n`,
}

/** The original's .travis.yml, its lines as earthlab/hub-ops had them before 2021 (the installs abridged). */
const ORIGINAL_TRAVIS = `language: python
python:
- 3.7
git:
  depth: false
services:
- docker
cache: pip
install:
- pip install -r dev-requirements.txt
script:
- python ./deploy.py --no-setup --build staginghub
- python ./deploy.py --no-setup --build ea-hub
- pushd docs && make html && popd
before_deploy:
- curl -L https://dl.google.com/dl/cloudsdk/channels/rapid/downloads/google-cloud-sdk-173.0.0-linux-x86_64.tar.gz | tar --directory \${HOME} --extract --gzip --file -
- curl -L https://storage.googleapis.com/kubernetes-release/release/v1.18.2/bin/linux/amd64/kubectl > \${HOME}/bin/kubectl
- curl -L https://storage.googleapis.com/kubernetes-helm/helm-v2.16.7-linux-amd64.tar.gz | tar --directory \${HOME} --extract --gzip --file -
- curl -L https://github.com/minrk/git-crypt-bin/releases/download/0.5.0/git-crypt > \${HOME}/bin/git-crypt
- openssl aes-256-cbc -K $encrypted_7893ea004563_key -iv $encrypted_7893ea004563_iv -in travis/crypt-key.enc -out travis/crypt-key -d
- git-crypt unlock travis/crypt-key
- helm init --client-only
- helm repo add jupyterhub https://jupyterhub.github.io/helm-chart
- helm repo update
- python ./deploy.py --build --push staginghub
- python ./deploy.py --deploy staginghub
- python ./deploy.py --build --push ea-hub
- python ./deploy.py --deploy ea-hub
- python ./deploy.py --deploy monitoring
env:
  global:
  - CLOUDSDK_CORE_DISABLE_PROMPTS=1
  - PATH=\${HOME}/google-cloud-sdk/bin:\${HOME}/bin:\${PATH}
deploy:
  provider: script
  script: /bin/true
  on:
    branch:
    - master
`

/** earthlab/hub-ops before 2021: what the original deploy.py deploys. */
function original(): Record<string, string> {
  return {
    'deploy.py': stub('the original deploy.py: setup, build, deploy of hub-charts/<hub>'),
    'dev-requirements.txt': 'pyyaml\npytest\nrequests\nsphinx\n',
    '.travis.yml': ORIGINAL_TRAVIS,
    'travis/crypt-key.enc': 'Salted__ not a real key\n',
    '.gitignore': 'travis/crypt-key\nhub-charts/*/charts/\nmonitoring/charts/\nrequirements.lock\n',
    ...helm2Chart('staginghub'),
    ...helm2Chart('ea-hub'),
    ...MONITORING,
    'user-images/staginghub/Dockerfile': dockerfile('staginghub'),
    'user-images/ea-hub/Dockerfile': dockerfile('ea-hub'),
    'secrets/staginghub.yaml': `jupyterhub:\n  proxy:\n    secretToken: ${SECRET_TOKEN}\n`,
    'secrets/ea-hub.yaml': `jupyterhub:\n  proxy:\n    secretToken: ${SECRET_TOKEN}\n`,
    'secrets/dockerhub': `${PASSWORD}\n`,
    'secrets/gke-auth-key.json': serviceAccountKey,
  }
}

/** The upstream deploy.py's GitHub workflow before 906e8d3 (build, then deploy, each logging in itself). */
const UPSTREAM_WORKFLOW = `name: Build, push Docker image and redeploy
on:
  push:
    branches:
      - main
env:
  PYTHON_VERSION: 3.8
  DOCKERHUB_USERNAME: earthlabcu
  GKE_PROJECT: ea-jupyter
  GKE_ZONE: us-central1-b
  GKE_CLUSTER: jhub2
jobs:
  build-push:
    runs-on: ubuntu-latest
    strategy:
      matrix:
        hubname: [ea-hub]
    steps:
      - uses: actions/checkout@v2
      - uses: actions/setup-python@v2
        with:
          python-version: \${{ env.PYTHON_VERSION }}
      - uses: docker/login-action@v1
        with:
          username: \${{ env.DOCKERHUB_USERNAME }}
          password: \${{ secrets.DOCKERHUB_TOKEN }}
      - run: python deploy.py --build --push \${{matrix.hubname}}
  deploy:
    needs: build-push
    runs-on: ubuntu-latest
    strategy:
      matrix:
        hubname: [ea-hub]
    steps:
      - uses: actions/checkout@v2
      - uses: actions/setup-python@v2
        with:
          python-version: \${{ env.PYTHON_VERSION }}
      - uses: google-github-actions/setup-gcloud@v0.2.0
        with:
          service_account_key: \${{ secrets.GCLOUD_GH_ACTIONS }}
          project_id: \${{ env.GKE_PROJECT }}
      - uses: google-github-actions/get-gke-credentials@v0.2.1
        with:
          cluster_name: \${{ env.GKE_CLUSTER }}
          location: \${{ env.GKE_ZONE }}
          credentials: \${{ secrets.GCLOUD_GH_ACTIONS }}
      - uses: sliteteam/github-action-git-crypt-unlock@1.0.2
        env:
          GIT_CRYPT_KEY: \${{ secrets.GIT_CRYPT_KEY }}
      - run: python deploy.py --deploy \${{matrix.hubname}}
`

/** hub-configs/<hub>.yaml as earthlab/hub-ops keeps it: values of the upstream chart, no `jupyterhub:` level. */
const upstreamValues = (hub: string) => `hub:\n  baseUrl: /${hub}/\nsingleuser:\n  image:\n    name: earthlabhubops/ea-k8s-user-${hub}\n    tag: set-on-deployment\n  startTimeout: 3600\n`

/** earthlab/hub-ops at 108871a: hub-configs/ on jupyterhub/jupyterhub 0.10.6, the old hub-charts/ still there. */
function upstream(): Record<string, string> {
  const hubs = ['ea-hub', 'nbgrader-hub']
  return {
    'deploy.py': stub('the upstream deploy.py: build, then helm repo add and helm upgrade jupyterhub/jupyterhub 0.10.6 with hub-configs/<hub>.yaml'),
    'dev-requirements.txt': 'pytest\nrequests\nsphinx\n',
    'deprecated-travis.yml': ORIGINAL_TRAVIS,
    '.github/workflows/build-deploy.yml': UPSTREAM_WORKFLOW,
    '.gitignore': 'monitoring/charts/\nrequirements.lock\n',
    'hub-configs/README.md': '# hub-configs\n\nThe values of each hub on the jupyterhub chart.\n',
    ...Object.fromEntries(hubs.map((hub) => [`hub-configs/${hub}.yaml`, upstreamValues(hub)])),
    // The wrapper charts of before, still in the tree: two of hubs now in hub-configs/, two of hubs gone.
    ...helm2Chart('ea-hub'),
    ...helm2Chart('nbgrader-hub'),
    ...helm2Chart('edsc-hub'),
    ...helm2Chart('wshub'),
    ...MONITORING,
    'outer-edge/Chart.yaml': 'apiVersion: v1\nname: outer-edge\nversion: 0.1.0\n',
    ...Object.fromEntries(hubs.map((hub) => [`user-images/${hub}/Dockerfile`, dockerfile(hub)])),
    ...Object.fromEntries([...hubs, 'edsc-hub', 'wshub'].map((hub) => [`secrets/${hub}.yaml`, `proxy:\n  secretToken: ${SECRET_TOKEN}\n`])),
    'secrets/dockerhub': `${PASSWORD}\n`,
    'secrets/gke-auth-key.json': serviceAccountKey,
  }
}

/** hubploy (before 2024: it built the images too): the hubploy-template shape, one deployment, dshub. */
function hubploy(): Record<string, string> {
  const d = 'deployments/dshub'
  return {
    'requirements.txt': 'hubploy==0.3.2\n',
    '.github/workflows/deploy.yaml': 'name: deploy\non:\n  push:\n    branches: [staging, prod]\njobs:\n  deploy:\n    runs-on: ubuntu-latest\n    steps:\n      - uses: actions/checkout@v2\n      - run: pip install -r requirements.txt\n      - run: hubploy build dshub --check-registry --push\n      - run: hubploy deploy dshub hub ${GITHUB_REF_NAME}\n',
    'hub/Chart.yaml': 'apiVersion: v1\nname: hub\nversion: 0.1.0\n',
    'hub/requirements.yaml': 'dependencies:\n  - name: jupyterhub\n    version: 0.9.1\n    repository: https://jupyterhub.github.io/helm-chart\n',
    'hub/values.yaml': 'jupyterhub:\n  proxy:\n    service:\n      type: ClusterIP\n  singleuser:\n    defaultUrl: /lab\n',
    [`${d}/hubploy.yaml`]: [
      'images:',
      '  image_name: gcr.io/ucb-datahub-2018/dshub-user-image',
      '  registry:',
      '    provider: gcloud',
      '    gcloud:',
      '      project: ucb-datahub-2018',
      '      service_key: gcr-key.json',
      'cluster:',
      '  provider: gcloud',
      '  gcloud:',
      '    project: ucb-datahub-2018',
      '    cluster: fall-2019',
      '    zone: us-central1-b',
      '    service_key: gke-key.json',
      '',
    ].join('\n'),
    // repo2docker's files, no Dockerfile: hubploy built the image with repo2docker.
    [`${d}/image/requirements.txt`]: 'pandas==2.2.3\n',
    [`${d}/image/postBuild`]: '#!/bin/bash\njupyter labextension list\n',
    [`${d}/config/common.yaml`]: 'jupyterhub:\n  singleuser:\n    memory:\n      guarantee: 1G\n      limit: 2G\n',
    [`${d}/config/staging.yaml`]: 'jupyterhub:\n  ingress:\n    enabled: true\n    hosts: [staging.dshub.example.org]\n',
    [`${d}/config/prod.yaml`]: 'jupyterhub:\n  ingress:\n    enabled: true\n    hosts: [dshub.example.org]\n',
    [`${d}/secrets/staging.yaml`]: `jupyterhub:\n  proxy:\n    secretToken: ${SECRET_TOKEN}\n`,
    [`${d}/secrets/prod.yaml`]: `jupyterhub:\n  proxy:\n    secretToken: ${SECRET_TOKEN}\n`,
    [`${d}/secrets/gke-key.json`]: serviceAccountKey,
    [`${d}/secrets/gcr-key.json`]: serviceAccountKey,
  }
}

/** mybinder.org-deploy: one chart, mybinder/, a values file per environment, each environment on its own cluster. */
function mybinder(): Record<string, string> {
  const kubeconfig = 'apiVersion: v1\nkind: Config\nclusters:\n  - name: staging\n    cluster: { server: "https://staging.k8s.example.org" }\nusers:\n  - name: deployer\n    user: { token: kubeconfig-bearer-token-0123456789 }\ncontexts:\n  - name: staging\n    context: { cluster: staging, user: deployer }\ncurrent-context: staging\n'
  return {
    'deploy.py': stub('mybinder.org-deploy deploy.py: auth per cluster, network bans, system charts, cert-manager, then helm upgrade of mybinder/'),
    'requirements.txt': 'chartpress==2.3.0\n',
    'chartpress.yaml': 'charts:\n  - name: mybinder\n    imagePrefix: jupyterhub/mybinder.org-\n    images:\n      analytics-publisher:\n        valuesPath: analyticsPublisher.image\n',
    '.gitignore': 'mybinder*/charts\nmybinder*/Chart.lock\n',
    'images/analytics-publisher/Dockerfile': 'FROM scratch\n',
    'mybinder/Chart.yaml': 'apiVersion: v2\nname: mybinder\nversion: "0.0.1-set.by.chartpress"\ndependencies:\n  - name: binderhub\n    version: "1.0.0-0.dev.git.3983.h383374de"\n    repository: https://jupyterhub.github.io/helm-chart\n    condition: binderhubEnabled\n',
    'mybinder/values.yaml': 'binderhubEnabled: true\nanalyticsPublisher:\n  image:\n    name: jupyterhub/mybinder.org-analytics-publisher\n    tag: set-by-chartpress\n',
    'mybinder/templates/static.yaml': 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: static\ndata:\n  project: {{ .Values.projectName | quote }}\n',
    'config/staging.yaml': 'projectName: staging\nbinderhub:\n  config:\n    BinderHub:\n      hub_url: https://hub.staging.example.org\n',
    'config/prod.yaml': 'projectName: binderhub-288415\nbinderhub:\n  config:\n    BinderHub:\n      hub_url: https://hub.example.org\n',
    'secrets/config/staging.yaml': `binderhub:\n  jupyterhub:\n    proxy:\n      secretToken: ${SECRET_TOKEN}\n`,
    'secrets/config/prod.yaml': `binderhub:\n  jupyterhub:\n    proxy:\n      secretToken: ${SECRET_TOKEN}\n`,
    'secrets/staging-kubeconfig.yaml': kubeconfig,
    'secrets/gke-auth-key-prod.json': serviceAccountKey,
  }
}

const SHAPES: Record<FixtureName, () => Record<string, string>> = { original, upstream, hubploy, mybinder }

export interface Fixture {
  /** The repository moving in: where the page's commands run. */
  repo: string
  /** Its parent: also holds deploy-ts, the link to this checkout. */
  work: string
}

/**
 * The repository `name` is shaped like, committed, with git's identity configured as in a
 * user's clone; node_modules linked as `npm ci` would make it (untracked until the page's
 * .gitignore line); `../deploy-ts` is this checkout. `files` (the files the page shows whole)
 * are written and committed after it, as a user writes them.
 */
export function migrationFixture(name: FixtureName, files: Record<string, string> = {}): Fixture {
  const work = tempDir(`deploy-migrate-${name}-`)
  const repo = path.join(work, name)
  fs.mkdirSync(repo)
  git(repo, 'init', '-q', '-b', name === 'original' ? 'master' : 'main')
  git(repo, 'config', 'user.name', 'Hub Admin')
  git(repo, 'config', 'user.email', 'hubs@example.org')
  commit(repo, SHAPES[name](), `the repository as ${name} keeps it`)
  if (Object.keys(files).length) commit(repo, files, 'the files docs/migrating.md shows')
  fs.symlinkSync(ROOT, path.join(work, 'deploy-ts'))
  fs.symlinkSync(path.join(ROOT, 'node_modules'), path.join(repo, 'node_modules'))
  return { repo, work }
}
