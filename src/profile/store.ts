/**
 * Saved profiles: STATE_DIR/profiles/<name>.yaml, each the document `waymark profile export`
 * prints. The directory is root's (0700), the files 0600 (they name SIMs); each is written
 * atomically (temp file, fsync, rename), so a crash leaves the old or the new file. A name is a
 * profile name (lower-case letters, digits, "-", "_"), so no path can be made of one.
 *
 * At start every file is read and validated against the running config; one that no longer fits
 * (an uplink it names was removed) stays on disk and is listed as invalid, with why, rather
 * than dropped: a later config may fit it again (`revalidate`).
 */
import { mkdir, open, readdir, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { ConfigError, type Config, type ParseOptions } from '../config/load.js';
import { errorMessage } from '../errors.js';
import { exportProfile, parseProfileDocument, type Profile } from './profile.js';

export const PROFILE_NAME = /^[a-z][a-z0-9_-]{0,30}$/;

/** A saved profile: valid (its profile), or kept on disk with why it does not fit the config. */
export type SavedProfile =
  | { readonly name: string; readonly file: string; readonly text: string; readonly profile: Profile; readonly problem?: undefined }
  | { readonly name: string; readonly file: string; readonly text: string; readonly profile?: undefined; readonly problem: string };

export class ProfileStore {
  readonly dir: string;
  private saved = new Map<string, SavedProfile>();

  /** `invalid`: told of each file that does not validate (at load and revalidate). */
  constructor(stateDir: string, private readonly invalid: (name: string, file: string, why: string) => void = () => undefined,
    private readonly opts: ParseOptions = {}) {
    this.dir = join(stateDir, 'profiles');
  }

  /** Reads every saved profile, validated against `base`. */
  async load(base: Config): Promise<void> {
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch {
      names = [];
    }
    const next = new Map<string, SavedProfile>();
    for (const f of names.sort()) {
      const name = f.endsWith('.yaml') ? f.slice(0, -5) : '';
      if (!PROFILE_NAME.test(name)) continue;
      const file = join(this.dir, f);
      let text: string;
      try {
        text = await readFile(file, 'utf8');
      } catch (e) {
        this.invalid(name, file, errorMessage(e));
        continue;
      }
      next.set(name, this.check(name, file, text, base));
    }
    this.saved = next;
  }

  /** Every saved one validated again (after a reload). */
  revalidate(base: Config): void {
    this.saved = new Map([...this.saved].map(([n, s]) => [n, this.check(n, s.file, s.text, base)]));
  }

  all(): SavedProfile[] {
    return [...this.saved.values()];
  }

  get(name: string): SavedProfile | undefined {
    return this.saved.get(name);
  }

  /** Writes a valid profile under its name (replacing one of that name). */
  async save(p: Profile): Promise<void> {
    const name = checkName(p.name);
    const text = exportProfile(p);
    const file = join(this.dir, `${name}.yaml`);
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    const tmp = `${file}.${process.pid}.tmp`;
    await rm(tmp, { force: true });
    const fh = await open(tmp, 'wx', 0o600);
    try {
      await fh.writeFile(text);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, file);
    this.saved.set(name, { name, file, text, profile: { ...p, file } });
  }

  /** Removes a saved profile; false: there was none. */
  async remove(name: string): Promise<boolean> {
    checkName(name);
    const s = this.saved.get(name);
    if (s === undefined) return false;
    await rm(s.file, { force: true });
    this.saved.delete(name);
    return true;
  }

  private check(name: string, file: string, text: string, base: Config): SavedProfile {
    try {
      const profile = parseProfileDocument(text, file, base, this.opts);
      if (profile.name !== name) throw new Error(`the file holds profile "${profile.name}", not "${name}"`);
      return { name, file, text, profile };
    } catch (e) {
      const problem = e instanceof ConfigError ? e.message : errorMessage(e);
      this.invalid(name, file, problem);
      return { name, file, text, problem };
    }
  }
}

function checkName(name: string): string {
  if (!PROFILE_NAME.test(name)) throw new Error(`invalid profile name ${JSON.stringify(name)}: 1-31 of a-z, 0-9, "-" and "_", starting with a letter`);
  return name;
}
