/**
 * The usage and budget part of the control protocol (src/daemon/protocol.ts lists the methods):
 * the params of `usage.query` and `budget.*` (zod) and what they answer. Pure types and schemas:
 * the daemon's accounting service answers them, `waymark usage` and `waymark budget` ask them,
 * and the web UI will chart them.
 *
 * Units: bytes are IP bytes (headers included, as operators bill), as JSON numbers (exact up to
 * 2^53, 9 PB). A megabyte is 10^6 bytes (MB_BYTES): the unit uplink prices are given in.
 * Times are ISO 8601 text. Money is in an uplink's currency (ISO 4217), per currency.
 */
import { z } from 'zod';

/** One megabyte as prices and budgets count it: 10^6 bytes (SI, as operators bill). */
export const MB_BYTES = 1_000_000;

export const USAGE_GROUPS = ['app', 'uplink', 'destination'] as const;
export type UsageGroup = (typeof USAGE_GROUPS)[number];

export const RESOLUTIONS = ['minute', 'hour', 'day'] as const;
export type Resolution = (typeof RESOLUTIONS)[number];

export const BUDGET_PERIODS = ['day', 'week', 'month'] as const;
export type BudgetPeriod = (typeof BUDGET_PERIODS)[number];

/** An instant as the protocol carries it: ISO 8601 text (the CLI turns "-1h", "today" into it). */
const instant = z.iso.datetime({ offset: true });

export const usageQuerySchema = z.object({
  by: z.enum(USAGE_GROUPS).default('app'),
  /** Default: the start of the current local day. */
  since: instant.optional(),
  /** Default: now. */
  until: instant.optional(),
  /** The buckets of `series` (and the table read); default: the finest that covers `since`. */
  resolution: z.enum(RESOLUTIONS).optional(),
  /** Only this uplink's / app's (its name) / destination's rows. */
  uplink: z.string().min(1).max(31).optional(),
  app: z.string().min(1).max(4096).optional(),
  destination: z.string().min(1).max(31).optional(),
}).strict();
export type UsageQuery = z.output<typeof usageQuerySchema>;

/** Money per currency ({"EUR": 1.25}). */
export type Money = Record<string, number>;

export interface UsageCounts {
  txBytes: number;
  rxBytes: number;
  txPackets: number;
  rxPackets: number;
  /** Connection time (dial-up uplinks priced per minute), seconds. */
  seconds: number;
  cost: Money;
}

/** How usage names an app (the app key the kernel counts under, resolved by the daemon). */
export type UsageAppKind = 'app' | 'flatpak' | 'service' | 'login' | 'scope' | 'process' | 'unattributed' | 'connection';

export interface UsageAppView {
  /** Stable id: "app:<uid|system>/<name>", "proc:<uid>:<exe>", "unattributed", "connection". */
  key: string;
  name: string;
  kind: UsageAppKind;
  uid: number | null;
  exe: string | null;
}

export interface UsageRowView extends UsageCounts {
  /** The group's key: an app key, an uplink or a destination name. */
  key: string;
  /** What to show: the app's name, the uplink's or the destination's. */
  name: string;
  /** For `by: app`: the app. */
  app?: UsageAppView;
}

export interface UsageBucketView {
  /** The bucket's start. */
  at: string;
  txBytes: number;
  rxBytes: number;
}

export interface UsageResult {
  since: string;
  until: string;
  resolution: Resolution;
  by: UsageGroup;
  /** Bytes per megabyte in `cost` and prices (10^6). */
  mbBytes: number;
  rows: UsageRowView[];
  totals: UsageCounts;
  /** Per bucket of `resolution` over the period, oldest first (empty buckets included). */
  series: UsageBucketView[];
  /** Whether the caller sees every app's (root, the waymark group) or only its own. */
  scope: 'all' | 'own';
}

/** A budget's limit: bytes, or money in the uplink's currency. */
export const budgetLimitSchema = z.union([
  z.object({ bytes: z.number().int().positive().max(Number.MAX_SAFE_INTEGER) }).strict(),
  z.object({ money: z.number().positive().max(1e12), currency: z.string().regex(/^[A-Z]{3}$/) }).strict(),
]);
export type BudgetLimit = z.output<typeof budgetLimitSchema>;

export const budgetSetSchema = z.object({
  /** Replaces this budget (one of the caller's); absent: a new one. */
  id: z.string().regex(/^[a-z0-9-]{1,40}$/).optional(),
  uplink: z.string().min(1).max(31),
  /** An app's name (as `waymark usage --by app` shows it); absent: the whole uplink (root and the waymark group only). */
  app: z.string().min(1).max(4096).optional(),
  period: z.enum(BUDGET_PERIODS).default('month'),
  /** month: the billing day (1..31, clamped to the month's length); week: 1 Monday .. 7 Sunday. */
  start: z.number().int().min(1).max(31).default(1),
  limit: budgetLimitSchema,
  /** Warn at this fraction of the limit. */
  warnAt: z.number().min(0.01).max(1).default(0.8),
  /** Block in the kernel when exhausted (false: warn only). */
  block: z.boolean().default(true),
}).strict();
export type BudgetSetParams = z.output<typeof budgetSetSchema>;

export const budgetIdSchema = z.object({ id: z.string().regex(/^[a-z0-9-]{1,40}$/) }).strict();

export type BudgetState = 'ok' | 'warning' | 'exhausted';

export interface BudgetView {
  id: string;
  /** Where it comes from: the config file (read-only here) or `waymark budget set`. */
  source: 'config' | 'cli';
  uplink: string;
  /** The app's name; null: the whole uplink. */
  app: string | null;
  /** The uid whose app it limits (null: any user's app of that name, or the uplink). */
  uid: number | null;
  period: BudgetPeriod;
  start: number;
  limit: BudgetLimit;
  warnAt: number;
  block: boolean;
  /** The current period. */
  periodStart: string;
  periodEnd: string;
  /** The limit in bytes (money converted at the uplink's price per MB; null: the uplink is free or unknown). */
  limitBytes: number | null;
  usedBytes: number;
  usedCost: Money;
  remainingBytes: number | null;
  state: BudgetState;
  /** `budget reset` moved the count's start to this instant within the period (null: never). */
  resetAt: string | null;
}

export interface BudgetListResult { budgets: BudgetView[] }
