/**
 * One system service read over D-Bus (ModemManager, NetworkManager, systemd-resolved): the
 * watcher (src/system/watcher.ts) attaches a reader whenever the service's well-known name has an
 * owner on the bus, and detaches it when the owner goes (or the bus does). A reader reads
 * everything it needs at attach, then follows the service's signals, and calls `changed` after
 * each change of its value (the watcher coalesces those into one SystemFacts update).
 */
import type { MessageBus } from '../agent/dbus.js';

export interface ServiceReader<T> {
  /** The service's well-known bus name (org.freedesktop.ModemManager1). */
  readonly service: string;
  /** What it says now; `empty` while detached. */
  readonly value: T;
  readonly empty: T;
  /**
   * Subscribes to the service's signals first, then reads its whole state (so no change falls
   * in between); resolves once `value` holds it. Rejects when the service cannot be read (the
   * watcher logs that and retries at the next owner change). `owner` is the service's unique name.
   */
  attach(bus: MessageBus, owner: string, changed: () => void): Promise<void>;
  /** Drops its subscriptions (when the bus is still there) and goes back to `empty`. */
  detach(): void;
}
