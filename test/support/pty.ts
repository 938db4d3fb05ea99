/**
 * A program on a pseudo-terminal, for tests of interactive commands (`waymark agent`): python3's
 * pty module runs it (test/fixtures/pty_run.py), the test types keys and waits for what the
 * program shows, never for a timer. `uid` runs it as another user (setpriv, from root).
 *
 *   const t = new PtyProcess([process.execPath, CLI, 'agent']);
 *   await t.waitFor('Prompt p-1');
 *   t.send('1');
 *   assert.equal((await t.exited).code, 0);
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { join } from 'node:path';
import { PACKAGE_ROOT } from '../../src/version.js';
import { PYTHON } from './uidclient.js';

export const PTY_RUN = join(PACKAGE_ROOT, 'test/fixtures/pty_run.py');

export interface PtyOptions {
  /** Run as this uid (and gid), without supplementary groups (the test runs as root). */
  readonly uid?: number;
  readonly env?: NodeJS.ProcessEnv;
  readonly cwd?: string;
  readonly columns?: number;
  readonly rows?: number;
}

export interface PtyExit {
  /** The program's status (128+N for signal N), as the helper reports it. */
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

/** Terminal output as text: escape sequences and carriage returns taken out. */
export function plain(raw: string): string {
  // CSI sequences (cursor, erase, colours), other ESC sequences, then the CRs of "\r\n" and rewrites.
  // eslint-disable-next-line no-control-regex
  return raw.replace(/\x1b\[[0-?]*[ -/]*[@-~]/g, '').replace(/\x1b[@-_]/g, '').replace(/\r/g, '');
}

export class PtyProcess {
  private readonly child: ChildProcessWithoutNullStreams;
  private raw = '';
  private readonly waiters = new Set<() => void>();
  private gone: PtyExit | undefined;
  /** Resolves once the program (and the helper) ended. */
  readonly exited: Promise<PtyExit>;

  constructor(argv: readonly string[], o: PtyOptions = {}) {
    const who = o.uid !== undefined ? ['setpriv', `--reuid=${o.uid}`, `--regid=${o.uid}`, '--clear-groups', '--'] : [];
    this.child = spawn(PYTHON, ['-u', PTY_RUN, String(o.columns ?? 120), String(o.rows ?? 40), ...who, ...argv], {
      stdio: ['pipe', 'pipe', 'pipe'], env: { TERM: 'xterm', PATH: process.env['PATH'] ?? '/usr/bin:/bin', ...o.env }, ...(o.cwd ? { cwd: o.cwd } : {}),
    });
    this.child.stdout.setEncoding('utf8');
    this.child.stderr.setEncoding('utf8');
    const more = (d: string): void => {
      this.raw += d;
      for (const w of [...this.waiters]) w();
    };
    this.child.stdout.on('data', more);
    this.child.stderr.on('data', more); // the helper's own failures
    this.exited = new Promise((resolve) => {
      this.child.on('close', (code, signal) => {
        this.gone = { code, signal };
        for (const w of [...this.waiters]) w();
        resolve(this.gone);
      });
    });
  }

  /** Everything the terminal showed so far, as text (see {@link plain}). */
  get screen(): string {
    return plain(this.raw);
  }

  /** Where the screen ends now: waitFor(..., from) looks only at what comes after. */
  mark(): number {
    return this.screen.length;
  }

  /**
   * Resolves once the screen shows `pattern` after `from`, with the position after the match;
   * rejects (with the screen) if the program ends first.
   */
  waitFor(pattern: string | RegExp, from = 0): Promise<number> {
    return new Promise((resolve, reject) => {
      const check = (): void => {
        const s = this.screen.slice(from);
        const at = typeof pattern === 'string' ? (s.includes(pattern) ? s.indexOf(pattern) + pattern.length : -1) : ((m) => (m ? m.index + m[0].length : -1))(pattern.exec(s));
        if (at >= 0) {
          this.waiters.delete(check);
          resolve(from + at);
        } else if (this.gone) {
          this.waiters.delete(check);
          reject(new Error(`the program ended (${this.gone.code ?? this.gone.signal ?? '?'}) before showing ${String(pattern)}; it showed:\n${this.screen}`));
        }
      };
      this.waiters.add(check);
      check();
    });
  }

  /** Types `keys` (as bytes on the terminal: "\x03" is Ctrl-C, "\x1b" Escape, "\r" Enter). */
  send(keys: string): void {
    this.child.stdin.write(keys);
  }

  /** Ends it if still running (SIGKILL to the helper: the terminal hangs up on the program) and waits. */
  async stop(): Promise<PtyExit> {
    if (this.gone) return this.gone;
    this.child.stdin.end();
    this.child.kill('SIGKILL');
    return this.exited;
  }
}
