/**
 * sock_diag for the RTT measurement: the dump request's bytes, the parsing of replies (a capture
 * from this kernel and hand-built ones: IPv4, v4-mapped IPv6, a short tcp_info, no mark), and
 * the attribution of each socket to an uplink (bound device, mark, source address, soft mark).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { decodeDiagSocket, DIAG_MSG_SIZE, encodeTcpDumpRequest, INET_DIAG, REQ_V2_SIZE, SOCK_DIAG_BY_FAMILY, type DiagSocket } from '../../src/netlink/sockdiag.js';
import type { NlMessage } from '../../src/netlink/message.js';
import { rttSamples, uplinkOfSocket } from '../../src/uplink/rtt.js';
import { RttMonitor } from '../../src/daemon/rtt-monitor.js';
import { exampleConfig, labStates } from '../support/fixture.js';
import { recordingLog } from '../support/fakes.js';

const msg = (body: Buffer, type = SOCK_DIAG_BY_FAMILY): NlMessage => ({ type, flags: 2, seq: 1, pid: 0, body });

/**
 * Captured on kernel 6.18 (as root): an established IPv6 loopback connection [::1]:47002 →
 * [::1]:47001, with INET_DIAG_INFO asked for; MARK (15), CLASS_ID (21), SOCKOPT (22) came along.
 */
const CAPTURED = '0a010000b79ab7990000000000000000000000000000000100000000000000000000000000000001000000004b10000000000000000000000000000000000000000000009a3cee01050008000000000008000f00000000000c001500010000000000000006001600120000001c010200010000000007aa01400d030000000000dc7f00001802000000000000000000000000000000000000000000000000000000000000000000000000000000000100c4ff00001b0000000d000000ffffff7f0a000000b8ff00000300000000000000c4ff00000000000092470a1108000000ffffffffffffffff010000000000000000000000000000000200000001000000000000001b00000000000000000000000000000000000000000000000000000000000000000000000000000000000000010000000000000000000000000000000000000000000000000000000000000000000000b8ff0000000001000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000';

/** An inet_diag_msg with the given fields and attributes, laid out as <linux/inet_diag.h> says. */
function built(o: { af: number; src: number[]; dst: number[]; sport: number; dport: number; ifindex?: number; uid?: number; mark?: number; rttUs?: number; infoLen?: number }): Buffer {
  const head = Buffer.alloc(DIAG_MSG_SIZE);
  head.writeUInt8(o.af, 0);
  head.writeUInt8(1, 1); // TCP_ESTABLISHED
  head.writeUInt16BE(o.sport, 4);
  head.writeUInt16BE(o.dport, 6);
  Buffer.from(o.src).copy(head, 8);
  Buffer.from(o.dst).copy(head, 24);
  head.writeUInt32LE(o.ifindex ?? 0, 40);
  head.writeUInt32LE(o.uid ?? 0, 64);
  head.writeUInt32LE(77, 68);
  const attrs: Buffer[] = [];
  const attr = (type: number, data: Buffer) => {
    const a = Buffer.alloc((4 + data.length + 3) & ~3);
    a.writeUInt16LE(4 + data.length, 0);
    a.writeUInt16LE(type, 2);
    data.copy(a, 4);
    attrs.push(a);
  };
  if (o.mark !== undefined) { const m = Buffer.alloc(4); m.writeUInt32LE(o.mark >>> 0, 0); attr(INET_DIAG.MARK, m); }
  if (o.rttUs !== undefined) {
    const info = Buffer.alloc(o.infoLen ?? 232);
    if (info.length >= 76) { info.writeUInt32LE(o.rttUs, 68); info.writeUInt32LE(o.rttUs >> 1, 72); }
    attr(INET_DIAG.INFO, info);
  }
  return Buffer.concat([head, ...attrs]);
}

const v4 = (s: string): number[] => s.split('.').map(Number);
const mapped = (s: string): number[] => [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, ...v4(s)];

describe('sock_diag', () => {
  it('asks for a family\'s established TCP sockets with tcp_info', () => {
    const r = encodeTcpDumpRequest(4);
    assert.equal(r.length, REQ_V2_SIZE);
    assert.deepEqual([...r.subarray(0, 8)], [2, 6, 2, 0, 2, 0, 0, 0], 'AF_INET, IPPROTO_TCP, 1 << (INET_DIAG_INFO - 1), TCPF_ESTABLISHED');
    assert.ok(r.subarray(8).every((b) => b === 0), 'any socket');
    assert.equal(encodeTcpDumpRequest(6)[0], 10);
  });

  it('parses a reply captured from the kernel', () => {
    const s = decodeDiagSocket(msg(Buffer.from(CAPTURED, 'hex')));
    assert.deepEqual(s, { family: 6, state: 1, sport: 47002, dport: 47001, src: '::1', dst: '::1', ifindex: 0, uid: 0, inode: 32390298, mark: 0, rttUs: 27, rttVarUs: 13 });
  });

  it('parses hand-built replies: IPv4 with a mark, v4-mapped IPv6 as IPv4, a short tcp_info, no mark; skips others', () => {
    const a = decodeDiagSocket(msg(built({ af: 2, src: v4('192.168.50.2'), dst: v4('198.51.100.10'), sport: 40000, dport: 80, ifindex: 2, uid: 1000, mark: 0x01000000, rttUs: 23_456 })));
    assert.deepEqual(a, { family: 4, state: 1, sport: 40000, dport: 80, src: '192.168.50.2', dst: '198.51.100.10', ifindex: 2, uid: 1000, inode: 77, mark: 0x01000000, rttUs: 23_456, rttVarUs: 11_728 });
    const b = decodeDiagSocket(msg(built({ af: 10, src: mapped('10.64.0.2'), dst: mapped('198.51.100.10'), sport: 1, dport: 2, rttUs: 5 })));
    assert.deepEqual([b?.family, b?.src, b?.dst, b?.mark], [4, '10.64.0.2', '198.51.100.10', undefined]);
    const c = decodeDiagSocket(msg(built({ af: 2, src: v4('10.0.0.1'), dst: v4('10.0.0.2'), sport: 1, dport: 2, rttUs: 5, infoLen: 40 })));
    assert.equal(c?.rttUs, undefined, 'tcp_info too short for tcpi_rtt');
    assert.equal(decodeDiagSocket(msg(Buffer.alloc(DIAG_MSG_SIZE - 1))), undefined);
    assert.equal(decodeDiagSocket(msg(Buffer.alloc(DIAG_MSG_SIZE), 3)), undefined, 'NLMSG_DONE');
    assert.equal(decodeDiagSocket(msg(Buffer.alloc(DIAG_MSG_SIZE))), undefined, 'family 0');
  });
});

describe('attributing connections to uplinks', () => {
  const { states } = labStates(exampleConfig());
  const up = (name: string) => {
    const u = states.find((x) => x.spec.name === name);
    assert.ok(u);
    return u;
  };
  const sock = (o: Partial<DiagSocket>): DiagSocket => ({
    family: 4, state: 1, src: '0.0.0.0', sport: 1, dst: '198.51.100.10', dport: 80, ifindex: 0, uid: 0, inode: 1, mark: 0, rttUs: 10_000, ...o,
  });
  const of = (o: Partial<DiagSocket>) => uplinkOfSocket(sock(o), states)?.spec.name;

  it('by bound device, then mark, then an address only one uplink holds, then soft mark', () => {
    assert.equal(of({ ifindex: 4, src: '10.64.0.2', mark: up('cellular').mark }), 'mms', 'the device binding wins');
    assert.equal(of({ mark: up('mms').mark, src: '10.64.0.2' }), 'mms', 'the shared address cannot tell: the mark does');
    assert.equal(of({ src: '192.168.50.2' }), 'wifi');
    assert.equal(of({ family: 6, src: 'fd00:50::2', dst: '2001:db8:100::10' }), 'wifi');
    assert.equal(of({ src: '10.64.0.2' }), undefined, 'cellular and mms share it');
    assert.equal(of({ src: '10.64.0.2', mark: up('cellular').softMark }), 'cellular');
    assert.equal(of({ src: '192.168.50.2', mark: up('cellular').softMark }), 'wifi', 'a soft mark yields to where it went');
    assert.equal(of({ ifindex: 99 }), undefined);
  });

  it('collects RTTs in ms per uplink, leaving out loopback peers and sockets with no RTT yet', () => {
    const got = rttSamples([
      sock({ src: '192.168.50.2', rttUs: 20_500 }), sock({ src: '192.168.50.2', rttUs: 30_000 }),
      sock({ ifindex: 3, rttUs: 61_000 }), sock({ src: '192.168.50.2', rttUs: 0 }), sock({ src: '127.0.0.1', dst: '127.0.0.1', mark: up('wifi').mark }),
      sock({ family: 6, src: '::1', dst: '::1', ifindex: 2 }),
    ], states);
    assert.deepEqual(Object.fromEntries(got), { wifi: [20.5, 30], cellular: [61] });
  });
});

describe('the RTT monitor', () => {
  it('hands each round\'s samples to the world, and logs a failing dump once', async () => {
    const { states } = labStates(exampleConfig());
    const rounds: Map<string, readonly number[]>[] = [];
    const world = { uplinks: states, noteRtt: (m: ReadonlyMap<string, readonly number[]>) => { rounds.push(new Map(m)); } };
    const sock: DiagSocket = { family: 4, state: 1, src: '192.168.50.2', sport: 1, dst: '198.51.100.10', dport: 80, ifindex: 0, uid: 0, inode: 1, rttUs: 12_000 };
    let closed = false;
    const port = {
      dump: (f: 4 | 6) => (f === 4 ? Promise.resolve([sock]) : Promise.reject(new Error('sock_diag dump (IPv6): EPERM'))),
      close: () => { closed = true; },
    };
    const log = recordingLog();
    const m = new RttMonitor(world, port, log, 60_000);
    await m.tick();
    await m.tick();
    assert.deepEqual(rounds.map((r) => Object.fromEntries(r)), [{ wifi: [12] }, { wifi: [12] }]);
    assert.equal(log.lines.filter((l) => l.msg === 'cannot read TCP connections for RTT').length, 1);
    m.close();
    assert.ok(closed);
  });
});
