/**
 * The nftables adapter. Waymark owns exactly one table (inet waymark) and never reads or writes
 * another. Each apply replaces the table in one `nft -f -` transaction:
 *   table inet waymark; delete table inet waymark; table inet waymark { ... }
 * (the first line makes the delete valid when the table does not exist yet).
 */
import { execFile } from 'node:child_process';
import { NFT_FAMILY, NFT_TABLE } from '../constants.js';

const TABLE = `${NFT_FAMILY} ${NFT_TABLE}`;

function nft(args: readonly string[], input?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = execFile('nft', [...args], { timeout: 10_000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`nft ${args.join(' ')}: ${stderr.trim() || err.message}`));
      else resolve(stdout);
    });
    if (input !== undefined) child.stdin?.end(input);
  });
}

/** Replaces our table atomically with `body` (the statements inside `table inet waymark { }`). */
export async function replaceTable(body: string): Promise<void> {
  await nft(['-f', '-'], `table ${TABLE}\ndelete table ${TABLE}\ntable ${TABLE} {\n${body}}\n`);
}

export async function deleteTable(): Promise<void> {
  await nft(['-f', '-'], `table ${TABLE}\ndelete table ${TABLE}\n`);
}

/** Named counters of our table: name → { packets, bytes }. */
export async function readCounters(): Promise<Map<string, { packets: number; bytes: number }>> {
  const out = new Map<string, { packets: number; bytes: number }>();
  let json: unknown;
  try {
    json = JSON.parse(await nft(['-j', 'list', 'counters', 'table', NFT_FAMILY, NFT_TABLE]));
  } catch {
    return out; // table not there (yet): no counters
  }
  const items = (json as { nftables?: unknown[] }).nftables ?? [];
  for (const item of items) {
    const c = (item as { counter?: { name?: unknown; packets?: unknown; bytes?: unknown } }).counter;
    if (c && typeof c.name === 'string' && typeof c.packets === 'number' && typeof c.bytes === 'number') {
      out.set(c.name, { packets: c.packets, bytes: c.bytes });
    }
  }
  return out;
}
