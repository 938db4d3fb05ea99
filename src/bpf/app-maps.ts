/**
 * The slot for the BPF maps of classified apps (the next step: a cgroup/connect4 program that
 * looks the socket's cgroup id up and sets its mark; see /work/shared/kernel-notes.md). Only the
 * interface lives here: its reconciler will follow the world's `apps` part (src/daemon/world.ts)
 * as the nftables reconciler follows `sessions`, and main.ts will inject the real maps.
 */

/** What the kernel is told about one classified cgroup. */
export interface AppMapEntry {
  /** The mark its sockets get at connect time (only our bits), or null: leave them to default routing. */
  readonly mark: number | null;
}

/** The kernel's app maps, keyed by cgroup id (the inode number of the cgroup's directory). */
export interface KernelAppMaps {
  /** Makes the map hold exactly `entries`: adds, updates and deletes as needed. */
  replace(entries: ReadonlyMap<bigint, AppMapEntry>): Promise<void>;
  /** Releases the maps (and, unless `keep`, detaches the programs). */
  close(keep: boolean): Promise<void>;
}
