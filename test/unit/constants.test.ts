import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { it } from 'node:test';
import * as C from '../../src/constants.js';
import { PACKAGE_ROOT } from '../../src/version.js';

it('the C header mirrors src/constants.ts', () => {
  const h = readFileSync(join(PACKAGE_ROOT, 'native/include/waymark_kernel.h'), 'utf8');
  const defs = new Map([...h.matchAll(/#define WAYMARK_(\w+) (0x[0-9a-f]+|\d+)u?/g)].map((m) => [m[1], Number(m[2])]));
  const ts: Record<string, number> = {
    TABLE_BASE: C.TABLE_BASE, MAX_SLOTS: C.MAX_SLOTS, MARK_SHIFT: C.MARK_SHIFT, MARK_MASK: C.MARK_MASK, DENY_SLOT: C.DENY_SLOT,
    PRIO_MARK: C.PRIO_MARK, PRIO_DENY: C.PRIO_DENY, PRIO_OIF: C.PRIO_OIF, PRIO_SOURCE: C.PRIO_SOURCE, PRIO_DESTINATION: C.PRIO_DESTINATION,
    SOFT_FLAG: C.SOFT_FLAG, PRIO_SOFT_MARK: C.PRIO_SOFT_MARK,
  };
  for (const [k, v] of Object.entries(ts)) assert.equal(defs.get(k), v, k);
  // Every slot's mark lies inside the mask, and no two slots share a table.
  // Every slot's mark, plain or soft, lies inside the mask, and all of them and deny differ.
  const values = new Set([C.markForSlot(C.DENY_SLOT)]);
  for (let s = 1; s <= C.MAX_SLOTS; s++) {
    for (const m of [C.markForSlot(s), C.softMarkForSlot(s)]) {
      assert.equal((m & ~C.MARK_MASK) >>> 0, 0);
      assert.ok(!values.has(m), `mark 0x${m.toString(16)} used twice`);
      values.add(m);
    }
  }
  assert.equal(C.markForSlot(C.DENY_SLOT) >>> C.MARK_SHIFT, C.DENY_SLOT);
  assert.ok(C.PRIO_DESTINATION < C.PRIO_SOFT_MARK && C.PRIO_SOFT_MARK <= C.PRIO_MAX, 'soft marks after the destinations, in our range');
});
