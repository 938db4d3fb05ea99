/**
 * The waymarkd control protocol, declared once and shared by the daemon and every client.
 *
 * Transport: a Unix stream socket; each message is one line of JSON (UTF-8, '\n'-terminated,
 * at most MAX_LINE bytes). Requests carry the protocol version `v`, a client-chosen `id` and a
 * `method`; the reply echoes `id`. A client may pipeline requests; replies come in order (the
 * daemon reads at most 8 requests ahead of the replies the client has taken: server.ts).
 * A connection over a limit (limits.ts) gets one EBUSY error with id 0, then EOF.
 *   → {"v":1,"id":7,"method":"status"}
 *   ← {"v":1,"id":7,"ok":true,"result":{...}}
 *   ← {"v":1,"id":7,"ok":false,"error":{"code":"EPERM","message":"..."}}
 * Who asks is taken from the socket's SO_PEERCRED, never from the message. Methods marked
 * `privileged` need uid 0 or membership of the `waymark` group; the rest are open to anyone.
 * A newer protocol version only adds methods and optional fields; `hello` tells what a daemon speaks.
 */
import { z } from 'zod';
import { NEED_NAMES } from '../config/schema.js';
import type { DecisionStats } from '../decision/server.js';
import type { ControlStats } from './server.js';

export const PROTOCOL_VERSION = 1;
export const MAX_LINE = 64 * 1024;
export const DEFAULT_SOCKET = '/run/waymark/waymarkd.sock';

export const requestSchema = z.object({
  v: z.literal(PROTOCOL_VERSION),
  id: z.number().int().nonnegative(),
  method: z.string().min(1).max(64),
  params: z.record(z.string(), z.unknown()).optional(),
});
export type Request = z.infer<typeof requestSchema>;

/**
 * EPERM: the caller may not do this at all; EACCES: the policy (apps:, the session it runs in) does not allow what it asked for;
 * EBUSY: the connection was refused (a connection limit, see limits.ts), sent with id 0 before closing.
 */
export type ErrorCode = 'EPROTO' | 'EPERM' | 'EACCES' | 'EINVAL' | 'ENOENT' | 'ENETDOWN' | 'ENOSYS' | 'EIO' | 'EBUSY';

export interface WireError {
  readonly code: ErrorCode;
  readonly message: string;
  /** For EINVAL from reload: every config problem, located. */
  readonly issues?: readonly { file: string; line: number; column: number; field: string; message: string }[];
}

export type Response =
  | { v: typeof PROTOCOL_VERSION; id: number; ok: true; result: unknown }
  | { v: typeof PROTOCOL_VERSION; id: number; ok: false; error: WireError };

export interface UplinkStatusView {
  name: string;
  kind: string;
  status: string;
  ifname: string | null;
  ifindex: number | null;
  addresses: string[];
  gateways: { ipv4: string | null; ipv6: string | null };
  /** DNS servers of the uplink and where they come from (the config, or the link's router). */
  dns: { servers: string[]; source: 'config' | 'link' | 'none' };
  cost: { perMB: number; perMinute: number; currency: string };
  metered: boolean;
  roaming: boolean;
  sim: { iccid: string; apn: string | null } | null;
  preference: number;
  table: number;
  /** Hex, e.g. "0x01000000", with mask in `markMask`. */
  mark: string;
  markMask: string;
  traffic: { txBytes: number; rxBytes: number } | null;
}

export interface DestinationStatusView {
  name: string;
  prefixes: string[];
  domains: string[];
  via: string[];
  /** The uplink currently carrying this destination, per family (null: unreachable now). */
  active: { ipv4: string | null; ipv6: string | null };
}

export interface StatusResult {
  daemon: { version: string; protocol: number; pid: number; configPath: string; generation: number; startedAt: string };
  uplinks: UplinkStatusView[];
  destinations: DestinationStatusView[];
  lastReconcile: { at: string; durationMs: number; changes: number; errors: string[] } | null;
  /** Running `waymark exec` sessions: all of them for root and the waymark group, the caller's own for others. */
  sessions?: { id: string; uid: number; uplink: string | null; needs: string[]; deny: string[]; command: string; startedAt: string }[];
  /** The decide socket's counters and connection limits. */
  decisions?: DecisionStats;
  /** The control socket's connection limits, refusals and pending replies. */
  control?: ControlStats;
}

/** Each method: its params schema, and whether it changes state. */
export const METHODS = {
  hello: { privileged: false, params: z.object({}).strict() },
  status: { privileged: false, params: z.object({}).strict() },
  reload: { privileged: true, params: z.object({}).strict() },
  /** Starts an exec session: a cgroup for the caller (moved into it) and its wish. */
  'exec.begin': {
    privileged: false,
    params: z.object({
      uplink: z.string().min(1).max(31).optional(),
      needs: z.array(z.enum(NEED_NAMES)).max(8).default([]),
      deny: z.array(z.string().min(1).max(31)).max(64).default([]),
      command: z.string().max(4096).default(''),
      /** The program's executable as the client resolved it: its app rule applies too (it can only narrow). */
      exe: z.string().min(2).max(4096).startsWith('/').optional(),
    }).strict(),
  },
  /** Ends a session of the caller's (root may end any). */
  'exec.end': { privileged: false, params: z.object({ id: z.string().regex(/^[a-z0-9-]{1,40}$/) }).strict() },
} as const;
export type Method = keyof typeof METHODS;
export type ExecBeginParams = z.infer<(typeof METHODS)['exec.begin']['params']>;

export interface HelloResult { daemon: 'waymarkd'; version: string; protocol: number; methods: string[] }
export interface ReloadResult { generation: number; uplinks: number; destinations: number }
export interface ExecBeginResult {
  id: string;
  cgroup: string;
  /** The uplink the session's sockets are marked for by default (null: default routing). */
  uplink: string | null;
  ifname: string | null;
  /** The kernel backstop in force: cgroup mark and nftables, or why not. */
  backstop: { mark: string | null; deniedIfnames: string[] };
}

export interface Results {
  hello: HelloResult;
  status: StatusResult;
  reload: ReloadResult;
  'exec.begin': ExecBeginResult;
  'exec.end': Record<string, never>;
}
