/**
 * The system facts, kept up to date: one connection to the system bus, and a {@link ServiceReader}
 * per service (ModemManager, NetworkManager, systemd-resolved) attached while its well-known name
 * has an owner (NameOwnerChanged, GetNameOwner at the start), detached when the owner goes (a
 * service that quit says nothing: its facts are empty).
 *
 * When the bus connection is lost the last facts are kept (services.bus 'unavailable') and the
 * watcher connects again, after 250 ms, then twice as long each time up to 5 s; once connected it
 * reads everything again. onChange gets the facts after each change, coalesced (setImmediate) and
 * only when they differ from the last ones it got. Nothing here throws out of a signal handler.
 */
import type { Logger } from '../daemon/log.js';
import { errorMessage } from '../errors.js';
import { BusError, connectBus, str, type MessageBus, type Signal } from '../agent/dbus.js';
import { NO_SYSTEM_FACTS, type DeviceFacts, type ModemFacts, type ResolvedLinkFacts, type ServicePresence, type SystemFacts } from './facts.js';
import type { ServiceReader } from './reader.js';

export const DEFAULT_SYSTEM_BUS = 'unix:path=/run/dbus/system_bus_socket';

const DBUS = { destination: 'org.freedesktop.DBus', path: '/org/freedesktop/DBus', interface: 'org.freedesktop.DBus' } as const;

/**
 * The system bus's address: null for `--system-bus none` (no bus: no system facts), else the one
 * given, else DBUS_SYSTEM_BUS_ADDRESS, else the well-known socket.
 */
export function systemBusAddress(given: string | undefined, env: NodeJS.ProcessEnv = process.env): string | null {
  if (given === 'none') return null;
  if (given) return given;
  const fromEnv = env['DBUS_SYSTEM_BUS_ADDRESS'];
  if (fromEnv) return fromEnv;
  return DEFAULT_SYSTEM_BUS;
}

export interface SystemReaders {
  readonly modemmanager: ServiceReader<readonly ModemFacts[]>;
  readonly networkmanager: ServiceReader<readonly DeviceFacts[]>;
  readonly resolved: ServiceReader<readonly ResolvedLinkFacts[]>;
}

type ServiceKey = keyof SystemReaders;
const KEYS: readonly ServiceKey[] = ['modemmanager', 'networkmanager', 'resolved'];

export interface SystemWatcherOptions {
  /** The system bus (see {@link systemBusAddress}); null: none, the facts stay empty with bus 'off'. */
  readonly address: string | null;
  readonly log: Logger;
  readonly onChange: (facts: SystemFacts) => void;
  readonly readers: SystemReaders;
  /** Reconnection delays: the first (default 250 ms), doubling up to max (default 5000 ms). */
  readonly retryMs?: { readonly first?: number; readonly max?: number };
  /** How to connect (tests); default connectBus. */
  readonly connect?: (address: string) => Promise<MessageBus>;
}

interface Slot {
  readonly key: ServiceKey;
  readonly reader: ServiceReader<unknown>;
  /** The owner of the service's name on the current connection, if any. */
  owner: string | undefined;
  /** Whether the reader holds the owner's state (its attach resolved). */
  attached: boolean;
  /** Bumped at each owner change: an attach that resolves for an older owner is not taken. */
  generation: number;
  /** Whether a NameOwnerChanged came since subscribing: newer than a GetNameOwner reply still on its way. */
  heard: boolean;
}

/** JSON with object keys in order: equal facts give equal strings. */
function canonical(v: unknown): string {
  return JSON.stringify(v, (_k, x: unknown) => {
    if (typeof x !== 'object' || x === null || Array.isArray(x)) return x;
    return Object.fromEntries(Object.entries(x).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
  });
}

export class SystemWatcher {
  private readonly log: Logger;
  private readonly slots: Readonly<Record<ServiceKey, Slot>>;
  private readonly firstDelay: number;
  private readonly maxDelay: number;
  private delay: number;
  private bus: MessageBus | undefined;
  private busState: ServicePresence['bus'] = 'off';
  /** The facts of the last connection, while there is none (or the new one is not read yet). */
  private kept: SystemFacts | undefined;
  private retry: NodeJS.Timeout | undefined;
  private pendingChange: NodeJS.Immediate | undefined;
  private lastKey = canonical(NO_SYSTEM_FACTS);
  private closed = false;
  private failures = 0;
  /** While a connection is being set up: its facts are said once it is read, not piece by piece. */
  private connecting = false;

  constructor(private readonly options: SystemWatcherOptions) {
    this.log = options.log;
    const slot = (key: ServiceKey): Slot => ({ key, reader: options.readers[key], owner: undefined, attached: false, generation: 0, heard: false });
    this.slots = { modemmanager: slot('modemmanager'), networkmanager: slot('networkmanager'), resolved: slot('resolved') };
    this.firstDelay = options.retryMs?.first ?? 250;
    this.maxDelay = options.retryMs?.max ?? 5000;
    this.delay = this.firstDelay;
  }

  /** The facts now. */
  get facts(): SystemFacts {
    if (this.kept !== undefined) return { ...this.kept, services: { ...this.kept.services, bus: this.busState } };
    const { modemmanager: mm, networkmanager: nm, resolved } = this.slots;
    const r = this.options.readers;
    return {
      modems: mm.attached ? r.modemmanager.value : [],
      devices: nm.attached ? r.networkmanager.value : [],
      resolved: resolved.attached ? r.resolved.value : [],
      services: { bus: this.busState, modemmanager: mm.attached, networkmanager: nm.attached, resolved: resolved.attached },
    };
  }

  /**
   * Connects and reads what the services say; resolves after that first attempt (connected and
   * read, or not connected: retrying in the background), at once without an address.
   */
  async start(): Promise<void> {
    if (this.options.address === null) {
      this.log.info('system bus: none (no system facts)');
      return;
    }
    await this.connect(this.options.address);
  }

  /** Ends everything: no connection, no timer. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.retry !== undefined) clearTimeout(this.retry);
    this.retry = undefined;
    if (this.pendingChange !== undefined) clearImmediate(this.pendingChange);
    this.pendingChange = undefined;
    for (const key of KEYS) this.drop(this.slots[key]);
    const bus = this.bus;
    this.bus = undefined;
    bus?.close();
  }

  private changed(): void {
    if (this.closed || this.pendingChange !== undefined) return;
    this.pendingChange = setImmediate(() => {
      this.pendingChange = undefined;
      if (this.closed || this.connecting) return;
      const facts = this.facts;
      const key = canonical(facts);
      if (key === this.lastKey) return;
      this.lastKey = key;
      try {
        this.options.onChange(facts);
      } catch (e) {
        this.log.error('system facts: onChange failed', { error: errorMessage(e) });
      }
    });
  }

  private async connect(address: string): Promise<void> {
    let bus: MessageBus;
    try {
      bus = await (this.options.connect ?? connectBus)(address);
    } catch (e) {
      if (this.closed) return;
      // Said once per outage, not at each retry.
      if (this.failures++ === 0) this.log.warn('system bus unavailable; retrying', { address, error: errorMessage(e) });
      else this.log.debug('system bus: still unavailable', { address, error: errorMessage(e) });
      this.busState = 'unavailable';
      this.changed();
      this.scheduleRetry(address);
      return;
    }
    if (this.closed) {
      bus.close();
      return;
    }
    this.bus = bus;
    void bus.closed.then((reason) => this.lost(bus, address, reason));
    this.connecting = true;
    try {
      for (const key of KEYS) {
        const slot = this.slots[key];
        slot.owner = undefined;
        slot.heard = false;
        // Listen first, then ask: an owner change in between is not missed.
        await bus.onSignal(
          { sender: DBUS.destination, path: DBUS.path, interface: DBUS.interface, member: 'NameOwnerChanged', arg0: slot.reader.service },
          (s) => this.onOwnerChanged(bus, slot, s),
        );
      }
      const owners = await Promise.all(KEYS.map((key) => this.nameOwner(bus, this.slots[key].reader.service)));
      if (this.bus !== bus) return;
      await Promise.all(KEYS.map((key, i) => {
        const slot = this.slots[key];
        return slot.heard ? Promise.resolve() : this.setOwner(bus, slot, owners[i]);
      }));
    } catch (e) {
      if (this.bus !== bus) return;
      this.log.warn('system bus: cannot follow the services', { error: errorMessage(e) });
      this.connecting = false;
      bus.close(); // lost() retries
      return;
    }
    this.connecting = false;
    if (this.bus !== bus || this.closed) return;
    this.failures = 0;
    this.delay = this.firstDelay;
    this.kept = undefined;
    this.busState = 'connected';
    this.log.info('system bus connected', {
      address,
      modemmanager: this.slots.modemmanager.attached,
      networkmanager: this.slots.networkmanager.attached,
      resolved: this.slots.resolved.attached,
    });
    this.changed();
  }

  private lost(bus: MessageBus, address: string, reason: string): void {
    if (this.closed || this.bus !== bus) return;
    this.connecting = false;
    this.log.warn('system bus connection lost; keeping the last facts', { reason });
    this.kept ??= this.facts;
    this.bus = undefined;
    for (const key of KEYS) this.drop(this.slots[key]);
    this.busState = 'unavailable';
    this.changed();
    this.scheduleRetry(address);
  }

  private scheduleRetry(address: string): void {
    if (this.closed || this.retry !== undefined) return;
    const delay = this.delay;
    this.delay = Math.min(this.delay * 2, this.maxDelay);
    this.retry = setTimeout(() => {
      this.retry = undefined;
      void this.connect(address);
    }, delay);
  }

  private async nameOwner(bus: MessageBus, name: string): Promise<string | undefined> {
    try {
      const reply = await bus.call({ ...DBUS, member: 'GetNameOwner', signature: 's', body: [name] });
      return str(reply.body[0], 'GetNameOwner');
    } catch (e) {
      if (e instanceof BusError && e.type === 'org.freedesktop.DBus.Error.NameHasNoOwner') return undefined;
      throw e;
    }
  }

  private onOwnerChanged(bus: MessageBus, slot: Slot, s: Signal): void {
    if (this.bus !== bus || this.closed) return;
    let owner: string;
    try {
      owner = str(s.body[2], 'NameOwnerChanged new owner');
    } catch (e) {
      this.log.warn('system bus: bad NameOwnerChanged', { error: errorMessage(e) });
      return;
    }
    slot.heard = true;
    void this.setOwner(bus, slot, owner === '' ? undefined : owner);
  }

  /** Detaches the slot's reader (if it was attached or attaching) and forgets the owner. */
  private drop(slot: Slot): void {
    slot.generation++;
    if (slot.owner !== undefined || slot.attached) slot.reader.detach();
    slot.owner = undefined;
    slot.attached = false;
  }

  /** Follows the service to its new owner: detaches from the old one, attaches to the new; resolves once read (or failed). */
  private async setOwner(bus: MessageBus, slot: Slot, owner: string | undefined): Promise<void> {
    if (owner === slot.owner) return;
    const before = slot.owner;
    this.drop(slot);
    this.changed();
    if (owner === undefined) {
      this.log.info('system service left the bus', { service: slot.reader.service, owner: before ?? null });
      return;
    }
    slot.owner = owner;
    const generation = slot.generation;
    try {
      await slot.reader.attach(bus, owner, () => this.changed());
    } catch (e) {
      if (slot.generation !== generation || this.bus !== bus) return;
      // Left detached until the name changes owner again.
      this.log.warn('cannot read system service', { service: slot.reader.service, owner, error: errorMessage(e) });
      slot.reader.detach();
      return;
    }
    if (slot.generation !== generation || this.bus !== bus || this.closed) return;
    slot.attached = true;
    this.log.info('system service', { service: slot.reader.service, owner });
    this.changed();
  }
}
