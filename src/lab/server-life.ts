import { errorMessage } from '../errors.js';
/** The life cycle every lab server shares: say it is ready, stop on a signal or when its parent goes. */

export function fail(server: string, message: string): never {
  process.stderr.write(`${server}: ${message}\n`);
  process.exit(2);
}

/**
 * Prints one JSON ready line (what the lab waits for) once `listening` settles, or exits with
 * the error; closes everything and exits on SIGTERM/SIGINT, and on EOF of stdin when asked to
 * (the lab's end of the pipe closes when the lab's process dies, so servers never outlive it).
 */
export function serveUntilStopped(opts: {
  server: string;
  listening: readonly Promise<unknown>[];
  ready: Record<string, unknown>;
  close: () => void;
  exitOnStdinEof: boolean;
}): void {
  const stop = (): void => {
    opts.close();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  if (opts.exitOnStdinEof) {
    process.stdin.on('end', stop);
    process.stdin.on('close', stop);
    process.stdin.resume();
  }
  Promise.all(opts.listening).then(
    () => process.stdout.write(`${JSON.stringify({ ready: opts.server, ...opts.ready })}\n`),
    (err: unknown) => fail(opts.server, `cannot listen: ${errorMessage(err)}`),
  );
}
