/**
 * The one nftables table Waymark owns (inet waymark), as a model (pure): its base chains are
 * declared once, typed (hook, type, priority, policy); its parts contribute counters, set
 * elements and rules to them, and only the renderer writes a chain's header. A part that comes
 * later (per-app rules) adds a contributor, and its rules land in the same chains.
 *
 * Contributors are asked on every render, in the order they were added; their rules appear in
 * that order within a chain. A rule naming a chain or set nobody declared is a programming error
 * and throws.
 */
import { NFT_FAMILY, NFT_TABLE } from '../constants.js';

export type Hook = 'prerouting' | 'input' | 'forward' | 'output' | 'postrouting';

export interface Chain {
  readonly name: string;
  readonly hook: Hook;
  /** Default filter. */
  readonly type?: 'filter' | 'nat';
  /** Default 0. */
  readonly priority?: number;
  /** Default accept. */
  readonly policy?: 'accept' | 'drop';
  /**
   * Exists only while it has rules (deleted at each update, declared again by the body): a nat
   * chain makes the kernel track every connection of the namespace while it exists.
   */
  readonly optional?: boolean;
}

/** A named set; its elements come from the contributors. */
export interface NftSet {
  readonly name: string;
  /** nft's `type` of the elements, e.g. "ipv4_addr" or "ifname". */
  readonly type: string;
  readonly flags?: readonly string[];
}

export interface Contribution {
  /** Named counters (kept across updates: their byte counts survive reloads and restarts). */
  readonly counters?: readonly string[];
  /** Elements (nft text) by set name. */
  readonly elements?: Readonly<Record<string, readonly string[]>>;
  /** Rules (nft text, one statement list each) by chain name. */
  readonly rules?: Readonly<Record<string, readonly string[]>>;
}

export type Contributor = () => Contribution;

/** One update of the table: what the nft adapter loads as one transaction (src/nftables/nft.ts). */
export interface RenderedTable {
  readonly chains: readonly Chain[];
  readonly sets: readonly NftSet[];
  /** Statements inside `table inet waymark { }`. */
  readonly body: string;
}

const NAME_RE = /^[A-Za-z][A-Za-z0-9_]{0,63}$/;

export const chainHeader = (c: Chain): string =>
  `type ${c.type ?? 'filter'} hook ${c.hook} priority ${c.priority ?? 0}; policy ${c.policy ?? 'accept'};`;

const setHeader = (s: NftSet): string =>
  `type ${s.type};${s.flags && s.flags.length > 0 ? ` flags ${s.flags.join(', ')};` : ''}`;

export const TABLE = `${NFT_FAMILY} ${NFT_TABLE}`;

export class NftTable {
  private readonly contributors: { readonly name: string; readonly fn: Contributor }[] = [];

  constructor(readonly chains: readonly Chain[], readonly sets: readonly NftSet[] = []) {
    const names = new Set<string>();
    for (const x of [...chains, ...sets]) {
      if (!NAME_RE.test(x.name)) throw new Error(`nftables: invalid name ${JSON.stringify(x.name)}`);
      if (names.has(x.name)) throw new Error(`nftables: ${x.name} declared twice`);
      names.add(x.name);
    }
  }

  /** Adds a part of the table; `name` only says who contributed what in errors. */
  contribute(name: string, fn: Contributor): void {
    this.contributors.push({ name, fn });
  }

  render(): RenderedTable {
    const counters: string[] = [];
    const elements = new Map<string, string[]>(this.sets.map((s) => [s.name, []]));
    const rules = new Map<string, string[]>(this.chains.map((c) => [c.name, []]));
    for (const { name, fn } of this.contributors) {
      const c = fn();
      counters.push(...(c.counters ?? []));
      for (const [set, els] of Object.entries(c.elements ?? {})) {
        const into = elements.get(set);
        if (!into) throw new Error(`nftables: ${name} adds elements to an undeclared set ${set}`);
        into.push(...els);
      }
      for (const [chain, lines] of Object.entries(c.rules ?? {})) {
        const into = rules.get(chain);
        if (!into) throw new Error(`nftables: ${name} adds rules to an undeclared chain ${chain}`);
        into.push(...lines);
      }
    }
    const out: string[] = [...new Set(counters)].map((n) => `  counter ${n} { }`);
    for (const s of this.sets) {
      const els = [...new Set(elements.get(s.name))];
      // An empty `elements = { }` does not parse; the set itself exists from the update's `add set`.
      if (els.length > 0) out.push(`  set ${s.name} {`, `    ${setHeader(s)}`, `    elements = { ${els.join(', ')} }`, '  }');
    }
    for (const c of this.chains) {
      const lines = rules.get(c.name) ?? [];
      if (c.optional && lines.length === 0) continue;
      out.push(`  chain ${c.name} {`, `    ${chainHeader(c)}`, ...lines.map((l) => `    ${l}`), '  }');
    }
    out.push('');
    return { chains: this.chains, sets: this.sets, body: out.join('\n') };
  }
}

/**
 * The one `nft -f -` transaction that makes the table what `t` says, keeping the table and its
 * counters (byte counts survive) and replacing the rules of every chain and the elements of
 * every set:
 *   add table inet waymark
 *   add chain inet waymark C { type filter hook H priority 0; policy accept; }   (each chain)
 *   add set inet waymark S { type T; }                                           (each set)
 *   flush chain inet waymark C          (an optional chain: delete chain)       (each chain)
 *   flush set inet waymark S                                                     (each set)
 *   table inet waymark { counter ... { }  set S { ... }  chain C { rules } }      (adds)
 */
export function updateScript(t: RenderedTable): string {
  return [
    `add table ${TABLE}`,
    ...t.chains.map((c) => `add chain ${TABLE} ${c.name} { ${chainHeader(c)} }`),
    ...t.sets.map((s) => `add set ${TABLE} ${s.name} { ${setHeader(s)} }`),
    ...t.chains.map((c) => `${c.optional ? 'delete' : 'flush'} chain ${TABLE} ${c.name}`),
    ...t.sets.map((s) => `flush set ${TABLE} ${s.name}`),
    `table ${TABLE} {`,
    t.body,
    '}',
    '',
  ].join('\n');
}
