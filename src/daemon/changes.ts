/**
 * A typed change feed: a publisher emits changes `{ kind, ... }`, subscribers name the kinds they
 * follow. Delivery is in subscription order and sequential: each subscriber finishes (its promise
 * settles) before the next hears of the change, so "the kernel follows, then the caches are
 * voided" is the order in which the daemon subscribes them. A failing subscriber does not keep
 * the others from hearing; the emit rejects afterwards with the first failure, so whoever must
 * know that the change took effect (a session set-up, a reload) awaits it.
 */
export interface Change {
  readonly kind: string;
}

export type Listener<C> = (change: C) => void | Promise<void>;

export class ChangeFeed<C extends Change> {
  private readonly subscribers: { readonly kinds: ReadonlySet<string>; readonly fn: Listener<C> }[] = [];

  /** Follows the changes of `kinds`; returns the unsubscribe. */
  subscribe<K extends C['kind']>(kinds: readonly K[], fn: Listener<Extract<C, { kind: K }>>): () => void {
    // Narrowing: fn only ever receives changes of its kinds (checked below).
    const entry = { kinds: new Set<string>(kinds), fn: fn as Listener<C> };
    this.subscribers.push(entry);
    return () => {
      const i = this.subscribers.indexOf(entry);
      if (i >= 0) this.subscribers.splice(i, 1);
    };
  }

  async emit(change: C): Promise<void> {
    let failure: { error: unknown } | undefined;
    for (const s of [...this.subscribers]) {
      if (!s.kinds.has(change.kind)) continue;
      try {
        await s.fn(change);
      } catch (e) {
        failure ??= { error: e };
      }
    }
    if (failure) throw failure.error;
  }
}
