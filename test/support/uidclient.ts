/**
 * A real client process for socket-limit tests: python3 running `script` as another uid, driven
 * line by line (the test writes commands to its stdin and waits for the lines it prints), so a
 * test synchronises on what the client did, never on a timer.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createInterface } from 'node:readline';

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
