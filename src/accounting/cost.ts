/**
 * Sizes and money as people write and read them: "10MB", "1.5 GiB", "5 EUR" in, "1.23 MB",
 * "1.23 EUR + 0.40 USD" out. SI units are powers of 10 (kB = 10^3, MB = 10^6: MB_BYTES, as
 * operators bill), IEC units powers of 2 (KiB = 2^10). Pure.
 *
 * (The CLI helper's minimal version, for `waymark usage` and `waymark budget`; the budget helper's
 * module keeps these names and semantics.)
 */
import type { Money } from './view.js';

const SI = ['k', 'm', 'g', 't', 'p'] as const;
const UNITS = 'B, kB, MB, GB, TB (powers of 10) or KiB, MiB, GiB, TiB (powers of 2)';

/**
 * Bytes of a size: "2000000" (bytes), "10MB", "10 MiB", "1.5G", "512k", "3 B". Case does not
 * matter; a unit without "B" ("1.5G") is SI. Rounded to whole bytes.
 */
export function parseSize(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?|\.\d+)\s*([kmgtp]?)(i?)(b?)\s*$/i.exec(text);
  const bad = (): Error => new Error(`invalid size "${text}": a number with an optional unit: ${UNITS}`);
  if (!m) throw bad();
  const [, num = '', prefix = '', iec = ''] = m;
  const unit = prefix.toLowerCase();
  // "i" needs a prefix (KiB, not iB).
  if (iec && !unit) throw bad();
  const power = unit ? SI.indexOf(unit as (typeof SI)[number]) + 1 : 0;
  const bytes = Math.round(Number(num) * (iec ? 1024 : 1000) ** power);
  if (!Number.isSafeInteger(bytes)) throw new Error(`invalid size "${text}": too large`);
  return bytes;
}

/** An amount of money in one currency: "5 EUR", "5EUR", "0.50 usd" -> { amount: 5, currency: "EUR" }. */
export function parseMoney(text: string): { amount: number; currency: string } {
  const m = /^\s*(\d+(?:\.\d+)?|\.\d+)\s*([a-z]{3})\s*$/i.exec(text);
  if (!m?.[1] || !m[2]) throw new Error(`invalid amount of money "${text}": a number and a currency code (ISO 4217), e.g. "5 EUR"`);
  return { amount: Number(m[1]), currency: m[2].toUpperCase() };
}

const SI_UNITS = ['kB', 'MB', 'GB', 'TB', 'PB'] as const;

/** Bytes for people, SI: "999 B", "1.23 kB", "12.3 MB", "123.4 GB" (1 MB = 10^6 bytes). */
export function formatBytes(n: number): string {
  if (Math.abs(n) < 1000) return `${n} B`;
  let v = n;
  let u = -1;
  do { v /= 1000; u++; } while (Math.abs(v) >= 999.95 && u < SI_UNITS.length - 1);
  // Two decimals below 10 (rounding up to 10.00 shows 10.0), one above.
  const digits = Math.abs(v) < 9.995 ? 2 : 1;
  return `${v.toFixed(digits)} ${SI_UNITS[u] ?? ''}`;
}

/** Money per currency, in the currencies' alphabetical order: "1.23 EUR + 0.40 USD"; nothing: "0". */
export function formatMoney(m: Money): string {
  const parts = Object.entries(m).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([c, v]) => `${v.toFixed(2)} ${c}`);
  return parts.length > 0 ? parts.join(' + ') : '0';
}
