/**
 * Time as the daemon's model uses it: the wall clock for expiries, and one-shot timers. Injected
 * so the model's tests drive time themselves (test/unit/engine.test.ts: a fake clock).
 */
export interface Timer {
  cancel(): void;
}

export interface Clock {
  /** Milliseconds since the epoch (Date.now()). */
  now(): number;
  /** Calls `fn` once, `ms` from now. The timer never keeps the process alive on its own. */
  after(ms: number, fn: () => void): Timer;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  after: (ms, fn) => {
    const t = setTimeout(fn, ms);
    t.unref();
    return { cancel: () => clearTimeout(t) };
  },
};
