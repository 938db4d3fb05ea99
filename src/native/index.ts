/**
 * Typed access to the `waymark_native` N-API addon (native/addon/waymark_native.c): the socket
 * operations Node's `net` cannot do (netlink, SO_PEERCRED, SO_MARK, SO_BINDTODEVICE, Unix
 * sockets), the kernel backstop's cgroup BPF socket marking, and the loader of the app BPF
 * programs (native/bpf/waymark.bpf.o, libbpf) with access to their maps by name.
 *
 * Conventions (enforced by the addon):
 *   - every socket it creates is non-blocking and close-on-exec;
 *   - "would block" is not an error: recv/accept return null;
 *   - a failed system call throws a {@link NativeError} (.code 'EPERM', .errno negative as in
 *     Node's own system errors, .syscall); bad arguments throw TypeError/RangeError;
 *   - fds are plain numbers the caller owns: close them with {@link close}.
 *
 * The addon is loaded on first use, so importing this module never fails on a machine where
 * the addon has not been built; the first call then throws with a hint.
 */
import { createRequire } from 'node:module';
import { Socket, type Server } from 'node:net';
import { getSystemErrorName } from 'node:util';
import { errorMessage } from '../errors.js';

export interface PeerCred {
  pid: number;
  uid: number;
  gid: number;
}

export interface SocketInfo {
  /** AF_* (2 = AF_INET, 10 = AF_INET6, 1 = AF_UNIX, 16 = AF_NETLINK) */
  family: number;
  /** SOCK_* (1 = STREAM, 2 = DGRAM, 3 = RAW, 5 = SEQPACKET) */
  type: number;
  /** IPPROTO_* or the netlink protocol */
  protocol: number;
}

export interface Watcher {
  /** Stops polling and releases the callback. Idempotent. */
  stop(): void;
  /** Lets the watcher keep the event loop alive (the default). */
  ref(): void;
  /** Stops the watcher from keeping the event loop alive on its own. */
  unref(): void;
}

export interface WatchOptions {
  /** Start unref'ed: the watcher alone does not keep the process running. */
  unref?: boolean;
  /** Watch for writability instead of readability (a connect() in progress). */
  writable?: boolean;
}

export type UnixSocketType = 'seqpacket' | 'stream';

/** BPF_F_* attach flags as BPF_PROG_QUERY reports them. */
export const BPF_F_ALLOW_OVERRIDE = 1;
export const BPF_F_ALLOW_MULTI = 2;

export interface CgroupSockPrograms {
  /** Ids of the programs attached to the cgroup itself (not inherited) at INET_SOCK_CREATE. */
  ids: number[];
  /** Their attach flags: 0 (exclusive, what Waymark uses), BPF_F_ALLOW_OVERRIDE or BPF_F_ALLOW_MULTI. */
  flags: number;
}

declare const bpfHandleBrand: unique symbol;
/** A loaded and attached BPF object ({@link bpfOpen}); opaque (an N-API external). */
export interface BpfHandle {
  readonly [bpfHandleBrand]: true;
}

/** An Error from a failed system call inside the addon. */
export interface NativeError extends Error {
  /** errno name, e.g. 'EAGAIN', 'EPERM', 'ENOBUFS', 'EMSGSIZE' */
  code: string;
  /** negative errno, as Node's system errors (util.getSystemErrorName(errno) === code) */
  errno: number;
  syscall: string;
  /** The cgroup directory, for the cgroup* functions. */
  path?: string;
}

export function isNativeError(e: unknown, code?: string): e is NativeError {
  return (
    e instanceof Error &&
    typeof (e as Partial<NativeError>).code === 'string' &&
    typeof (e as Partial<NativeError>).errno === 'number' &&
    (code === undefined || (e as NativeError).code === code)
  );
}

/** The raw addon surface, exactly as exported by waymark_native.c. */
interface NativeAddon {
  netlinkOpen(protocol: number, groups: number): number;
  netlinkAddMembership(fd: number, group: number): void;
  netlinkDropMembership(fd: number, group: number): void;
  netlinkPortId(fd: number): number;
  netlinkSend(fd: number, buf: Uint8Array): void;
  recv(fd: number, size?: number): Buffer | null;
  recvInto(fd: number, buf: Uint8Array): number | null;
  yieldCpu(): void;
  send(fd: number, buf: Uint8Array): number;
  close(fd: number): void;
  watch(fd: number, onReadable: (err?: Error) => void, unref?: boolean, writable?: boolean): Watcher;
  tcpConnect(family: 4 | 6, addr: Uint8Array, port: number, ifname?: string, mark?: number): number;
  udpSocket(family: 4 | 6): number;
  socketError(fd: number): number;
  peerCred(fd: number): PeerCred;
  unixListen(path: string, type: UnixSocketType, backlog: number, mode: number): number;
  unixConnect(path: string, type: UnixSocketType): number;
  lockFile(path: string, mode: number): number | null;
  accept(fd: number): number | null;
  setMark(fd: number, mark: number): void;
  getMark(fd: number): number;
  socketInfo(fd: number): SocketInfo;
  getBoundDevice(fd: number): string;
  bindToDevice(fd: number, ifname: string): void;
  cgroupAttachSockMark(cgroupPath: string, mark: number): void;
  cgroupDetachSockPrograms(cgroupPath: string): number;
  cgroupQuerySockPrograms(cgroupPath: string): CgroupSockPrograms;
  bpfOpen(objectPath: string, cgroupPath: string, flags?: number): BpfHandle;
  bpfPrograms(handle: BpfHandle): string[];
  bpfClose(handle: BpfHandle): void;
  bpfUpdate(handle: BpfHandle, mapName: string, key: Uint8Array, value: Uint8Array, flags?: number): boolean;
  bpfDelete(handle: BpfHandle, mapName: string, key: Uint8Array): boolean;
  bpfLookup(handle: BpfHandle, mapName: string, key: Uint8Array): Buffer | null;
  bpfEntries(handle: BpfHandle, mapName: string): [Buffer, Buffer][];
  bpfPossibleCpus(): number;
  bpfRingOpen(handle: BpfHandle, mapName: string): number;
  bpfRingConsume(handle: BpfHandle, max: number): Buffer[];
  bpfRingClose(handle: BpfHandle): void;
}

const ADDON_FUNCTIONS: readonly (keyof NativeAddon)[] = [
  'netlinkOpen',
  'netlinkAddMembership',
  'netlinkDropMembership',
  'netlinkPortId',
  'netlinkSend',
  'recv',
  'recvInto',
  'yieldCpu',
  'send',
  'close',
  'watch',
  'tcpConnect',
  'udpSocket',
  'socketError',
  'peerCred',
  'unixListen',
  'unixConnect',
  'lockFile',
  'accept',
  'setMark',
  'getMark',
  'socketInfo',
  'getBoundDevice',
  'bindToDevice',
  'cgroupAttachSockMark',
  'cgroupDetachSockPrograms',
  'cgroupQuerySockPrograms',
  'bpfOpen',
  'bpfClose',
  'bpfUpdate',
  'bpfDelete',
  'bpfLookup',
  'bpfEntries',
  'bpfPossibleCpus',
  'bpfPrograms',
  'bpfRingOpen',
  'bpfRingConsume',
  'bpfRingClose',
];

/** Relative to this file once compiled (dist/src/native/index.js): the package root is 3 up. */
export const ADDON_PATH = '../../../build/Release/waymark_native.node';

let cached: NativeAddon | undefined;

function isAddon(mod: unknown): mod is NativeAddon {
  if (typeof mod !== 'object' || mod === null) return false;
  return ADDON_FUNCTIONS.every((name) => typeof Reflect.get(mod, name) === 'function');
}

function addon(): NativeAddon {
  if (cached !== undefined) return cached;
  const require = createRequire(import.meta.url);
  let mod: unknown;
  try {
    mod = require(ADDON_PATH);
  } catch (e) {
    throw new Error(
      `waymark_native addon not loadable (${errorMessage(e)}); ` +
        'build it with `make -C native` (or `npm run setup`) in the package root',
      { cause: e },
    );
  }
  if (!isAddon(mod)) {
    throw new Error('waymark_native addon is out of date: rebuild it with `make -C native`');
  }
  cached = mod;
  return mod;
}

/** Loads the addon now (instead of on first use); throws if it is missing or stale. */
export function loadNative(): void {
  addon();
}

// ---------------------------------------------------------------------------------------------
// Netlink

/**
 * Opens an AF_NETLINK socket (SOCK_RAW, non-blocking, close-on-exec) bound with the legacy
 * group bitmask `groups`. Receive buffer ~4 MiB (forced when privileged), extended ACKs on,
 * ENOBUFS reporting kept on. Returns the fd.
 */
export function netlinkOpen(protocol: number, groups = 0): number {
  return addon().netlinkOpen(protocol, groups);
}

/** Joins multicast group number `group` (NETLINK_ADD_MEMBERSHIP; groups above 32 need this). */
export function netlinkAddMembership(fd: number, group: number): void {
  addon().netlinkAddMembership(fd, group);
}

export function netlinkDropMembership(fd: number, group: number): void {
  addon().netlinkDropMembership(fd, group);
}

/** The port id (nl_pid) the kernel assigned to this socket; replies carry it in nlmsg_pid. */
export function netlinkPortId(fd: number): number {
  return addon().netlinkPortId(fd);
}

/** Sends one datagram to the kernel (nl_pid 0). */
export function netlinkSend(fd: number, buf: Uint8Array): void {
  addon().netlinkSend(fd, buf);
}

// ---------------------------------------------------------------------------------------------
// Generic I/O

/**
 * Receives one datagram (default buffer 64 KiB); null when nothing is queued. A datagram larger
 * than `size` is dropped and thrown as 'EMSGSIZE'. On a netlink socket, 'ENOBUFS' means events
 * were lost: resynchronise with a dump. On a stream socket an empty Buffer is EOF.
 */
export function recv(fd: number, size?: number): Buffer | null {
  return addon().recv(fd, size);
}

/**
 * One message received into `buf` (reused: nothing is allocated): its length, or null when
 * nothing is queued. A longer message is consumed and throws 'EMSGSIZE'; 0 is EOF on a stream
 * or seqpacket socket.
 */
export function recvInto(fd: number, buf: Uint8Array): number | null {
  return addon().recvInto(fd, buf);
}

/** sched_yield(): another runnable task on this CPU goes first; returns at once if there is none. */
export function yieldCpu(): void {
  addon().yieldCpu();
}

/** send() with MSG_NOSIGNAL; returns bytes sent; a full socket throws 'EAGAIN'. */
export function send(fd: number, buf: Uint8Array): number {
  return addon().send(fd, buf);
}

export function close(fd: number): void {
  addon().close(fd);
}

/**
 * Calls `onReadable` from the Node event loop whenever `fd` is readable (level-triggered: drain
 * the fd or it fires again). Microtasks run after each call. If polling fails (e.g. the fd was
 * closed under the watcher) the callback gets the Error once and the watcher stops.
 * An active watcher stays alive without a JS reference, like any Node handle.
 * One watcher per fd at a time, and not on an fd Node itself polls: libuv refuses ('EEXIST').
 */
export function watch(
  fd: number,
  onReadable: (err?: Error) => void,
  options: WatchOptions = {},
): Watcher {
  return addon().watch(fd, onReadable, options.unref === true, options.writable === true);
}

/**
 * Starts a non-blocking TCP connect to addr:port, bound first to `ifname` and marked with `mark`
 * (SO_MARK: needs CAP_NET_ADMIN, otherwise 'EPERM') when given, so the SYN is already steered;
 * returns the fd at once. Wait for writability (watch with writable), then read socketError().
 */
export function tcpConnect(family: 4 | 6, addr: Uint8Array, port: number, ifname?: string, mark?: number): number {
  return addon().tcpConnect(family, addr, port, ifname, mark);
}

/**
 * A new non-blocking UDP socket (IPv6-only for 6), not yet bound: set its mark or device, then
 * hand it to node:dgram with `socket.bind({ fd })`, which owns it from then on.
 */
export function udpSocket(family: 4 | 6): number {
  return addon().udpSocket(family);
}

/** SO_ERROR: 0 once a non-blocking connect succeeded, else its errno (positive). */
export function socketError(fd: number): number {
  return addon().socketError(fd);
}

// ---------------------------------------------------------------------------------------------
// Unix sockets (decision protocol transport)

/**
 * Listens on a Unix socket at `path` (a stale socket file there is replaced; any other file is
 * 'EEXIST'), with permissions `mode` applied before listen(). Returns the listening fd.
 */
export function unixListen(path: string, type: UnixSocketType, backlog: number, mode: number): number {
  return addon().unixListen(path, type, backlog, mode);
}

/**
 * Takes an exclusive flock(2) on `path` (created with `mode` if missing; a symlink there is
 * refused): the fd holding it (close-on-exec), or null while another process holds the lock.
 * The kernel releases it when the holder exits, however it exits.
 */
export function lockFile(path: string, mode: number): number | null {
  return addon().lockFile(path, mode);
}

/** Connects a non-blocking Unix socket to `path`. */
export function unixConnect(path: string, type: UnixSocketType): number {
  return addon().unixConnect(path, type);
}

/** Accepts one connection (non-blocking, close-on-exec); null when none is pending. */
export function accept(fd: number): number | null {
  return addon().accept(fd);
}

// ---------------------------------------------------------------------------------------------
// Socket options

/** SO_PEERCRED: the peer's pid/uid/gid at connect() time. */
export function peerCred(fd: number): PeerCred {
  return addon().peerCred(fd);
}

/** SO_MARK (needs CAP_NET_ADMIN, otherwise 'EPERM'). */
export function setMark(fd: number, mark: number): void {
  addon().setMark(fd, mark);
}

export function getMark(fd: number): number {
  return addon().getMark(fd);
}

/** SO_DOMAIN / SO_TYPE / SO_PROTOCOL */
export function socketInfo(fd: number): SocketInfo {
  return addon().socketInfo(fd);
}

/** The device the socket is bound to (SO_BINDTODEVICE), '' when none. */
export function getBoundDevice(fd: number): string {
  return addon().getBoundDevice(fd);
}

/**
 * SO_BINDTODEVICE. Unprivileged since Linux 5.7 for a socket not yet bound to a device; rebinding
 * or unbinding ('') needs CAP_NET_RAW. Names of 16 bytes or more are refused (RangeError) rather
 * than silently truncated by the kernel.
 */
export function bindToDevice(fd: number, ifname: string): void {
  addon().bindToDevice(fd, ifname);
}

// ---------------------------------------------------------------------------------------------
// Cgroup socket marking (the kernel backstop, src/backstop/)

/**
 * Makes every AF_INET/AF_INET6 socket created from now on by a process of the cgroup v2 directory
 * `cgroupPath` (absolute path, e.g. /sys/fs/cgroup/waymark/exec-42) or of its descendants carry
 * `mark` (SO_MARK) from birth: a 4-instruction BPF_PROG_TYPE_CGROUP_SOCK program at
 * BPF_CGROUP_INET_SOCK_CREATE, loaded with the raw bpf() syscall. Sockets that already exist keep
 * their mark.
 *
 * Idempotent and replacing: attached with flags 0 (exclusive), so calling it again on the same
 * cgroup (daemon restart, mark change) swaps the program atomically, never stacks a second one.
 * Programs attached there by someone else with other flags are detached first. The program
 * lives as long as the attachment (until {@link cgroupDetachSockPrograms} or the cgroup's removal).
 *
 * Needs CAP_BPF + CAP_NET_ADMIN (or CAP_SYS_ADMIN). Errors are {@link NativeError}s with .path;
 * a directory that is not on a cgroup2 file system is 'ENOTDIR'.
 */
export function cgroupAttachSockMark(cgroupPath: string, mark: number): void {
  addon().cgroupAttachSockMark(cgroupPath, mark);
}

/**
 * Detaches every program attached to the cgroup itself at BPF_CGROUP_INET_SOCK_CREATE (ours or
 * not); returns how many. 0 when there were none. Needs CAP_NET_ADMIN (plus CAP_SYS_ADMIN for
 * programs someone attached with BPF_F_ALLOW_MULTI).
 */
export function cgroupDetachSockPrograms(cgroupPath: string): number {
  return addon().cgroupDetachSockPrograms(cgroupPath);
}

/** The programs attached to the cgroup itself at BPF_CGROUP_INET_SOCK_CREATE (BPF_PROG_QUERY). */
export function cgroupQuerySockPrograms(cgroupPath: string): CgroupSockPrograms {
  return addon().cgroupQuerySockPrograms(cgroupPath);
}

// ---------------------------------------------------------------------------------------------
// The app BPF programs (src/backstop/bpf.ts is the typed layer over these)

/**
 * Opens and loads the BPF object file `objectPath` (libbpf), sets its `wm_conf.netns_cookie` to
 * this process's network namespace, and attaches every program in it at the cgroup v2 directory
 * `cgroupPath` through bpf_links (BPF_F_ALLOW_MULTI semantics: other programs there stay). The
 * links live as long as the handle: {@link bpfClose}, the handle's garbage collection, or the
 * process's end detach everything. Of two programs NAME and NAME_compat one is loaded:
 * NAME_compat where the kernel lacks what NAME needs (bpf_get_netns_cookie in cgroup_skb, Linux
 * 6.17), or always with {@link BPF_OPEN_COMPAT}. Needs CAP_BPF + CAP_NET_ADMIN (or root). A load
 * failure's message ends with the verifier's log; errors carry .path (the cgroup).
 */
export function bpfOpen(objectPath: string, cgroupPath: string, flags = 0): BpfHandle {
  return addon().bpfOpen(objectPath, cgroupPath, flags);
}

/** {@link bpfOpen} flag: load the NAME_compat programs even where NAME would load (tests). */
export const BPF_OPEN_COMPAT = 1;

/** Names of the programs a handle attached (none once closed). */
export function bpfPrograms(handle: BpfHandle): string[] {
  return addon().bpfPrograms(handle);
}

/** Detaches the programs and frees the object. Idempotent; the handle is then unusable. */
export function bpfClose(handle: BpfHandle): void {
  addon().bpfClose(handle);
}

/** {@link bpfUpdate} flags (linux/bpf.h): write whether or not there is an entry; only a new one; only over one. */
export const BPF_ANY = 0;
export const BPF_NOEXIST = 1;
export const BPF_EXIST = 2;

/**
 * Writes one entry (`flags`: BPF_ANY by default). `key` and `value` must have the map's exact
 * sizes (RangeError otherwise); a per-CPU map's value is {@link bpfPossibleCpus} values, each
 * padded to 8 bytes. Returns false when BPF_NOEXIST met an entry or BPF_EXIST none (nothing written).
 */
export function bpfUpdate(handle: BpfHandle, mapName: string, key: Uint8Array, value: Uint8Array, flags: number = BPF_ANY): boolean {
  return addon().bpfUpdate(handle, mapName, key, value, flags);
}

/** Deletes one entry; false when there was none. */
export function bpfDelete(handle: BpfHandle, mapName: string, key: Uint8Array): boolean {
  return addon().bpfDelete(handle, mapName, key);
}

/** One entry's value, or null. */
export function bpfLookup(handle: BpfHandle, mapName: string, key: Uint8Array): Buffer | null {
  return addon().bpfLookup(handle, mapName, key);
}

/** Every entry as [key, value] (walked key by key: entries changed meanwhile may be missed). */
export function bpfEntries(handle: BpfHandle, mapName: string): [Buffer, Buffer][] {
  return addon().bpfEntries(handle, mapName);
}

/** How many CPUs a per-CPU map's value holds (libbpf_num_possible_cpus). */
export function bpfPossibleCpus(): number {
  return addon().bpfPossibleCpus();
}

/**
 * Opens libbpf's consumer of the ring buffer map `mapName` (BPF_MAP_TYPE_RINGBUF; one per handle,
 * idempotent) and returns its epoll fd: readable while records wait. Watch it with {@link watch}
 * and read with {@link bpfRingConsume}. The fd belongs to the handle: stop watching it before
 * {@link bpfRingClose} or {@link bpfClose}.
 */
export function bpfRingOpen(handle: BpfHandle, mapName: string): number {
  return addon().bpfRingOpen(handle, mapName);
}

/** The records waiting in the handle's ring buffer, oldest first, at most `max` (1..2^20) per call. */
export function bpfRingConsume(handle: BpfHandle, max: number): Buffer[] {
  return addon().bpfRingConsume(handle, max);
}

/** Frees the handle's ring buffer consumer and its epoll fd. Idempotent. */
export function bpfRingClose(handle: BpfHandle): void {
  addon().bpfRingClose(handle);
}

// ---------------------------------------------------------------------------------------------
// Node handles

/**
 * A TCP connection to `addr`:`port`, bound to `steer.ifname` and marked with `steer.mark` (each
 * when given) before its SYN ({@link tcpConnect}), handed to node:net once connected (the
 * resolver's TCP fallback, the client API). Rejects with a NativeError
 * (e.g. EPERM for SO_MARK without CAP_NET_ADMIN) or the connect's error (.code 'ECONNREFUSED',
 * ...). `started` gets a function that aborts the connect (the promise then never settles).
 */
export function connectSteeredTcp(
  family: 4 | 6,
  addr: Uint8Array,
  port: number,
  steer: { mark?: number | undefined; ifname?: string | undefined },
  started?: (abort: () => void) => void,
): Promise<Socket> {
  return new Promise<Socket>((resolve, reject) => {
    let fd: number;
    try {
      fd = tcpConnect(family, addr, port, steer.ifname, steer.mark);
    } catch (e) {
      reject(e instanceof Error ? e : new Error(String(e)));
      return;
    }
    let open = true;
    let watcher: Watcher;
    try {
      watcher = watch(fd, onWritable, { writable: true });
    } catch (e) {
      close(fd);
      reject(e instanceof Error ? e : new Error(String(e)));
      return;
    }
    function onWritable(): void {
      if (!open) return;
      open = false;
      watcher.stop();
      const errno = socketError(fd);
      if (errno !== 0) {
        close(fd);
        const code = getSystemErrorName(-errno);
        reject(Object.assign(new Error(`connect to port ${port}: ${code}`), { code, errno: -errno, syscall: 'connect' }));
        return;
      }
      resolve(new Socket({ fd, readable: true, writable: true }));
    }
    started?.(() => {
      if (!open) return;
      open = false;
      watcher.stop();
      close(fd);
    });
  });
}

function handleFd(owner: object): number | undefined {
  const handle: unknown = Reflect.get(owner, '_handle');
  if (typeof handle !== 'object' || handle === null || !('fd' in handle)) return undefined;
  const fd = handle.fd;
  return typeof fd === 'number' && Number.isInteger(fd) && fd >= 0 ? fd : undefined;
}

/**
 * The fd under a connected net.Socket or a listening net.Server (Node internals: `_handle.fd`).
 * The fd stays owned by Node: never close it through this module.
 */
export function fdOf(handleOwner: Socket | Server): number {
  const fd = handleFd(handleOwner);
  if (fd === undefined) {
    throw new TypeError('socket has no file descriptor (not connected, closed, or not fd-backed)');
  }
  return fd;
}

/** SO_PEERCRED of a connected Unix-domain net.Socket (for example from a net.Server). */
export function peerCredOfSocket(sock: Socket): PeerCred {
  return peerCred(fdOf(sock));
}
