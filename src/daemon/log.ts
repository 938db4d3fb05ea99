/**
 * Structured logs on stderr, one logfmt line per event. Under systemd (JOURNAL_STREAM set) each
 * line starts with a syslog priority prefix <N> so journald records the level.
 */
export type Level = 'debug' | 'info' | 'warn' | 'error';
const PRIORITY: Record<Level, number> = { debug: 7, info: 6, warn: 4, error: 3 };
const ORDER: Record<Level, number> = { debug: 0, info: 1, warn: 2, error: 3 };

export type Fields = Record<string, string | number | boolean | undefined | null | readonly (string | number)[]>;

export interface Logger {
  debug(msg: string, fields?: Fields): void;
  info(msg: string, fields?: Fields): void;
  warn(msg: string, fields?: Fields): void;
  error(msg: string, fields?: Fields): void;
}

function value(v: Fields[string]): string {
  const s = Array.isArray(v) ? v.join(',') : String(v);
  return /^[\w.:/@+-]+$/.test(s) ? s : JSON.stringify(s);
}

export function createLogger(min: Level = 'info', write: (line: string) => void = (l) => process.stderr.write(l)): Logger {
  const journal = Boolean(process.env['JOURNAL_STREAM']);
  const emit = (level: Level, msg: string, fields: Fields = {}): void => {
    if (ORDER[level] < ORDER[min]) return;
    const parts = [journal ? `<${PRIORITY[level]}>` : `ts=${new Date().toISOString()} `];
    parts.push(`level=${level} msg=${value(msg)}`);
    for (const [k, v] of Object.entries(fields)) if (v !== undefined && v !== null) parts.push(` ${k}=${value(v)}`);
    write(parts.join('') + '\n');
  };
  return {
    debug: (m, f) => emit('debug', m, f),
    info: (m, f) => emit('info', m, f),
    warn: (m, f) => emit('warn', m, f),
    error: (m, f) => emit('error', m, f),
  };
}
