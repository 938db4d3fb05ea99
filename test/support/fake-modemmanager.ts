/**
 * A small ModemManager (org.freedesktop.ModemManager1) for tests, on a private bus
 * (notify-server.ts startPrivateBus): never the machine's system bus.
 *
 * It exports what src/system/modemmanager.ts reads, laid out as ModemManager does: an
 * ObjectManager at /org/freedesktop/ModemManager1 whose managed objects are the modems
 * (…/Modem/N: org.freedesktop.ModemManager1.Modem with Sim and Bearers, and
 * org.freedesktop.ModemManager1.Modem.Modem3gpp with RegistrationState and OperatorCode), SIM
 * objects (…/SIM/N) and bearer objects (…/Bearer/N) readable with Properties.Get/GetAll. Each
 * change the test makes is announced as ModemManager would: PropertiesChanged ("sa{sv}as") on the
 * object, InterfacesAdded ("oa{sa{sv}}") / InterfacesRemoved ("oas") at the ObjectManager.
 *
 * Object paths are never reused (a swapped SIM is a new SIM object, as in ModemManager).
 * {@link FakeModemManager.setProperty} sets any property to any variant, for a misbehaving
 * service.
 */
import type { Variant } from '@jellybrick/dbus-next';
import { connectBus, variant, type IncomingCall, type MessageBus, type Outcome } from '../../src/agent/dbus.js';
import { MODEMMANAGER, OBJECT_MANAGER, PROPERTIES } from '../../src/system/modemmanager.js';
import { answerProperties, dict, own, release, type Props } from './fake-service.js';

export interface FakeSim {
  readonly iccid: string;
  /** Sim.OperatorIdentifier (MCC+MNC); "" when absent. */
  readonly operator?: string;
  readonly operatorName?: string;
}

export interface FakeBearer {
  /** Bearer.Interface; "" when absent (not connected). */
  readonly interface?: string;
  readonly apn?: string;
  readonly connected?: boolean;
  /** Ip4Config dns1..dns3. */
  readonly dns4?: readonly string[];
  /** Ip6Config dns1..dns3. */
  readonly dns6?: readonly string[];
}

export interface FakeModem {
  /** The SIM in it (null or absent: none, Sim = "/"). */
  readonly sim?: FakeSim | null;
  /** MMModem3gppRegistrationState (default 1, home); null: no Modem3gpp interface. */
  readonly registration?: number | null;
  /** Modem3gpp.OperatorCode (default ""). */
  readonly operatorCode?: string;
  readonly bearers?: readonly FakeBearer[];
}

type Interfaces = Map<string, Props>;

function simProps(sim: FakeSim): Props {
  return new Map([
    ['SimIdentifier', variant('s', sim.iccid)],
    ['Imsi', variant('s', '')],
    ['OperatorIdentifier', variant('s', sim.operator ?? '')],
    ['OperatorName', variant('s', sim.operatorName ?? '')],
  ]);
}

function ipConfig(dns: readonly string[] | undefined): Variant {
  const entries: Record<string, Variant> = { method: variant('u', dns && dns.length > 0 ? 2 : 0) };
  (dns ?? []).slice(0, 3).forEach((d, i) => { entries[`dns${i + 1}`] = variant('s', d); });
  return variant('a{sv}', entries);
}

function bearerProps(b: FakeBearer): Props {
  return new Map([
    ['Interface', variant('s', b.interface ?? '')],
    ['Connected', variant('b', b.connected ?? false)],
    ['Suspended', variant('b', false)],
    ['Ip4Config', ipConfig(b.dns4)],
    ['Ip6Config', ipConfig(b.dns6)],
    ['IpTimeout', variant('u', 20)],
    ['Properties', variant('a{sv}', b.apn !== undefined ? { apn: variant('s', b.apn) } : {})],
  ]);
}

export class FakeModemManager {
  private readonly objects = new Map<string, Interfaces>();
  private readonly handled = new Set<string>();
  private next = { modem: 0, sim: 0, bearer: 0 };

  private constructor(readonly bus: MessageBus) {}

  /** Connects to the bus at `address`, exports the ObjectManager and owns org.freedesktop.ModemManager1. */
  static async start(address: string): Promise<FakeModemManager> {
    const bus = await connectBus(address);
    const mm = new FakeModemManager(bus);
    bus.handle(MODEMMANAGER.path, OBJECT_MANAGER, (c) => mm.answerObjectManager(c));
    await own(bus, MODEMMANAGER.name);
    return mm;
  }

  /** Its unique name on the bus (the owner of org.freedesktop.ModemManager1). */
  get owner(): string {
    return this.bus.name;
  }

  /** The modems' paths, in the order they came. */
  get modems(): string[] {
    return [...this.objects.entries()].filter(([, i]) => i.has(MODEMMANAGER.modem)).map(([p]) => p);
  }

  private answerObjectManager(c: IncomingCall): Outcome | undefined {
    if (c.member !== 'GetManagedObjects') return undefined;
    const out: Record<string, Record<string, Record<string, Variant>>> = {};
    for (const path of this.modems) {
      const ifaces = this.objects.get(path)!;
      out[path] = {
        'org.freedesktop.DBus.Properties': {},
        ...Object.fromEntries([...ifaces].map(([name, props]) => [name, dict(props)])),
      };
    }
    return { signature: 'a{oa{sa{sv}}}', body: [out] };
  }

  private export(path: string, ifaces: Interfaces): void {
    this.objects.set(path, ifaces);
    if (this.handled.has(path)) return;
    this.handled.add(path);
    this.bus.handle(path, PROPERTIES, (c) => answerProperties(this.objects, path, c));
  }

  private props(path: string, iface: string): Props {
    const p = this.objects.get(path)?.get(iface);
    if (p === undefined) throw new Error(`fake ModemManager: no ${iface} at ${path}`);
    return p;
  }

  /** Sets properties of an object and says so (PropertiesChanged). */
  private change(path: string, iface: string, changed: Record<string, Variant>): void {
    const props = this.props(path, iface);
    for (const [k, v] of Object.entries(changed)) props.set(k, v);
    this.bus.emit(path, PROPERTIES, 'PropertiesChanged', 'sa{sv}as', [iface, changed, []]);
  }

  private newSim(sim: FakeSim | null | undefined): string {
    if (sim === null || sim === undefined) return '/';
    const path = `${MODEMMANAGER.path}/SIM/${this.next.sim++}`;
    this.export(path, new Map([[MODEMMANAGER.sim, simProps(sim)]]));
    return path;
  }

  private newBearer(b: FakeBearer): string {
    const path = `${MODEMMANAGER.path}/Bearer/${this.next.bearer++}`;
    this.export(path, new Map([[MODEMMANAGER.bearer, bearerProps(b)]]));
    return path;
  }

  private bearersOf(modem: string): string[] {
    const v = this.props(modem, MODEMMANAGER.modem).get('Bearers');
    return v === undefined ? [] : (v.value as string[]);
  }

  private simOf(modem: string): string {
    const v = this.props(modem, MODEMMANAGER.modem).get('Sim');
    return v === undefined ? '/' : (v.value as string);
  }

  /** A modem appears (its SIM and bearers first, then InterfacesAdded); returns its path. */
  addModem(m: FakeModem = {}): string {
    const path = `${MODEMMANAGER.path}/Modem/${this.next.modem++}`;
    const sim = this.newSim(m.sim);
    const bearers = (m.bearers ?? []).map((b) => this.newBearer(b));
    const ifaces: Interfaces = new Map([[MODEMMANAGER.modem, new Map([
      ['Sim', variant('o', sim)],
      ['Bearers', variant('ao', bearers)],
      ['Manufacturer', variant('s', 'Waymark')],
      ['Model', variant('s', 'Fake Modem')],
      ['State', variant('i', 8)],
    ])]]);
    const registration = m.registration === undefined ? 1 : m.registration;
    if (registration !== null) {
      ifaces.set(MODEMMANAGER.modem3gpp, new Map([
        ['Imei', variant('s', '490154203237518')],
        ['RegistrationState', variant('u', registration)],
        ['OperatorCode', variant('s', m.operatorCode ?? '')],
        ['OperatorName', variant('s', '')],
      ]));
    }
    this.export(path, ifaces);
    this.bus.emit(MODEMMANAGER.path, OBJECT_MANAGER, 'InterfacesAdded', 'oa{sa{sv}}', [
      path, Object.fromEntries([...ifaces].map(([name, props]) => [name, dict(props)])),
    ]);
    return path;
  }

  /** A SIM swap: a new SIM object (or none), then Modem.Sim changes. Returns the new SIM's path ("/" for none). */
  setSim(modem: string, sim: FakeSim | null): string {
    const old = this.simOf(modem);
    const path = this.newSim(sim);
    this.change(modem, MODEMMANAGER.modem, { Sim: variant('o', path) });
    if (old !== '/') this.objects.delete(old);
    return path;
  }

  /** Modem3gpp RegistrationState (MMModem3gppRegistrationState) and OperatorCode change. */
  setRegistration(modem: string, code: number, operatorCode = ''): void {
    this.change(modem, MODEMMANAGER.modem3gpp, { RegistrationState: variant('u', code), OperatorCode: variant('s', operatorCode) });
  }

  /** A new bearer on the modem (Modem.Bearers changes); returns its path. */
  addBearer(modem: string, b: FakeBearer): string {
    const path = this.newBearer(b);
    this.change(modem, MODEMMANAGER.modem, { Bearers: variant('ao', [...this.bearersOf(modem), path]) });
    return path;
  }

  /** Changes a bearer (only what `patch` says): PropertiesChanged on it, as a bearer connecting or disconnecting does. */
  setBearer(bearer: string, patch: FakeBearer): void {
    const changed: Record<string, Variant> = {};
    if (patch.interface !== undefined) changed['Interface'] = variant('s', patch.interface);
    if (patch.connected !== undefined) changed['Connected'] = variant('b', patch.connected);
    if (patch.dns4 !== undefined) changed['Ip4Config'] = ipConfig(patch.dns4);
    if (patch.dns6 !== undefined) changed['Ip6Config'] = ipConfig(patch.dns6);
    if (patch.apn !== undefined) changed['Properties'] = variant('a{sv}', { apn: variant('s', patch.apn) });
    this.change(bearer, MODEMMANAGER.bearer, changed);
  }

  /** A bearer goes (Modem.Bearers changes, then the object is gone). */
  removeBearer(bearer: string): void {
    for (const modem of this.modems) {
      const bearers = this.bearersOf(modem);
      if (!bearers.includes(bearer)) continue;
      this.change(modem, MODEMMANAGER.modem, { Bearers: variant('ao', bearers.filter((b) => b !== bearer)) });
    }
    this.objects.delete(bearer);
  }

  /** The modem goes: InterfacesRemoved, and its SIM and bearer objects with it. */
  removeModem(modem: string): void {
    const ifaces = this.objects.get(modem);
    if (ifaces === undefined) throw new Error(`fake ModemManager: no modem ${modem}`);
    const sim = this.simOf(modem);
    const bearers = this.bearersOf(modem);
    this.objects.delete(modem);
    this.bus.emit(MODEMMANAGER.path, OBJECT_MANAGER, 'InterfacesRemoved', 'oas', [modem, [...ifaces.keys()]]);
    if (sim !== '/') this.objects.delete(sim);
    for (const b of bearers) this.objects.delete(b);
  }

  /**
   * Any property of any of its objects, to any value (a misbehaving service: the wrong type),
   * announced with PropertiesChanged.
   */
  setProperty(path: string, iface: string, name: string, value: Variant): void {
    this.change(path, iface, { [name]: value });
  }

  /** Like {@link setProperty}, without the signal (what a read finds, the next time). */
  setPropertyQuietly(path: string, iface: string, name: string, value: Variant): void {
    this.props(path, iface).set(name, value);
  }

  /** ModemManager quits: gives the name up (everyone has seen NameOwnerChanged when this resolves), then leaves the bus. */
  close(): Promise<void> {
    return release(this.bus, MODEMMANAGER.name);
  }
}
