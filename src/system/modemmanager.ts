/**
 * ModemManager's modems as {@link ModemFacts}: org.freedesktop.ModemManager1 on the system bus.
 *
 * The modems come from the ObjectManager at /org/freedesktop/ModemManager1 (GetManagedObjects,
 * then InterfacesAdded / InterfacesRemoved); each modem's Modem interface names its SIM object
 * (`Sim`, "/" for none) and its bearers (`Bearers`), which are not managed objects: they are read
 * with Properties.GetAll, again whenever the modem's `Sim` or `Bearers` changes. Every object's
 * PropertiesChanged from the service's owner is followed (one match rule, dispatched by path).
 *
 * What the service says is kept as it said it (each interface's properties, by path), and the
 * facts are derived from that after each change: a value of the wrong type skips its object (a
 * modem, a SIM, a bearer), with a warning, until the service says something readable again.
 *
 * Signals and the reads they cause are handled one after another, in arrival order, after the
 * initial read (they were subscribed to before it): replaying a signal that the initial read
 * already saw leaves the same state, so nothing that happens meanwhile is lost. `changed` is
 * called once the queue of those is drained, so a burst of signals makes one update.
 */
import type { Logger } from '../daemon/log.js';
import { errorMessage } from '../errors.js';
import { BusError, bool, str, strings, u32, variants, type Signal, type SignalMatch } from '../agent/dbus.js';
import { registrationOf, type BearerFacts, type ModemFacts, type SimFacts } from './facts.js';
import { QueuedReader, type ReaderSession } from './reader.js';

export const MODEMMANAGER = {
  name: 'org.freedesktop.ModemManager1',
  path: '/org/freedesktop/ModemManager1',
  modem: 'org.freedesktop.ModemManager1.Modem',
  modem3gpp: 'org.freedesktop.ModemManager1.Modem.Modem3gpp',
  sim: 'org.freedesktop.ModemManager1.Sim',
  bearer: 'org.freedesktop.ModemManager1.Bearer',
} as const;
export const PROPERTIES = 'org.freedesktop.DBus.Properties';
export const OBJECT_MANAGER = 'org.freedesktop.DBus.ObjectManager';

/** An interface's properties as the service gave them (a{sv}). */
type Props = Map<string, { readonly signature: string; readonly value: unknown }>;

interface ModemRaw {
  modem: Props;
  /** Absent while the modem has no Modem3gpp interface (not enabled, not 3GPP). */
  gpp: Props | undefined;
}

/** One attachment to one owner of the name: what it read, and its queue of work. */
interface Session extends ReaderSession {
  readonly modems: Map<string, ModemRaw>;
  /** SIM and bearer objects by path; null: not readable (gone, an error reply, not a dictionary). */
  readonly sims: Map<string, Props | null>;
  readonly bearers: Map<string, Props | null>;
}


/** A string property, "" meaning none (ModemManager's way of saying "not known"). */
function optionalString(props: Props | undefined, name: string, what: string): string | undefined {
  const v = props?.get(name);
  if (v === undefined) return undefined;
  const s = str(v.value, what);
  return s === '' ? undefined : s;
}

export function simFacts(props: Props): SimFacts | undefined {
  const iccid = optionalString(props, 'SimIdentifier', 'Sim.SimIdentifier');
  if (iccid === undefined) return undefined;
  const operator = optionalString(props, 'OperatorIdentifier', 'Sim.OperatorIdentifier');
  const operatorName = optionalString(props, 'OperatorName', 'Sim.OperatorName');
  return { iccid, ...(operator !== undefined ? { operator } : {}), ...(operatorName !== undefined ? { operatorName } : {}) };
}

function dnsOf(props: Props, name: string): string[] {
  const config = props.get(name);
  if (config === undefined) return [];
  const entries = variants(config.value, `Bearer.${name}`);
  const out: string[] = [];
  for (const key of ['dns1', 'dns2', 'dns3']) {
    const v = entries.get(key);
    if (v === undefined) continue;
    const s = str(v.value, `Bearer.${name}.${key}`);
    if (s !== '') out.push(s);
  }
  return out;
}

export function bearerFacts(path: string, props: Props): BearerFacts {
  const iface = optionalString(props, 'Interface', 'Bearer.Interface');
  const connected = props.get('Connected');
  const settings = props.get('Properties');
  const apnValue = settings === undefined ? undefined : variants(settings.value, 'Bearer.Properties').get('apn');
  const apn = apnValue === undefined ? undefined : str(apnValue.value, 'Bearer.Properties.apn');
  return {
    path,
    ...(iface !== undefined ? { interface: iface } : {}),
    ...(apn !== undefined && apn !== '' ? { apn } : {}),
    connected: connected === undefined ? false : bool(connected.value, 'Bearer.Connected'),
    dns: [...dnsOf(props, 'Ip4Config'), ...dnsOf(props, 'Ip6Config')],
  };
}

/** The SIM path a modem names ("/" or absent: none). */
function simPathOf(raw: ModemRaw): string | undefined {
  const v = raw.modem.get('Sim');
  if (v === undefined) return undefined;
  const path = str(v.value, 'Modem.Sim');
  return path === '/' || path === '' ? undefined : path;
}

function bearerPathsOf(raw: ModemRaw): string[] {
  const v = raw.modem.get('Bearers');
  return v === undefined ? [] : strings(v.value, 'Modem.Bearers');
}

/** A dictionary of a message body (a{...}) as its entries; throws when it is not one. */
function entries(v: unknown, what: string): [string, unknown][] {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new TypeError(`${what}: expected a dictionary`);
  return Object.entries(v);
}

function quietly(e: unknown): boolean {
  return e instanceof BusError && e.type === 'org.freedesktop.DBus.Error.Disconnected';
}

export class ModemManagerReader extends QueuedReader<ModemFacts, Session> {
  readonly service = MODEMMANAGER.name;
  /** The last complaint about each object, so a malformed value is reported once, not per update. */
  private readonly reported = new Map<string, string>();

  constructor(private readonly log: Logger) {
    super();
  }

  protected open(common: ReaderSession): Session {
    return { ...common, modems: new Map(), sims: new Map(), bearers: new Map() };
  }

  protected signals(): readonly { match: SignalMatch; on: (s: Session, sig: Signal) => void }[] {
    return [
      { match: { interface: PROPERTIES, member: 'PropertiesChanged' }, on: (s, sig) => this.onPropertiesChanged(s, sig) },
      { match: { path: MODEMMANAGER.path, interface: OBJECT_MANAGER }, on: (s, sig) => this.onObjectManager(s, sig) },
    ];
  }

  protected forget(): void {
    this.reported.clear();
  }

  private background(s: Session, what: string, op: () => Promise<void>): void {
    this.enqueue(s, op).catch((e: unknown) => {
      if (!s.live) return;
      const fields = { what, error: errorMessage(e) };
      if (quietly(e)) this.log.debug('ModemManager: read failed', fields);
      else this.log.warn('ModemManager: read failed', fields);
    });
  }

  private complain(path: string, e: unknown): void {
    const message = errorMessage(e);
    if (this.reported.get(path) === message) return;
    this.reported.set(path, message);
    this.log.warn('ModemManager: unreadable value, object skipped', { path, error: message });
  }

  /** Each readable modem, by path, with its readable SIM and bearers. */
  protected derive(s: Session): readonly ModemFacts[] {
    const out: ModemFacts[] = [];
    for (const path of [...s.modems.keys()].sort()) {
      const raw = s.modems.get(path)!;
      let base: { simPath: string | undefined; bearerPaths: string[]; registration: ModemFacts['registration']; operatorCode: string | undefined };
      try {
        const state = raw.gpp?.get('RegistrationState');
        base = {
          simPath: simPathOf(raw),
          bearerPaths: bearerPathsOf(raw),
          registration: state === undefined ? 'unknown' : registrationOf(u32(state.value, 'Modem3gpp.RegistrationState')),
          operatorCode: optionalString(raw.gpp, 'OperatorCode', 'Modem3gpp.OperatorCode'),
        };
        this.reported.delete(path);
      } catch (e) {
        this.complain(path, e);
        continue;
      }
      let sim: SimFacts | undefined;
      const simProps = base.simPath === undefined ? undefined : s.sims.get(base.simPath);
      if (base.simPath !== undefined && simProps) {
        try {
          sim = simFacts(simProps);
          this.reported.delete(base.simPath);
        } catch (e) {
          this.complain(base.simPath, e);
        }
      }
      const bearers: BearerFacts[] = [];
      for (const b of base.bearerPaths) {
        const props = s.bearers.get(b);
        if (!props) continue;
        try {
          bearers.push(bearerFacts(b, props));
          this.reported.delete(b);
        } catch (e) {
          this.complain(b, e);
        }
      }
      out.push({
        path,
        ...(sim !== undefined ? { sim } : {}),
        registration: base.registration,
        ...(base.operatorCode !== undefined ? { operatorCode: base.operatorCode } : {}),
        bearers,
      });
    }
    return out;
  }

  // Reads.

  private async getAll(s: Session, path: string, iface: string): Promise<Props> {
    const reply = await s.bus.call({ destination: s.owner, path, interface: PROPERTIES, member: 'GetAll', signature: 's', body: [iface] });
    return variants(reply.body[0], `${path} ${iface}`);
  }

  /** A SIM or bearer object, or null when it cannot be read (logged). */
  private async readObject(s: Session, path: string, iface: string): Promise<Props | null> {
    try {
      return await this.getAll(s, path, iface);
    } catch (e) {
      if (s.live) {
        const fields = { path, error: errorMessage(e) };
        if (quietly(e)) this.log.debug('ModemManager: cannot read object', fields);
        else this.log.warn('ModemManager: cannot read object', fields);
      }
      return null;
    }
  }

  private async readSim(s: Session, raw: ModemRaw): Promise<void> {
    let path: string | undefined;
    try {
      path = simPathOf(raw);
    } catch {
      return; // derive() says so
    }
    if (path === undefined) return;
    const props = await this.readObject(s, path, MODEMMANAGER.sim);
    if (s.live) s.sims.set(path, props);
  }

  private async readBearers(s: Session, raw: ModemRaw): Promise<void> {
    let paths: string[];
    try {
      paths = bearerPathsOf(raw);
    } catch {
      return;
    }
    const read = await Promise.all(paths.map(async (p) => [p, await this.readObject(s, p, MODEMMANAGER.bearer)] as const));
    if (!s.live) return;
    for (const [p, props] of read) s.bearers.set(p, props);
  }

  /** Drops the SIM and bearer objects no modem names any more. */
  private prune(s: Session): void {
    const sims = new Set<string>();
    const bearers = new Set<string>();
    for (const raw of s.modems.values()) {
      try {
        const sim = simPathOf(raw);
        if (sim !== undefined) sims.add(sim);
      } catch {
        // unreadable: nothing named
      }
      try {
        for (const b of bearerPathsOf(raw)) bearers.add(b);
      } catch {
        // unreadable: nothing named
      }
    }
    for (const p of s.sims.keys()) if (!sims.has(p)) s.sims.delete(p);
    for (const p of s.bearers.keys()) if (!bearers.has(p)) s.bearers.delete(p);
  }

  /** A modem's interfaces from GetManagedObjects or InterfacesAdded (a{sa{sv}}); false: no Modem interface. */
  private setInterfaces(s: Session, path: string, ifaces: unknown): boolean {
    const byName = new Map(entries(ifaces, `${path} interfaces`));
    const modem = byName.get(MODEMMANAGER.modem);
    const gpp = byName.get(MODEMMANAGER.modem3gpp);
    const known = s.modems.get(path);
    if (modem === undefined && known === undefined) return false;
    const raw: ModemRaw = {
      modem: modem === undefined ? known!.modem : variants(modem, `${path} ${MODEMMANAGER.modem}`),
      gpp: gpp === undefined ? known?.gpp : variants(gpp, `${path} ${MODEMMANAGER.modem3gpp}`),
    };
    s.modems.set(path, raw);
    return true;
  }

  protected async readAll(s: Session): Promise<void> {
    const reply = await s.bus.call({ destination: s.owner, path: MODEMMANAGER.path, interface: OBJECT_MANAGER, member: 'GetManagedObjects' });
    if (!s.live) return;
    for (const [path, ifaces] of entries(reply.body[0], 'GetManagedObjects')) {
      try {
        this.setInterfaces(s, path, ifaces);
      } catch (e) {
        this.complain(path, e);
      }
    }
    await Promise.all([...s.modems.values()].map((raw) => Promise.all([this.readSim(s, raw), this.readBearers(s, raw)])));
  }

  // Signals.

  private onObjectManager(s: Session, sig: Signal): void {
    try {
      const path = str(sig.body[0], `${sig.member} path`);
      if (sig.member === 'InterfacesAdded') {
        const ifaces = sig.body[1];
        this.background(s, `InterfacesAdded ${path}`, async () => {
          try {
            if (!this.setInterfaces(s, path, ifaces)) return;
          } catch (e) {
            this.complain(path, e);
            return;
          }
          const raw = s.modems.get(path)!;
          await Promise.all([this.readSim(s, raw), this.readBearers(s, raw)]);
          this.prune(s);
        });
      } else if (sig.member === 'InterfacesRemoved') {
        const gone = strings(sig.body[1], 'InterfacesRemoved interfaces');
        this.background(s, `InterfacesRemoved ${path}`, () => {
          const raw = s.modems.get(path);
          if (raw === undefined) return Promise.resolve();
          if (gone.includes(MODEMMANAGER.modem)) {
            s.modems.delete(path);
            this.reported.delete(path);
          } else if (gone.includes(MODEMMANAGER.modem3gpp)) {
            raw.gpp = undefined;
          }
          this.prune(s);
          return Promise.resolve();
        });
      }
    } catch (e) {
      this.log.warn('ModemManager: unreadable signal', { member: sig.member, error: errorMessage(e) });
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
      this.log.warn('ModemManager: unreadable signal', { member: sig.member, path: sig.path, error: errorMessage(e) });
      return;
    }
    const path = sig.path;
    this.background(s, `PropertiesChanged ${path} ${iface}`, async () => {
      const modem = s.modems.get(path);
      if (modem !== undefined && (iface === MODEMMANAGER.modem || iface === MODEMMANAGER.modem3gpp)) {
        const isModem = iface === MODEMMANAGER.modem;
        let props = isModem ? modem.modem : modem.gpp;
        if (props === undefined || invalidated.length > 0) {
          // A property said to have changed without its value (or an interface not announced): read it whole.
          props = await this.getAll(s, path, iface);
          if (!s.live || s.modems.get(path) !== modem) return;
        } else {
          for (const [k, v] of changed) props.set(k, v);
        }
        if (isModem) modem.modem = props;
        else modem.gpp = props;
        if (isModem && (changed.has('Sim') || invalidated.includes('Sim'))) await this.readSim(s, modem);
        if (isModem && (changed.has('Bearers') || invalidated.includes('Bearers'))) await this.readBearers(s, modem);
        this.prune(s);
        return;
      }
      const objects = iface === MODEMMANAGER.sim ? s.sims : iface === MODEMMANAGER.bearer ? s.bearers : undefined;
      if (objects === undefined || !objects.has(path)) return;
      const props = objects.get(path);
      if (props === null || props === undefined || invalidated.length > 0) {
        const read = await this.readObject(s, path, iface);
        if (s.live && objects.has(path)) objects.set(path, read);
        return;
      }
      for (const [k, v] of changed) props.set(k, v);
    });
  }
}
