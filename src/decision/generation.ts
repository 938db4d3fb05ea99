/**
 * The generation file of the decision protocol (see native/include/waymark_proto.h): a 4096-byte
 * file, mode 0644, named GENERATION_FILE in the directory of the decide socket, whose first 4
 * bytes are a little-endian uint32. Libraries map it read-only and compare it with the generation
 * stored in each cached decision; a change invalidates their caches without a system call.
 *
 * Rules that follow from libraries holding the file mapped:
 *   - The file is written in place, never replaced (a rename would leave every mapping on the old
 *     inode, which would never change again) and never truncated (a mapped page beyond EOF is
 *     SIGBUS in the library). open() creates it or reuses it, extending it to 4096 bytes if shorter.
 *   - Every update is one 4-byte positional write at offset 0 (aligned, within one page): a
 *     reader sees the old or the new value.
 *   - open() starts from a random value different from what the file held, so a restarted daemon
 *     invalidates every cache made under its predecessor, even across a reboot (/run is tmpfs;
 *     a random start also keeps a fresh file from repeating an old daemon's numbers).
 *   - 0 is never used (bump() skips it on wrap-around): an answer carrying generation 0 is never
 *     cached (the decide server's fail-closed answers use it).
 *   - close() leaves the file in place: libraries keep mapping it, and the next daemon rewrites
 *     it in place. A library that finds no daemon behind the socket stops using its cache anyway.
 */
import { closeSync, constants, fchmodSync, fstatSync, mkdirSync, openSync, readSync, ftruncateSync, writeSync } from 'node:fs';
import { randomInt } from 'node:crypto';
import { join } from 'node:path';
import { GENERATION_FILE } from './wire.js';

export const GENERATION_FILE_SIZE = 4096;
export const GENERATION_FILE_MODE = 0o644;

const UINT32_LIMIT = 0x1_0000_0000;

export class GenerationFile {
  readonly path: string;
  private fd: number | undefined;
  private current = 0;
  /** Reused for every write: bump() allocates nothing. */
  private readonly word = Buffer.alloc(4);

  constructor(readonly dir: string) {
    this.path = join(dir, GENERATION_FILE);
  }

  /**
   * Creates (or reuses in place) the file and writes a fresh random generation, returned.
   * `initial` forces the starting value (tests); it must be a non-zero uint32.
   */
  open(opts: { initial?: number } = {}): number {
    if (this.fd !== undefined) throw new Error('generation file already open');
    if (opts.initial !== undefined && (!Number.isInteger(opts.initial) || opts.initial <= 0 || opts.initial >= UINT32_LIMIT)) {
      throw new RangeError(`bad initial generation ${opts.initial}`);
    }
    mkdirSync(this.dir, { recursive: true, mode: 0o755 });
    // O_NOFOLLOW: never write through a symlink someone planted; no O_TRUNC (see above).
    const fd = openSync(this.path, constants.O_RDWR | constants.O_CREAT | constants.O_NOFOLLOW, GENERATION_FILE_MODE);
    try {
      const st = fstatSync(fd);
      if (!st.isFile()) throw new Error(`${this.path} is not a regular file`);
      fchmodSync(fd, GENERATION_FILE_MODE); // the umask may have narrowed it; an old file may differ
      if (st.size < GENERATION_FILE_SIZE) ftruncateSync(fd, GENERATION_FILE_SIZE);
      let previous: number | undefined;
      if (st.size >= 4 && readSync(fd, this.word, 0, 4, 0) === 4) previous = this.word.readUInt32LE(0);
      let value = opts.initial ?? 0;
      while (value === 0 || value === previous) value = randomInt(1, UINT32_LIMIT);
      this.fd = fd;
      this.write(value);
      return value;
    } catch (e) {
      this.fd = undefined;
      closeSync(fd);
      throw e;
    }
  }

  /** Whether open() has run (until close()). */
  get opened(): boolean {
    return this.fd !== undefined;
  }

  /** The generation last written. */
  get value(): number {
    return this.current;
  }

  /** Increments the generation (skipping 0 on wrap-around), writes it, and returns it. */
  bump(): number {
    const next = (this.current + 1) % UINT32_LIMIT;
    this.write(next === 0 ? 1 : next);
    return this.current;
  }

  /** Closes the descriptor; the file stays (see above). Idempotent. */
  close(): void {
    if (this.fd === undefined) return;
    closeSync(this.fd);
    this.fd = undefined;
  }

  private write(value: number): void {
    if (this.fd === undefined) throw new Error('generation file not open');
    this.word.writeUInt32LE(value, 0);
    const n = writeSync(this.fd, this.word, 0, 4, 0);
    if (n !== 4) throw new Error(`short write to ${this.path} (${n} bytes)`);
    this.current = value;
  }
}
