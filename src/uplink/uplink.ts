/** An uplink as the user described it: one data connection of the device. */
import type { UplinkKind } from '../config/schema.js';
import type { Family } from '../net/prefix.js';

export interface UplinkSpec {
  readonly name: string;
  /** Interface name or glob. */
  readonly match: string;
  readonly kind: UplinkKind;
  readonly cost: { readonly perMB: number; readonly perMinute: number; readonly currency: string };
  readonly metered: boolean;
  readonly roaming: boolean;
  readonly sim?: { readonly iccid: string; readonly apn?: string };
  readonly preference: number;
  /** Configured next hops, used when the kernel shows none for the link. */
  readonly gateway: Partial<Record<Family, string>>;
  readonly dns: readonly string[];
}

/** Shell-style glob over interface names: `*`, `?` and `[...]` classes (`[!...]` negates). */
export function matchesInterface(pattern: string, ifname: string): boolean {
  if (!isGlob(pattern)) return pattern === ifname;
  const re = compileGlob(pattern);
  return typeof re === 'string' ? false : re.test(ifname);
}

/** Why `pattern` is not a usable interface glob (e.g. a class `[z-a]`), or undefined when it is. */
export function globProblem(pattern: string): string | undefined {
  const re = compileGlob(pattern);
  return typeof re === 'string' ? re : undefined;
}

/** Whether the pattern has glob characters (it may match more than one link). */
export const isGlob = (pattern: string): boolean => /[*?[]/.test(pattern);

const compiled = new Map<string, RegExp | string>();

function compileGlob(pattern: string): RegExp | string {
  const hit = compiled.get(pattern);
  if (hit !== undefined) return hit;
  let re = '^';
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i] as string;
    if (c === '*') re += '.*';
    else if (c === '?') re += '.';
    else if (c === '[') {
      const end = pattern.indexOf(']', i + 1);
      if (end < 0) { re += '\\['; continue; }
      let cls = pattern.slice(i + 1, end).replace(/\\/g, '\\\\');
      if (cls.startsWith('!')) cls = '^' + cls.slice(1);
      re += `[${cls}]`;
      i = end;
    } else re += c.replace(/[.+^${}()|\\]/g, '\\$&');
  }
  let out: RegExp | string;
  try {
    out = new RegExp(re + '$');
  } catch (e) {
    out = `not a valid interface glob: ${(e instanceof Error ? e.message.split(': ').pop() : undefined) ?? 'bad character class'}`;
  }
  compiled.set(pattern, out);
  return out;
}
