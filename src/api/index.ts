/**
 * Waymark for Node programs: ask for a connection by what it needs, get a socket on the right
 * uplink.
 *
 *   import { connect } from 'waymark';
 *   const { socket, uplink } = await connect({ host: 'intranet.corp.example', port: 443, needs: ['long-lived'] });
 *
 * Names of domain destinations resolve through the DNS of the uplink that reaches them; each
 * address is decided by waymarkd (checked against the config: a wish, never an override), and
 * the socket is bound to the decided uplink's device before it connects.
 */
import { lookup } from 'node:dns/promises';
import { isIP, type Socket } from 'node:net';
import type { NeedName } from '../config/schema.js';
import { DecisionClient, decideSocketPath } from '../decision/client.js';
import { needsToMask } from '../decision/needs.js';
import { WM_ACTION, WM_RESOLVE } from '../decision/wire.js';
import * as native from '../native/index.js';
import { formatAddress, parseAddress, type Family } from '../net/prefix.js';

export type { NeedName };

export interface ConnectOptions {
  readonly host: string;
  readonly port: number;
  readonly needs?: readonly NeedName[];
  /** A particular uplink (name or interface). */
  readonly uplink?: string;
  /** The destination the host belongs to (refused if it does not). */
  readonly destination?: string;
  /** For the whole attempt, every address included. Default 10 s. */
  readonly timeoutMs?: number;
  /** How long to wait when the daemon says the answer waits for the user (a prompt). Default 60 s. */
  readonly promptTimeoutMs?: number;
  /** waymarkd's control socket or its directory (the decide socket is in it). Default $WAYMARK_SOCKET or /run/waymark/waymarkd.sock. */
  readonly socketPath?: string;
}

export interface Connection {
  readonly socket: Socket;
  /** The uplink the socket is bound to, or null when the daemon left it to default routing. */
  readonly uplink: string | null;
  readonly address: string;
  readonly family: Family;
}

export class WaymarkError extends Error {
  constructor(readonly code: string, message: string) {
    super(message);
    this.name = 'WaymarkError';
  }
}

const ERRNO_NAME: Record<number, string> = { 13: 'EACCES', 101: 'ENETUNREACH' };

export async function connect(o: ConnectOptions): Promise<Connection> {
  const deadline = Date.now() + (o.timeoutMs ?? 10_000);
  const client = new DecisionClient(decideSocketPath(o.socketPath), o.timeoutMs ?? 10_000, o.promptTimeoutMs ?? 60_000);
  const needs = needsToMask(o.needs ?? []);
  try {
    const addrs = await addresses(client, o, needs);
    let last: Error = new WaymarkError('ENOTFOUND', `${o.host}: no address`);
    for (const a of addrs) {
      const d = await client.decide({ family: a.family, proto: 'tcp', port: o.port, needs, addr: a.bytes, uplink: o.uplink ?? '', destination: o.destination ?? '' });
      if (d.action === WM_ACTION.DENY) {
        last = new WaymarkError(ERRNO_NAME[d.err] ?? 'EACCES', `${formatAddress(a.family, a.bytes)}: refused by policy${d.uplink ? ` (uplink ${d.uplink})` : ''}`);
        continue;
      }
      const ifname = d.action === WM_ACTION.STEER ? d.ifname : undefined;
      try {
        const socket = await tcpConnect(a.family, a.bytes, o.port, ifname, deadline);
        return { socket, uplink: d.action === WM_ACTION.STEER ? d.uplink : null, address: formatAddress(a.family, a.bytes), family: a.family };
      } catch (e) {
        last = e instanceof Error ? e : new Error(String(e));
      }
    }
    throw last;
  } catch (e) {
    if (native.isNativeError(e, 'ENOENT') || native.isNativeError(e, 'ECONNREFUSED')) {
      throw new WaymarkError('ENOENT', `waymarkd is not running (no decide socket at ${client.path})`);
    }
    throw e;
  } finally {
    client.close();
  }
}

async function addresses(client: DecisionClient, o: ConnectOptions, needs: number): Promise<{ family: Family; bytes: Uint8Array }[]> {
  if (isIP(o.host)) {
    const a = parseAddress(o.host);
    return a ? [a] : [];
  }
  const r = await client.resolve({ family: 0, needs, uplink: o.uplink ?? '', name: o.host });
  if (r.status === WM_RESOLVE.RESOLVED) return r.addrs.map((a) => ({ family: a.family, bytes: a.addr }));
  if (r.status === WM_RESOLVE.NO_NAME) throw new WaymarkError('ENOTFOUND', `${o.host}: no such name (DNS of uplink ${r.uplink})`);
  if (r.status === WM_RESOLVE.REFUSED) throw new WaymarkError('EACCES', `${o.host}: policy allows no uplink that reaches it`);
  if (r.status === WM_RESOLVE.DNS_FAILED) throw new WaymarkError('EAI_AGAIN', `${o.host}: the DNS of its uplink did not answer`);
  const found = await lookup(o.host, { all: true });
  return found.flatMap((f) => {
    const a = parseAddress(f.address);
    return a ? [a] : [];
  });
}

function tcpConnect(family: Family, addr: Uint8Array, port: number, ifname: string | undefined, deadline: number): Promise<Socket> {
  const where = `${formatAddress(family, addr)}:${port}`;
  return new Promise((resolve, reject) => {
    let abort: (() => void) | undefined;
    const timer = setTimeout(() => {
      abort?.();
      reject(new WaymarkError('ETIMEDOUT', `connect to ${where} timed out`));
    }, Math.max(1, deadline - Date.now()));
    native.connectSteeredTcp(family, addr, port, { ifname }, (a) => (abort = a)).then(
      (socket) => {
        clearTimeout(timer);
        resolve(socket);
      },
      (e: unknown) => {
        clearTimeout(timer);
        // The connect's own failure, said with the address; a failure to set up the socket as is.
        reject(native.isNativeError(e) && e.syscall === 'connect'
          ? Object.assign(new Error(`connect to ${where}: errno ${-e.errno}`), { code: e.code })
          : e);
      },
    );
  });
}
