/**
 * A small NetworkManager (org.freedesktop.NetworkManager) and a small systemd-resolved
 * (org.freedesktop.resolve1) for tests, on a private bus (notify-server.ts startPrivateBus):
 * never the machine's system bus.
 *
 * FakeNetworkManager exports what src/system/networkmanager.ts reads, laid out as NetworkManager
 * does: GetDevices at /org/freedesktop/NetworkManager (DeviceAdded / DeviceRemoved there), device
 * objects (…/Devices/N: org.freedesktop.NetworkManager.Device with Interface, IpInterface,
 * Metered, Ip4Config, Ip6Config) and IP config objects (…/IP4Config/N with NameserverData and the
 * older Nameservers, …/IP6Config/N with Nameservers), readable with Properties.Get/GetAll, each
 * change announced with PropertiesChanged ("sa{sv}as") on the object. A DNS change is a new
 * config object, then the device's Ip4Config/Ip6Config change, as NetworkManager does; object
 * paths are never reused.
 *
 * FakeResolved exports org.freedesktop.resolve1.Manager's DNS (a(iiay)) at /org/freedesktop/resolve1.
 */
import type { Variant } from '@jellybrick/dbus-next';
import { connectBus, variant, type MessageBus } from '../../src/agent/dbus.js';
import { parseAddress } from '../../src/net/prefix.js';
import { PROPERTIES } from '../../src/system/modemmanager.js';
import { answerProperties, own, release, type Props } from './fake-service.js';
import { NETWORKMANAGER } from '../../src/system/networkmanager.js';
import { RESOLVED } from '../../src/system/resolved.js';

export interface FakeDevice {
  readonly interface: string;
  /** Device.IpInterface ("" when absent). */
  readonly ipInterface?: string;
  /** NMMetered (default 0, unknown). */
  readonly metered?: number;
  /** The IP4Config's servers; absent: no IP4Config ("/"). */
  readonly dns4?: readonly string[];
  /** The IP6Config's servers; absent: no IP6Config ("/"). */
  readonly dns6?: readonly string[];
  /** The IP4Config has only the older Nameservers (au), no NameserverData (NetworkManager before 1.14). */
  readonly nameserversOnly?: boolean;
}


function bytes(address: string, family: 4 | 6): Buffer {
  const a = parseAddress(address);
  if (a?.family !== family) throw new Error(`fake: not an IPv${family} address: ${address}`);
  return Buffer.from(a.bytes);
}

/** An in_addr_t as NetworkManager puts it in `au`: the address's bytes in memory, read as a little-endian uint32. */
export function nameserverU32(address: string): number {
  return bytes(address, 4).readUInt32LE(0);
}

export class FakeNetworkManager {
  private readonly objects = new Map<string, Map<string, Props>>();
  private readonly handled = new Set<string>();
  private readonly deviceOrder: string[] = [];
  private next = { device: 0, ip4: 0, ip6: 0 };

  private constructor(readonly bus: MessageBus) {}

  /** Connects to the bus at `address`, exports the manager and owns org.freedesktop.NetworkManager. */
  static async start(address: string): Promise<FakeNetworkManager> {
    const bus = await connectBus(address);
    const nm = new FakeNetworkManager(bus);
    bus.handle(NETWORKMANAGER.path, NETWORKMANAGER.manager, (c) => (c.member === 'GetDevices' ? { signature: 'ao', body: [nm.devices] } : undefined));
    await own(bus, NETWORKMANAGER.name);
    return nm;
  }

  /** Its unique name on the bus (the owner of org.freedesktop.NetworkManager). */
  get owner(): string {
    return this.bus.name;
  }

  /** The devices' paths, in the order they came. */
  get devices(): string[] {
    return this.deviceOrder.filter((p) => this.objects.has(p));
  }

  private export(path: string, iface: string, props: Props): void {
    this.objects.set(path, new Map([[iface, props]]));
    if (this.handled.has(path)) return;
    this.handled.add(path);
    this.bus.handle(path, PROPERTIES, (c) => answerProperties(this.objects, path, c));
  }

  private props(path: string, iface: string): Props {
    const p = this.objects.get(path)?.get(iface);
    if (p === undefined) throw new Error(`fake NetworkManager: no ${iface} at ${path}`);
    return p;
  }

  /** Sets properties of an object and says so (PropertiesChanged). */
  private change(path: string, iface: string, changed: Record<string, Variant>): void {
    const props = this.props(path, iface);
    for (const [k, v] of Object.entries(changed)) props.set(k, v);
    this.bus.emit(path, PROPERTIES, 'PropertiesChanged', 'sa{sv}as', [iface, changed, []]);
  }

  private newIp4(dns: readonly string[] | undefined, nameserversOnly: boolean): string {
    if (dns === undefined) return '/';
    const path = `${NETWORKMANAGER.path}/IP4Config/${this.next.ip4++}`;
    const props: Props = new Map([['Nameservers', variant('au', dns.map(nameserverU32))]]);
    if (!nameserversOnly) props.set('NameserverData', variant('aa{sv}', dns.map((d) => ({ address: variant('s', d) }))));
    props.set('Gateway', variant('s', ''));
    this.export(path, NETWORKMANAGER.ip4, props);
    return path;
  }

  private newIp6(dns: readonly string[] | undefined): string {
    if (dns === undefined) return '/';
    const path = `${NETWORKMANAGER.path}/IP6Config/${this.next.ip6++}`;
    this.export(path, NETWORKMANAGER.ip6, new Map([
      ['Nameservers', variant('aay', dns.map((d) => bytes(d, 6)))],
      ['Gateway', variant('s', '')],
    ]));
    return path;
  }

  private configOf(device: string, property: 'Ip4Config' | 'Ip6Config'): string {
    const v = this.props(device, NETWORKMANAGER.device).get(property);
    return v === undefined ? '/' : (v.value as string);
  }

  /** A device appears (its IP configs first, then DeviceAdded); returns its path. */
  addDevice(d: FakeDevice): string {
    const path = `${NETWORKMANAGER.path}/Devices/${this.next.device++}`;
    this.export(path, NETWORKMANAGER.device, new Map([
      ['Interface', variant('s', d.interface)],
      ['IpInterface', variant('s', d.ipInterface ?? '')],
      ['Driver', variant('s', 'fake')],
      ['State', variant('u', 100)],
      ['Metered', variant('u', d.metered ?? 0)],
      ['Ip4Config', variant('o', this.newIp4(d.dns4, d.nameserversOnly ?? false))],
      ['Ip6Config', variant('o', this.newIp6(d.dns6))],
    ]));
    this.deviceOrder.push(path);
    this.bus.emit(NETWORKMANAGER.path, NETWORKMANAGER.manager, 'DeviceAdded', 'o', [path]);
    return path;
  }

  /** Device.Metered changes (NMMetered). */
  setMetered(device: string, metered: number): void {
    this.change(device, NETWORKMANAGER.device, { Metered: variant('u', metered) });
  }

  /**
   * New IP configs (new objects; absent: none, "/"), then the device's Ip4Config and Ip6Config
   * change in one PropertiesChanged; the old objects go.
   */
  setDns(device: string, dns4: readonly string[] | undefined, dns6: readonly string[] | undefined, nameserversOnly = false): void {
    const old = [this.configOf(device, 'Ip4Config'), this.configOf(device, 'Ip6Config')];
    this.change(device, NETWORKMANAGER.device, {
      Ip4Config: variant('o', this.newIp4(dns4, nameserversOnly)),
      Ip6Config: variant('o', this.newIp6(dns6)),
    });
    for (const p of old) if (p !== '/') this.objects.delete(p);
  }

  /** The device goes: DeviceRemoved, and its config objects with it. */
  removeDevice(device: string): void {
    if (!this.objects.has(device)) throw new Error(`fake NetworkManager: no device ${device}`);
    const configs = [this.configOf(device, 'Ip4Config'), this.configOf(device, 'Ip6Config')];
    this.objects.delete(device);
    this.bus.emit(NETWORKMANAGER.path, NETWORKMANAGER.manager, 'DeviceRemoved', 'o', [device]);
    for (const p of configs) if (p !== '/') this.objects.delete(p);
  }

  /** A device's IP config object path ("/" for none). */
  config(device: string, property: 'Ip4Config' | 'Ip6Config'): string {
    return this.configOf(device, property);
  }

  /** Any property of any of its objects, to any value (a misbehaving service), announced with PropertiesChanged. */
  setProperty(path: string, iface: string, name: string, value: Variant): void {
    this.change(path, iface, { [name]: value });
  }

  /** Like {@link setProperty}, without the signal (what a read finds, the next time). */
  setPropertyQuietly(path: string, iface: string, name: string, value: Variant): void {
    this.props(path, iface).set(name, value);
  }

  /** NetworkManager quits: gives the name up, then leaves the bus. */
  close(): Promise<void> {
    return release(this.bus, NETWORKMANAGER.name);
  }
}

export class FakeResolved {
  /** Manager.DNS as it will be said: the entries of each link, links in the order first set. */
  private readonly links = new Map<number, readonly string[]>();
  private readonly objects: Map<string, Map<string, Props>>;

  private constructor(readonly bus: MessageBus) {
    this.objects = new Map([[RESOLVED.path, new Map([[RESOLVED.manager, new Map([
      ['DNS', this.dns()],
      ['LLMNRHostname', variant('s', 'waymark')],
    ])]])]]);
  }

  /** Connects to the bus at `address`, exports the Manager's properties and owns org.freedesktop.resolve1. */
  static async start(address: string): Promise<FakeResolved> {
    const bus = await connectBus(address);
    const r = new FakeResolved(bus);
    bus.handle(RESOLVED.path, PROPERTIES, (c) => answerProperties(r.objects, RESOLVED.path, c));
    await own(bus, RESOLVED.name);
    return r;
  }

  get owner(): string {
    return this.bus.name;
  }

  private dns(): Variant {
    const entries: [number, number, Buffer][] = [];
    for (const [ifindex, servers] of this.links) {
      for (const s of servers) {
        const a = parseAddress(s);
        if (a === undefined) throw new Error(`fake resolved: not an address: ${s}`);
        entries.push([ifindex, a.family === 4 ? 2 : 10, Buffer.from(a.bytes)]);
      }
    }
    return variant('a(iiay)', entries);
  }

  private manager(): Props {
    return this.objects.get(RESOLVED.path)!.get(RESOLVED.manager)!;
  }

  /**
   * A link's servers (ifindex 0: the global ones; [] drops the link), then PropertiesChanged for
   * Manager.DNS: with the value, or (`invalidated`) naming it only, for the reader to Get.
   */
  setLinkDns(ifindex: number, servers: readonly string[], opts: { invalidated?: boolean } = {}): void {
    if (servers.length === 0) this.links.delete(ifindex);
    else this.links.set(ifindex, [...servers]);
    this.setDnsValue(this.dns(), opts);
  }

  /** Manager.DNS to any value (a misbehaving service), announced as {@link setLinkDns} does. */
  setDnsValue(value: Variant, opts: { invalidated?: boolean } = {}): void {
    this.manager().set('DNS', value);
    if (opts.invalidated) this.bus.emit(RESOLVED.path, PROPERTIES, 'PropertiesChanged', 'sa{sv}as', [RESOLVED.manager, {}, ['DNS']]);
    else this.bus.emit(RESOLVED.path, PROPERTIES, 'PropertiesChanged', 'sa{sv}as', [RESOLVED.manager, { DNS: value }, []]);
  }

  /** resolved quits: gives the name up, then leaves the bus. */
  close(): Promise<void> {
    return release(this.bus, RESOLVED.name);
  }
}
