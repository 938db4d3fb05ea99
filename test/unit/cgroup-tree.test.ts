/**
 * CgroupTree (src/identity/cgroup-tree.ts) on the real cgroup2 hierarchy (root only): every
 * test builds its own tree of cgroups below one per-run directory, `<mount>/wm-cgtree-PID-HEX`,
 * removed on every exit path (and, if a test process died, by the next run). Nothing here
 * moves a process, so plain rmdir (deepest first) removes everything.
 *
 * Waiting: on the events themselves. Where a test shows that something was NOT reported, a
 * second tree on the same directory is the witness: libuv keeps one inotify descriptor per
 * loop, and both trees' watches of one directory share its watch descriptor, so one read of it
 * dispatches the event to both; after the witness saw it and one setImmediate (the end of that
 * poll phase), the tree under test has had its chance too.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmdirSync, statSync } from 'node:fs';
import { join } from 'node:path';

import { parseCgroup2Mount } from '../../src/backstop/cgroup.js';
import { CgroupTree, type CgroupAdded, type CgroupRemoved, type CgroupTreeOptions } from '../../src/identity/cgroup-tree.js';
import { measureTreeLatency } from '../support/cgroup-latency.js';

const isRoot = process.getuid?.() === 0;
const mount = parseCgroup2Mount(readFileSync('/proc/self/mountinfo', 'utf8'));
const skip = !isRoot ? 'needs root (makes cgroups)' : mount === null ? 'no cgroup v2 hierarchy mounted' : false;
const BASE_RE = /^wm-cgtree-(\d+)-[0-9a-f]+$/;
const base = join(mount ?? '/nonexistent', `wm-cgtree-${process.pid}-${randomBytes(3).toString('hex')}`);
const LATENCY_N = Number(process.env['WAYMARK_CGTREE_LATENCY_N'] ?? 500);

const U = 'user.slice/user-1000.slice';
const APPS = `${U}/user@1000.service/app.slice`;
const CHAT = `${APPS}/app-gnome-chat-42.scope`;
const FLATPAK = `${APPS}/app-flatpak-org.foo.Bar-7.scope`;
const NGINX = 'system.slice/nginx.service';

type Ev = ({ type: 'added' } & CgroupAdded) | ({ type: 'removed' } & CgroupRemoved);

/** A tree's events and warnings, with a way to wait for one. */
class Recorder {
  readonly events: Ev[] = [];
  readonly warnings: string[] = [];
  private waiters: (() => void)[] = [];

  readonly opts: CgroupTreeOptions = {
    onAdded: (e) => this.push({ type: 'added', ...e }),
    onRemoved: (e) => this.push({ type: 'removed', ...e }),
    warn: (m) => {
      this.warnings.push(m);
      this.wakeAll();
    },
  };

  private push(e: Ev): void {
    this.events.push(e);
    this.wakeAll();
  }

  private wakeAll(): void {
    const ws = this.waiters;
    this.waiters = [];
    for (const w of ws) w();
  }

  added(rel?: string): CgroupAdded[] {
    return this.events.filter((e): e is Ev & { type: 'added' } => e.type === 'added' && (rel === undefined || e.rel === rel));
  }

  removed(rel?: string): CgroupRemoved[] {
    return this.events.filter((e) => e.type === 'removed' && (rel === undefined || e.rel === rel));
  }

  /** Resolves once `cond()` holds (checked now and after every event); a generous guard rejects. */
  async until(what: string, cond: () => boolean, guardMs = 10_000): Promise<void> {
    const t0 = Date.now();
    while (!cond()) {
      if (Date.now() - t0 > guardMs) throw new Error(`not seen in ${guardMs} ms: ${what}`);
      await new Promise<void>((resolve) => {
        const guard = setTimeout(resolve, guardMs);
        this.waiters.push(() => {
          clearTimeout(guard);
          resolve();
        });
      });
    }
  }
}

const ino = (p: string | Buffer): bigint => statSync(p, { bigint: true }).ino;
const endOfPoll = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));
/** Node's fs.watch handles; a closed one is gone after the loop's close phase (the second check phase from now). */
const watchHandles = async (): Promise<number> => {
  await endOfPoll();
  await endOfPoll();
  return process.getActiveResourcesInfo().filter((r) => r === 'FSEventWrap').length;
};

/** Removes a directory tree of cgroups, deepest first (names as raw bytes). */
function removeTree(dir: Buffer): void {
  let entries;
  try {
    entries = readdirSync(dir, { withFileTypes: true, encoding: 'buffer' });
  } catch {
    return;
  }
  for (const ent of entries) {
    if (ent.isDirectory()) removeTree(Buffer.concat([dir, Buffer.from('/'), ent.name]));
  }
  try {
    rmdirSync(dir);
  } catch {
    /* gone */
  }
}

function sweepStale(): void {
  if (mount === null) return;
  for (const name of readdirSync(mount)) {
    const m = BASE_RE.exec(name);
    if (m === null) continue;
    try {
      process.kill(Number(m[1]), 0);
    } catch {
      removeTree(Buffer.from(join(mount, name)));
    }
  }
}

let nextRoot = 0;
/** A fresh tree root below the per-run directory, with `rels` made in it. */
function freshRoot(rels: readonly string[] = []): string {
  const root = join(base, `t${nextRoot++}`);
  mkdirSync(root);
  for (const r of rels) mkdirSync(join(root, r), { recursive: true });
  return root;
}

/** Every ancestor-or-self of each path, relative ("a/b" -> "a", "a/b"). */
function withAncestors(rels: readonly string[]): Set<string> {
  const out = new Set<string>();
  for (const r of rels) {
    const parts = r.split('/');
    for (let i = 1; i <= parts.length; i++) out.add(parts.slice(0, i).join('/'));
  }
  return out;
}

describe('CgroupTree on cgroupfs', { skip }, () => {
  const trees: CgroupTree[] = [];
  const open = (root: string, opts: CgroupTreeOptions): CgroupTree => {
    const t = new CgroupTree(root, opts);
    trees.push(t);
    return t;
  };
  const cleanup = (): void => {
    for (const t of trees) t.close();
    removeTree(Buffer.from(base));
  };

  before(() => {
    process.once('exit', cleanup);
    sweepStale();
    mkdirSync(base);
  });

  after(() => {
    cleanup();
    assert.equal(existsSync(base), false, `${base} left behind`);
  });

  it('the initial scan reports every cgroup with its id and app, parents first; excluded ones not', () => {
    const rels = [CHAT, FLATPAK, `${U}/session-3.scope`, NGINX, 'waymark/exec-1', 'waymarkish'];
    const root = freshRoot(rels);
    const rec = new Recorder();
    const tree = open(root, { ...rec.opts, exclude: ['waymark'] });
    const expected = [...withAncestors(rels)].filter((r) => r !== 'waymark' && !r.startsWith('waymark/'));
    assert.deepEqual(rec.added().map((e) => e.rel).sort(), expected.sort());
    assert.equal(rec.removed().length, 0);
    assert.deepEqual(rec.warnings, []);
    assert.equal(tree.size, expected.length);
    assert.equal(tree.truncated, false);
    const order = rec.added().map((e) => e.rel);
    for (const [i, rel] of order.entries()) {
      const parent = rel.slice(0, rel.lastIndexOf('/'));
      if (parent !== '') assert.ok(order.indexOf(parent) < i, `${parent} before ${rel}`);
    }
    for (const e of rec.added()) assert.equal(e.id, ino(join(root, e.rel)), e.rel);
    const app = (rel: string): CgroupAdded['app'] => tree.get(rel)?.app ?? null;
    assert.deepEqual(app(CHAT), {
      kind: 'app', unit: 'app-gnome-chat-42.scope', appId: 'chat', launcher: 'gnome', flatpakId: null, uid: 1000, name: 'chat', nested: false,
    });
    assert.equal(app(FLATPAK)?.flatpakId, 'org.foo.Bar');
    assert.equal(app(FLATPAK)?.name, 'org.foo.Bar');
    assert.equal(app(NGINX)?.kind, 'service');
    assert.equal(app(NGINX)?.uid, null);
    assert.equal(app(`${U}/session-3.scope`)?.kind, 'login');
    assert.equal(app(APPS), null);
    assert.equal(app('waymarkish'), null);
    assert.equal(tree.get('waymark/exec-1'), undefined);
  });

  it('live: app, Flatpak and service cgroups are added with id and app, rmdir removes them', async () => {
    const root = freshRoot([APPS, 'system.slice', 'waymark']);
    const rec = new Recorder();
    const tree = open(root, { ...rec.opts, exclude: ['waymark'] });
    const before = rec.events.length;
    for (const rel of [CHAT, FLATPAK, NGINX]) {
      mkdirSync(join(root, rel));
      await rec.until(`added ${rel}`, () => rec.added(rel).length > 0);
      const [e] = rec.added(rel);
      assert.equal(e?.id, ino(join(root, rel)));
      assert.deepEqual(e.app, tree.get(rel)?.app);
    }
    assert.equal(rec.added(CHAT)[0]?.app?.appId, 'chat');
    assert.equal(rec.added(FLATPAK)[0]?.app?.flatpakId, 'org.foo.Bar');
    assert.equal(rec.added(NGINX)[0]?.app?.kind, 'service');
    assert.equal(rec.events.length - before, 3);

    // Excluded: neither the directory nor what is below it.
    const witness = new Recorder();
    open(root, witness.opts);
    mkdirSync(join(root, 'waymark/exec-2'));
    mkdirSync(join(root, 'waymark/exec-2/inner'));
    await witness.until('witness saw waymark/exec-2/inner', () => witness.added('waymark/exec-2/inner').length > 0);
    await endOfPoll();
    assert.equal(rec.events.length - before, 3, 'nothing reported for the excluded subtree');

    for (const rel of [CHAT, FLATPAK, NGINX]) {
      const id = ino(join(root, rel));
      rmdirSync(join(root, rel));
      await rec.until(`removed ${rel}`, () => rec.removed(rel).length > 0);
      assert.deepEqual(rec.removed(rel), [{ type: 'removed', rel, id }]);
      assert.equal(tree.get(rel), undefined);
    }
  });

  it('nested creation racing the watch: mkdir -p of deep chains reports each directory once', async () => {
    const root = freshRoot();
    const rec = new Recorder();
    const tree = open(root, rec.opts);
    const leaves: string[] = [];
    for (let i = 0; i < 40; i++) {
      const leaf = `a-${i}/b/c/d/e`;
      leaves.push(leaf);
      mkdirSync(join(root, leaf), { recursive: true }); // 5 levels in microseconds, before any watch of a-i
    }
    const all = withAncestors(leaves);
    await rec.until('every level of every chain', () => [...all].every((r) => tree.get(r) !== undefined));
    for (const rel of all) {
      assert.equal(rec.added(rel).length, 1, `${rel} reported once`);
      assert.equal(rec.added(rel)[0]?.id, ino(join(root, rel)));
    }
    assert.equal(tree.size, all.size);

    // The scanned-in directories are watched themselves.
    mkdirSync(join(root, 'a-0/b/c/d/e/f'));
    await rec.until('added below a scanned-in leaf', () => rec.added('a-0/b/c/d/e/f').length > 0);

    // A whole chain removed at once: every level reported, the deepest first.
    const chain = ['a-1/b/c/d/e', 'a-1/b/c/d', 'a-1/b/c', 'a-1/b', 'a-1'];
    for (const rel of chain) rmdirSync(join(root, rel));
    await rec.until('the chain removed', () => chain.every((r) => rec.removed(r).length > 0));
    const order = rec.events.filter((e) => e.type === 'removed').map((e) => e.rel);
    assert.deepEqual(order, chain);
  });

  it('quick create+remove leaves nothing behind; a name made again is a removal and an addition', async () => {
    const root = freshRoot(['p']);
    const rec = new Recorder();
    const tree = open(root, rec.opts);
    for (let i = 0; i < 200; i++) {
      mkdirSync(join(root, `p/q-${i}`));
      rmdirSync(join(root, `p/q-${i}`));
    }
    mkdirSync(join(root, 'p/sentinel'));
    await rec.until('sentinel', () => rec.added('p/sentinel').length > 0);
    for (let i = 0; i < 200; i++) {
      const rel = `p/q-${i}`;
      assert.equal(tree.get(rel), undefined, rel);
      assert.equal(rec.added(rel).length, rec.removed(rel).length, `${rel}: every addition also removed`);
    }
    assert.equal(tree.size, 2);

    mkdirSync(join(root, 'p/again'));
    await rec.until('again', () => rec.added('p/again').length > 0);
    const first = ino(join(root, 'p/again'));
    rmdirSync(join(root, 'p/again'));
    mkdirSync(join(root, 'p/again'));
    const second = ino(join(root, 'p/again'));
    assert.notEqual(second, first);
    await rec.until('again, the second one', () => tree.get('p/again')?.id === second);
    const mine = rec.events.filter((e) => e.rel === 'p/again').map((e) => [e.type, e.id]);
    assert.deepEqual(mine, [['added', first], ['removed', first], ['added', second]]);
  });

  it('hostile names: raw bytes are kept apart, a unit look-alike outside the layout is no unit', async () => {
    const root = freshRoot();
    const rec = new Recorder();
    const tree = open(root, rec.opts);
    const r = Buffer.from(root);
    const raw = (...names: (string | number[])[]): Buffer =>
      Buffer.concat([r, ...names.flatMap((n) => [Buffer.from('/'), typeof n === 'string' ? Buffer.from(n) : Buffer.from(n)])]);
    // Both read as U+FFFD U+FFFD in UTF-8: one rel, two cgroups.
    const a = raw([0xff, 0xfe]);
    const b = raw([0xff, 0xfd]);
    mkdirSync(a);
    mkdirSync(b);
    mkdirSync(raw([0xff, 0xfe], 'child'));
    mkdirSync(raw('evil\tname.service'));
    mkdirSync(raw('system.slice', 'x\x1b[2J.service'), { recursive: true });
    await rec.until('six added', () => rec.added().length === 6);
    const twin = rec.added('\ufffd\ufffd');
    assert.equal(twin.length, 2);
    assert.deepEqual(new Set(twin.map((e) => e.id)), new Set([ino(a), ino(b)]));
    const child = ino(raw([0xff, 0xfe], 'child'));
    assert.equal(rec.added('\ufffd\ufffd/child')[0]?.id, child);
    assert.equal(rec.added('evil\tname.service')[0]?.app, null);
    assert.equal(rec.added('system.slice/x\x1b[2J.service')[0]?.app, null);
    assert.equal(tree.size, 6);

    const gone = new Set([child, ino(a), ino(b)]);
    rmdirSync(raw([0xff, 0xfe], 'child'));
    rmdirSync(a);
    rmdirSync(b);
    await rec.until('three removed', () => rec.removed().length === 3);
    assert.deepEqual(new Set(rec.removed().map((e) => e.id)), gone);
    assert.equal(tree.size, 3);
  });

  it('limits: maxDirs and maxDepth warn once, skip, and say the tree is truncated', async () => {
    const root = freshRoot(['d0', 'd1', 'd2', 'd3', 'd4', 'd5']);
    const rec = new Recorder();
    const tree = open(root, { ...rec.opts, maxDirs: 4 });
    assert.equal(tree.size, 4);
    assert.equal(tree.truncated, true);
    assert.equal(rec.warnings.length, 1);
    assert.match(rec.warnings[0] ?? '', /4 directories/);
    const witness = new Recorder();
    open(root, witness.opts);
    mkdirSync(join(root, 'd6'));
    mkdirSync(join(root, 'd7'));
    await witness.until('witness saw d7', () => witness.added('d7').length > 0);
    await endOfPoll();
    assert.equal(tree.size, 4);
    assert.equal(rec.warnings.length, 1, 'warned once');
    // resync() finds what was skipped once there is room, and reports nothing twice.
    const tracked = [...tree.entries()].map((e) => e.rel);
    for (const rel of tracked.slice(0, 2)) rmdirSync(join(root, rel));
    await rec.until('two removed', () => rec.removed().length === 2);
    tree.resync();
    assert.equal(tree.size, 4);
    assert.equal(rec.added().length, 6);
    assert.equal(new Set(rec.added().map((e) => e.rel)).size, 6);
    tree.resync();
    assert.equal(rec.events.length, 8);

    const deep = freshRoot(['a/b']);
    const drec = new Recorder();
    const dtree = open(deep, { ...drec.opts, maxDepth: 2 });
    assert.deepEqual(drec.added().map((e) => e.rel), ['a', 'a/b']);
    const dwitness = new Recorder();
    open(deep, dwitness.opts);
    mkdirSync(join(deep, 'a/b/c'));
    mkdirSync(join(deep, 'a/b/d'));
    await dwitness.until('witness saw a/b/d', () => dwitness.added('a/b/d').length > 0);
    await endOfPoll();
    assert.deepEqual(drec.added().map((e) => e.rel), ['a', 'a/b']);
    assert.equal(drec.warnings.length, 1);
    assert.match(drec.warnings[0] ?? '', /deeper than 2/);
    assert.equal(dtree.truncated, true);
  });

  it('per-user limit: one user\'s directories beyond it are skipped; other users\' and the system\'s still tracked', async () => {
    const u1 = 'user.slice/user-1000.slice/user@1000.service/app.slice';
    const root = freshRoot([u1, 'user.slice/user-1001.slice', 'system.slice']);
    const rec = new Recorder();
    // user-1000.slice, user@1000.service, app.slice: 3 of 1000's 4.
    const tree = open(root, { ...rec.opts, maxDirsPerUser: 4 });
    mkdirSync(join(root, u1, 'app-a-1.scope'));
    await rec.until('a', () => rec.added(`${u1}/app-a-1.scope`).length > 0);
    mkdirSync(join(root, u1, 'app-b-2.scope')); // the fifth of uid 1000: not tracked
    mkdirSync(join(root, 'user.slice/user-1001.slice/session-1.scope'));
    mkdirSync(join(root, 'system.slice/x.service'));
    await rec.until('the other user and the system', () => rec.added('system.slice/x.service').length > 0
      && rec.added('user.slice/user-1001.slice/session-1.scope').length > 0);
    await endOfPoll();
    assert.equal(rec.added(`${u1}/app-b-2.scope`).length, 0);
    assert.equal(tree.truncated, true);
    assert.ok(rec.warnings.some((w) => /uid 1000 has 4 directories tracked, the per-user limit/.test(w)), rec.warnings.join('\n'));
    // Room again (one removed) and a resync: found.
    rmdirSync(join(root, u1, 'app-a-1.scope'));
    await rec.until('a removed', () => rec.removed().some((e) => e.rel === `${u1}/app-a-1.scope`));
    tree.resync();
    assert.equal(rec.added(`${u1}/app-b-2.scope`).length, 1);
  });

  it('the root removed: everything below is reported removed, a warning, no watch left', async () => {
    const root = freshRoot(['a/b']);
    const rec = new Recorder();
    const before = await watchHandles();
    const tree = open(root, rec.opts);
    assert.equal(await watchHandles() - before, 4, 'the root, its parent, a, a/b');
    rmdirSync(join(root, 'a/b'));
    rmdirSync(join(root, 'a'));
    rmdirSync(root);
    await rec.until('the root gone', () => rec.warnings.length > 0);
    assert.deepEqual(rec.removed().map((e) => e.rel), ['a/b', 'a']);
    assert.match(rec.warnings[0] ?? '', /is gone/);
    assert.equal(tree.size, 0);
    assert.equal(await watchHandles(), before);
  });

  it('close() releases every watch and reports nothing more', async () => {
    const root = freshRoot(['a/b/c']);
    const rec = new Recorder();
    const before = await watchHandles();
    const tree = open(root, rec.opts);
    assert.equal(await watchHandles() - before, 5);
    tree.close();
    assert.equal(await watchHandles(), before);
    const witness = new Recorder();
    open(root, witness.opts);
    mkdirSync(join(root, 'a/b/c/d'));
    await witness.until('witness saw a/b/c/d', () => witness.added('a/b/c/d').length > 0);
    await endOfPoll();
    assert.equal(rec.events.length, 3);
    assert.equal(tree.size, 0);

    // A listener that throws during the initial scan: the constructor throws, no watch is left.
    const withWitness = await watchHandles();
    assert.throws(() => new CgroupTree(root, { onAdded: () => { throw new Error('listener bug'); } }), /listener bug/);
    assert.equal(await watchHandles(), withWitness, 'only the witness');
  });

  it(`latency: mkdir by another process -> added, rmdir -> removed (${LATENCY_N} each)`, async (t) => {
    const root = freshRoot([APPS]);
    const r = await measureTreeLatency(root, APPS, LATENCY_N);
    assert.equal(r.mkdir.n, LATENCY_N);
    assert.equal(r.rmdir.n, LATENCY_N);
    const line = (what: string, s: typeof r.mkdir): string =>
      `${what}: p50 ${s.p50_us.toFixed(0)} µs, p99 ${s.p99_us.toFixed(0)} µs, max ${s.max_us.toFixed(0)} µs, mean ${s.mean_us.toFixed(0)} µs`;
    t.diagnostic(line('mkdir -> added', r.mkdir));
    t.diagnostic(line('rmdir -> removed', r.rmdir));
    t.diagnostic(`directories watched at the end: ${r.watched}`);
    console.log(`cgroup tree latency (${LATENCY_N}): ${line('mkdir -> added', r.mkdir)}; ${line('rmdir -> removed', r.rmdir)}`);
  });
});
