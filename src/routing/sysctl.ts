/**
 * The one kernel setting Waymark changes outside its tables, rules and nftables table:
 * `net.ipv4.conf.DEV.src_valid_mark = 1` on each active uplink's device, so the reverse-path
 * check of a packet arriving there looks the route back up with the mark the `rpath` chain gave
 * it (src/nftables/ruleset.ts explains why). The kernel ORs the device's value with `all`'s, so
 * setting it per device touches nothing else; it changes only that lookup's mark.
 *
 * The value found before is remembered and written back when the device stops being an
 * uplink and on a clean stop (unless --keep-state). After a crash the next run finds 1 and
 * keeps it: harmless, since without our marks it changes no lookup (mark 0 either way).
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { errorMessage } from '../errors.js';

const isMissing = (e: unknown): boolean => e instanceof Error && 'code' in e && e.code === 'ENOENT';

/** An interface name as it can appear under /proc/sys/net/ipv4/conf (no path tricks). */
const IFNAME_RE = /^(?!\.\.?$)[^/\0\s]{1,15}$/;

export class SrcValidMark {
  /** Device → the value it had before we set it. */
  private readonly saved = new Map<string, string>();

  constructor(private readonly root = '/proc/sys/net/ipv4/conf') {}

  private path(ifname: string): string {
    if (!IFNAME_RE.test(ifname)) throw new Error(`src_valid_mark: invalid interface name ${JSON.stringify(ifname)}`);
    return join(this.root, ifname, 'src_valid_mark');
  }

  /** Makes exactly `ifnames` ours: sets 1 where needed, restores the devices no longer in it. Returns the errors. */
  async apply(ifnames: readonly string[]): Promise<string[]> {
    const errors: string[] = [];
    const wanted = new Set(ifnames);
    for (const ifname of wanted) {
      try {
        const p = this.path(ifname);
        const now = (await readFile(p, 'utf8')).trim();
        if (now === '1') continue;
        if (!this.saved.has(ifname)) this.saved.set(ifname, now);
        await writeFile(p, '1\n');
      } catch (e) {
        errors.push(`net.ipv4.conf.${ifname}.src_valid_mark: ${errorMessage(e)}`);
      }
    }
    for (const ifname of [...this.saved.keys()]) if (!wanted.has(ifname)) await this.restoreOne(ifname, errors);
    return errors;
  }

  /** Writes back every value we changed. Returns the errors. */
  async restore(): Promise<string[]> {
    const errors: string[] = [];
    for (const ifname of [...this.saved.keys()]) await this.restoreOne(ifname, errors);
    return errors;
  }

  private async restoreOne(ifname: string, errors: string[]): Promise<void> {
    const before = this.saved.get(ifname) ?? '0';
    this.saved.delete(ifname);
    try {
      await writeFile(this.path(ifname), `${before}\n`);
    } catch (e) {
      // A device that is gone took its setting with it.
      if (!isMissing(e)) errors.push(`net.ipv4.conf.${ifname}.src_valid_mark: ${errorMessage(e)}`);
    }
  }
}
