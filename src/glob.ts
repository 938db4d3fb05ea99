/**
 * Shell-style globs (`*`, `?`, `[...]` classes, `[!...]` negated), as interface names and unit
 * names are matched in the config. Compiled once per pattern.
 */
const compiled = new Map<string, RegExp | string>();

/** Whether the pattern has glob characters (it may match more than one name). */
export const isGlob = (pattern: string): boolean => /[*?[]/.test(pattern);

/** The pattern as an anchored RegExp, or why it is not a usable glob (e.g. a class `[z-a]`). */
export function compileGlob(pattern: string): RegExp | string {
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
    out = new RegExp(re + '$', 's');
  } catch (e) {
    out = `not a valid glob: ${(e instanceof Error ? e.message.split(': ').pop() : undefined) ?? 'bad character class'}`;
  }
  compiled.set(pattern, out);
  return out;
}

/** Whether `name` matches `pattern` (a plain string matches only itself; a bad glob nothing). */
export function globMatch(pattern: string, name: string): boolean {
  if (!isGlob(pattern)) return pattern === name;
  const re = compileGlob(pattern);
  return typeof re !== 'string' && re.test(name);
}
