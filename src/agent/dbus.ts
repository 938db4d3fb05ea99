/**
 * The D-Bus boundary: the little of a message bus the desktop agents use (method calls, signals
 * by match rule, a name, method handlers for the tests' servers), over @jellybrick/dbus-next.
 * The library's message bodies are `unknown[]`; callers check each value's type where they read
 * it (see {@link str}, {@link u32}, ...), so nothing loose crosses into the agents.
 *
 * Only the low-level API is used: no introspection, no proxy objects whose members exist only at
 * run time.
 */
import { EventEmitter } from 'node:events';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { Message, MessageType, NameFlag, RequestNameReply, Variant, sessionBus } from '@jellybrick/dbus-next';
import { errorMessage } from '../errors.js';

/** How long a method call may go unanswered (the reference implementation's default reply timeout). */
export const CALL_TIMEOUT_MS = 25_000;

const DBUS = { destination: 'org.freedesktop.DBus', path: '/org/freedesktop/DBus', interface: 'org.freedesktop.DBus' } as const;

export interface MethodCall {
  readonly destination: string;
  readonly path: string;
  readonly interface: string;
  readonly member: string;
  /** D-Bus signature of the body ("susssasa{sv}i"); empty for none. */
  readonly signature?: string;
  readonly body?: readonly unknown[];
}

export interface Reply {
  /** The unique name (":1.42") of whoever answered. */
  readonly sender: string;
  readonly body: readonly unknown[];
}

export interface Signal {
  readonly sender: string;
  readonly path: string;
  readonly interface: string;
  readonly member: string;
  readonly body: readonly unknown[];
}

export interface SignalMatch {
  /** A well-known or unique name: the bus delivers only this owner's signals. */
  readonly sender?: string;
  readonly path?: string;
  readonly interface: string;
  readonly member?: string;
  /** The first argument, when it is a string (NameOwnerChanged's name). */
  readonly arg0?: string;
}

/** A method call received by a service ({@link MessageBus.handle}). */
export interface IncomingCall {
  readonly sender: string;
  readonly path: string;
  readonly interface: string;
  readonly member: string;
  readonly signature: string;
  readonly body: readonly unknown[];
}

/** What a method handler answers: a return value, or a D-Bus error. */
export type Outcome =
  | { readonly signature: string; readonly body: readonly unknown[] }
  | { readonly error: string; readonly text: string };

/** A connection to a message bus. */
export interface MessageBus {
  /** Our unique name on the bus. */
  readonly name: string;
  /** Calls a method and waits for its reply; rejects with {@link BusError} on an error reply. */
  call(call: MethodCall, timeoutMs?: number): Promise<Reply>;
  /** Asks the bus for these signals and calls `fn` with each; resolves once the bus has the match rule. */
  onSignal(match: SignalMatch, fn: (signal: Signal) => void): Promise<() => void>;
  /** Sends a signal from `path`. */
  emit(path: string, iface: string, member: string, signature: string, body: readonly unknown[]): void;
  /** Owns a well-known name (fails if someone else has it). */
  requestName(name: string): Promise<void>;
  /** Answers method calls on `path` and `iface` (returns undefined for a member it does not know). */
  handle(path: string, iface: string, fn: (call: IncomingCall) => Outcome | undefined | Promise<Outcome | undefined>): void;
  /** Resolves when the connection is gone (closed here, by the bus, or broken), with why. */
  readonly closed: Promise<string>;
  close(): void;
}

/** An error reply ("org.freedesktop.DBus.Error.ServiceUnknown") or a call that timed out. */
export class BusError extends Error {
  constructor(
    readonly type: string,
    message: string,
  ) {
    super(message);
    this.name = 'BusError';
  }
}

/** A value of a D-Bus variant ("v"), e.g. a notification hint: variant('y', 2). */
export function variant(signature: string, value: unknown): Variant {
  return new Variant(signature, value);
}

/**
 * The session bus's address: the one given, else DBUS_SESSION_BUS_ADDRESS, else systemd's
 * per-user bus ($XDG_RUNTIME_DIR/bus) when it exists; undefined when there is none.
 */
export function sessionBusAddress(given: string | undefined, env: NodeJS.ProcessEnv = process.env): string | undefined {
  if (given) return given;
  const fromEnv = env['DBUS_SESSION_BUS_ADDRESS'];
  if (fromEnv) return fromEnv;
  const runtime = env['XDG_RUNTIME_DIR'];
  if (runtime && existsSync(join(runtime, 'bus'))) return `unix:path=${join(runtime, 'bus')}`;
  return undefined;
}

function matchRule(m: SignalMatch): string {
  const parts = ["type='signal'", `interface='${m.interface}'`];
  if (m.sender !== undefined) parts.push(`sender='${m.sender}'`);
  if (m.path !== undefined) parts.push(`path='${m.path}'`);
  if (m.member !== undefined) parts.push(`member='${m.member}'`);
  if (m.arg0 !== undefined) parts.push(`arg0='${m.arg0}'`);
  return parts.join(',');
}

/** Connects to the bus at `address` and says Hello; rejects when it cannot. */
export async function connectBus(address: string, timeoutMs: number = CALL_TIMEOUT_MS): Promise<MessageBus> {
  const bus = sessionBus({ busAddress: address });
  const gone = new EventEmitter<{ gone: [reason: string] }>();
  let goneReason: string | undefined;
  const end = (reason: string): void => {
    if (goneReason !== undefined) return;
    goneReason = reason;
    gone.emit('gone', reason);
  };
  const closed = new Promise<string>((resolve) => gone.once('gone', resolve));
  // Errors are a broken connection (the library has no other way to say so). Its event map does
  // not list 'error', which it emits all the same: listen through the plain EventEmitter.
  const emitter: EventEmitter = bus;
  emitter.on('error', (e: unknown) => end(errorMessage(e)));

  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => { cleanup(); reject(new Error(`no answer from the bus at ${address} within ${timeoutMs} ms`)); }, timeoutMs);
    const onGone = (reason: string): void => { cleanup(); reject(new Error(`cannot connect to the bus at ${address}: ${reason}`)); };
    const onConnect = (): void => { cleanup(); resolve(); };
    const cleanup = (): void => { clearTimeout(timer); gone.off('gone', onGone); bus.off('connect', onConnect); };
    gone.once('gone', onGone);
    bus.once('connect', onConnect);
  });

  // The stream's end is not surfaced by the bus object; its connection is an EventEmitter that says it.
  const connection: unknown = Reflect.get(bus, '_connection');
  if (connection instanceof EventEmitter) connection.once('end', () => end('the bus closed the connection'));

  const pending = new Set<(reason: string) => void>();
  gone.once('gone', (reason) => { for (const fail of pending) fail(reason); });

  const call = (c: MethodCall, ms: number = timeoutMs): Promise<Reply> => {
    if (goneReason !== undefined) return Promise.reject(new BusError('org.freedesktop.DBus.Error.Disconnected', goneReason));
    const msg = new Message({
      destination: c.destination, path: c.path, interface: c.interface, member: c.member,
      signature: c.signature ?? '', body: [...(c.body ?? [])],
    });
    return new Promise<Reply>((resolve, reject) => {
      const fail = (reason: string): void => { settle(); reject(new BusError('org.freedesktop.DBus.Error.Disconnected', reason)); };
      const timer = setTimeout(() => {
        settle();
        reject(new BusError('org.freedesktop.DBus.Error.NoReply', `${c.destination} did not answer ${c.member} within ${ms} ms`));
      }, ms);
      const settle = (): void => { clearTimeout(timer); pending.delete(fail); };
      pending.add(fail);
      bus.call(msg).then(
        (reply) => { settle(); resolve({ sender: reply?.sender ?? '', body: reply?.body ?? [] }); },
        (e: unknown) => {
          settle();
          const type = e instanceof Error && 'type' in e && typeof e.type === 'string' ? e.type : 'org.freedesktop.DBus.Error.Failed';
          const text = e instanceof Error && 'text' in e && typeof e.text === 'string' ? e.text : errorMessage(e);
          reject(new BusError(type, text));
        },
      );
    });
  };

  const onSignal = async (m: SignalMatch, fn: (s: Signal) => void): Promise<() => void> => {
    const rule = matchRule(m);
    const listener = (msg: Message): void => {
      if (msg.type !== MessageType.SIGNAL || msg.interface !== m.interface) return;
      if (m.path !== undefined && msg.path !== m.path) return;
      if (m.member !== undefined && msg.member !== m.member) return;
      if (m.arg0 !== undefined && msg.body[0] !== m.arg0) return;
      fn({ sender: msg.sender, path: msg.path, interface: msg.interface, member: msg.member, body: msg.body });
    };
    bus.on('message', listener);
    try {
      await call({ ...DBUS, member: 'AddMatch', signature: 's', body: [rule] });
    } catch (e) {
      bus.off('message', listener);
      throw e;
    }
    return () => {
      bus.off('message', listener);
      if (goneReason === undefined) call({ ...DBUS, member: 'RemoveMatch', signature: 's', body: [rule] }).catch(() => undefined);
    };
  };

  const handle = (path: string, iface: string, fn: (c: IncomingCall) => Outcome | undefined | Promise<Outcome | undefined>): void => {
    bus.addMethodHandler((msg: Message): boolean => {
      if (msg.path !== path || msg.interface !== iface) return false;
      const reply = (o: Outcome | undefined): void => {
        if (o === undefined) bus.send(Message.newError(msg, 'org.freedesktop.DBus.Error.UnknownMethod', `no method ${msg.member}`));
        else if ('error' in o) bus.send(Message.newError(msg, o.error, o.text));
        else bus.send(Message.newMethodReturn(msg, o.signature, [...o.body]));
      };
      Promise.resolve(fn({ sender: msg.sender, path: msg.path, interface: msg.interface, member: msg.member, signature: msg.signature, body: msg.body }))
        .then(reply, (e: unknown) => reply({ error: 'org.freedesktop.DBus.Error.Failed', text: errorMessage(e) }));
      return true;
    });
  };

  return {
    get name(): string { return bus.name ?? ''; },
    call,
    onSignal,
    emit: (path, iface, member, signature, body) => bus.send(Message.newSignal(path, iface, member, signature, [...body])),
    requestName: async (name) => {
      const code = await bus.requestName(name, NameFlag.DO_NOT_QUEUE);
      if (code !== RequestNameReply.PRIMARY_OWNER && code !== RequestNameReply.ALREADY_OWNER) {
        throw new BusError('org.freedesktop.DBus.Error.AccessDenied', `${name} is owned by another connection (RequestName: ${code})`);
      }
    },
    handle,
    closed,
    close: () => {
      if (goneReason !== undefined) return;
      end('closed');
      bus.disconnect();
    },
  };
}

// Readers for the values of message bodies: each says what it expected when the value is not that.

export function str(v: unknown, what: string): string {
  if (typeof v !== 'string') throw new TypeError(`${what}: expected a string, got ${typeof v}`);
  return v;
}

export function u32(v: unknown, what: string): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new TypeError(`${what}: expected a uint32, got ${String(v)}`);
  return v;
}

export function i32(v: unknown, what: string): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < -0x80000000 || v > 0x7fffffff) throw new TypeError(`${what}: expected an int32, got ${String(v)}`);
  return v;
}

export function bool(v: unknown, what: string): boolean {
  if (typeof v !== 'boolean') throw new TypeError(`${what}: expected a boolean, got ${typeof v}`);
  return v;
}

export function strings(v: unknown, what: string): string[] {
  if (!Array.isArray(v)) throw new TypeError(`${what}: expected an array of strings`);
  return v.map((x, i) => str(x, `${what}[${i}]`));
}

/** An a{sv} (a dictionary of variants): each value with its signature. */
export function variants(v: unknown, what: string): Map<string, { readonly signature: string; readonly value: unknown }> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new TypeError(`${what}: expected a dictionary`);
  const out = new Map<string, { signature: string; value: unknown }>();
  for (const [k, x] of Object.entries(v)) {
    if (!(x instanceof Variant)) throw new TypeError(`${what}.${k}: expected a variant`);
    out.set(k, { signature: x.signature, value: x.value });
  }
  return out;
}
