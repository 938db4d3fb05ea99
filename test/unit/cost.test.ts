import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { addMoney, costOf, formatBytes, formatMoney, moneyOf, parseLimit, parseMoney, parseSize } from '../../src/accounting/cost.js';

const cellular = { perMB: 0.02, perMinute: 0, currency: 'EUR' };
const dialup = { perMB: 0, perMinute: 0.05, currency: 'USD' };

describe('costOf', () => {
  it('prices bytes per megabyte of 10^6 bytes and time per minute', () => {
    assert.deepEqual(costOf(250_000_000, 0, cellular), { amount: 5, currency: 'EUR' });
    assert.deepEqual(costOf(1_048_576, 0, { perMB: 1, perMinute: 0, currency: 'EUR' }), { amount: 1.048576, currency: 'EUR' }, 'a MiB is more than a MB');
    const call = costOf(0, 90, dialup);
    assert.equal(call.currency, 'USD');
    assert.ok(Math.abs(call.amount - 0.075) < 1e-12, String(call.amount));
    assert.deepEqual(costOf(2_000_000, 60, { perMB: 0.5, perMinute: 0.25, currency: 'GBP' }), { amount: 1.25, currency: 'GBP' });
    assert.deepEqual(costOf(5_000_000, 0, { perMB: 0, perMinute: 0, currency: 'EUR' }), { amount: 0, currency: 'EUR' });
  });
});

describe('money', () => {
  it('adds per currency without changing either operand', () => {
    const a = { EUR: 1.25 };
    const b = { EUR: 0.5, USD: 0.4 };
    assert.deepEqual(addMoney(a, b), { EUR: 1.75, USD: 0.4 });
    assert.deepEqual(a, { EUR: 1.25 });
    assert.deepEqual(addMoney({}, moneyOf({ amount: 0, currency: 'SEK' })), { SEK: 0 });
  });

  it('formats sorted by currency, zeros left out, fractions of a cent visible', () => {
    assert.equal(formatMoney({ USD: 0.4, EUR: 1.234 }), '1.23 EUR + 0.40 USD');
    assert.equal(formatMoney({ EUR: 5 }), '5.00 EUR');
    assert.equal(formatMoney({ EUR: 0, USD: 2 }), '2.00 USD');
    assert.equal(formatMoney({}), '0');
    assert.equal(formatMoney({ EUR: 0 }), '0');
    assert.equal(formatMoney({ EUR: 0.004 }), '0.0040 EUR');
    assert.equal(formatMoney({ EUR: 0.000123 }), '0.00012 EUR');
    assert.equal(formatMoney({ EUR: 1e-9 }), '0.000000 EUR', 'six decimals at most: history keeps micro-units');
  });

  it('parses "5 EUR", "5EUR", "12.50 USD" and refuses the rest', () => {
    assert.deepEqual(parseMoney('5 EUR'), { amount: 5, currency: 'EUR' });
    assert.deepEqual(parseMoney('5EUR'), { amount: 5, currency: 'EUR' });
    assert.deepEqual(parseMoney(' 12.50 USD '), { amount: 12.5, currency: 'USD' });
    assert.deepEqual(parseMoney('.5 GBP'), { amount: 0.5, currency: 'GBP' });
    for (const bad of ['5 eur', 'EUR 5', '5', '5 EURO', '-5 EUR', '5,50 EUR', '']) {
      assert.throws(() => parseMoney(bad), /is not an amount of money: write a number and an ISO 4217 currency code/, bad);
    }
  });
});

describe('sizes', () => {
  it('parses SI units as powers of 10, either case, B optional', () => {
    assert.equal(parseSize('10MB'), 10_000_000);
    assert.equal(parseSize('10 MB'), 10_000_000);
    assert.equal(parseSize('1.5G'), 1_500_000_000);
    assert.equal(parseSize('1.5 GB'), 1_500_000_000);
    assert.equal(parseSize('500k'), 500_000);
    assert.equal(parseSize('500 kB'), 500_000);
    assert.equal(parseSize('500KB'), 500_000);
    assert.equal(parseSize('2 TB'), 2e12);
    assert.equal(parseSize('1P'), 1e15);
    assert.equal(parseSize('0.1 MB'), 100_000, 'binary fractions do not make it a fraction of a byte');
    assert.equal(parseSize('.5MB'), 500_000);
  });

  it('parses IEC units as powers of 2', () => {
    assert.equal(parseSize('10 MiB'), 10 * 2 ** 20);
    assert.equal(parseSize('10MiB'), 10_485_760);
    assert.equal(parseSize('1KiB'), 1024);
    assert.equal(parseSize('4Gi'), 4 * 2 ** 30);
    assert.equal(parseSize('1.5 GiB'), 1.5 * 2 ** 30);
    assert.equal(parseSize('1 TiB'), 2 ** 40);
  });

  it('takes a bare number (or B) as bytes', () => {
    assert.equal(parseSize('2000000'), 2_000_000);
    assert.equal(parseSize('0'), 0);
    assert.equal(parseSize('512 B'), 512);
    assert.equal(parseSize(' 7B '), 7);
  });

  it('refuses what is not a size, saying why', () => {
    assert.throws(() => parseSize('lots'), /"lots" is not a size: write a number of bytes with an optional unit, e.g. 500MB/);
    assert.throws(() => parseSize(''), /is not a size/);
    assert.throws(() => parseSize('-5MB'), /is not a size/);
    assert.throws(() => parseSize('1e6'), /"1e6" is not a size/);
    assert.throws(() => parseSize('5 XB'), /"5 XB": unknown unit "XB": use B, kB, MB, GB, TB \(10\^3 steps\) or KiB, MiB, GiB, TiB \(2\^10 steps\)/);
    assert.throws(() => parseSize('10 Mb'), /"10 Mb": a lower-case b counts bits; sizes are in bytes: write MB/);
    assert.throws(() => parseSize('10 Mib'), /write MiB/);
    assert.throws(() => parseSize('8b'), /counts bits.*write B/);
    assert.throws(() => parseSize('1.5'), /"1.5" is not a whole number of bytes/);
    assert.throws(() => parseSize('1.5 B'), /not a whole number of bytes/);
    assert.throws(() => parseSize('10 PiB'), /too large: at most 9 PB/);
  });

  it('parses a limit: money, a size or a number of bytes, more than zero', () => {
    assert.deepEqual(parseLimit('5 EUR'), { money: 5, currency: 'EUR' });
    assert.deepEqual(parseLimit('500MB'), { bytes: 500_000_000 });
    assert.deepEqual(parseLimit('10 MiB'), { bytes: 10_485_760 });
    assert.deepEqual(parseLimit(2_000_000), { bytes: 2_000_000 });
    assert.throws(() => parseLimit('0 EUR'), /"0 EUR": a limit must be more than zero/);
    assert.throws(() => parseLimit('0'), /more than zero/);
    assert.throws(() => parseLimit(1.5), /not a whole number of bytes/);
    assert.throws(() => parseLimit('5 euros'), /unknown unit "euros"/);
  });
});

describe('formatBytes', () => {
  it('shows SI units with two decimals below 10 and one above', () => {
    assert.equal(formatBytes(0), '0 B');
    assert.equal(formatBytes(999), '999 B');
    assert.equal(formatBytes(1000), '1.00 kB');
    assert.equal(formatBytes(1_234_567), '1.23 MB');
    assert.equal(formatBytes(12_345_678), '12.3 MB');
    assert.equal(formatBytes(123_456_789), '123.5 MB');
    assert.equal(formatBytes(250_000_000), '250.0 MB');
    assert.equal(formatBytes(1_500_000_000), '1.50 GB');
    assert.equal(formatBytes(2e12), '2.00 TB');
    assert.equal(formatBytes(-1_500), '-1.50 kB');
  });

  it('moves to the next unit when rounding reaches 1000', () => {
    assert.equal(formatBytes(999_949), '999.9 kB');
    assert.equal(formatBytes(999_960), '1.00 MB');
    assert.equal(formatBytes(999_999_999), '1.00 GB');
  });

  it('round-trips through parseSize to within the shown precision', () => {
    for (const n of [1000, 4_321_000, 87_650_000_000]) {
      const back = parseSize(formatBytes(n).replace(' ', ''));
      assert.ok(Math.abs(back - n) / n < 0.005, `${n} -> ${formatBytes(n)} -> ${back}`);
    }
  });
});
