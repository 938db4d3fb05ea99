/**
 * A process that holds an AppMaps (src/backstop/bpf.ts) for test/e2e/bpf-maps.test.ts, started
 * inside the test's network namespace (nsenter --net, so the cgroup mounts stay visible): the
 * object's netns filter is the namespace of the process that loads it. One JSON request per stdin
 * line, one JSON reply per stdout line; cgroup ids and counters travel as decimal strings.
 *
 *   {"op":"open","dir":"/sys/fs/cgroup/unified/x"}            -> {"ok":true}
 *   {"op":"setCgroup","id":"123","self":T,"pending":T}        -> {"ok":true}
 *   {"op":"usage"} -> {"ok":true,"value":[{app,slot,dir,bytes:"..",packets:".."}]}
 * With WAYMARK_BPF_COMPAT=1 in its environment, it loads the compat packet programs.
 *   ...
 */
import { createInterface } from 'node:readline';
import { AppMaps, NO_TREATMENT, type Treatment } from '../../src/backstop/bpf.js';
import { errorMessage } from '../../src/errors.js';
import { parsePrefix } from '../../src/net/prefix.js';

export type AgentRequest =
  | { op: 'open'; dir: string; object?: string }
  | { op: 'setCgroup'; id: string; self: Treatment; pending?: Treatment }
  | { op: 'deleteCgroup'; id: string }
  | { op: 'setUid'; uid: number; t: Treatment }
  | { op: 'setIfSlot'; ifindex: number; slot: number }
  | { op: 'setDestination'; prefix: string; slot: number }
  | { op: 'deleteDestination'; prefix: string }
  | { op: 'setMain'; slot4: number; slot6: number }
  | { op: 'usage' }
  | { op: 'programs' }
  | { op: 'close' };

let maps: AppMaps | undefined;

function need(): AppMaps {
  if (maps === undefined) throw new Error('not open');
  return maps;
}

function prefixOf(text: string) {
  const p = parsePrefix(text);
  if (typeof p === 'string') throw new Error(p);
  return p;
}

function handle(r: AgentRequest): unknown {
  switch (r.op) {
    case 'open':
      // WAYMARK_BPF_COMPAT=1: the compat packet programs (to test them where the others load).
      maps = AppMaps.open(r.dir, { ...(r.object === undefined ? {} : { objectPath: r.object }), compat: process.env['WAYMARK_BPF_COMPAT'] === '1' });
      return null;
    case 'setCgroup':
      need().setCgroup(BigInt(r.id), r.self, r.pending ?? NO_TREATMENT);
      return null;
    case 'deleteCgroup':
      return need().deleteCgroup(BigInt(r.id));
    case 'setUid':
      need().setUid(r.uid, r.t);
      return null;
    case 'setIfSlot':
      need().setIfSlot(r.ifindex, r.slot);
      return null;
    case 'setDestination':
      need().setDestination(prefixOf(r.prefix), r.slot);
      return null;
    case 'deleteDestination':
      return need().deleteDestination(prefixOf(r.prefix));
    case 'setMain':
      need().setMain(r.slot4, r.slot6);
      return null;
    case 'usage':
      return need().usage().map((u) => ({ ...u, bytes: u.bytes.toString(), packets: u.packets.toString() }));
    case 'programs':
      return need().programs();
    case 'close':
      need().close();
      maps = undefined;
      return null;
  }
}

const rl = createInterface({ input: process.stdin });
rl.on('line', (line) => {
  let reply: unknown;
  try {
    reply = { ok: true, value: handle(JSON.parse(line) as AgentRequest) };
  } catch (e) {
    reply = { ok: false, error: errorMessage(e) };
  }
  process.stdout.write(`${JSON.stringify(reply)}\n`);
});
rl.on('close', () => process.exit(0));
