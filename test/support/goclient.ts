/**
 * The static Go test client (test/fixtures/goclient/main.go): a program LD_PRELOAD cannot touch,
 * for tests of the kernel backstop. Built once into build/goclient with CGO_ENABLED=0 (a static
 * binary that never uses libc), rebuilt only when main.go is newer. The Go caches live under
 * build/go/ (HOME may be unwritable), and GOPROXY=off: the program has no dependencies, so the
 * build never needs the network. Needs the `go` command (Debian: golang-go, see scripts/setup.sh).
 */
import { execFile } from 'node:child_process';
import { mkdirSync, renameSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { publicPath } from '../../src/lab/public.js';
import { PACKAGE_ROOT } from '../../src/version.js';

export const GOCLIENT_SOURCE = join(PACKAGE_ROOT, 'test/fixtures/goclient/main.go');
export const GOCLIENT_BINARY = join(PACKAGE_ROOT, 'build/goclient');
const GO_DIR = join(PACKAGE_ROOT, 'build/go');

function mtimeMs(path: string): number | null {
  try {
    return statSync(path).mtimeMs;
  } catch {
    return null;
  }
}

let building: Promise<string> | undefined;

/** Path of the built client; builds it first when missing or older than main.go. */
export function buildGoClient(): Promise<string> {
  building ??= build().finally(() => {
    building = undefined;
  });
  return building;
}

/** The built client at a path every uid can run (src/lab/public.ts), for tests as other users. */
export async function buildPublicGoClient(): Promise<string> {
  await buildGoClient();
  return publicPath('build/goclient');
}

async function build(): Promise<string> {
  const src = mtimeMs(GOCLIENT_SOURCE);
  if (src === null) throw new Error(`goclient source missing: ${GOCLIENT_SOURCE}`);
  const bin = mtimeMs(GOCLIENT_BINARY);
  if (bin !== null && bin >= src) return GOCLIENT_BINARY;

  mkdirSync(join(GO_DIR, 'cache'), { recursive: true });
  mkdirSync(join(GO_DIR, 'path'), { recursive: true });
  const tmp = `${GOCLIENT_BINARY}.tmp-${process.pid}`;
  const env: NodeJS.ProcessEnv = {
    PATH: process.env['PATH'] ?? '/usr/local/bin:/usr/bin:/bin',
    HOME: GO_DIR,
    GOCACHE: join(GO_DIR, 'cache'),
    GOPATH: join(GO_DIR, 'path'),
    GOPROXY: 'off',
    GOFLAGS: '',
    GO111MODULE: 'off', // one file, standard library only
    GOTOOLCHAIN: 'local',
    CGO_ENABLED: '0',
  };
  await new Promise<void>((resolve, reject) => {
    execFile(
      'go',
      ['build', '-trimpath', '-ldflags=-s -w', '-o', tmp, GOCLIENT_SOURCE],
      { env, cwd: join(PACKAGE_ROOT, 'test/fixtures/goclient'), timeout: 300_000 },
      (err, _stdout, stderr) => {
        if (err === null) resolve();
        else if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
          reject(new Error('`go` not found: install Debian package golang-go (scripts/setup.sh does)'));
        } else reject(new Error(`go build goclient failed: ${stderr.trim() || err.message}`));
      },
    );
  });
  renameSync(tmp, GOCLIENT_BINARY); // atomic: a concurrent test never runs half a binary
  return GOCLIENT_BINARY;
}
