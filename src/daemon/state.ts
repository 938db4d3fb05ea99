/**
 * Durable daemon state (uplink slots, exec sessions) in the state directory. Written atomically
 * (temp file, fsync, rename) so a crash leaves either the old or the new file, never half of one.
 * Each part has one owner that updates only its part; writes are serialised.
 */
import { mkdir, open, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { NEED_NAMES } from '../config/schema.js';
import { errorMessage } from '../errors.js';

export const DEFAULT_STATE_DIR = '/var/lib/waymark';

const appFactsSchema = z.object({
  uid: z.number().int().nonnegative(),
  exe: z.string().nullable(),
  unit: z.string().nullable(),
  app: z.string().nullable().optional(),
  flatpakId: z.string().nullable(),
});

const sessionSchema = z.object({
  id: z.string(),
  cgroup: z.string(),
  uid: z.number().int().nonnegative(),
  uplink: z.string().optional(),
  needs: z.array(z.enum(NEED_NAMES)),
  deny: z.array(z.string()),
  /** Missing in files of older versions: all that is known then is the starter's uid, whose rules apply. */
  apps: z.array(appFactsSchema).optional(),
  command: z.string(),
  startedAt: z.string(),
}).transform(({ apps, ...s }) => ({ ...s, apps: apps ?? [{ uid: s.uid, exe: null, unit: null, flatpakId: null }] }));

const stateSchema = z.object({
  version: z.literal(1),
  slots: z.record(z.string(), z.number().int().min(1).max(62)),
  sessions: z.array(sessionSchema).default([]),
  /** App keys ("uid/name" → key, src/daemon/apps.ts): the kernel's counters stay the same app's across restarts. */
  appKeys: z.record(z.string().max(512), z.number().int().min(1).max(0xffffffff)).default({}),
  /** Rules added from the CLI and remembered answers (src/daemon/rule-store.ts validates each). */
  rules: z.array(z.unknown()).max(50_000).default([]),
  /** The number the next stored rule's id gets. */
  nextRule: z.number().int().min(1).default(1),
  /** The active profile, how it was chosen, and the last SIM seen (src/daemon/profile-service.ts); absent in older files. */
  profile: z.object({
    name: z.string().max(31).nullable(),
    by: z.enum(['sim', 'user', 'default', 'none']),
    sim: z.string().max(22).optional(),
    seenSim: z.string().max(22).optional(),
  }).optional(),
  /** A SIM set by hand (`waymark sim set`): it stands in for ModemManager's until cleared. */
  sim: z.object({
    iccid: z.string().regex(/^89\d{16,20}$/),
    operator: z.string().regex(/^\d{5,6}$/).optional(),
    roaming: z.boolean().optional(),
  }).optional(),
});
export type PersistedState = z.infer<typeof stateSchema>;

export class StateStore {
  private readonly file: string;
  private state: PersistedState = { version: 1, slots: {}, sessions: [], appKeys: {}, rules: [], nextRule: 1 };
  private writing: Promise<void> = Promise.resolve();

  constructor(readonly dir: string) {
    this.file = join(dir, 'state.json');
  }

  /** Replaces one part of the state and writes the whole file. */
  update(part: Partial<Omit<PersistedState, 'version'>>): Promise<void> {
    this.state = { ...this.state, ...part };
    const snapshot = this.state;
    const next = this.writing.then(() => this.save(snapshot));
    this.writing = next.catch(() => undefined);
    return next;
  }

  /** The stored state, or an empty one if there is none; a corrupt file is reported, not fatal. */
  async load(onCorrupt: (why: string) => void): Promise<PersistedState> {
    let text: string;
    try {
      text = await readFile(this.file, 'utf8');
    } catch {
      return this.state;
    }
    try {
      const parsed = stateSchema.safeParse(JSON.parse(text));
      if (parsed.success) return (this.state = parsed.data);
      onCorrupt(parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; '));
    } catch (e) {
      onCorrupt(errorMessage(e));
    }
    return this.state;
  }

  /**
   * Sessions name users and their command lines: the file is root's alone (0600). The temp file
   * is created with that mode (exclusively: a leftover of a crash is removed first, never
   * reused with its old mode), so the data is never readable by others, and the rename puts
   * it in place of an older file with whatever mode that had.
   */
  private async save(state: PersistedState): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: 0o755 });
    const tmp = `${this.file}.${process.pid}.tmp`;
    await rm(tmp, { force: true });
    const fh = await open(tmp, 'wx', 0o600);
    try {
      await fh.writeFile(JSON.stringify(state, null, 2) + '\n');
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, this.file);
  }
}
