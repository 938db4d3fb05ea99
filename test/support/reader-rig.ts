/**
 * One system reader (src/system/) attached to a fake of its service on a private bus, with its
 * updates: what the reader tests share. Waits are on the reader's `changed` calls.
 */
import { connectBus, type MessageBus } from '../../src/agent/dbus.js';
import type { ServiceReader } from '../../src/system/reader.js';
import type { recordingLog } from './fakes.js';
import { Arrivals } from './notify-server.js';

export interface ReaderRig<T, F> {
  readonly fake: F;
  readonly client: MessageBus;
  readonly reader: ServiceReader<T>;
  readonly log: ReturnType<typeof recordingLog>;
  readonly updates: Arrivals<T>;
  attach(): Promise<void>;
  /** The reader's next value that satisfies `pred` (the current one if it does already). */
  until(pred: (v: T) => boolean, what: string): Promise<T>;
  /** Round trips to the fake: every signal it sent before has been handled by the reader. */
  sync(): Promise<void>;
  close(): Promise<void>;
}

/** `ping`: a method call to the fake (the bus delivers in order: signals sent before it come first). */
export async function readerRig<T, F extends { readonly owner: string; close(): Promise<void> }>(
  address: string, fake: F, reader: ServiceReader<T>, log: ReturnType<typeof recordingLog>, ping: (client: MessageBus) => Promise<unknown>,
): Promise<ReaderRig<T, F>> {
  const client = await connectBus(address);
  const updates = new Arrivals<T>();
  return {
    fake, client, reader, log, updates,
    attach: () => reader.attach(client, fake.owner, () => updates.push(reader.value)),
    until: async (pred, what) => {
      if (pred(reader.value)) return reader.value;
      for (;;) {
        const v = await updates.take(what);
        if (pred(v)) return v;
      }
    },
    sync: async () => {
      await ping(client);
      // The reader's own calls for those signals come back before a second round trip does.
      await ping(client);
      await new Promise((resolve) => setImmediate(resolve));
    },
    close: async () => {
      reader.detach();
      client.close();
      await fake.close();
    },
  };
}
