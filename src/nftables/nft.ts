/**
 * The nftables adapter. Waymark owns exactly one table (inet waymark) and never reads or writes
 * another. Each update is one `nft -f -` transaction that keeps the table and its counters
 * (byte counts survive reloads and daemon restarts) and replaces the rules of each chain:
 *   add table inet waymark
 *   add chain inet waymark C { type filter hook H priority 0; policy accept; }   (each chain)
 *   flush chain inet waymark C                                                   (each chain)
 *   table inet waymark { counter ... { }  chain C { rules } }                    (adds)
 * An optional chain (a nat chain: while one exists the kernel tracks every connection of the
 * namespace) is deleted instead and exists only while the body declares it, type and hook
 * included:
 *   add chain inet waymark D { type nat hook H priority P; policy accept; }
 *   delete chain inet waymark D
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

export interface BaseChain {
  readonly name: string;
  readonly hook: 'prerouting' | 'input' | 'forward' | 'output' | 'postrouting';
  /** Default filter. */
  readonly type?: 'filter' | 'nat';
  /** Default 0. */
  readonly priority?: number;
  /** Deleted at each update; present only while the body declares it (see above). */
  readonly optional?: boolean;
}

const declaration = (c: BaseChain): string =>
  `{ type ${c.type ?? 'filter'} hook ${c.hook} priority ${c.priority ?? 0}; policy accept; }`;

/** Atomically sets the rules of `chains` to what `body` (statements inside `table inet waymark { }`) says. */
export async function updateTable(chains: readonly BaseChain[], body: string): Promise<void> {
  const script = [
    `add table ${TABLE}`,
    ...chains.map((c) => `add chain ${TABLE} ${c.name} ${declaration(c)}`),
    ...chains.map((c) => `${c.optional ? 'delete' : 'flush'} chain ${TABLE} ${c.name}`),
    `table ${TABLE} {`,
    body,
    '}',
    '',
  ].join('\n');
  await nft(['-f', '-'], script);
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
