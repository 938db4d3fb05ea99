import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  budgetState, kernelLimit, limitBytes, localOffset, notifiedIn, notifiedMarker, periodOf, startProblem, transition, wallToUtc, warnBytes,
  type PeriodSpec, type TzOffset,
} from '../../src/accounting/budget.js';
import type { BudgetState } from '../../src/accounting/view.js';

const ms = (iso: string): number => Date.parse(iso);
const utc: TzOffset = () => 0;
const fixed = (minutes: number): TzOffset => () => minutes;
/** An offset that is `before` until the instant `at` and `after` from it on (one DST change). */
const change = (at: string, before: number, after: number): TzOffset => (t) => (t < ms(at) ? before : after);
/** Central Europe in 2026: +1, +2 from 29 March 01:00 UTC, +1 again from 25 October 01:00 UTC. */
const cet: TzOffset = (t) => (t >= ms('2026-03-29T01:00:00Z') && t < ms('2026-10-25T01:00:00Z') ? 120 : 60);

/** The period as ISO text, to compare. */
function period(spec: PeriodSpec, now: string, tz: TzOffset = utc): [string, string] {
  const p = periodOf(spec, ms(now), tz);
  assert.ok(p.startMs <= ms(now) && ms(now) < p.endMs, `${now} in [${new Date(p.startMs).toISOString()}, ${new Date(p.endMs).toISOString()})`);
  return [new Date(p.startMs).toISOString(), new Date(p.endMs).toISOString()];
}

const day: PeriodSpec = { period: 'day', start: 1 };
const month = (start: number): PeriodSpec => ({ period: 'month', start });
const week = (start: number): PeriodSpec => ({ period: 'week', start });

describe('periodOf', () => {
  it('day: from local midnight to the next', () => {
    assert.deepEqual(period(day, '2026-03-10T15:00:00Z'), ['2026-03-10T00:00:00.000Z', '2026-03-11T00:00:00.000Z']);
    assert.deepEqual(period(day, '2026-03-10T00:00:00Z'), ['2026-03-10T00:00:00.000Z', '2026-03-11T00:00:00.000Z'], 'midnight starts the day');
    assert.deepEqual(period(day, '2026-03-10T23:59:59.999Z'), ['2026-03-10T00:00:00.000Z', '2026-03-11T00:00:00.000Z']);
    // UTC+2: local midnight is 22:00 UTC the day before; 21:00 UTC is still the previous local day.
    assert.deepEqual(period(day, '2026-03-10T23:00:00Z', fixed(120)), ['2026-03-10T22:00:00.000Z', '2026-03-11T22:00:00.000Z']);
    assert.deepEqual(period(day, '2026-03-10T21:00:00Z', fixed(120)), ['2026-03-09T22:00:00.000Z', '2026-03-10T22:00:00.000Z']);
    // UTC-5:30 (offsets need not be whole hours).
    assert.deepEqual(period(day, '2026-03-10T03:00:00Z', fixed(-330)), ['2026-03-09T05:30:00.000Z', '2026-03-10T05:30:00.000Z']);
  });

  it('week: from the last local midnight of weekday start (1 Monday .. 7 Sunday)', () => {
    // Wednesday 2 December 2026.
    const now = '2026-12-02T06:00:00Z';
    assert.deepEqual(period(week(1), now), ['2026-11-30T00:00:00.000Z', '2026-12-07T00:00:00.000Z']);
    assert.deepEqual(period(week(3), now), ['2026-12-02T00:00:00.000Z', '2026-12-09T00:00:00.000Z'], 'the start weekday is today');
    assert.deepEqual(period(week(4), now), ['2026-11-26T00:00:00.000Z', '2026-12-03T00:00:00.000Z']);
    assert.deepEqual(period(week(7), now), ['2026-11-29T00:00:00.000Z', '2026-12-06T00:00:00.000Z']);
    // 23:30 UTC on Sunday 6 December is already Monday the 7th at UTC+1: a new Monday week.
    assert.deepEqual(period(week(1), '2026-12-06T23:30:00Z', fixed(60)), ['2026-12-06T23:00:00.000Z', '2026-12-13T23:00:00.000Z']);
  });

  it('month: from the billing day, clamped to the month, to the next month\'s', () => {
    assert.deepEqual(period(month(1), '2026-12-02T06:00:00Z'), ['2026-12-01T00:00:00.000Z', '2027-01-01T00:00:00.000Z']);
    assert.deepEqual(period(month(5), '2026-12-02T06:00:00Z'), ['2026-11-05T00:00:00.000Z', '2026-12-05T00:00:00.000Z']);
    assert.deepEqual(period(month(5), '2026-12-05T00:00:00Z'), ['2026-12-05T00:00:00.000Z', '2027-01-05T00:00:00.000Z']);
    assert.deepEqual(period(month(15), '2027-01-10T12:00:00Z'), ['2026-12-15T00:00:00.000Z', '2027-01-15T00:00:00.000Z'], 'across the new year');
    assert.deepEqual(period(month(30), '2026-03-30T12:00:00Z'), ['2026-03-30T00:00:00.000Z', '2026-04-30T00:00:00.000Z']);
    assert.deepEqual(period(month(31), '2026-04-30T12:00:00Z'), ['2026-04-30T00:00:00.000Z', '2026-05-31T00:00:00.000Z']);
  });

  it('month: billing day 31 in February is its last day, in leap years the 29th', () => {
    assert.deepEqual(period(month(31), '2026-02-15T12:00:00Z'), ['2026-01-31T00:00:00.000Z', '2026-02-28T00:00:00.000Z']);
    assert.deepEqual(period(month(31), '2026-02-28T10:00:00Z'), ['2026-02-28T00:00:00.000Z', '2026-03-31T00:00:00.000Z']);
    assert.deepEqual(period(month(31), '2028-02-28T10:00:00Z'), ['2028-01-31T00:00:00.000Z', '2028-02-29T00:00:00.000Z']);
    assert.deepEqual(period(month(31), '2028-02-29T10:00:00Z'), ['2028-02-29T00:00:00.000Z', '2028-03-31T00:00:00.000Z']);
    assert.deepEqual(period(month(29), '2026-03-01T10:00:00Z'), ['2026-02-28T00:00:00.000Z', '2026-03-29T00:00:00.000Z']);
    assert.deepEqual(period(month(29), '2100-02-28T10:00:00Z'), ['2100-02-28T00:00:00.000Z', '2100-03-29T00:00:00.000Z'], '2100 is no leap year');
    assert.deepEqual(period(month(30), '2000-02-29T10:00:00Z'), ['2000-02-29T00:00:00.000Z', '2000-03-30T00:00:00.000Z'], '2000 is one');
  });

  it('follows the offset function across DST changes: 23- and 25-hour days, months in two offsets', () => {
    assert.deepEqual(period(day, '2026-03-29T12:00:00Z', cet), ['2026-03-28T23:00:00.000Z', '2026-03-29T22:00:00.000Z']);
    assert.deepEqual(period(day, '2026-10-25T12:00:00Z', cet), ['2026-10-24T22:00:00.000Z', '2026-10-25T23:00:00.000Z']);
    assert.deepEqual(period(month(1), '2026-03-15T12:00:00Z', cet), ['2026-02-28T23:00:00.000Z', '2026-03-31T22:00:00.000Z']);
    assert.deepEqual(period(month(1), '2026-04-10T12:00:00Z', cet), ['2026-03-31T22:00:00.000Z', '2026-04-30T22:00:00.000Z']);
    assert.deepEqual(period(week(1), '2026-03-29T12:00:00Z', cet), ['2026-03-22T23:00:00.000Z', '2026-03-29T22:00:00.000Z']);
  });

  it('a midnight the clock skips starts the day at the jump', () => {
    // UTC-3 to UTC-2 at local midnight: 00:00 becomes 01:00 (as Brazil did).
    const atMidnight = change('2026-11-01T03:00:00Z', -180, -120);
    assert.deepEqual(period(day, '2026-11-01T03:30:00Z', atMidnight), ['2026-11-01T03:00:00.000Z', '2026-11-02T02:00:00.000Z']);
    assert.deepEqual(period(day, '2026-10-31T12:00:00Z', atMidnight), ['2026-10-31T03:00:00.000Z', '2026-11-01T03:00:00.000Z']);
    // 23:30 becomes 00:30: the day begins at the jump, not half an hour after it.
    const across = change('2026-11-01T02:30:00Z', -180, -120);
    assert.deepEqual(period(day, '2026-11-01T02:40:00Z', across), ['2026-11-01T02:30:00.000Z', '2026-11-02T02:00:00.000Z']);
    assert.equal(wallToUtc(ms('2026-11-01T00:00:00Z'), across), ms('2026-11-01T02:30:00Z'));
    assert.deepEqual(period(day, '2026-11-01T02:29:00Z', across), ['2026-10-31T03:00:00.000Z', '2026-11-01T02:30:00.000Z']);
  });

  it('a midnight the clock shows twice starts the day at the first', () => {
    // UTC+1 to UTC at 23:30 UTC: 00:30 on the 2nd becomes 23:30 on the 1st.
    const back = change('2026-06-01T23:30:00Z', 60, 0);
    assert.equal(wallToUtc(ms('2026-06-02T00:00:00Z'), back), ms('2026-06-01T23:00:00Z'));
    assert.deepEqual(period(day, '2026-06-01T12:00:00Z', back), ['2026-05-31T23:00:00.000Z', '2026-06-01T23:00:00.000Z']);
    // 23:45 UTC reads 23:45 on the 1st again, but the 2nd began at 23:00 UTC.
    assert.deepEqual(period(day, '2026-06-01T23:45:00Z', back), ['2026-06-01T23:00:00.000Z', '2026-06-03T00:00:00.000Z']);
  });

  it('uses the process time zone by default', () => {
    const now = Date.now();
    assert.equal(localOffset(now), -new Date(now).getTimezoneOffset());
    const p = periodOf(day, now);
    assert.ok(p.startMs <= now && now < p.endMs);
    assert.equal(new Date(p.startMs).getDate(), new Date(now).getDate());
    assert.equal(new Date(p.startMs).getHours() + new Date(p.startMs).getMinutes(), 0, 'local midnight');
  });

  it('refuses a start that does not fit the period', () => {
    assert.equal(startProblem('day', 1), undefined);
    assert.match(startProblem('day', 2) ?? '', /daily budget starts at local midnight/);
    assert.equal(startProblem('week', 7), undefined);
    assert.match(startProblem('week', 8) ?? '', /1 \(Monday\) to 7 \(Sunday\)/);
    assert.match(startProblem('month', 0) ?? '', /billing day: 1 to 31/);
    assert.equal(startProblem('month', 31), undefined);
    assert.throws(() => periodOf(week(8), 0, utc), RangeError);
  });
});

describe('limitBytes', () => {
  const cellular = { perMB: 0.02, perMinute: 0, currency: 'EUR' };
  it('takes bytes as they are and converts money at the price per MB, rounded down', () => {
    assert.deepEqual(limitBytes({ bytes: 123 }, cellular), { bytes: 123 });
    assert.deepEqual(limitBytes({ bytes: 123 }, undefined), { bytes: 123 });
    assert.deepEqual(limitBytes({ money: 5, currency: 'EUR' }, cellular), { bytes: 250_000_000 });
    assert.deepEqual(limitBytes({ money: 1, currency: 'EUR' }, { perMB: 0.03, perMinute: 0, currency: 'EUR' }), { bytes: 33_333_333 });
    assert.deepEqual(limitBytes({ money: 0.1, currency: 'EUR' }, { perMB: 0.1, perMinute: 0, currency: 'EUR' }), { bytes: 1_000_000 });
  });

  it('has none for money in another currency, on a free uplink or an unknown one, saying why', () => {
    assert.deepEqual(limitBytes({ money: 5, currency: 'USD' }, cellular), { bytes: null, reason: 'the uplink is priced in EUR, not USD' });
    const free = limitBytes({ money: 5, currency: 'EUR' }, { perMB: 0, perMinute: 0, currency: 'EUR' });
    assert.equal(free.bytes, null);
    assert.match('reason' in free ? free.reason : '', /no price per MB/);
    const dialup = limitBytes({ money: 5, currency: 'EUR' }, { perMB: 0, perMinute: 0.05, currency: 'EUR' });
    assert.equal(dialup.bytes, null, 'a per-minute price does not make bytes run out');
    assert.deepEqual(limitBytes({ money: 5, currency: 'EUR' }, undefined), { bytes: null, reason: 'the uplink is not configured' });
  });
});

describe('budgetState', () => {
  it('is ok, warning from warnAt of the limit, exhausted at the limit', () => {
    assert.equal(budgetState(0, 100, 0.8), 'ok');
    assert.equal(budgetState(79, 100, 0.8), 'ok');
    assert.equal(budgetState(80, 100, 0.8), 'warning');
    assert.equal(budgetState(99, 100, 0.8), 'warning');
    assert.equal(budgetState(100, 100, 0.8), 'exhausted');
    assert.equal(budgetState(150, 100, 0.8), 'exhausted');
    assert.equal(budgetState(100, 100, 1), 'exhausted');
    assert.equal(budgetState(99, 100, 1), 'ok', 'warn at 100%: no warning before exhaustion');
  });

  it('rounds the threshold up, untroubled by binary fractions', () => {
    assert.equal(0.55 * 100 > 55, true, 'the trap is real');
    assert.equal(warnBytes(100, 0.55), 55);
    assert.equal(budgetState(55, 100, 0.55), 'warning');
    assert.equal(0.29 * 100 < 29, true);
    assert.equal(warnBytes(100, 0.29), 29);
    assert.equal(budgetState(28, 100, 0.29), 'ok');
    assert.equal(warnBytes(250_000_001, 0.8), 200_000_001);
    assert.equal(budgetState(200_000_000, 250_000_001, 0.8), 'ok');
  });

  it('is ok without a byte limit, whatever was used', () => {
    assert.equal(budgetState(10 ** 15, null, 0.8), 'ok');
  });
});

describe('kernelLimit', () => {
  it('is the kernel counter now plus what the period has left', () => {
    assert.equal(kernelLimit({ kernelUsed: 1000n, limitBytes: 5000, periodUsed: 3000 }), 3000n);
    assert.equal(kernelLimit({ kernelUsed: 0n, limitBytes: 5000, periodUsed: 0 }), 5000n);
    // The kernel counted since the daemon created the entry; the period since its start.
    assert.equal(kernelLimit({ kernelUsed: 10n ** 15n, limitBytes: 250_000_000, periodUsed: 1 }), 10n ** 15n + 249_999_999n);
  });

  it('is the counter itself (block now) once the period used it all or more', () => {
    assert.equal(kernelLimit({ kernelUsed: 1000n, limitBytes: 5000, periodUsed: 5000 }), 1000n);
    assert.equal(kernelLimit({ kernelUsed: 1000n, limitBytes: 5000, periodUsed: 6000 }), 1000n);
  });
});

describe('transition', () => {
  const p1 = ms('2026-11-05T00:00:00Z');
  const p2 = ms('2026-12-05T00:00:00Z');

  /** Feeds states one after another, as samples would; returns the events. */
  function run(steps: readonly [BudgetState, number][], notified: string | null = null): { events: (string | null)[]; notified: string | null } {
    let prev: BudgetState = 'ok';
    let marker = notified;
    const events: (string | null)[] = [];
    for (const [next, periodStart] of steps) {
      const t = transition(prev, next, periodStart, marker);
      events.push(t.event);
      marker = t.notified;
      prev = next;
    }
    return { events, notified: marker };
  }

  it('announces warning, exhausted and restored on the way', () => {
    const r = run([['ok', p1], ['warning', p1], ['warning', p1], ['exhausted', p1], ['exhausted', p1], ['ok', p2]]);
    assert.deepEqual(r.events, [null, 'budget.warning', null, 'budget.exhausted', null, 'budget.restored']);
    assert.equal(r.notified, notifiedMarker(p1, 'exhausted'));
  });

  it('announces each at most once per period', () => {
    // A reset (or a raised limit) brings it back to ok; crossing again in the same period stays quiet but for restored.
    const r = run([['warning', p1], ['ok', p1], ['warning', p1], ['exhausted', p1], ['warning', p1], ['exhausted', p1]]);
    assert.deepEqual(r.events, ['budget.warning', null, null, 'budget.exhausted', 'budget.restored', null]);
  });

  it('announces again in the next period', () => {
    const r = run([['warning', p1], ['exhausted', p1], ['ok', p2], ['warning', p2], ['exhausted', p2]]);
    assert.deepEqual(r.events, ['budget.warning', 'budget.exhausted', 'budget.restored', 'budget.warning', 'budget.exhausted']);
    assert.equal(r.notified, `${p2}:exhausted`);
  });

  it('jumping from ok to exhausted announces only the exhaustion, and then no warning', () => {
    const r = run([['exhausted', p1], ['warning', p1], ['ok', p1], ['warning', p1]]);
    assert.deepEqual(r.events, ['budget.exhausted', 'budget.restored', null, null]);
  });

  it('remembers across restarts through the stored marker', () => {
    // The daemon restarts: its first sample compares against ok, the marker says what was told.
    assert.deepEqual(transition('ok', 'exhausted', p1, `${p1}:exhausted`), { event: null, notified: `${p1}:exhausted` });
    assert.deepEqual(transition('ok', 'exhausted', p1, `${p1}:warning`), { event: 'budget.exhausted', notified: `${p1}:exhausted` });
    assert.deepEqual(transition('ok', 'warning', p2, `${p1}:exhausted`), { event: 'budget.warning', notified: `${p2}:warning` }, 'another period\'s marker');
    assert.equal(notifiedIn('garbage', p1), 'ok');
    assert.equal(notifiedIn(null, p1), 'ok');
    assert.equal(notifiedIn(`${p1}:warning`, p1), 'warning');
  });
});
