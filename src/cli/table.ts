/** Plain-text tables for the terminal. */
export function renderTable(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]): string => cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  ').trimEnd();
  return [line(header), ...rows.map(line)].join('\n');
}

/** `text` cut to `width` characters, the cut marked with "…". */
export function truncate(text: string, width: number): string {
  return text.length <= width ? text : width <= 1 ? text.slice(0, width) : text.slice(0, width - 1) + '…';
}

/**
 * The rows with column `col`'s cells cut (see {@link truncate}) so that {@link renderTable}'s lines
 * fit in `width` characters, as far as that column can give (never below `min` characters or its header).
 */
export function fitColumn(header: readonly string[], rows: readonly (readonly string[])[], col: number, width: number, min = 8): string[][] {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const others = widths.reduce((a, w, i) => (i === col ? a : a + w), 0) + 2 * (header.length - 1);
  const room = Math.max(width - others, (header[col] ?? '').length, min);
  return rows.map((r) => r.map((c, i) => (i === col ? truncate(c, room) : c)));
}
