/**
 * Keeps the kernel's copy of the table (src/nftables/table.ts) in step with the model: renders
 * it and loads it when the text changed. Updates are serialised: one at a time, in order, each
 * rendering when its turn comes, so a caller that awaits one knows that no render in flight or
 * to come predates it (a session out of the registry is then named by none, and its cgroup can
 * go without failing anyone's transaction).
 */
import type { Logger } from '../daemon/log.js';
import type { World } from '../daemon/world.js';
import { errorMessage } from '../errors.js';
import type { NftKernel } from './nft.js';
import { updateScript, type NftTable } from './table.js';

/**
 * Renders tried in a row when nft names a cgroup that vanished between the render and the load
 * (removed by someone else: our own sessions leave the render before their cgroup goes). Each
 * retry renders again, which leaves it out.
 */
export const NFT_ATTEMPTS = 3;
const VANISHED_CGROUP_RE = /cgroupv2 path fails|No such file or directory/;

export class NftReconciler {
  private applied: string | undefined;
  /** The tail of the queue of updates. */
  private queue: Promise<void> = Promise.resolve();

  constructor(private readonly table: NftTable, private readonly nft: NftKernel, private readonly log: Logger) {}

  /** Loads the table whenever the sessions (or their backstops) changed; a failure fails that change. */
  follow(world: Pick<World, 'subscribe'>): void {
    world.subscribe(['sessions', 'rules'], () => this.refresh());
  }

  /** Queues one update; resolves with its errors (also logged) once it is loaded or failed. */
  update(): Promise<string[]> {
    const errors: string[] = [];
    const run = this.queue.then(() => this.updateNow(errors)).then(() => errors);
    this.queue = run.then(() => undefined, () => undefined);
    return run;
  }

  /** As update(), but a failure rejects. */
  async refresh(): Promise<void> {
    const errors = await this.update();
    if (errors.length > 0) throw new Error(errors.join('; '));
  }

  /** Removes the table (after the updates queued so far). */
  async remove(): Promise<void> {
    await this.queue;
    await this.nft.deleteTable().catch((e: unknown) => this.log.error('nftables cleanup failed', { error: errorMessage(e) }));
  }

  readCounters(): Promise<Map<string, { packets: number; bytes: number }>> {
    return this.nft.readCounters();
  }

  private async updateNow(errors: string[]): Promise<void> {
    let t = this.table.render();
    for (let attempt = 1; ; attempt++) {
      const script = updateScript(t);
      if (script === this.applied) return;
      try {
        await this.nft.load(t);
        this.applied = script;
        return;
      } catch (e) {
        const msg = errorMessage(e);
        // A cgroup named in the render vanished meanwhile: the next render leaves it out.
        const again = attempt < NFT_ATTEMPTS && VANISHED_CGROUP_RE.test(msg) ? this.table.render() : undefined;
        if (again !== undefined && updateScript(again) !== script) {
          this.log.warn('nftables update named a cgroup that is gone; rendering again', { attempt });
          t = again;
          continue;
        }
        errors.push(msg);
        this.log.error('nftables update failed', { error: msg });
        return;
      }
    }
  }
}
