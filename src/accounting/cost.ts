/**
 * What traffic costs, and the sizes and sums people write and read (pure, no I/O): an uplink's
 * price applied to bytes and seconds, money per currency added and shown, byte counts shown in
 * SI units and parsed from "10MB", "10 MiB", "1.5G" or "2000000". A megabyte is 10^6 bytes
 * (MB_BYTES), as operators bill and as prices are given.
 */
import { MB_BYTES, type BudgetLimit, type Money } from './view.js';

/** An uplink's price (UplinkSpec.cost): per megabyte (10^6 bytes) and per minute online, in `currency`. */
export interface UplinkCost {
  readonly perMB: number;
  readonly perMinute: number;
  readonly currency: string;
}

/** An amount in one currency (ISO 4217). */
export interface Amount {
  readonly amount: number;
  readonly currency: string;
}

/** What `bytes` carried over `seconds` online cost at `cost`'s prices. */
export function costOf(bytes: number, seconds: number, cost: UplinkCost): Amount {
  return { amount: (bytes / MB_BYTES) * cost.perMB + (seconds / 60) * cost.perMinute, currency: cost.currency };
}

/** `a` plus `b`, per currency (a new object; every currency of either is kept, zeros too). */
export function addMoney(a: Readonly<Money>, b: Readonly<Money>): Money {
  const sum: Money = { ...a };
  for (const [currency, amount] of Object.entries(b)) sum[currency] = (sum[currency] ?? 0) + amount;
  return sum;
}

/** One amount as Money ({"EUR": 1.25}). */
export function moneyOf(a: Amount): Money {
  return { [a.currency]: a.amount };
}

/**
 * "1.23 EUR + 0.40 USD": currencies in alphabetical order, zero amounts left out, "0" when nothing
 * is left. Two decimals; an amount below 0.01 keeps two significant digits (at most six decimals,
 * the micro-units history stores) so a fraction of a cent does not read as nothing.
 */
export function formatMoney(m: Readonly<Money>): string {
  const parts = Object.entries(m)
    .filter(([, amount]) => amount !== 0)
    .sort(([x], [y]) => (x < y ? -1 : x > y ? 1 : 0))
    .map(([currency, amount]) => `${formatAmount(amount)} ${currency}`);
  return parts.length > 0 ? parts.join(' + ') : '0';
}

function formatAmount(amount: number): string {
  const abs = Math.abs(amount);
  if (abs >= 0.01 || !Number.isFinite(abs)) return amount.toFixed(2);
  return amount.toFixed(Math.min(6, 1 - Math.floor(Math.log10(abs))));
}

const SI_UNITS = ['kB', 'MB', 'GB', 'TB', 'PB', 'EB'] as const;

/**
 * A byte count in SI units (1 kB = 1000 B, as operators bill): "512 B", "1.23 MB", "12.3 MB",
 * "123.4 GB" (two decimals below 10, one above).
 */
export function formatBytes(n: number): string {
  if (!Number.isFinite(n)) return String(n);
  const sign = n < 0 ? '-' : '';
  let v = Math.abs(n);
  if (v < 1000) return `${sign}${Math.round(v)} B`;
  let unit = 0;
  v /= 1000;
  for (;;) {
    const digits = v < 10 ? 2 : 1;
    // 999.96 kB rounds to "1000.0": show it as the next unit instead.
    if (Number(v.toFixed(digits)) < 1000 || unit === SI_UNITS.length - 1) return `${sign}${v.toFixed(digits)} ${SI_UNITS[unit] ?? ''}`;
    v /= 1000;
    unit++;
  }
}

/** Multipliers by unit prefix: SI powers of 10, IEC (Ki, Mi, ...) powers of 2. */
const SI_PREFIX: Readonly<Record<string, number>> = { k: 1e3, m: 1e6, g: 1e9, t: 1e12, p: 1e15 };
const IEC_PREFIX: Readonly<Record<string, number>> = { k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40, p: 2 ** 50 };

const SIZE = /^(\d+(?:\.\d+)?|\.\d+)\s*([A-Za-z]*)$/;

/**
 * Bytes in `text`: "2000000" (a bare number counts bytes), "10MB" / "10 kB" / "1.5G" (SI: 10^3,
 * 10^6, 10^9, 10^12, 10^15; the prefix in either case, the B optional), "10 MiB" / "4Gi" (IEC:
 * 2^10, 2^20, ...). A lower-case b is bits and is refused, as are fractions of a byte and sizes
 * beyond 2^53. Throws an Error saying what is wrong.
 */
export function parseSize(text: string): number {
  const t = text.trim();
  const m = SIZE.exec(t);
  if (!m) throw new Error(`"${text}" is not a size: write a number of bytes with an optional unit, e.g. 500MB, 1.5 GB, 10 MiB or 2000000`);
  const [, num = '', unit = ''] = m;
  let mult: number | undefined;
  if (unit === '' || unit === 'B') mult = 1;
  else if (unit.endsWith('b')) {
    throw new Error(`"${text}": a lower-case b counts bits; sizes are in bytes: write ${unit.slice(0, -1)}B`);
  } else {
    const u = /^([kmgtpKMGTP])(i?)B?$/.exec(unit);
    if (u) mult = (u[2] === 'i' ? IEC_PREFIX : SI_PREFIX)[(u[1] ?? '').toLowerCase()];
  }
  if (mult === undefined) throw new Error(`"${text}": unknown unit "${unit}": use B, kB, MB, GB, TB (10^3 steps) or KiB, MiB, GiB, TiB (2^10 steps)`);
  const bytes = Number(num) * mult;
  const whole = Math.round(bytes);
  // 1.5 kB is whole; 1.5 B is not (a tiny tolerance absorbs the binary fractions of "0.1 MB").
  if (Math.abs(bytes - whole) > 1e-6 * Math.max(1, bytes)) throw new Error(`"${text}" is not a whole number of bytes`);
  if (whole > Number.MAX_SAFE_INTEGER) throw new Error(`"${text}" is too large: at most 9 PB`);
  return whole;
}

const MONEY = /^(\d+(?:\.\d+)?|\.\d+)\s*([A-Z]{3})$/;

/** An amount of money written "5 EUR", "5EUR" or "12.50 USD" (ISO 4217 code, upper case, after the number). Throws an Error saying what is wrong. */
export function parseMoney(text: string): Amount {
  const m = MONEY.exec(text.trim());
  if (!m) throw new Error(`"${text}" is not an amount of money: write a number and an ISO 4217 currency code, e.g. 5 EUR or 12.50 USD`);
  const [, num = '', currency = ''] = m;
  return { amount: Number(num), currency };
}

/**
 * A budget's limit as written: money ("5 EUR": a number and three upper-case letters) or a size
 * ("500MB", "1.5 GiB", a bare number of bytes). Must be more than zero. Throws an Error saying what is wrong.
 */
export function parseLimit(text: string | number): BudgetLimit {
  if (typeof text === 'number') return { bytes: positive(parseSize(String(text)), String(text)) };
  if (MONEY.test(text.trim())) {
    const { amount, currency } = parseMoney(text);
    return { money: positive(amount, text), currency };
  }
  let bytes: number;
  try {
    bytes = parseSize(text);
  } catch (e) {
    // A size with a fault of its own (bits, a fraction of a byte) says so; anything else was neither.
    if (e instanceof Error && !/ is not a size/.test(e.message)) throw e;
    throw new Error(`"${text}" is neither a size (500MB, 1.5 GB, 10 MiB, a number of bytes) nor money in the uplink's currency (5 EUR)`, { cause: e });
  }
  return { bytes: positive(bytes, text) };
}

function positive(n: number, text: string): number {
  if (n <= 0) throw new Error(`"${text}": a limit must be more than zero`);
  return n;
}
