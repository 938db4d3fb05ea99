/**
 * Measures each uplink's round-trip time from the TCP connections the device already has: every
 * interval, one sock_diag dump per family of the established TCP sockets of the daemon's own
 * network namespace (a netlink socket sees only its namespace), each socket's tcpi_rtt
 * attributed to its uplink (src/uplink/rtt.ts) and handed to the world, which keeps the recent
 * ones (src/uplink/health.ts). No probe traffic of its own: an uplink nobody uses has no
 * measurement, and `low-latency` then goes by its configured latency (docs/needs.md).
 */
import type { Family } from '../net/prefix.js';
import { NLM_F } from '../netlink/message.js';
import { decodeDiagSocket, encodeTcpDumpRequest, NETLINK_SOCK_DIAG, SOCK_DIAG_BY_FAMILY, type DiagSocket } from '../netlink/sockdiag.js';
import { NetlinkSocket } from '../netlink/socket.js';
import { rttSamples } from '../uplink/rtt.js';
import { errorMessage } from '../errors.js';
import type { Logger } from './log.js';
import type { World } from './world.js';

export const DEFAULT_RTT_INTERVAL_MS = 10_000;

/** The kernel side: one dump of a family's established TCP sockets. */
export interface SockDiagPort {
  dump(family: Family): Promise<DiagSocket[]>;
  close(): void;
}

export function sockDiagPort(): SockDiagPort {
  const sock = new NetlinkSocket(NETLINK_SOCK_DIAG);
  return {
    dump: async (family) => {
      const msgs = await sock.request(SOCK_DIAG_BY_FAMILY, NLM_F.DUMP, encodeTcpDumpRequest(family), `sock_diag dump (IPv${family})`);
      return msgs.flatMap((m) => decodeDiagSocket(m) ?? []);
    },
    close: () => sock.close(),
  };
}

export class RttMonitor {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private lastError = '';
  private closed = false;

  constructor(
    private readonly world: Pick<World, 'uplinks' | 'noteRtt'>,
    private readonly port: SockDiagPort,
    private readonly log: Logger,
    readonly intervalMs = DEFAULT_RTT_INTERVAL_MS,
  ) {}

  /** Measures now, then every interval (the timer never keeps the daemon alive). */
  start(): void {
    void this.tick();
    this.timer = setInterval(() => void this.tick(), this.intervalMs);
    this.timer.unref();
  }

  /** One round (joins the one in flight): both dumps, then the samples to the world. */
  tick(): Promise<void> {
    this.running ??= this.measure().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  private async measure(): Promise<void> {
    const sockets: DiagSocket[] = [];
    for (const f of [4, 6] as const) {
      try {
        sockets.push(...(await this.port.dump(f)));
      } catch (e) {
        if (this.closed) return;
        // Logged once per distinct failure, not every interval.
        const msg = errorMessage(e);
        if (msg !== this.lastError) this.log.warn('cannot read TCP connections for RTT', { family: f, error: msg });
        this.lastError = msg;
      }
    }
    // Also without samples: the flap window and old samples age, which the world re-reads.
    this.world.noteRtt(rttSamples(sockets, this.world.uplinks));
  }

  close(): void {
    this.closed = true;
    clearInterval(this.timer);
    this.timer = undefined;
    this.port.close();
  }
}
