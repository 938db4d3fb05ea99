/**
 * A real client process for socket-limit tests: python3 running `script` as another uid, driven
 * line by line (the test writes commands to its stdin and waits for the lines it prints), so a
 * test synchronises on what the client did, never on a timer.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { PACKAGE_ROOT } from '../../src/version.js';

export const PYTHON = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
export const isRoot = process.getuid?.() === 0;

export class UidClient {
  private readonly child: ChildProcessWithoutNullStreams;
  private readonly lines: string[] = [];
  private waiter: { resolve(l: string): void; reject(e: Error): void } | undefined;
  private stderr = '';
  private exited: Error | undefined;

  constructor(readonly uid: number, script: string, args: readonly string[]) {
    this.child = spawn(PYTHON, ['-u', '-c', script, ...args], { uid, gid: uid, stdio: ['pipe', 'pipe', 'pipe'] });
    this.child.stderr.setEncoding('utf8');
    this.child.stderr.on('data', (d: string) => { this.stderr += d; });
    createInterface({ input: this.child.stdout }).on('line', (l) => {
      if (this.waiter) {
        const w = this.waiter;
        this.waiter = undefined;
        w.resolve(l);
      } else {
        this.lines.push(l);
      }
    });
    this.child.on('close', (code, signal) => {
      this.exited = new Error(`client (uid ${uid}) exited (${code ?? signal}) before printing a line: ${this.stderr.trim()}`);
      this.waiter?.reject(this.exited);
      this.waiter = undefined;
    });
  }

  /** The next line the client prints (rejects if it exits first). */
  line(): Promise<string> {
    const l = this.lines.shift();
    if (l !== undefined) return Promise.resolve(l);
    if (this.exited) return Promise.reject(this.exited);
    return new Promise((resolve, reject) => { this.waiter = { resolve, reject }; });
  }

  /** Sends one command line to the client's stdin. */
  command(l: string): void {
    this.child.stdin.write(l + '\n');
  }

  /** Asks the client to run `cmd` and returns the line it answers. */
  async ask(cmd: string): Promise<string> {
    this.command(cmd);
    return this.line();
  }

  /** Ends the client (closes its stdin, then kills it) and waits for it to be gone. */
  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const gone = new Promise<void>((r) => this.child.once('close', () => r()));
    this.child.stdin.end();
    this.child.kill('SIGKILL');
    await gone;
  }
}

/** test/fixtures/hold_connections.py: holds connections to the decide and/or control socket. */
export const HOLD_CONNECTIONS = join(PACKAGE_ROOT, 'test/fixtures/hold_connections.py');

export interface HoldSockets {
  /** `n` connections to a decide socket, each sending `request` and kept once answered. */
  decide?: { path: string; n: number; request: Buffer };
  /** `n` connections to a control socket, each saying hello and kept once answered ok. */
  control?: { path: string; n: number };
}

/**
 * A client as `uid` holding connections to the sockets of `hold` (decide first): its first line is
 * "ready" and the counts held (decide, then control), or what happened to the one not answered.
 * Then `ask('decide')` or `ask('control')` opens one more and answers "answered", "refused"
 * (decide), "refused <code> <message>" or "refused without a reply" (control). The script is read
 * here and passed with -c, so the other uid needs no access to this tree.
 */
export function holdConnections(uid: number, hold: HoldSockets): UidClient {
  const args: string[] = [];
  if (hold.decide) args.push('decide', hold.decide.path, String(hold.decide.n), hold.decide.request.toString('hex'));
  if (hold.control) args.push('control', hold.control.path, String(hold.control.n));
  return new UidClient(uid, readFileSync(HOLD_CONNECTIONS, 'utf8'), args);
}
