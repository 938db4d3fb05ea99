/**
 * NetworkManager's devices as {@link DeviceFacts}: org.freedesktop.NetworkManager on the system bus.
 *
 * The devices come from GetDevices at /org/freedesktop/NetworkManager (then DeviceAdded /
 * DeviceRemoved there); each device is read with Properties.GetAll
 * ("org.freedesktop.NetworkManager.Device": Interface, IpInterface, Metered, Ip4Config,
 * Ip6Config), and so are the IP config objects it names ("/" for none), again whenever the
 * device's Ip4Config or Ip6Config changes (NetworkManager makes a new config object when the
 * configuration changes). Every object's PropertiesChanged from the service's owner is followed
 * (one match rule, dispatched by path).
 *
 * As in the ModemManager reader (modemmanager.ts): what the service says is kept as it said it,
 * the facts are derived after each change, a value of the wrong type skips its object (a device,
 * a config) with one warning; signals and the reads they cause run one after another in arrival
 * order, after the initial read, and `changed` is called once that queue is drained.
 */
import type { Logger } from '../daemon/log.js';
import { errorMessage } from '../errors.js';
import { str, strings, u32, variants, type Signal, type SignalMatch } from '../agent/dbus.js';
import { formatAddress, parseAddress } from '../net/prefix.js';
import type { DeviceFacts } from './facts.js';
import { PROPERTIES } from './modemmanager.js';
import { QueuedReader, type ReaderSession } from './reader.js';

export const NETWORKMANAGER = {
  name: 'org.freedesktop.NetworkManager',
  path: '/org/freedesktop/NetworkManager',
  manager: 'org.freedesktop.NetworkManager',
  device: 'org.freedesktop.NetworkManager.Device',
  ip4: 'org.freedesktop.NetworkManager.IP4Config',
  ip6: 'org.freedesktop.NetworkManager.IP6Config',
} as const;

/** An interface's properties as the service gave them (a{sv}). */
type Props = Map<string, { readonly signature: string; readonly value: unknown }>;

/** Which config property of a device, and the interface of the objects it names. */
const CONFIGS = [
  { property: 'Ip4Config', iface: NETWORKMANAGER.ip4 },
  { property: 'Ip6Config', iface: NETWORKMANAGER.ip6 },
] as const;
type ConfigKind = (typeof CONFIGS)[number];

/** One attachment to one owner of the name: what it read, and its queue of work. */
interface Session extends ReaderSession {
  /** Devices by path; null: not readable (gone, an error reply, not a dictionary). */
  readonly devices: Map<string, Props | null>;
  /** IP4Config and IP6Config objects by path; null: not readable. */
  readonly ip4: Map<string, Props | null>;
  readonly ip6: Map<string, Props | null>;
}


function configsOf(s: Session, kind: ConfigKind): Map<string, Props | null> {
  return kind.iface === NETWORKMANAGER.ip4 ? s.ip4 : s.ip6;
}

/** The config object a device names ("/" or absent: none). */
function configPathOf(props: Props, kind: ConfigKind): string | undefined {
  const v = props.get(kind.property);
  if (v === undefined) return undefined;
  const path = str(v.value, `Device.${kind.property}`);
  return path === '/' || path === '' ? undefined : path;
}

/** NMMetered: 1 yes, 3 guess-yes → true; 2 no, 4 guess-no → false; 0 unknown (or anything else) → absent. */
export function meteredOf(code: number): boolean | undefined {
  switch (code) {
    case 1: case 3: return true;
    case 2: case 4: return false;
    default: return undefined;
  }
}

/** An address as text, in canonical form (RFC 5952 for IPv6); throws when it is not one. */
function canonical(text: string, what: string): string {
  const a = parseAddress(text);
  if (a === undefined) throw new TypeError(`${what}: not an IP address: ${JSON.stringify(text)}`);
  return formatAddress(a.family, a.bytes);
}

/** An ay as bytes (the library gives a Buffer; a plain array of bytes is accepted too). */
export function bytesOf(v: unknown, what: string): Uint8Array {
  if (v instanceof Uint8Array) return v;
  if (Array.isArray(v) && v.every((b) => Number.isInteger(b) && (b as number) >= 0 && (b as number) <= 255)) return Uint8Array.from(v as number[]);
  throw new TypeError(`${what}: expected an array of bytes`);
}

/** IP4Config: NameserverData (aa{sv}, "address"), else Nameservers (au, each in network byte order). */
export function ip4Dns(props: Props): string[] {
  const data = props.get('NameserverData');
  if (data !== undefined) {
    if (!Array.isArray(data.value)) throw new TypeError('IP4Config.NameserverData: expected an array');
    return data.value.map((entry, i) => {
      const address = variants(entry, `IP4Config.NameserverData[${i}]`).get('address');
      if (address === undefined) throw new TypeError(`IP4Config.NameserverData[${i}]: no address`);
      return canonical(str(address.value, `IP4Config.NameserverData[${i}].address`), `IP4Config.NameserverData[${i}].address`);
    });
  }
  const old = props.get('Nameservers');
  if (old === undefined) return [];
  if (!Array.isArray(old.value)) throw new TypeError('IP4Config.Nameservers: expected an array');
  return old.value.map((n, i) => {
    const v = u32(n, `IP4Config.Nameservers[${i}]`);
    // The in_addr_t as it is in memory, read as a (little-endian) uint32: the first octet is the low byte.
    return formatAddress(4, Uint8Array.of(v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, v >>> 24));
  });
}

/** IP6Config: Nameservers (aay, 16 bytes each). */
export function ip6Dns(props: Props): string[] {
  const v = props.get('Nameservers');
  if (v === undefined) return [];
  if (!Array.isArray(v.value)) throw new TypeError('IP6Config.Nameservers: expected an array');
  return v.value.map((a, i) => {
    const bytes = bytesOf(a, `IP6Config.Nameservers[${i}]`);
    if (bytes.length !== 16) throw new TypeError(`IP6Config.Nameservers[${i}]: expected 16 bytes, got ${bytes.length}`);
    return formatAddress(6, bytes);
  });
}

/** A device's own facts, without DNS; undefined when it has no interface name. */
function deviceBase(props: Props): { interface: string; metered: boolean | undefined } | undefined {
  const ipIface = props.get('IpInterface');
  const iface = props.get('Interface');
  const ip = ipIface === undefined ? '' : str(ipIface.value, 'Device.IpInterface');
  const name = ip !== '' ? ip : iface === undefined ? '' : str(iface.value, 'Device.Interface');
  const metered = props.get('Metered');
  const m = metered === undefined ? undefined : meteredOf(u32(metered.value, 'Device.Metered'));
  for (const kind of CONFIGS) configPathOf(props, kind); // a config path of the wrong type skips the device too
  return name === '' ? undefined : { interface: name, metered: m };
}

export class NetworkManagerReader extends QueuedReader<DeviceFacts, Session> {
  readonly service = NETWORKMANAGER.name;
  /** The last complaint about each object, so a malformed value is reported once, not per update. */
  private readonly reported = new Map<string, string>();

  constructor(private readonly log: Logger) {
    super();
  }

  protected open(common: ReaderSession): Session {
    return { ...common, devices: new Map(), ip4: new Map(), ip6: new Map() };
  }

  protected signals(): readonly { match: SignalMatch; on: (s: Session, sig: Signal) => void }[] {
    return [
      { match: { interface: PROPERTIES, member: 'PropertiesChanged' }, on: (s, sig) => this.onPropertiesChanged(s, sig) },
      { match: { path: NETWORKMANAGER.path, interface: NETWORKMANAGER.manager }, on: (s, sig) => this.onManager(s, sig) },
    ];
  }

  protected forget(): void {
    this.reported.clear();
  }

  private background(s: Session, what: string, op: () => Promise<void>): void {
    this.enqueue(s, op).catch((e: unknown) => {
      if (s.live) this.log.warn('NetworkManager: read failed', { what, error: errorMessage(e) });
    });
  }

  private complain(path: string, e: unknown): void {
    const message = errorMessage(e);
    if (this.reported.get(path) === message) return;
    this.reported.set(path, message);
    this.log.warn('NetworkManager: unreadable value, object skipped', { path, error: message });
  }

  /** Each readable device with a name, sorted by it, with the DNS of its readable configs. */
  protected derive(s: Session): readonly DeviceFacts[] {
    const out: { path: string; facts: DeviceFacts }[] = [];
    for (const [path, props] of s.devices) {
      if (!props) continue;
      let base: ReturnType<typeof deviceBase>;
      try {
        base = deviceBase(props);
        this.reported.delete(path);
      } catch (e) {
        this.complain(path, e);
        continue;
      }
      if (base === undefined) continue;
      const dns: string[] = [];
      for (const kind of CONFIGS) {
        const config = configPathOf(props, kind);
        const configProps = config === undefined ? undefined : configsOf(s, kind).get(config);
        if (config === undefined || !configProps) continue;
        try {
          dns.push(...(kind.iface === NETWORKMANAGER.ip4 ? ip4Dns(configProps) : ip6Dns(configProps)));
          this.reported.delete(config);
        } catch (e) {
          this.complain(config, e);
        }
      }
      out.push({ path, facts: { interface: base.interface, ...(base.metered !== undefined ? { metered: base.metered } : {}), dns } });
    }
    const order = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);
    out.sort((a, b) => order(a.facts.interface, b.facts.interface) || order(a.path, b.path));
    return out.map((d) => d.facts);
  }

  // Reads.

  private async getAll(s: Session, path: string, iface: string): Promise<Props> {
    const reply = await s.bus.call({ destination: s.owner, path, interface: PROPERTIES, member: 'GetAll', signature: 's', body: [iface] });
    return variants(reply.body[0], `${path} ${iface}`);
  }

  /** An object's properties, or null when it cannot be read (logged). */
  private async readObject(s: Session, path: string, iface: string): Promise<Props | null> {
    try {
      return await this.getAll(s, path, iface);
    } catch (e) {
      if (s.live) this.log.warn('NetworkManager: cannot read object', { path, error: errorMessage(e) });
      return null;
    }
  }

  /** The config objects a device names, read (again). */
  private async readConfigs(s: Session, props: Props, only?: ConfigKind): Promise<void> {
    await Promise.all(CONFIGS.filter((k) => only === undefined || k === only).map(async (kind) => {
      let path: string | undefined;
      try {
        path = configPathOf(props, kind);
      } catch {
        return; // derive() says so
      }
      if (path === undefined) return;
      const read = await this.readObject(s, path, kind.iface);
      if (s.live) configsOf(s, kind).set(path, read);
    }));
  }

  private async readDevice(s: Session, path: string): Promise<void> {
    const props = await this.readObject(s, path, NETWORKMANAGER.device);
    if (!s.live) return;
    s.devices.set(path, props);
    if (props) await this.readConfigs(s, props);
  }

  /** Drops the config objects no device names any more. */
  private prune(s: Session): void {
    for (const kind of CONFIGS) {
      const named = new Set<string>();
      for (const props of s.devices.values()) {
        if (!props) continue;
        try {
          const p = configPathOf(props, kind);
          if (p !== undefined) named.add(p);
        } catch {
          // unreadable: nothing named
        }
      }
      const configs = configsOf(s, kind);
      for (const p of configs.keys()) {
        if (!named.has(p)) {
          configs.delete(p);
          this.reported.delete(p);
        }
      }
    }
  }

  protected async readAll(s: Session): Promise<void> {
    const reply = await s.bus.call({ destination: s.owner, path: NETWORKMANAGER.path, interface: NETWORKMANAGER.manager, member: 'GetDevices' });
    if (!s.live) return;
    const paths = strings(reply.body[0], 'GetDevices');
    await Promise.all(paths.map((p) => this.readDevice(s, p)));
  }

  // Signals.

  private onManager(s: Session, sig: Signal): void {
    if (sig.member !== 'DeviceAdded' && sig.member !== 'DeviceRemoved') return;
    let path: string;
    try {
      path = str(sig.body[0], `${sig.member} path`);
    } catch (e) {
      this.log.warn('NetworkManager: unreadable signal', { member: sig.member, error: errorMessage(e) });
      return;
    }
    if (sig.member === 'DeviceAdded') {
      this.background(s, `DeviceAdded ${path}`, () => this.readDevice(s, path));
    } else {
      this.background(s, `DeviceRemoved ${path}`, () => {
        s.devices.delete(path);
        this.reported.delete(path);
        this.prune(s);
        return Promise.resolve();
      });
    }
  }

  private onPropertiesChanged(s: Session, sig: Signal): void {
    let iface: string;
    let changed: Props;
    let invalidated: string[];
    try {
      iface = str(sig.body[0], 'PropertiesChanged interface');
      changed = variants(sig.body[1], 'PropertiesChanged changed');
      invalidated = strings(sig.body[2], 'PropertiesChanged invalidated');
    } catch (e) {
      this.log.warn('NetworkManager: unreadable signal', { member: sig.member, path: sig.path, error: errorMessage(e) });
      return;
    }
    const path = sig.path;
    this.background(s, `PropertiesChanged ${path} ${iface}`, async () => {
      if (iface === NETWORKMANAGER.device && s.devices.has(path)) {
        let props = s.devices.get(path);
        if (!props || invalidated.length > 0) {
          // Not read before, or a property said to have changed without its value: read it whole.
          props = await this.readObject(s, path, NETWORKMANAGER.device);
          if (!s.live || !s.devices.has(path)) return;
          s.devices.set(path, props);
          if (props) await this.readConfigs(s, props);
        } else {
          for (const [k, v] of changed) props.set(k, v);
          for (const kind of CONFIGS) if (changed.has(kind.property)) await this.readConfigs(s, props, kind);
        }
        this.prune(s);
        return;
      }
      const kind = CONFIGS.find((k) => k.iface === iface);
      const configs = kind === undefined ? undefined : configsOf(s, kind);
      if (kind === undefined || configs === undefined || !configs.has(path)) return;
      const props = configs.get(path);
      if (!props || invalidated.length > 0) {
        const read = await this.readObject(s, path, kind.iface);
        if (s.live && configs.has(path)) configs.set(path, read);
        return;
      }
      for (const [k, v] of changed) props.set(k, v);
    });
  }
}
