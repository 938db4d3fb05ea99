/**
 * A session's cgroup leaves the nftables render before it leaves the kernel (issue 7, point 7):
 * nft resolves every `socket cgroupv2` path at load time, so an update that still names a
 * removed cgroup fails as a whole, and with it another session's set-up.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createLogger } from '../../src/daemon/log.js';
import { SessionService, type CgroupBackend, type SessionWorld } from '../../src/daemon/sessions.js';
import { SessionRegistry } from '../../src/session/session.js';
import { exampleConfig, labStates, rulesOf } from '../support/fixture.js';

const config = exampleConfig();
const { states } = labStates(config);
const me = { pid: process.pid, uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 };

/** A SessionService over fakes that records, at each cgroup removal, whether the last render named it. */
function harness(opts: { failMove?: boolean } = {}) {
  let rendered: readonly string[] = [];
  const removedWhileRendered: string[] = [];
  const removed: string[] = [];
  const world: SessionWorld = {
    config,
    rules: rulesOf(config),
    uplinks: states,
    sessions: new SessionRegistry(),
    sessionsChanged: (): Promise<void> => {
      rendered = service.backstops().map((b) => b.cgroup);
      return Promise.resolve();
    },
  };
  const cgroups: CgroupBackend = {
    create: (id) => Promise.resolve(`waymark/${id}`),
    movePid: () => (opts.failMove ? Promise.reject(new Error('cannot move')) : Promise.resolve()),
    exists: () => Promise.resolve(true),
    isEmpty: () => Promise.resolve(true),
    remove: (cgroup) => {
      removed.push(cgroup);
      if (rendered.includes(cgroup)) removedWhileRendered.push(cgroup);
      return Promise.resolve();
    },
    watch: () => ({ close: () => undefined }),
    setMark: () => Promise.resolve(),
    present: () => true,
  };
  const service: SessionService = new SessionService(world, cgroups, { save: () => Promise.resolve() }, createLogger('error', () => undefined));
  return { service, removed, removedWhileRendered };
}

describe('session cgroups and the nftables render', () => {
  it('an ending session is rendered out before its cgroup is removed', async () => {
    const h = harness();
    const r = await h.service.begin({ uplink: 'cellular', needs: [], deny: [], command: 'true' }, me);
    await h.service.end(r.id, me);
    assert.deepEqual(h.removed, [r.cgroup]);
    assert.deepEqual(h.removedWhileRendered, [], 'the table loaded last must not name a cgroup that is gone');
  });

  it('a session whose set-up failed is rendered out before its cgroup is removed', async () => {
    const h = harness({ failMove: true });
    await assert.rejects(h.service.begin({ uplink: 'cellular', needs: [], deny: [], command: 'true' }, me), /cannot set up the session/);
    assert.equal(h.removed.length, 1);
    assert.deepEqual(h.removedWhileRendered, []);
  });
});
