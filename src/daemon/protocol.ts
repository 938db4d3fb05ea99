/**
 * The waymarkd control protocol, declared once and shared by the daemon and every client: each
 * method's params (a zod schema, {@link METHODS}) and result ({@link Results}); the server's
 * handlers ({@link Handlers}) and the client's `call` are typed from these.
 *
 * Transport: a Unix stream socket; each message is one line of JSON (UTF-8, '\n'-terminated,
 * at most MAX_LINE bytes). Requests carry the protocol version `v`, a client-chosen `id` and a
 * `method`; the reply echoes `id` and `v`. A client may pipeline requests; replies come in
 * order (the daemon reads at most 8 requests ahead of the replies the client has taken:
 * server.ts). A connection over a limit (limits.ts) gets one EBUSY error with id 0, then EOF.
 *   → {"v":2,"id":7,"method":"status"}
 *   ← {"v":2,"id":7,"ok":true,"result":{...}}
 *   ← {"v":2,"id":7,"ok":false,"error":{"code":"EPERM","message":"..."}}
 * Who asks is taken from the socket's SO_PEERCRED, checked on every request, never from the
 * message. Methods marked `privileged` need uid 0 or membership of the `waymark` group; the rest
 * are open to anyone.
 *
 * Versions: the daemon speaks 1 and 2 ({@link PROTOCOL_VERSIONS}); `hello` says which, and its
 * methods and event topics. Version 2 adds events: after `events.subscribe` (a v2 request) the
 * daemon also sends, on the same connection and between replies, event messages without an id:
 *   → {"v":2,"id":3,"method":"events.subscribe","params":{"topics":["uplink","decision"]}}
 *   ← {"v":2,"id":3,"ok":true,"result":{"topics":["uplink","decision"],"seesAll":false,"queueLimit":256}}
 *   ← {"v":2,"event":{"type":"uplink.changed","seq":12,"at":"...","uplink":"wifi","status":"down",...}}
 * The events are the union DaemonEvent in events.ts (bounds, privacy, `events.lost`: there). A
 * v1 client is answered as before (v1 replies, no events; a v1 `events.subscribe` gets EPROTO
 * saying it needs v2); a version the daemon does not speak gets EPROTO naming the ones it does.
 * A newer protocol version only adds methods, fields and event types: clients ignore what they
 * do not know. Methods and topics added within a version (usage and budgets, profiles) are
 * listed by `hello`: a client checks `methods` before calling one (an older daemon answers an
 * unknown method with ENOSYS).
 *
 * Prompt agents (v2; docs/prompts.md): a connection that calls `agent.register` is a prompt
 * agent of its uid until it closes; it is subscribed to the `prompt` and `budget` topics on top
 * of whatever events.subscribe asks (a later events.subscribe keeps them), and the reply lists
 * the prompts open now that it may answer (so an agent started late sees them; later ones come
 * as events):
 *   → {"v":2,"id":1,"method":"agent.register","params":{"name":"waymark agent"}}
 *   ← {"v":2,"id":1,"ok":true,"result":{"agent":{...},"prompts":[],"queued":0,"topics":["prompt","budget"]}}
 *   ← {"v":2,"event":{"type":"prompt.asked","seq":40,"at":"...","prompt":{"id":"p-1","app":{...},"target":{...},"choices":[...],...}}}
 *   → {"v":2,"id":2,"method":"prompt.answer","params":{"id":"p-1","choice":{"uplink":"wifi"},"scope":"always"}}
 *   ← {"v":2,"id":2,"ok":true,"result":{"id":"p-1","outcome":{"by":"agent","uid":1000,"answer":{...}}}}
 *   ← {"v":2,"event":{"type":"prompt.closed","seq":41,"at":"...","id":"p-1","uid":1000,"outcome":{...}}}
 * A prompt goes to the agents of its uid and root's, never to the waymark group's (events.ts);
 * those may answer it. `prompt.answer` errors: ENOENT no such prompt open (another agent
 * answered first, it expired), EPERM not the prompt's user nor root, EINVAL a choice not among
 * its uplinks (or deny), a bad scope or minutes; `agent.register`: EBUSY too many agents of the
 * uid. Any client may answer (an agent or not); only registered agents make prompts be shown:
 * with none of its uid or root's, an ask gets its rule's default at once. `prompts` lists the
 * open ones the caller may answer.
 */
import { z } from 'zod';
import { budgetIdSchema, budgetSetSchema, usageQuerySchema, type BudgetListResult, type BudgetView, type UsageResult } from '../accounting/view.js';
import { NEED_NAMES } from '../config/schema.js';
import type { DecisionStats } from '../decision/server.js';
import type { PeerCred } from '../native/index.js';
import { TOPICS, type DaemonEvent, type EventStats, type ProfileChoice, type Topic } from './events.js';
import type { AppView } from './apps.js';
import { actionSchema, matchSchema } from './rule-store.js';
import type { ActionIn } from './rule-store.js';
import type { CandidateView } from '../decision/decide.js';
import { MAX_ANSWER_MINUTES, SCOPES, type Prompt, type PromptOutcome } from '../prompt/prompt.js';
import { PROMPT_KINDS, type AgentInfo, type PromptStats } from './prompts.js';
import type { ControlStats } from './server.js';

/** The version this code speaks by default; the daemon answers every one of PROTOCOL_VERSIONS. */
export const PROTOCOL_VERSION = 2;
export const PROTOCOL_VERSIONS = [1, 2] as const;
export type ProtocolVersion = (typeof PROTOCOL_VERSIONS)[number];
export const MAX_LINE = 64 * 1024;
export const DEFAULT_SOCKET = '/run/waymark/waymarkd.sock';

export const requestSchema = z.object({
  v: z.union([z.literal(1), z.literal(2)]),
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
  | { v: ProtocolVersion; id: number; ok: true; result: unknown }
  | { v: ProtocolVersion; id: number; ok: false; error: WireError };

/** A pushed event (v2, after events.subscribe): no id, never a reply. */
export interface EventMessage { v: 2; event: DaemonEvent }

export interface UplinkStatusView {
  name: string;
  kind: string;
  status: string;
  ifname: string | null;
  ifindex: number | null;
  addresses: string[];
  gateways: { ipv4: string | null; ipv6: string | null };
  /**
   * DNS servers of the uplink and where they come from: the config, ModemManager's bearer,
   * NetworkManager's device, systemd-resolved's link, or the link's router (RDNSS).
   */
  dns: { servers: string[]; source: 'config' | 'modemmanager' | 'networkmanager' | 'resolved' | 'link' | 'none' };
  /** `match: { apn }`: the APN whose bearer gives the interface (null: matched by interface name). */
  apn?: string | null;
  /** Where the other facts come from (src/uplink/uplink.ts UplinkSources). */
  sources?: { match: string; metered: string; roaming: string; sim: string };
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
  /**
   * What the needs compare (docs/needs.md): each property as configured, else the kind's default
   * (`source`); the latency measured from the device's TCP connections once there is enough.
   */
  properties?: {
    bandwidthMbps: { value: number; source: 'config' | 'kind' };
    latencyMs: { value: number; source: 'measured' | 'config' | 'kind' };
    stability: { value: number; source: 'config' | 'kind' };
    /** Stability after the recent drops (what `long-lived` ranks by). */
    effectiveStability: number;
  };
  /** What the daemon observed: the median tcpi_rtt of recent samples (null: not enough), drops in the window. */
  observed?: { rttMs: number | null; rttSamples: number; drops: number; windowMinutes: number };
}

export interface DestinationStatusView {
  name: string;
  prefixes: string[];
  domains: string[];
  via: string[];
  /** The uplink currently carrying this destination, per family (null: unreachable now; the Internet: main's default, see fallback). */
  active: { ipv4: string | null; ipv6: string | null };
  /** The Internet only: main holds no default and Waymark's fallback carries it (by `active`). */
  fallback?: boolean;
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
  /** Event subscribers and their queues (bounded: see events.ts). */
  events?: EventStats;
  /** The apps in the kernel: whether the BPF programs are in force (and why not), where, how many cgroups and apps are known. */
  apps?: { active: boolean; reason: string | null; cgroupRoot: string; cgroups: number; apps: number };
  /** The ask prompts: shown, queued, agents registered (the counts of every user), and their bounds. */
  prompts?: PromptStats;
  /** What the device's services say (src/system/): the bus, which services answer, the SIM and the modems. */
  system?: SystemStatusView;
  /** The profile in force and why (docs/profiles.md). */
  profile?: { name: string | null; by: string };
}

/** `sim.show`: what status's `system` says, and the SIM set by hand (null: none). */
export interface SimShowResult extends SystemStatusView {
  manual: { iccid: string; operator: string | null; roaming?: boolean } | null;
}

export interface SystemStatusView {
  bus: 'off' | 'connected' | 'unavailable';
  modemmanager: boolean;
  networkmanager: boolean;
  resolved: boolean;
  /** The device's SIM (set by hand, else the first modem's), null: none known. */
  sim: { iccid: string; operator: string | null; operatorName: string | null; source: 'manual' | 'modemmanager' } | null;
  modems: { path: string; iccid: string | null; registration: string; operatorCode: string | null; bearers: { interface: string | null; apn: string | null; connected: boolean; dns: string[] }[] }[];
}

/** A profile name (as in waymark.yaml). */
const profileName = z.string().regex(/^[a-z][a-z0-9_-]{0,30}$/, 'must be a profile name: 1-31 of a-z, 0-9, "-" and "_", starting with a letter');
export const profileRoamingSchema = z.union([z.enum(['allow', 'deny']), z.object({ only: z.array(z.string().min(1).max(31)).max(64) }).strict()]);

/** A prompt id ("p-12"). */
const promptId = z.string().regex(/^[A-Za-z0-9-]{1,40}$/);

/** Each method: its params schema, whether it changes state, and the protocol version it needs. */
export const METHODS = {
  hello: { privileged: false, since: 1, params: z.object({}).strict() },
  status: { privileged: false, since: 1, params: z.object({}).strict() },
  /** The device's SIM, the system services that answer, the modems (ModemManager) and their bearers. */
  'sim.show': { privileged: false, since: 2, params: z.object({}).strict() },
  /** A SIM by hand, in place of ModemManager's (a device without it); kept across restarts. */
  'sim.set': {
    privileged: true,
    since: 2,
    params: z.object({
      iccid: z.string().regex(/^89\d{16,20}$/, 'must be an ICCID: 18-22 digits starting with 89'),
      operator: z.string().regex(/^\d{5,6}$/, 'must be MCC and MNC: 5 or 6 digits').optional(),
      roaming: z.boolean().optional(),
    }).strict(),
  },
  'sim.clear': { privileged: true, since: 2, params: z.object({}).strict() },
  reload: { privileged: true, since: 1, params: z.object({}).strict() },
  /** Starts an exec session: a cgroup for the caller (moved into it) and its wish. */
  'exec.begin': {
    privileged: false,
    since: 1,
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
  'exec.end': { privileged: false, since: 1, params: z.object({ id: z.string().regex(/^[a-z0-9-]{1,40}$/) }).strict() },
  /** The apps on the device now (the caller's own; root and the waymark group: all). */
  apps: { privileged: false, since: 2, params: z.object({}).strict() },
  /** The rules in decision order (those that can apply to the caller; root and the waymark group: all). */
  'rules.list': { privileged: false, since: 2, params: z.object({}).strict() },
  /** Adds a rule (for the caller's own apps; root and the waymark group: any), kept in the state directory. */
  'rules.add': {
    privileged: false,
    since: 2,
    params: z.object({
      match: matchSchema.extend({ user: z.string().regex(/^[a-z_][a-z0-9_-]{0,31}$/).optional() }).default({}),
      action: actionSchema,
      never: z.array(z.string().min(1).max(31)).max(32).default([]),
      needs: z.array(z.enum(NEED_NAMES)).max(6).default([]),
      /** Holds for this many minutes, then goes. */
      minutes: z.number().int().min(1).max(525_600).optional(),
    }).strict(),
  },
  /** Removes a stored rule (the caller's own; root and the waymark group: any). */
  'rules.rm': { privileged: false, since: 2, params: z.object({ id: z.string().min(1).max(64) }).strict() },
  /** Which rule decides for an app (a running app's name, an app ID, a unit or an executable path) and a destination, and why. */
  'rules.explain': {
    privileged: false,
    since: 2,
    params: z.object({
      app: z.string().min(1).max(4096),
      destination: z.string().min(1).max(31),
      uid: z.number().int().nonnegative().optional(),
      needs: z.array(z.enum(NEED_NAMES)).max(6).default([]),
      proto: z.enum(['tcp', 'udp']).optional(),
      port: z.number().int().min(1).max(65535).optional(),
    }).strict(),
  },
  /**
   * From now on this connection also receives the events of these topics (all when empty) that
   * the caller may see. Again on the same connection: replaces the topics (a prompt agent's
   * connection keeps `prompt` and `budget`: agent.register).
   */
  'events.subscribe': {
    privileged: false,
    since: 2,
    params: z.object({ topics: z.array(z.enum(TOPICS)).max(TOPICS.length * 2).default([]) }).strict(),
  },
  /** This connection becomes a prompt agent of the caller's uid until it closes (see the top of this file). */
  'agent.register': {
    privileged: false,
    since: 2,
    params: z.object({
      /** What the agent calls itself (shown to other agents of the uid: `prompts`). */
      name: z.string().min(1).max(64).regex(/^[^\p{Cc}]+$/u, 'printable characters only').default('agent'),
      /** The kinds of prompt it shows (all are `connect` today). */
      kinds: z.array(z.enum(PROMPT_KINDS)).min(1).max(PROMPT_KINDS.length * 2).default([...PROMPT_KINDS]),
    }).strict(),
  },
  /** Answers a prompt the caller may answer (its uid's, or any for root). */
  'prompt.answer': {
    privileged: false,
    since: 2,
    params: z.object({
      id: promptId,
      choice: z.union([z.object({ uplink: z.string().min(1).max(31) }).strict(), z.object({ deny: z.literal(true) }).strict()]),
      scope: z.enum(SCOPES),
      minutes: z.number().int().min(1).max(MAX_ANSWER_MINUTES).optional(),
      allDestinations: z.boolean().optional(),
    }).strict(),
  },
  /** The prompts open now that the caller may answer, how many wait behind them, and the agents it may know of. */
  prompts: { privileged: false, since: 2, params: z.object({}).strict() },
  /** Bytes and cost per app, uplink or destination over a period (the caller's apps; root and the waymark group: all). */
  'usage.query': { privileged: false, since: 2, params: usageQuerySchema },
  /** The budgets the caller may see, with their period's use. */
  'budget.list': { privileged: false, since: 2, params: z.object({}).strict() },
  /** Sets a budget (on the caller's own app; a whole uplink's: root and the waymark group). */
  'budget.set': { privileged: false, since: 2, params: budgetSetSchema },
  'budget.rm': { privileged: false, since: 2, params: budgetIdSchema },
  /** Starts the budget's count afresh now, for the rest of its period. */
  'budget.reset': { privileged: false, since: 2, params: budgetIdSchema },
  /** The profiles (the file's and the saved ones), which is active and why (docs/profiles.md). */
  'profile.list': { privileged: false, since: 2, params: z.object({}).strict() },
  /** A profile's contents (they name SIMs: root and the waymark group). */
  'profile.show': { privileged: true, since: 2, params: z.object({ name: profileName }).strict() },
  /** A profile as the config document `profile import` reads. */
  'profile.export': { privileged: true, since: 2, params: z.object({ name: profileName }).strict() },
  /** Makes a profile active until the next SIM change, or (auto) chooses by the SIM now. */
  'profile.use': { privileged: true, since: 2, params: z.union([z.object({ name: profileName }).strict(), z.object({ auto: z.literal(true) }).strict()]) },
  /** Saves the active profile's contents (none active: an empty profile) under a new name, with these ties. */
  'profile.save': {
    privileged: true,
    since: 2,
    params: z.object({
      name: profileName,
      description: z.string().max(200).optional(),
      sims: z.array(z.string().regex(/^89\d{16,20}$/, 'must be an ICCID: 18-22 digits starting with 89')).max(64).optional(),
      operators: z.array(z.string().regex(/^\d{5,6}$/, 'must be an operator code: MCC+MNC, 5 or 6 digits')).max(64).optional(),
      roaming: profileRoamingSchema.optional(),
      /** Ties it to the SIM in the device now, too. */
      fromCurrentSim: z.boolean().default(false),
    }).strict(),
  },
  /** Saves a profile document (as profile.export gives), validated first; an existing name needs replace. */
  'profile.import': {
    privileged: true,
    since: 2,
    params: z.object({ text: z.string().min(1).max(48 * 1024), file: z.string().min(1).max(4096).optional(), replace: z.boolean().default(false) }).strict(),
  },
  /** Removes a saved profile (the file's are changed there). */
  'profile.rm': { privileged: true, since: 2, params: z.object({ name: profileName }).strict() },
} as const satisfies Record<string, { privileged: boolean; since: ProtocolVersion; params: z.ZodType }>;
export type Method = keyof typeof METHODS;
/** A method's params as the handler gets them (defaults filled in). */
export type Params<M extends Method> = z.output<(typeof METHODS)[M]['params']>;
/** A method's params as a client sends them (defaulted fields optional). */
export type ParamsIn<M extends Method> = z.input<(typeof METHODS)[M]['params']>;
export type ExecBeginParams = Params<'exec.begin'>;

export interface HelloResult {
  daemon: 'waymarkd';
  version: string;
  /** The newest version it speaks; all of them in `protocols`. */
  protocol: number;
  protocols: number[];
  methods: string[];
  /** Event topics a v2 client may subscribe to. */
  topics: string[];
}
export interface SubscribeResult {
  topics: Topic[];
  /** Whether the caller gets every user's events (root, the waymark group) or its own uid's. */
  seesAll: boolean;
  /** Events queued for this connection at most; beyond, they are dropped and counted (events.lost). */
  queueLimit: number;
}
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

export interface AppsResult {
  /** The cgroup subtree whose apps the daemon steers ("/": the whole device). */
  cgroupRoot: string;
  /** Whether the kernel side (the BPF programs) is in force; when not, why. */
  kernel: { active: boolean; reason: string | null };
  apps: AppView[];
}

/** A rule as `rules.list` shows it. */
export interface RuleView {
  id: string;
  source: 'config' | 'profile' | 'cli' | 'answer';
  /** A profile's rule: which profile (the active one). */
  profile?: string;
  /** Its place in decision order (1: considered first). */
  order: number;
  specificity: number;
  match: Record<string, unknown>;
  action: ActionIn;
  never: string[];
  needs: string[];
  expiresAt?: string;
  owner?: number;
  addedAt?: string;
  /** An answer "until the app exits" (not kept across restarts). */
  untilExit?: boolean;
  /** A user's own rule: it only narrows what the other rules allow their app. */
  bounded?: boolean;
}

export interface RulesExplainResult {
  /** The facts rules were matched against, and how the app named was found. */
  app: { uid: number; exe: string | null; unit: string | null; app?: string | null; flatpakId: string | null; name: string | null; how: string };
  destination: string;
  /** Each rule in decision order up to the one that decides, with why it was skipped. */
  considered: { id: string; source: string; skipped?: string }[];
  rule: RuleView | null;
  /** The deciding rule asks the user (its default is what the decision shows). */
  ask: boolean;
  decision: { action: 'steer'; uplink: string; reason: string } | { action: 'deny'; errno: string; reason: string } | { action: 'pass'; reason: string };
  /** Every uplink: its rank among the candidates, or why it is not one. */
  candidates: CandidateView[];
}

export interface AgentRegisterResult {
  agent: AgentInfo;
  /** The prompts open now that this agent may answer (later ones arrive as `prompt.asked`). */
  prompts: Prompt[];
  /** Prompts of its uid (root: of everyone) waiting behind the open ones. */
  queued: number;
  /** The topics this connection now gets events of (`prompt` and `budget` among them). */
  topics: Topic[];
}
export interface PromptAnswerResult { id: string; outcome: PromptOutcome }
export interface PromptsResult { prompts: Prompt[]; queued: number; agents: AgentInfo[] }

/** Which profile is active and how it was chosen. */
export interface ActiveProfileView {
  name: string | null;
  by: ProfileChoice;
  /** The ICCID it was chosen for (by 'sim'). */
  sim?: string;
}

/** A profile as `profile.list` shows it. */
export interface ProfileSummary {
  name: string;
  description: string | null;
  /** config: waymark.yaml's (read-only); saved: the state directory's. */
  source: 'config' | 'saved';
  file: string;
  sims: string[];
  operators: string[];
  roaming: 'allow' | 'deny' | { only: string[] };
  active: boolean;
  /** False: kept on disk but it does not fit the running configuration (`problem` says why). */
  valid: boolean;
  problem?: string;
}

export interface ProfileListResult {
  profiles: ProfileSummary[];
  active: ActiveProfileView;
  /** default_profile of the configuration (null: none). */
  defaultProfile: string | null;
}

export interface ProfileShowResult {
  profile: ProfileSummary;
  uplinks: { name: string; cost?: { perMB: number; perMinute: number; currency: string }; metered?: boolean; preference?: number;
    properties: { bandwidthMbps?: number; latencyMs?: number; stability?: number } }[];
  rules: RuleView[];
  budgets: { id: string; uplink: string; app?: string; uid: number | null; period: string; start: number; limit: { bytes: number } | { money: number; currency: string };
    warnAt: number; block: boolean }[];
}

export interface ProfileChangeResult { profile: ProfileSummary; active: ActiveProfileView }

export interface Results {
  apps: AppsResult;
  'agent.register': AgentRegisterResult;
  'prompt.answer': PromptAnswerResult;
  prompts: PromptsResult;
  'rules.list': { rules: RuleView[] };
  'rules.add': RuleView;
  'rules.rm': { id: string };
  'rules.explain': RulesExplainResult;
  'usage.query': UsageResult;
  'budget.list': BudgetListResult;
  'budget.set': BudgetView;
  'budget.rm': { id: string };
  'budget.reset': BudgetView;
  'profile.list': ProfileListResult;
  'profile.show': ProfileShowResult;
  'profile.export': { name: string; text: string };
  'profile.use': { active: ActiveProfileView };
  'profile.save': ProfileChangeResult;
  'profile.import': ProfileChangeResult;
  'profile.rm': { name: string; active: ActiveProfileView };
  hello: HelloResult;
  status: StatusResult;
  'sim.show': SimShowResult;
  'sim.set': SimShowResult;
  'sim.clear': SimShowResult;
  reload: ReloadResult;
  'exec.begin': ExecBeginResult;
  'exec.end': Record<string, never>;
  'events.subscribe': SubscribeResult;
}

/** What a handler knows of the connection it answers. */
export interface CallContext {
  readonly cred: PeerCred;
  /** The version the request was made in. */
  readonly v: ProtocolVersion;
  /** Sends this connection the events of `topics` (all when empty) the caller may see. */
  subscribe(topics: readonly Topic[]): SubscribeResult;
  /** This connection: one object for all its requests, to key what lives as long as it does. */
  readonly connection: object;
  /** Calls `cb` once when this connection closes (at once if it has). */
  onClose(cb: () => void): void;
  /**
   * Adds `topics` to this connection's events for as long as it is open, whatever events.subscribe
   * asks later (a prompt agent's `prompt`); returns every topic it gets now.
   */
  addTopics(topics: readonly Topic[]): Topic[];
}

/** The daemon's side of every method, typed from METHODS and Results (server.ts dispatches). */
export type Handlers = { [M in Method]: (params: Params<M>, cred: PeerCred, ctx: CallContext) => Promise<Results[M]> };
