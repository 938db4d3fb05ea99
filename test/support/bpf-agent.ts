/**
 * A process that holds an AppMaps (src/backstop/bpf.ts) for test/e2e/bpf-maps.test.ts, started
 * inside the test's network namespace (nsenter --net, so the cgroup mounts stay visible): the
 * object's netns filter is the namespace of the process that loads it. One JSON request per stdin
 * line, one JSON reply per stdout line; cgroup ids and counters travel as decimal strings.
 *
 *   {"op":"open","dir":"/sys/fs/cgroup/unified/x"}            -> {"ok":true}
 *   {"op":"setCgroup","id":"123","self":T,"pending":T}        -> {"ok":true}
 *   {"op":"usage"} -> {"ok":true,"value":[{cgroup:"..",app,uid,slot,dir,dest,bytes:"..",packets:".."}]}
 *   {"op":"setBudget","app":7|"any","slot":1,"limit":"1000"}, {"op":"budgetUsed"} -> [{app,slot,used:"..",limit:".."|null}]
 *   {"op":"events","until":{"port":5556}} -> the connect reports heard since the last "events"
 *     (ConnectRecord, cgroupId and monotonicNs as strings), replied once one matches `until`
 *     (port, address: the first such; count: that many in all); without `until`, at once
 *   {"op":"runBlocking","dir":D,"argv":[...]} runs argv in cgroup D with the agent's event loop
 *     blocked (spawnSync): nothing is read from the ring meanwhile -> {status, stdout}
 * With WAYMARK_BPF_COMPAT=1 in its environment, it loads the compat packet programs.
 *   ...
 */
import { spawnSync } from 'node:child_process';
import { createInterface } from 'node:readline';
import { AppMaps, NO_TREATMENT, type BudgetApp, type ConnectRecord, type Treatment } from '../../src/backstop/bpf.js';
import { errorMessage } from '../../src/errors.js';
import { parsePrefix } from '../../src/net/prefix.js';

export type AgentRequest =
  | { op: 'open'; dir: string; object?: string; compat?: boolean }
  | { op: 'setCgroup'; id: string; self: Treatment; pending?: Treatment }
  | { op: 'deleteCgroup'; id: string }
  | { op: 'setUid'; uid: number; t: Treatment }
  | { op: 'setIfSlot'; ifindex: number; slot: number }
  | { op: 'deleteIfSlot'; ifindex: number }
  | { op: 'setDestination'; prefix: string; slot: number; dest?: number }
  | { op: 'setDestinationCounts'; v4: number; v6: number }
  | { op: 'setBudget'; app: BudgetApp; slot: number; limit: string }
  | { op: 'deleteBudget'; app: BudgetApp; slot: number }
  | { op: 'budgetUsed' }
  | { op: 'setBudgetSlots'; slots: number[] }
  | { op: 'deleteDestination'; prefix: string }
  | { op: 'setMain'; slot4: number; slot6: number }
  | { op: 'usage' }
  | { op: 'programs' }
  | { op: 'events'; until?: EventsUntil }
  | { op: 'askStats' }
  | { op: 'setAskQuiet'; ns: string }
  | { op: 'runBlocking'; dir: string; argv: string[] }
  | { op: 'close' };

export interface EventsUntil {
  readonly port?: number;
  readonly address?: string;
  readonly count?: number;
  /** A guard: the request fails after this long (default 20 s), saying what was heard. */
  readonly timeoutMs?: number;
}

/** A ConnectRecord as it travels (JSON: bigints as decimal strings). */
export type WireConnect = Omit<ConnectRecord, 'cgroupId' | 'monotonicNs'> & { cgroupId: string; monotonicNs: string };

const heard: WireConnect[] = [];
let waiting: { until: EventsUntil; resolve: (v: WireConnect[]) => void; guard: NodeJS.Timeout } | undefined;

const matches = (u: EventsUntil, e: WireConnect): boolean =>
  (u.port === undefined || e.port === u.port) && (u.address === undefined || e.address === u.address);

/** The reports up to the first that fulfils `until` (all of them for count), or undefined: not yet. */
function take(until: EventsUntil): WireConnect[] | undefined {
  if (until.count !== undefined) return heard.length >= until.count ? heard.splice(0) : undefined;
  const at = heard.findIndex((e) => matches(until, e));
  return at < 0 ? undefined : heard.splice(0, at + 1);
}

function onConnect(e: ConnectRecord): void {
  heard.push({ ...e, cgroupId: e.cgroupId.toString(), monotonicNs: e.monotonicNs.toString() });
  if (waiting === undefined) return;
  const got = take(waiting.until);
  if (got === undefined) return;
  const w = waiting;
  waiting = undefined;
  clearTimeout(w.guard);
  w.resolve(got);
}

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
      maps = AppMaps.open(r.dir, { ...(r.object === undefined ? {} : { objectPath: r.object }), compat: r.compat ?? process.env['WAYMARK_BPF_COMPAT'] === '1' });
      maps.onConnect(onConnect);
      return null;
    case 'events': {
      const until = r.until;
      if (until === undefined) return heard.splice(0);
      const got = take(until);
      if (got !== undefined) return got;
      if (waiting !== undefined) throw new Error('already waiting for events');
      return new Promise<WireConnect[]>((resolve, reject) => {
        const ms = until.timeoutMs ?? 20_000;
        const guard = setTimeout(() => {
          waiting = undefined;
          reject(new Error(`no report ${JSON.stringify(until)} within ${ms} ms; heard ${JSON.stringify(heard)}`));
        }, ms);
        waiting = { until, resolve, guard };
      });
    }
    case 'askStats': {
      const s = need().askStats();
      return { ...s, reported: s.reported.toString(), dropped: s.dropped.toString(), suppressed: s.suppressed.toString() };
    }
    case 'setAskQuiet':
      need().setAskQuiet(BigInt(r.ns));
      return null;
    case 'runBlocking': {
      const p = spawnSync('sh', ['-c', 'echo $$ > "$1/cgroup.procs" && shift && exec "$@"', 'sh', r.dir, ...r.argv], { encoding: 'utf8', timeout: 60_000 });
      return { status: p.status, stdout: p.stdout, stderr: p.stderr };
    }
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
    case 'deleteIfSlot':
      return need().deleteIfSlot(r.ifindex);
    case 'setDestination':
      need().setDestination(prefixOf(r.prefix), { slot: r.slot, dest: r.dest ?? 0 });
      return null;
    case 'setDestinationCounts':
      need().setDestinationCounts(r.v4, r.v6);
      return null;
    case 'setBudget':
      need().setBudget(r.app, r.slot, BigInt(r.limit));
      return null;
    case 'deleteBudget':
      return need().deleteBudget(r.app, r.slot);
    case 'budgetUsed':
      return need().budgetUsed().map((b) => ({ ...b, used: b.used.toString(), limit: b.limit === null ? null : b.limit.toString() }));
    case 'setBudgetSlots':
      need().setBudgetSlots(r.slots);
      return null;
    case 'deleteDestination':
      return need().deleteDestination(prefixOf(r.prefix));
    case 'setMain':
      need().setMain(r.slot4, r.slot6);
      return null;
    case 'usage':
      return need().usage().map((u) => ({ ...u, cgroup: u.cgroup.toString(), bytes: u.bytes.toString(), packets: u.packets.toString() }));
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
  // One request at a time (the test waits for each reply); "events" may reply later.
  void (async () => {
    let reply: unknown;
    try {
      reply = { ok: true, value: await handle(JSON.parse(line) as AgentRequest) };
    } catch (e) {
      reply = { ok: false, error: errorMessage(e) };
    }
    process.stdout.write(`${JSON.stringify(reply)}\n`);
  })();
});
rl.on('close', () => process.exit(0));
