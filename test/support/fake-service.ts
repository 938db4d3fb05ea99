/**
 * What the tests' fake system services (fake-modemmanager.ts, fake-networkmanager.ts) share: the
 * well-known name owned and given up, and org.freedesktop.DBus.Properties Get/GetAll answered
 * from a map of path → interface → properties.
 */
import type { Variant } from '@jellybrick/dbus-next';
import { str, type IncomingCall, type MessageBus, type Outcome } from '../../src/agent/dbus.js';

export type Props = Map<string, Variant>;

const DBUS = { destination: 'org.freedesktop.DBus', path: '/org/freedesktop/DBus', interface: 'org.freedesktop.DBus' } as const;

export function dict(props: Props): Record<string, Variant> {
  return Object.fromEntries(props);
}

/** Answers Properties.Get/GetAll for the objects of a map of path → interface → properties. */
export function answerProperties(objects: ReadonlyMap<string, ReadonlyMap<string, Props>>, path: string, c: IncomingCall): Outcome | undefined {
  const ifaces = objects.get(path);
  if (ifaces === undefined) return { error: 'org.freedesktop.DBus.Error.UnknownObject', text: `no object ${path}` };
  const props = ifaces.get(str(c.body[0], 'interface'));
  if (props === undefined) return { error: 'org.freedesktop.DBus.Error.UnknownInterface', text: `no interface ${String(c.body[0])} at ${path}` };
  if (c.member === 'GetAll') return { signature: 'a{sv}', body: [dict(props)] };
  if (c.member === 'Get') {
    const v = props.get(str(c.body[1], 'property'));
    if (v === undefined) return { error: 'org.freedesktop.DBus.Error.UnknownProperty', text: `no property ${String(c.body[1])}` };
    return { signature: 'v', body: [v] };
  }
  return undefined;
}

/** Owns the service's name; on failure leaves the bus and throws. */
export async function own(bus: MessageBus, name: string): Promise<void> {
  try {
    await bus.requestName(name);
  } catch (e) {
    bus.close();
    throw e;
  }
}

/** The service quits: gives its name up (everyone has seen NameOwnerChanged when this resolves), then leaves the bus. */
export async function release(bus: MessageBus, name: string): Promise<void> {
  try {
    await bus.call({ ...DBUS, member: 'ReleaseName', signature: 's', body: [name] });
  } catch {
    // Gone already.
  }
  bus.close();
}
