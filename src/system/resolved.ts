/**
 * systemd-resolved's per-link DNS servers as {@link ResolvedLinkFacts}: org.freedesktop.resolve1
 * on the system bus.
 *
 * One property: org.freedesktop.resolve1.Manager `DNS` at /org/freedesktop/resolve1, a(iiay)
 * (ifindex, address family AF_INET 2 / AF_INET6 10, the address's bytes), read with
 * Properties.Get at attach and again whenever a PropertiesChanged from the service's owner says
 * it changed without its value (invalidated); one that carries the value is taken as it is.
 * Entries of ifindex 0 (the global servers, not a link's) are left out; the links come sorted by
 * ifindex, each with its servers in the order resolved gives them. (resolved announces DNS
 * changes only in newer versions, where the property is marked emits-change; with an older one the
 * value is what it was at attach, until the watcher attaches again.)
 *
 * As in the other readers: signals and the reads they cause run one after another in arrival
 * order, after the initial read; `changed` is called once that queue is drained, and only when
 * the value changed. A malformed entry is skipped, with one warning (until it is well-formed).
 */
import type { Logger } from '../daemon/log.js';
import { errorMessage } from '../errors.js';
import { i32, str, strings, variants, type Signal, type SignalMatch } from '../agent/dbus.js';
import { formatAddress } from '../net/prefix.js';
import type { ResolvedLinkFacts } from './facts.js';
import { PROPERTIES } from './modemmanager.js';
import { bytesOf } from './networkmanager.js';
import { QueuedReader, type ReaderSession } from './reader.js';

export const RESOLVED = {
  name: 'org.freedesktop.resolve1',
  path: '/org/freedesktop/resolve1',
  manager: 'org.freedesktop.resolve1.Manager',
} as const;

const AF_INET = 2;
const AF_INET6 = 10;

interface Session extends ReaderSession {
  /** Manager.DNS as the service gave it (undefined: not read). */
  dns: unknown;
}


/** One a(iiay) entry: its ifindex and address; throws when it is not one. */
export function dnsEntry(v: unknown, what: string): { ifindex: number; address: string } {
  if (!Array.isArray(v) || v.length !== 3) throw new TypeError(`${what}: expected (iiay)`);
  const ifindex = i32(v[0], `${what} ifindex`);
  const family = i32(v[1], `${what} family`);
  const bytes = bytesOf(v[2], `${what} address`);
  if (family === AF_INET && bytes.length === 4) return { ifindex, address: formatAddress(4, bytes) };
  if (family === AF_INET6 && bytes.length === 16) return { ifindex, address: formatAddress(6, bytes) };
  throw new TypeError(`${what}: family ${family} with ${bytes.length} address bytes`);
}

export class ResolvedReader extends QueuedReader<ResolvedLinkFacts, Session> {
  readonly service = RESOLVED.name;
  /** The complaints of the last derivation, so a malformed entry is reported once, not per update. */
  private reported = new Set<string>();

  constructor(private readonly log: Logger) {
    super();
  }

  protected open(common: ReaderSession): Session {
    return { ...common, dns: undefined };
  }

  protected signals(): readonly { match: SignalMatch; on: (s: Session, sig: Signal) => void }[] {
    return [{ match: { path: RESOLVED.path, interface: PROPERTIES, member: 'PropertiesChanged' }, on: (s, sig) => this.onPropertiesChanged(s, sig) }];
  }

  protected forget(): void {
    this.reported = new Set();
  }

  protected derive(s: Session): readonly ResolvedLinkFacts[] {
    const complaints = new Set<string>();
    const links = new Map<number, string[]>();
    if (s.dns !== undefined) {
      if (!Array.isArray(s.dns)) {
        complaints.add('Manager.DNS: expected an array');
      } else {
        s.dns.forEach((v: unknown, i) => {
          try {
            const { ifindex, address } = dnsEntry(v, `Manager.DNS[${i}]`);
            if (ifindex === 0) return; // the global servers
            const list = links.get(ifindex) ?? [];
            list.push(address);
            links.set(ifindex, list);
          } catch (e) {
            complaints.add(errorMessage(e));
          }
        });
      }
    }
    for (const c of complaints) if (!this.reported.has(c)) this.log.warn('resolved: unreadable value, skipped', { error: c });
    this.reported = complaints;
    return [...links].sort(([a], [b]) => a - b).map(([ifindex, dns]) => ({ ifindex, dns }));
  }

  protected async readAll(s: Session): Promise<void> {
    const reply = await s.bus.call({ destination: s.owner, path: RESOLVED.path, interface: PROPERTIES, member: 'Get', signature: 'ss', body: [RESOLVED.manager, 'DNS'] });
    if (!s.live) return;
    const v = reply.body[0];
    if (typeof v !== 'object' || v === null || !('value' in v)) throw new TypeError('Manager.DNS: expected a variant');
    s.dns = v.value;
  }

  private onPropertiesChanged(s: Session, sig: Signal): void {
    let changed: ReturnType<typeof variants>;
    let invalidated: string[];
    try {
      if (str(sig.body[0], 'PropertiesChanged interface') !== RESOLVED.manager) return;
      changed = variants(sig.body[1], 'PropertiesChanged changed');
      invalidated = strings(sig.body[2], 'PropertiesChanged invalidated');
    } catch (e) {
      this.log.warn('resolved: unreadable signal', { member: sig.member, error: errorMessage(e) });
      return;
    }
    const dns = changed.get('DNS');
    if (dns === undefined && !invalidated.includes('DNS')) return;
    this.enqueue(s, async () => {
      if (dns !== undefined) s.dns = dns.value;
      else await this.readAll(s);
    }).catch((e: unknown) => {
      if (s.live) this.log.warn('resolved: read failed', { error: errorMessage(e) });
    });
  }
}
