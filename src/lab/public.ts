/**
 * A copy of the built package that unprivileged users can read, for tests that run Waymark's
 * programs (or load libwaymark.so) as another user: a clone in a private directory (mode 0700,
 * as mktemp makes them) is out of their reach. Only the runtime parts are copied; the copy is
 * removed when the process exits. When the package is already reachable, it is used as is.
 */
import { chmodSync, cpSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { PACKAGE_ROOT } from '../version.js';

const RUNTIME = ['package.json', 'dist', 'build/Release', 'native/preload/libwaymark.so', 'examples'];

/**
 * The installed packages the runtime needs: package.json's dependencies and theirs, as npm laid
 * them out under node_modules (read from there, so the list never falls behind package.json).
 */
function runtimeModules(): string[] {
  const seen = new Set<string>();
  const visit = (pkgJson: string): void => {
    const deps = (JSON.parse(readFileSync(pkgJson, 'utf8')) as { dependencies?: Record<string, string> }).dependencies ?? {};
    for (const name of Object.keys(deps)) {
      const dir = join('node_modules', name);
      if (seen.has(dir) || !existsSync(join(PACKAGE_ROOT, dir, 'package.json'))) continue;
      seen.add(dir);
      visit(join(PACKAGE_ROOT, dir, 'package.json'));
    }
  };
  visit(join(PACKAGE_ROOT, 'package.json'));
  return [...seen];
}

let root: string | undefined;

function reachableByOthers(path: string): boolean {
  for (let p = path; ; p = dirname(p)) {
    if ((statSync(p).mode & 0o001) === 0) return false;
    if (dirname(p) === p) return true;
  }
}

/** A file of the package (e.g. something a test built after the copy was made), as another user can read it. */
export function publicPath(rel: string): string {
  const root = publicRoot();
  const path = join(root, rel);
  if (root !== PACKAGE_ROOT && !existsSync(path)) cpSync(join(PACKAGE_ROOT, rel), path, { recursive: true });
  return path;
}

export function publicRoot(): string {
  if (root !== undefined) return root;
  if (reachableByOthers(PACKAGE_ROOT)) return (root = PACKAGE_ROOT);
  const dir = mkdtempSync('/tmp/waymark-public-');
  chmodSync(dir, 0o755);
  for (const rel of [...RUNTIME, ...runtimeModules()]) cpSync(join(PACKAGE_ROOT, rel), join(dir, rel), { recursive: true });
  process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
  return (root = dir);
}
