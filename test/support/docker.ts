// Helpers for tests that need a real Docker engine and the local registry
// started by test/services.sh (see docs/notes-docker-testbed.md).
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { accessSync, constants, createWriteStream, existsSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { homedir, tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { finished } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';

/** The registry test/services.sh runs (plain HTTP, loopback only); HUBOPS_REGISTRY as there. */
export const TEST_REGISTRY = process.env.HUBOPS_REGISTRY || '127.0.0.1:5000';
const SERVICES_SH = fileURLToPath(new URL('../services.sh', import.meta.url));

/** Debian docker.io's 20.10 client: the one that can use BuildKit here
 * (/usr/local/bin/docker, first on PATH, cannot). */
export const PREFERRED_DOCKER = '/usr/bin/docker';

/** Static busybox from Debian's busybox-static. */
export const BUSYBOX = '/bin/busybox';

/** Manifest media types a registry may answer a tag with. */
export const MANIFEST_ACCEPT = [
  'application/vnd.docker.distribution.manifest.v2+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.oci.image.index.v1+json',
].join(', ');

function isExecutable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** Path of the docker client tests should run: /usr/bin/docker when installed,
 * else plain `docker` (resolved on PATH, may lack BuildKit). */
export function dockerClient(): string {
  return isExecutable(PREFERRED_DOCKER) ? PREFERRED_DOCKER : 'docker';
}

function run(
  file: string,
  args: string[],
  timeoutMs: number,
): Promise<{ ok: boolean; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    try {
      execFile(file, args, { timeout: timeoutMs, killSignal: 'SIGKILL' }, (err, stdout, stderr) => {
        resolve({ ok: !err, stdout: String(stdout), stderr: String(stderr) });
      });
    } catch {
      resolve({ ok: false, stdout: '', stderr: '' });
    }
  });
}

/** True when the engine answers `docker version` for this client (bounded). */
export async function engineAnswers(docker = dockerClient(), timeoutMs = 1500): Promise<boolean> {
  const r = await run(docker, ['version', '--format', '{{.Server.Version}}'], timeoutMs);
  return r.ok && r.stdout.trim() !== '';
}

/** True when GET http://<registry>/v2/ answers 200 (bounded). */
export async function registryAnswers(registry = TEST_REGISTRY, timeoutMs = 1500): Promise<boolean> {
  try {
    const res = await fetch(`http://${registry}/v2/`, { signal: AbortSignal.timeout(timeoutMs) });
    await res.body?.cancel();
    return res.status === 200;
  } catch {
    return false;
  }
}

/**
 * The docker client and registry to use when both the engine and the local
 * registry answer, else null. Never throws; about 1.5 s at most when absent
 * (both probes run in parallel). Tests use it to skip:
 *   const env = await dockerEngine(); test('...', { skip: !env && 'no docker' }, ...)
 */
export async function dockerEngine(): Promise<DockerEnv | null> {
  try {
    const docker = dockerClient();
    const [engine, registry] = await Promise.all([engineAnswers(docker), registryAnswers(TEST_REGISTRY)]);
    return engine && registry ? { docker, registry: TEST_REGISTRY } : null;
  } catch {
    return null;
  }
}

export type DockerEnv = { docker: string; registry: string };

/** The engine and registry a suite uses, and how to stop what the suite itself started. */
export type DockerServices =
  | { engine: DockerEnv; stop: () => Promise<void> }
  | { engine: null; reason: string };

const onPath = (name: string) => (process.env.PATH ?? '').split(delimiter).some((dir) => dir && isExecutable(join(dir, name)));

/** Why test/services.sh cannot start the services here, or undefined when it can. */
function cannotStart(): string | undefined {
  if (process.getuid?.() !== 0) return 'not root, so they cannot be started (run `sudo bash test/services.sh start` first)';
  if (!onPath('apt-get') && !(onPath('dockerd') && onPath('docker-registry'))) return 'neither apt-get nor dockerd and docker-registry are available to start them';
  return undefined;
}

/**
 * The Docker engine and registry for a suite. Services that answer already are used and never
 * stopped (they may be shared); otherwise, where they can be started (root; apt-get, or the
 * packages installed), `bash test/services.sh start` starts the missing ones with a state dir
 * of this run only, so `stop` stops exactly those. Else the one-line reason to skip.
 */
export async function dockerServices(): Promise<DockerServices> {
  const running = await dockerEngine();
  if (running) return { engine: running, stop: async () => {} };
  const missing = `Docker engine or registry ${TEST_REGISTRY} not answering`;
  const cannot = cannotStart();
  if (cannot) return { engine: null, reason: `${missing}, and ${cannot}` };
  const dir = await mkdtemp(join(tmpdir(), 'hubops-services-'));
  const env = { ...process.env, HUBOPS_SERVICES_DIR: dir, HUBOPS_REGISTRY: TEST_REGISTRY };
  const services = (cmd: string) => new Promise<{ ok: boolean; stderr: string }>((resolve) =>
    execFile('bash', [SERVICES_SH, cmd], { env, timeout: 600_000 }, (err, _stdout, stderr) => resolve({ ok: !err, stderr: String(stderr) })));
  const stop = async () => {
    await services('stop');
    await rm(dir, { recursive: true, force: true });
  };
  const started = await services('start');
  const engine = started.ok ? await dockerEngine() : null;
  if (engine) return { engine, stop };
  await stop();
  const why = started.stderr.trim().split('\n').at(-1) || 'they still do not answer';
  return { engine: null, reason: `${missing}, and \`bash test/services.sh start\` failed: ${why}` };
}

/**
 * Whether `repo:tag` exists in the registry: HEAD /v2/<repo>/manifests/<tag>.
 * `repo` is the path inside the registry ("test/img"); a leading
 * "127.0.0.1:5000/" is stripped. Throws when the registry does not answer or
 * answers anything but 200/404.
 */
export async function registryHasTag(repo: string, tag: string, registry = TEST_REGISTRY): Promise<boolean> {
  const path = repo.startsWith(`${registry}/`) ? repo.slice(registry.length + 1) : repo;
  const res = await fetch(`http://${registry}/v2/${path}/manifests/${encodeURIComponent(tag)}`, {
    method: 'HEAD',
    headers: { Accept: MANIFEST_ACCEPT },
    signal: AbortSignal.timeout(5000),
  });
  if (res.status === 200) return true;
  if (res.status === 404) return false;
  throw new Error(`registry ${registry}: HEAD ${path}:${tag} answered ${res.status} ${res.statusText}`);
}

export interface FixtureOptions {
  /** Directory to write into (created if missing); default: a new temp dir. */
  dir?: string;
  /** Adds `pad.bin` (this many MiB of random bytes) as its own layer. */
  padMB?: number;
  /** Adds `marker.txt` with this text as the last layer (change it to get a
   * new top layer while the busybox/pad layers stay cacheable). */
  marker?: string;
  /** Image CMD (exec form). Default: busybox echo. */
  cmd?: string[];
  /** Extra Dockerfile lines appended at the end. */
  extraLines?: string[];
  /** Static busybox to copy in; default /bin/busybox (busybox-static). */
  busybox?: string;
}

export interface Fixture {
  dir: string;
  dockerfile: string;
  /** Bytes written to the context (busybox + pad + marker + Dockerfile). */
  bytes: number;
}

async function writeRandomFile(path: string, mib: number): Promise<number> {
  const out = createWriteStream(path);
  const chunk = 1024 * 1024;
  for (let i = 0; i < mib; i++) {
    if (!out.write(randomBytes(chunk))) await new Promise<void>((r) => out.once('drain', () => r()));
  }
  out.end();
  await finished(out);
  return mib * chunk;
}

/**
 * Writes a minimal build context: a `FROM scratch` image holding the static
 * busybox, optionally padded with N MiB of random data (benchmarks use 50 /
 * 150 / 500). Needs no network and no base image.
 */
export async function writeFixtureContext(opts: FixtureOptions = {}): Promise<Fixture> {
  const dir = opts.dir ?? (await mkdtemp(join(tmpdir(), 'hubops-fixture-')));
  await mkdir(dir, { recursive: true });
  const busybox = opts.busybox ?? BUSYBOX;
  await copyFile(busybox, join(dir, 'busybox'));
  let bytes = (await stat(busybox)).size;
  const lines = ['FROM scratch', 'COPY busybox /bin/busybox'];
  if (opts.padMB && opts.padMB > 0) {
    bytes += await writeRandomFile(join(dir, 'pad.bin'), opts.padMB);
    lines.push('COPY pad.bin /pad.bin');
  }
  if (opts.marker !== undefined) {
    await writeFile(join(dir, 'marker.txt'), opts.marker);
    bytes += Buffer.byteLength(opts.marker);
    lines.push('COPY marker.txt /marker.txt');
  }
  lines.push(`CMD ${JSON.stringify(opts.cmd ?? ['/bin/busybox', 'echo', 'hello from hubops fixture'])}`);
  lines.push(...(opts.extraLines ?? []));
  const dockerfile = join(dir, 'Dockerfile');
  const text = `${lines.join('\n')}\n`;
  await writeFile(dockerfile, text);
  bytes += Buffer.byteLength(text);
  return { dir, dockerfile, bytes };
}

/**
 * A fresh DOCKER_CONFIG dir (so `docker login` in a test does not touch
 * ~/.docker/config.json). The client looks for CLI plugins in
 * $DOCKER_CONFIG/cli-plugins first, then /usr/local/lib, /usr/local/libexec,
 * /usr/lib and /usr/libexec .../docker/cli-plugins: only the per-user dir is
 * lost by switching DOCKER_CONFIG, so it is symlinked here when it exists.
 * (/usr/bin/docker 20.10 needs no plugin for `DOCKER_BUILDKIT=1 docker build`;
 * the 28.x client needs buildx, which is not installed here.)
 * Pass the result as env DOCKER_CONFIG to the docker commands.
 */
export async function makeDockerConfig(
  config: Record<string, unknown> = {},
  parent = tmpdir(),
): Promise<string> {
  const dir = await mkdtemp(join(parent, 'hubops-docker-config-'));
  const current = process.env.DOCKER_CONFIG || join(homedir(), '.docker');
  const plugins = join(current, 'cli-plugins');
  if (existsSync(plugins)) await symlink(plugins, join(dir, 'cli-plugins'));
  await writeFile(join(dir, 'config.json'), `${JSON.stringify(config, null, 2)}\n`, { mode: 0o600 });
  return dir;
}
