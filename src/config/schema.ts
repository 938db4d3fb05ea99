/**
 * The shape of waymark.yaml, validated with zod. Field names are snake_case as written in YAML.
 * Cross-field checks (duplicates, references, overlaps) live in validate.ts so that each error
 * can point at the exact node.
 */
import { z } from 'zod';
import { parseAddress, parsePrefix } from '../net/prefix.js';
import { parseLimit } from '../accounting/cost.js';
import { BUDGET_PERIODS } from '../accounting/view.js';
import { errorMessage } from '../errors.js';

export const UPLINK_KINDS = ['wifi', 'cellular', 'bluetooth', 'ethernet', 'vpn', 'dialup'] as const;
export type UplinkKind = (typeof UPLINK_KINDS)[number];

const name = z
  .string()
  .regex(/^[a-z][a-z0-9_-]{0,30}$/, 'must be 1-31 characters: lower-case letters, digits, "-" or "_", starting with a letter');

/** An interface name (IFNAMSIZ-1 = 15 characters) or a shell glob over names. */
const ifaceMatch = z
  .string()
  .regex(/^[A-Za-z0-9_.:@*?[\]!-]{1,15}$/, 'must be an interface name or glob of at most 15 characters');

const address = z.string().refine((s) => parseAddress(s) !== undefined, 'must be an IPv4 or IPv6 address');

const prefix = z.string().superRefine((s, ctx) => {
  const p = parsePrefix(s);
  if (typeof p === 'string') ctx.addIssue({ code: 'custom', message: p });
});

const domain = z
  .string()
  .regex(/^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/i, 'must be a DNS domain such as corp.example');

const money = z.number().nonnegative(); // zod 4 numbers are finite already

export const costSchema = z.strictObject({
  /** Price of one megabyte (10^6 bytes) in `currency`. */
  per_mb: money.default(0),
  /** Price of one minute online, for dial-up (circuit-switched) links. */
  per_minute: money.default(0),
  currency: z.string().regex(/^[A-Z]{3}$/, 'must be an ISO 4217 code such as EUR').default('EUR'),
});

/** The words `stability` takes, and the numbers they stand for (docs/needs.md). */
export const STABILITY_WORDS = ['low', 'medium', 'high'] as const;
export type StabilityWord = (typeof STABILITY_WORDS)[number];
export const STABILITY_VALUES: Readonly<Record<StabilityWord, number>> = { low: 0.3, medium: 0.6, high: 0.9 };

/** A SIM's ICCID (an uplink's `sim`, a profile's `sims`). */
const iccid = z.string().regex(/^89\d{16,20}$/, 'must be an ICCID: 18-22 digits starting with 89');

export const uplinkSchema = z.strictObject({
  name,
  /**
   * Interface name or glob (wwan*, ppp?): the first matching link (lowest ifindex) is used. Or
   * `{ apn: NAME }`: the interface of ModemManager's connected bearer for that APN (src/system/).
   */
  match: z.union([ifaceMatch, z.strictObject({ apn: z.string().min(1).max(100) })], {
    error: 'must be an interface name or glob of at most 15 characters, or { apn: NAME }',
  }),
  kind: z.enum(UPLINK_KINDS),
  cost: costSchema.optional(),
  /** Defaults to true for cellular and dial-up, false otherwise. */
  metered: z.boolean().optional(),
  /** Absent: what ModemManager's registration (or `waymark sim set --roaming`) says, else false. */
  roaming: z.boolean().optional(),
  sim: z
    .strictObject({
      iccid,
      apn: z.string().min(1).max(100).optional(),
    })
    .optional(),
  /** Higher wins among uplinks that can carry the same traffic. */
  preference: z.number().int().min(0).max(1000).default(100),
  /** Next hops when the kernel's main table has none for this link (an APN without a default route). */
  gateway: z.strictObject({ ipv4: address.optional(), ipv6: address.optional() }).optional(),
  /**
   * DNS servers of this uplink; otherwise ModemManager's bearer's, NetworkManager's device's,
   * systemd-resolved's for the link, or what the link announces (IPv6 RDNSS), in that order.
   */
  dns: z.array(address).optional(),
  /** What the needs compare (docs/needs.md); absent: the kind's default. Typical throughput, in Mbit/s. */
  bandwidth_mbps: z.number().positive('must be a number of Mbit/s greater than 0').optional(),
  /** Typical round-trip time to the Internet, in ms; a measured RTT takes its place once there is one. */
  latency_ms: z.number().nonnegative('must be a number of milliseconds, 0 or more').optional(),
  /** How unlikely the link is to drop: 0 (drops all the time) to 1 (never), or low | medium | high. */
  stability: z.custom<number | StabilityWord>(
    (v) => (typeof v === 'number' && v >= 0 && v <= 1) || (typeof v === 'string' && (STABILITY_WORDS as readonly string[]).includes(v)),
    { error: 'must be a number from 0 to 1, or one of: low, medium, high' },
  ).optional(),
});

export const destinationSchema = z.strictObject({
  name,
  prefixes: z.array(prefix).default([]),
  domains: z.array(domain).default([]),
  /** Uplinks (by name) over which this destination is reachable, in no particular order. */
  via: z.array(name).min(1, 'must name at least one uplink'),
});

export const NEED_NAMES = ['long-lived', 'max-bandwidth', 'low-latency', 'cheapest', 'no-roaming', 'unmetered'] as const;

/**
 * Per-app defaults: which uplinks an app may use, in what order, and what it needs.
 * An app is matched by kernel-verified facts of the calling process; every field given must match.
 */
export const appSchema = z.strictObject({
  name,
  match: z
    .strictObject({
      /** Absolute path of the executable (/proc/PID/exe). */
      exe: z.string().regex(/^\//, 'must be an absolute path').optional(),
      /** systemd unit (service or scope) the process runs in; a glob (app-*-chat-*.scope) matches several. */
      unit: z.string().min(1).max(256).optional(),
      /**
       * The application ID of a desktop app unit (app-[<launcher>-]<ID>-<RANDOM>.scope or
       * app-[<launcher>-]<ID>@<RANDOM>.service, https://systemd.io/DESKTOP_ENVIRONMENTS/); a glob.
       */
      app: z.string().min(1).max(256).optional(),
      /** Flatpak application id. */
      flatpak: z.string().regex(/^[A-Za-z0-9_.*?-]+$/, 'must be a Flatpak application id (or a glob of one)').optional(),
      uid: z.number().int().nonnegative().optional(),
    })
    .refine((m) => Object.values(m).some((v) => v !== undefined), 'give at least one of exe, unit, app, flatpak, uid'),
  /** Allowed uplinks in order of preference; absent: any uplink not denied. */
  uplinks: z.array(name).min(1).optional(),
  /** Uplinks this app must never use. */
  deny: z.array(name).default([]),
  needs: z.array(z.enum(NEED_NAMES)).default([]),
});

/** What an `ask` rule does until (and unless) the user answers; also what `rules add` takes. */
export const fixedActionSchema = z.union([
  z.literal('deny'),
  z.literal('pass'),
  z.strictObject({ use: z.array(name).min(1).max(32) }),
  z.strictObject({ only: z.array(name).min(1).max(32) }),
]);

/** A user name (a rule's or a budget's `user`), resolved to its uid when the config is read. */
const userName = z.string().regex(/^[a-z_][a-z0-9_-]{0,31}\$?$/, 'must be a user name');

/** Whom and where a rule is for (config `rules:`, `waymark rules add`, the state file's stored rules). */
export const ruleMatchSchema = z.strictObject({
  /** Absolute path of the executable (/proc/PID/exe), or a glob of one. */
  exe: z.string().regex(/^\//, 'must be an absolute path (or a glob of one)').max(4096).optional(),
  unit: z.string().min(1).max(256).optional(),
  app: z.string().min(1).max(256).optional(),
  flatpak: z.string().regex(/^[A-Za-z0-9_.*?-]+$/, 'must be a Flatpak application id (or a glob of one)').max(256).optional(),
  /** The app's name as `waymark apps` shows it (Flatpak ID, app ID, unit, else executable name); a glob. */
  name: z.string().min(1).max(256).optional(),
  uid: z.number().int().nonnegative().max(0xfffffffe).optional(),
  destination: name.optional(),
  proto: z.enum(['tcp', 'udp']).optional(),
  port: z.number().int().min(1).max(65535).optional(),
  needs: z.array(z.enum(NEED_NAMES)).max(6).optional(),
});

/** An `ask` action: its default and how long a connect waits (seconds). */
export const askSchema = z.strictObject({
  default: fixedActionSchema.default('pass'),
  /** Seconds the connect waits for an answer. */
  timeout: z.number().int().min(1).max(600).default(30),
});

/**
 * A rule per app × destination (src/policy/rules.ts). `match` says whom and where (every field
 * given must match; none: everything); exactly one action says what: `use` (preferred uplinks in
 * order, others after them), `only` (these and no other), `deny: true`, `pass: true` (default
 * routing), `ask` (the user is asked; its `default` applies without an answer). `never` lists
 * uplinks never to use; `needs` what its connections need.
 */
export const ruleSchema = z.strictObject({
  name,
  match: ruleMatchSchema.extend({
    /** A user name, resolved to its uid when the config is read. */
    user: userName.optional(),
  }).default({}),
  use: z.array(name).max(32).optional(),
  only: z.array(name).min(1).max(32).optional(),
  deny: z.literal(true).optional(),
  pass: z.literal(true).optional(),
  ask: askSchema.optional(),
  never: z.array(name).max(32).default([]),
  needs: z.array(z.enum(NEED_NAMES)).default([]),
});

/**
 * A budget (docs/usage.md, src/accounting/budget.ts): what one uplink may carry per period, for
 * one app (by its name as `waymark usage` shows it, optionally only one user's) or for all of it.
 * Which uplink, app and user exist, and whether `start` fits `period`, load.ts checks.
 */
export const budgetSchema = z.strictObject({
  /** Absent: made of uplink, app, user and period ("cellular-month"). */
  id: z.string().regex(/^[a-z0-9-]{1,40}$/, 'must be 1-40 characters: lower-case letters, digits or "-"').optional(),
  uplink: name,
  app: z.string().min(1).max(4096).optional(),
  user: userName.optional(),
  period: z.enum(BUDGET_PERIODS).default('month'),
  /** month: the billing day (1..31, clamped to the month's length); week: 1 Monday .. 7 Sunday; day: 1. Default 1. */
  start: z.number().int().min(1).max(31).optional(),
  /** A size ("500MB", "1.5 GiB", a number of bytes) or money in the uplink's currency ("5 EUR"). */
  limit: z.union([z.string(), z.number()], {
    error: (i) => (i.input === undefined ? 'required field is missing' : 'must be a size such as 500MB or an amount such as 5 EUR'),
  }).superRefine((v, ctx) => {
    try {
      parseLimit(v);
    } catch (e) {
      ctx.addIssue({ code: 'custom', message: errorMessage(e) });
    }
  }),
  /** Warn at this fraction of the limit (0.8) or percentage ("80%"); default 80%. */
  warn_at: z.custom<number | string>(
    (v) => (typeof v === 'number' && v >= 0.01 && v <= 1) || (typeof v === 'string' && warnPercent(v) !== undefined),
    { error: 'must be a fraction from 0.01 to 1 or a percentage from 1% to 100%, such as 0.8 or 80%' },
  ).optional(),
  /** Block the uplink for it in the kernel when exhausted (false: warn only). */
  block: z.boolean().default(true),
});

/** The fraction "80%" stands for (1% to 100%), undefined when it is not such a percentage. */
export function warnPercent(text: string): number | undefined {
  const m = /^(\d+(?:\.\d+)?)\s*%$/.exec(text.trim());
  const pct = m ? Number(m[1]) : NaN;
  return pct >= 1 && pct <= 100 ? pct / 100 : undefined;
}

/**
 * A profile (docs/profiles.md, src/profile/profile.ts): what changes with the SIM in the device
 * (or when the user says so): uplink properties, rules and budgets on top of the file's, which
 * destinations roaming uplinks may carry; `sims` and `operators` say when it is chosen.
 */
export const profileSchema = z.strictObject({
  name,
  description: z.string().max(200).optional(),
  sims: z.array(iccid).max(64).default([]),
  /** Home networks: MCC+MNC ("26201"). */
  operators: z.array(z.string().regex(/^\d{5,6}$/, 'must be an operator code: MCC+MNC, 5 or 6 digits')).max(64).default([]),
  /** What roaming uplinks may carry: allow (all), deny (nothing), or only these destinations. */
  roaming: z.union([z.enum(['allow', 'deny']), z.strictObject({ only: z.array(name).max(64) })]).default('allow'),
  uplinks: z.array(z.strictObject({
    name,
    cost: uplinkSchema.shape.cost,
    metered: uplinkSchema.shape.metered,
    preference: z.number().int().min(0).max(1000).optional(),
    bandwidth_mbps: uplinkSchema.shape.bandwidth_mbps,
    latency_ms: uplinkSchema.shape.latency_ms,
    stability: uplinkSchema.shape.stability,
  })).default([]),
  rules: z.array(ruleSchema).default([]),
  budgets: z.array(budgetSchema).default([]),
});

export const configSchema = z.strictObject({
  version: z.literal(1),
  uplinks: z.array(uplinkSchema).default([]),
  destinations: z.array(destinationSchema).default([]),
  rules: z.array(ruleSchema).default([]),
  budgets: z.array(budgetSchema).default([]),
  /** The per-app defaults of earlier versions: each entry is read as a rule (src/config/load.ts). */
  apps: z.array(appSchema).default([]),
  profiles: z.array(profileSchema).default([]),
  /** The profile chosen when no profile's sims or operators match the SIM. */
  default_profile: name.optional(),
});

export type RawConfig = z.infer<typeof configSchema>;
export type RawUplink = z.infer<typeof uplinkSchema>;
export type RawDestination = z.infer<typeof destinationSchema>;
export type RawApp = z.infer<typeof appSchema>;
export type RawRule = z.infer<typeof ruleSchema>;
export type RawBudget = z.infer<typeof budgetSchema>;
export type RawProfile = z.infer<typeof profileSchema>;
export type RawFixedAction = z.infer<typeof fixedActionSchema>;
export type NeedName = (typeof NEED_NAMES)[number];
