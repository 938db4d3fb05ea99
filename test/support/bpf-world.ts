/**
 * The world test/e2e/bpf-maps.test.ts and bench/bpf.ts build for the app programs, removed on
 * every exit path (destroy(), and process 'exit' as a last resort):
 *   - network namespaces A (the "device": uplinks up0 = 10.90.1.1 and up1 = 10.90.2.1, IPv6
 *     fd00:90:N::1) and B (the far end: far0/far1 = .2 / ::2), joined by two veth pairs;
 *   - a cgroup subtree wmbpf-<run> under the cgroup2 mount (children made with cgroup());
 *   - on demand, its sibling wmbpf-<run>-out (children made with cgroupOutside()): no program
 *     attached at the subtree's top applies there (bench/usage.ts's baseline);
 *   - the agent (./bpf-agent.ts) in A, holding the AppMaps attached at the subtree's top.
 * Processes are started in a cgroup and a namespace with spawnIn().
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { removeCgroupTree } from '../../src/lab/cgroups.js';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { cgroupId, NO_TREATMENT, type Treatment } from '../../src/backstop/bpf.js';
import { findCgroup2Mount } from '../../src/backstop/cgroup.js';
import { PACKAGE_ROOT } from '../../src/version.js';
import type { AgentRequest } from './bpf-agent.js';

function sh(cmd: string[], allowFail = false): string {
  const r = spawnSync(cmd[0] ?? '', cmd.slice(1), { encoding: 'utf8' });
  if (!allowFail && r.status !== 0) throw new Error(`${cmd.join(' ')}: ${r.stderr || r.error?.message || `exit ${r.status}`}`);
  return r.stdout;
}

/** A child's stdout, one line at a time: parsed when JSON, else the text. */
export class Lines {
  private readonly queue: unknown[] = [];
  private waiter: ((v: unknown) => void) | undefined;
  private ended = false;
  stderr = '';

  constructor(readonly child: ChildProcess) {
    child.stderr?.on('data', (d: Buffer) => (this.stderr += d.toString()));
    if (child.stdout === null) throw new Error('no stdout');
    const rl = createInterface({ input: child.stdout });
    rl.on('line', (l) => {
      let v: unknown = l;
      try {
        v = JSON.parse(l);
      } catch { /* plain text */ }
      if (this.waiter !== undefined) {
        const w = this.waiter;
        this.waiter = undefined;
        w(v);
      } else this.queue.push(v);
    });
    rl.on('close', () => {
      this.ended = true;
      this.waiter?.(undefined);
    });
  }

  /** The next line, or undefined once the output ended. */
  next(): Promise<unknown> {
    if (this.queue.length > 0) return Promise.resolve(this.queue.shift());
    if (this.ended) return Promise.resolve(undefined);
    return new Promise((resolve) => (this.waiter = resolve));
  }

  async expect<T>(what: string): Promise<T> {
    const v = await this.next();
    if (v === undefined) throw new Error(`${what}: output ended (stderr: ${this.stderr})`);
    return v as T;
  }
}

export interface SpawnInOptions {
  /** Network namespace name (default: A). */
  ns?: string;
  /** Run as this uid (and gid), no supplementary groups (default: root). */
  uid?: number;
  /** Kill after this many ms (a guard). */
  timeoutMs?: number;
}

export class BpfWorld {
  readonly run = `${process.pid.toString(36)}${randomBytes(2).toString('hex')}`;
  readonly nsA = `wmbpfa-${this.run}`;
  readonly nsB = `wmbpfb-${this.run}`;
  /** The subtree's top, where the programs are attached. */
  readonly base: string;
  /** The subtree's sibling, made by the first cgroupOutside(). */
  readonly outside: string;
  private readonly made: string[] = [];
  private outsideMade = false;
  private readonly children = new Set<ChildProcess>();
  private agent: Lines | undefined;
  private readonly onExit = (): void => this.destroy();

  private constructor(mount: string) {
    this.base = join(mount, `wmbpf-${this.run}`);
    this.outside = `${this.base}-out`;
  }

  /** Builds the namespaces and the subtree, starts the agent and attaches the programs. */
  static async create(): Promise<BpfWorld> {
    const w = new BpfWorld(await findCgroup2Mount());
    process.on('exit', w.onExit);
    try {
      mkdirSync(w.base);
      w.made.push(w.base);
      sh(['ip', 'netns', 'add', w.nsA]);
      sh(['ip', 'netns', 'add', w.nsB]);
      for (const ns of [w.nsA, w.nsB]) sh(['ip', '-n', ns, 'link', 'set', 'lo', 'up']);
      for (const n of [1, 2]) {
        const [up, far] = [`up${n - 1}`, `far${n - 1}`];
        sh(['ip', '-n', w.nsA, 'link', 'add', up, 'type', 'veth', 'peer', 'name', far, 'netns', w.nsB]);
        sh(['ip', '-n', w.nsA, 'addr', 'add', `10.90.${n}.1/24`, 'dev', up]);
        sh(['ip', '-n', w.nsB, 'addr', 'add', `10.90.${n}.2/24`, 'dev', far]);
        sh(['ip', '-n', w.nsA, 'addr', 'add', `fd00:90:${n}::1/64`, 'dev', up, 'nodad']);
        sh(['ip', '-n', w.nsB, 'addr', 'add', `fd00:90:${n}::2/64`, 'dev', far, 'nodad']);
        sh(['ip', '-n', w.nsA, 'link', 'set', up, 'up']);
        sh(['ip', '-n', w.nsB, 'link', 'set', far, 'up']);
      }
      w.startAgent();
      await w.call({ op: 'open', dir: w.base });
    } catch (e) {
      w.destroy();
      throw e;
    }
    return w;
  }

  /** A child cgroup of the subtree (relative path), made now. */
  cgroup(rel: string): string {
    const dir = join(this.base, rel);
    mkdirSync(dir);
    this.made.push(dir);
    return dir;
  }

  /** A child cgroup (relative path) of the subtree's sibling, made now: outside the programs' reach. */
  cgroupOutside(rel: string): string {
    if (!this.outsideMade) {
      mkdirSync(this.outside);
      this.outsideMade = true;
    }
    const dir = join(this.outside, rel);
    mkdirSync(dir);
    return dir;
  }

  /** Starts `argv` in cgroup `dir` and a namespace; its stdout read as JSON lines. */
  spawnIn(dir: string | null, argv: string[], opts: SpawnInOptions = {}): Lines {
    const as = opts.uid === undefined ? [] : ['setpriv', `--reuid=${opts.uid}`, `--regid=${opts.uid}`, '--clear-groups', '--'];
    const enter = dir === null ? [] : ['sh', '-c', 'echo $$ > "$1/cgroup.procs" && shift && exec "$@"', 'sh', dir];
    const child = spawn('nsenter', [`--net=/run/netns/${opts.ns ?? this.nsA}`, ...enter, ...as, ...argv],
      { stdio: ['pipe', 'pipe', 'pipe'], ...(opts.timeoutMs === undefined ? {} : { timeout: opts.timeoutMs }) });
    this.children.add(child);
    child.on('exit', () => this.children.delete(child));
    return new Lines(child);
  }

  private startAgent(): void {
    this.agent = this.spawnIn(null, [process.execPath, join(PACKAGE_ROOT, 'dist/test/support/bpf-agent.js')]);
  }

  /** One request to the agent; throws its error. */
  async call(r: AgentRequest): Promise<unknown> {
    const agent = this.agent;
    if (agent === undefined) throw new Error('no agent');
    agent.child.stdin?.write(`${JSON.stringify(r)}\n`);
    const reply = await agent.expect<{ ok: boolean; value?: unknown; error?: string }>(r.op);
    if (!reply.ok) throw new Error(`${r.op}: ${reply.error}`);
    return reply.value;
  }

  async setCgroup(dir: string, self: Treatment, pending: Treatment = NO_TREATMENT): Promise<void> {
    await this.call({ op: 'setCgroup', id: cgroupId(dir).toString(), self, pending });
  }

  /** Kills the agent (SIGKILL) and waits for its end. */
  async killAgent(): Promise<void> {
    const child = this.agent?.child;
    this.agent = undefined;
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) return;
    const gone = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGKILL');
    await gone;
  }

  /** Starts a new agent with the programs attached again (after killAgent). */
  async restartAgent(): Promise<void> {
    this.startAgent();
    await this.call({ op: 'open', dir: this.base });
  }

  /** Runs a command (ip, ...); throws on failure unless `allowFail`. Returns stdout. */
  sh(cmd: string[], allowFail = false): string {
    return sh(cmd, allowFail);
  }

  ifindex(ns: string, dev: string): number {
    const [link] = JSON.parse(sh(['ip', '-n', ns, '-j', 'link', 'show', dev])) as { ifindex: number }[];
    if (link === undefined) throw new Error(`no ${dev} in ${ns}`);
    return link.ifindex;
  }

  /** Names of the programs attached at `dir` itself (BPF_PROG_QUERY through bpftool). */
  attached(dir: string = this.base): string[] {
    const out = sh(['bpftool', '-j', 'cgroup', 'show', dir]).trim();
    return out === '' ? [] : (JSON.parse(out) as { name: string }[]).map((p) => p.name);
  }

  /** Removes everything; safe to call more than once. */
  destroy(): void {
    process.off('exit', this.onExit);
    for (const c of this.children) c.kill('SIGKILL');
    this.agent = undefined;
    // Everything made here is below the base: kill what lives there (probes still running after
    // a failure), then remove it.
    if (this.made.length > 0) removeCgroupTree(this.base);
    this.made.length = 0;
    if (this.outsideMade) removeCgroupTree(this.outside);
    this.outsideMade = false;
    sh(['ip', 'netns', 'del', this.nsA], true);
    sh(['ip', 'netns', 'del', this.nsB], true);
  }
}
