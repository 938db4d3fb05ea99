/**
 * Uplink slots: the small number behind an uplink's routing table and fwmark. A slot stays with
 * its uplink across reloads and restarts (it is persisted), so marks already set on live sockets
 * keep meaning the same uplink.
 */
import { MAX_SLOTS } from '../constants.js';

export function assignSlots(names: readonly string[], previous: ReadonlyMap<string, number>): Map<string, number> {
  const out = new Map<string, number>();
  const used = new Set<number>();
  for (const n of names) {
    const s = previous.get(n);
    if (s !== undefined && s >= 1 && s <= MAX_SLOTS && !used.has(s)) {
      out.set(n, s);
      used.add(s);
    }
  }
  let next = 1;
  for (const n of names) {
    if (out.has(n)) continue;
    while (used.has(next)) next++;
    if (next > MAX_SLOTS) throw new Error(`too many uplinks: at most ${MAX_SLOTS} are supported`);
    out.set(n, next);
    used.add(next);
  }
  return out;
}
