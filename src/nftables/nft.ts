/**
 * The nftables adapter. Waymark owns exactly one table (inet waymark) and never reads or writes
 * another. Each update is one `nft -f -` transaction (src/nftables/table.ts: updateScript).
 */
import { execFile } from 'node:child_process';
import { NFT_FAMILY, NFT_TABLE } from '../constants.js';
import { TABLE, updateScript, type RenderedTable } from './table.js';

/** The nftables side of the kernel, as the table reconciler uses it (src/nftables/reconciler.ts). */
export interface NftKernel {
  /** Atomically makes the table what `t` says. */
  load(t: RenderedTable): Promise<void>;
  deleteTable(): Promise<void>;
  /** Named counters of our table: name → { packets, bytes }; none while the table is not there. */
  readCounters(): Promise<Map<string, { packets: number; bytes: number }>>;
}

function nft(args: readonly string[], input?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = execFile('nft', [...args], { timeout: 10_000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`nft ${args.join(' ')}: ${stderr.trim() || err.message}`));
      else resolve(stdout);
    });
    if (input !== undefined) child.stdin?.end(input);
  });
}

export async function updateTable(t: RenderedTable): Promise<void> {
  await nft(['-f', '-'], updateScript(t));
}

export async function deleteTable(): Promise<void> {
  await nft(['-f', '-'], `table ${TABLE}\ndelete table ${TABLE}\n`);
}

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

/** The `nft` command as the NftKernel. */
export const nftCommand: NftKernel = { load: updateTable, deleteTable, readCounters };
