/**
 * Durable daemon state (today: uplink slots) in the state directory. Written atomically
 * (temp file, fsync, rename) so a crash leaves either the old or the new file, never half of one.
 */
import { mkdir, open, readFile, rename } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';

export const DEFAULT_STATE_DIR = '/var/lib/waymark';

const stateSchema = z.object({
  version: z.literal(1),
  slots: z.record(z.string(), z.number().int().min(1).max(62)),
});
export type PersistedState = z.infer<typeof stateSchema>;

export class StateStore {
  private readonly file: string;
  constructor(readonly dir: string) {
    this.file = join(dir, 'state.json');
  }

  /** The stored state, or an empty one if there is none; a corrupt file is reported, not fatal. */
  async load(onCorrupt: (why: string) => void): Promise<PersistedState> {
    let text: string;
    try {
      text = await readFile(this.file, 'utf8');
    } catch {
      return { version: 1, slots: {} };
    }
    try {
      const parsed = stateSchema.safeParse(JSON.parse(text));
      if (parsed.success) return parsed.data;
      onCorrupt(parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; '));
    } catch (e) {
      onCorrupt(e instanceof Error ? e.message : String(e));
    }
    return { version: 1, slots: {} };
  }

  async save(state: PersistedState): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: 0o755 });
    const tmp = `${this.file}.${process.pid}.tmp`;
    const fh = await open(tmp, 'w', 0o644);
    try {
      await fh.writeFile(JSON.stringify(state, null, 2) + '\n');
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, this.file);
  }
}
