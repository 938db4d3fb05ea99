/**
 * The BPF maps Waymark wants (pure): what the kernel does to the sockets of every cgroup it knows
 * (docs/kernel-apps.md). Same shape as the routing (src/routing/desired.ts): desired state from
 * the observed world, a plan against what was written last, and an adapter that applies it.
 *
 * Every cgroup the daemon knows gets an entry, also one no rule matches ("decided: untouched"),
 * so that the kernel's walk up the hierarchy stops at it: only a cgroup the daemon has not seen
 * yet (created a moment ago) falls through to its nearest known ancestor's `pending` treatment,
 * the most restrictive treatment among the rules that could match a child there.
 */
import { MARK_MASK, MAX_SLOTS } from '../constants.js';
import { NO_WISH } from '../decision/decide.js';
import { INTERNET, type DestinationSpec } from '../destination/destination.js';
import { formatPrefix } from '../net/prefix.js';
import type { AppFacts, AppRule } from '../policy/app.js';
import type { RuleSet } from '../policy/rules.js';
import { mostRestrictive, treatmentFor, UNTOUCHED, type Treatment } from '../policy/treatment.js';
import { bestUplink } from '../routing/desired.js';
import type { UplinkState } from '../uplink/state.js';

/** This entry decides (else the kernel consults the uid's entry: rules that name only a uid). */
export const WM_T_SET = 1;
/** The kernel reports this app's connects to the daemon (a rule's `ask`; src/backstop/bpf.ts: onConnect). */
export const WM_T_ASK = 2;
/** Some budget names this app key: the packet programs look it up (native/include/waymark_bpf.h). */
export const WM_T_BUDGET = 4;
/** Flags bits 8..13: the slot of the uplink the app's DNS goes by (native/include/waymark_bpf.h). */
export const WM_T_DNS_SHIFT = 8;
/** Deny bit of "every uplink" (slots use bits 1..30). */
export const WM_DENY_ALL = 0x80000000;

/** One treatment as the kernel holds it (native/include/waymark_bpf.h: struct wm_treatment). */
export interface KernelTreatment {
  /** App key for the per-app counters (0: none). */
  readonly app: number;
  /** Waymark mark bits for the app's sockets (0: none). */
  readonly mark: number;
  /** Bit N: uplink slot N denied; WM_DENY_ALL: every uplink. */
  readonly deny: number;
  readonly flags: number;
}

export interface CgroupEntry {
  readonly self: KernelTreatment;
  readonly pending: KernelTreatment;
}

/** A cgroup as the daemon knows it, relative to its cgroup root. */
export interface KnownCgroup {
  readonly id: bigint;
  readonly rel: string;
  /** The uid it belongs to (user-UID.slice, user@UID.service), null where the path does not say. */
  readonly uid: number | null;
  /** The systemd unit it is (or is nested in), its app ID and Flatpak ID; null: a slice or plain directory. */
  readonly unit: { readonly unit: string; readonly appId: string | null; readonly flatpakId: string | null } | null;
  /** The app key the daemon gave the app (for counters). */
  readonly appKey: number;
}

export interface DesiredMaps {
  readonly cgroups: ReadonlyMap<bigint, CgroupEntry>;
  readonly uids: ReadonlyMap<number, KernelTreatment>;
  /** Uplink devices: ifindex → slot. */
  readonly ifslots: ReadonlyMap<number, number>;
  /**
   * Destination prefixes ("10.200.0.0/24") → the slot routing them now (0: no uplink carries
   * it: the kernel's prediction goes on down the ladder) and their destination's index for the
   * counters ({@link destinationIndex}; 0: none).
   */
  readonly destinations: ReadonlyMap<string, DestinationValue>;
  /** The slot main's default route uses, per family (0: none known). */
  readonly main: { readonly v4: number; readonly v6: number };
}

/** A wm_dst4/wm_dst6 value: `slot | dest << 8` in the kernel. */
export interface DestinationValue {
  readonly slot: number;
  readonly dest: number;
}

/** The most destination indexes the kernel's counters tell apart (a u8; 0 is "none matched"). */
export const MAX_DESTINATION_INDEX = 255;

/**
 * The counters' index of each destination: config order, the Internet excluded, from 1; those
 * beyond {@link MAX_DESTINATION_INDEX} get 0 (counted as the Internet).
 */
export function destinationIndex(destinations: readonly Pick<DestinationSpec, 'name'>[]): Map<string, number> {
  const out = new Map<string, number>();
  let i = 0;
  for (const d of destinations) {
    if (d.name === INTERNET || out.has(d.name)) continue;
    i++;
    out.set(d.name, i <= MAX_DESTINATION_INDEX ? i : 0);
  }
  return out;
}

export interface MapsWorld {
  readonly rules: RuleSet;
  readonly uplinks: readonly UplinkState[];
  /** With learned hosts already folded in (withLearnedHosts). */
  readonly destinations: readonly DestinationSpec[];
  readonly cgroups: readonly KnownCgroup[];
  /** Interface index main's default route leaves by, per family (null: none). */
  readonly mainDefault: { readonly v4: number | null; readonly v6: number | null };
  /** Entries the daemon sets itself (its session cgroups: src/daemon/apps.ts), over the computed ones. */
  readonly fixed?: ReadonlyMap<bigint, CgroupEntry>;
  /** App keys some budget names: their treatments get WM_T_BUDGET (the kernel looks the budget up). */
  readonly budgeted?: ReadonlySet<number>;
  /** App key → uplink slots whose budget for it is used up: denied to it, so connects fail at once (EPERM). */
  readonly blocked?: ReadonlyMap<number, readonly number[]>;
  /** Uplink slots whose uplink-wide budget is used up: denied to every treatment that decides. */
  readonly blockedSlots?: readonly number[];
}

/** A treatment as the kernel holds it. */
export function encodeTreatment(t: Treatment, appKey: number, flags = WM_T_SET): KernelTreatment {
  let deny = 0;
  for (const u of t.denied) if (u.slot >= 1 && u.slot <= MAX_SLOTS) deny |= 1 << u.slot;
  return { app: appKey, mark: t.mark === null ? 0 : (t.mark & MARK_MASK) >>> 0, deny: deny >>> 0, flags };
}

/** The facts of a cgroup that rules can match in the kernel: no executable (it is per process). */
export function cgroupFacts(c: KnownCgroup): AppFacts | null {
  if (c.unit === null) return null;
  // An unknown uid matches no rule that names one: such rules are left to the uid entry.
  return { uid: c.uid ?? -1, exe: null, unit: c.unit.unit, app: c.unit.appId, flatpakId: c.unit.flatpakId };
}

const uidFacts = (uid: number): AppFacts => ({ uid, exe: null, unit: null, app: null, flatpakId: null });

/** `deny`: uplinks the app may not use now (exhausted budgets): its mark goes to the next one its rule allows. */
function treatmentOf(rule: AppRule | undefined, w: MapsWorld, deny: readonly string[] = []): Treatment {
  if (rule === undefined) return UNTOUCHED;
  return treatmentFor(rule, deny.length === 0 ? NO_WISH : { ...NO_WISH, deny }, w.uplinks, w.destinations);
}

/**
 * The uplink an app's DNS goes by: its default uplink if that has resolvers, else the first
 * uplink its rule allows (in the rule's order, else by preference) that is active and has some.
 * An app allowed only the MMS APN so resolves the MMSC's name over it. None: no redirect.
 */
export function dnsUplink(rule: AppRule, t: Treatment, uplinks: readonly UplinkState[]): UplinkState | undefined {
  if (t.uplink && t.uplink.dns.length > 0) return t.uplink;
  const allowed = uplinks.filter((u) => u.status === 'active' && u.dns.length > 0 && !t.denied.includes(u));
  const order = rule.uplinks ?? rule.prefer ?? [...allowed].sort((a, b) => b.spec.preference - a.spec.preference).map((u) => u.spec.name);
  for (const name of order) {
    const u = allowed.find((x) => x.spec.name === name);
    if (u) return u;
  }
  return undefined;
}

/** `ask`: the kernel reports the app's connects (WM_T_ASK); by default what the rule says. */
function encodeFor(rule: AppRule | undefined, w: MapsWorld, appKey: number, ask = rule?.ask === true, deny: readonly string[] = []): KernelTreatment {
  const t = treatmentOf(rule, w, deny);
  const dns = rule === undefined ? undefined : dnsUplink(rule, t, w.uplinks);
  const k0 = encodeTreatment(t, appKey, ask ? WM_T_SET | WM_T_ASK : WM_T_SET);
  const k = dns === undefined ? k0 : { ...k0, flags: (k0.flags | (dns.slot << WM_T_DNS_SHIFT)) >>> 0 };
  // A rule that allows no configured uplink at all denies every uplink, also one added later.
  const all = rule !== undefined && w.uplinks.length > 0 && t.denied.length === w.uplinks.length;
  return all ? { ...k, deny: (WM_DENY_ALL | k.deny) >>> 0 } : k;
}

/**
 * The most restrictive treatment among the rules a new child of a cgroup of this uid could match.
 * It asks when any of them asks: an app's first connect may come before its cgroup is classified.
 */
function pendingFor(uid: number | null, w: MapsWorld): KernelTreatment {
  const candidates = w.rules.pendingRules(uid);
  return encodeFor(mostRestrictive(candidates), w, 0, candidates.some((r) => r.ask === true));
}

/**
 * One computation of the maps against one world: the kernel-applicable rules filtered once, and
 * each rule's treatment (a decide() for the Internet) and each uid's pending treatment computed
 * once however many cgroups share them (thousands on a desktop, recomputed on every uplink change).
 */
interface Pass {
  readonly rules: RuleSet;
  /** A rule's treatment (none: untouched) for an app of this key. */
  treatment(rule: AppRule | undefined, appKey: number): KernelTreatment;
  pending(uid: number | null): KernelTreatment;
  /** The budgets' flag and blocked slots applied to a treatment (budgetOf). */
  budget(t: KernelTreatment): KernelTreatment;
}

function slotBits(slots: readonly number[] | undefined): number {
  let bits = 0;
  for (const s of slots ?? []) if (Number.isInteger(s) && s >= 1 && s <= MAX_SLOTS) bits |= 1 << s;
  return bits >>> 0;
}

/**
 * The budgets' part of a treatment: WM_T_BUDGET for an app key some budget names, and the slots
 * whose budget is used up (the app's, every app's) added to the deny bits of a treatment that
 * decides (one that does not leaves the deny to the uid's treatment: the egress drop holds anyway).
 */
function budgetOf(w: MapsWorld): (t: KernelTreatment) => KernelTreatment {
  const all = slotBits(w.blockedSlots);
  const budgeted = w.budgeted ?? new Set<number>();
  const blocked = w.blocked ?? new Map<number, readonly number[]>();
  if (all === 0 && budgeted.size === 0 && blocked.size === 0) return (t) => t;
  return (t) => {
    const flags = t.app !== 0 && budgeted.has(t.app) ? (t.flags | WM_T_BUDGET) >>> 0 : t.flags;
    const deny = (t.flags & WM_T_SET) === 0 ? t.deny : (t.deny | all | (t.app === 0 ? 0 : slotBits(blocked.get(t.app)))) >>> 0;
    return flags === t.flags && deny === t.deny ? t : { ...t, flags, deny };
  };
}

function passOf(w: MapsWorld): Pass {
  const rules = w.rules;
  const byRule = new Map<AppRule | undefined, KernelTreatment>();
  const byUid = new Map<number | null, KernelTreatment>();
  const budget = budgetOf(w);
  // An app whose budget blocks uplinks gets the treatment its rule gives without them (another
  // uplink's mark where the rule allows one); budget() then adds their deny bits.
  const nameOf = new Map(w.uplinks.map((u) => [u.slot, u.spec.name]));
  const blockedNames = (appKey: number): string[] => [...new Set([...(w.blockedSlots ?? []), ...(w.blocked?.get(appKey) ?? [])])]
    .flatMap((slot) => nameOf.get(slot) ?? []);
  const byBlocked = new Map<AppRule | undefined, Map<string, KernelTreatment>>();
  return {
    rules,
    budget,
    treatment(rule, appKey) {
      const deny = rule === undefined || appKey === 0 ? [] : blockedNames(appKey);
      let t: KernelTreatment | undefined;
      if (deny.length === 0) {
        t = byRule.get(rule);
        if (t === undefined) byRule.set(rule, (t = encodeFor(rule, w, 0)));
      } else {
        let m = byBlocked.get(rule);
        if (m === undefined) byBlocked.set(rule, (m = new Map<string, KernelTreatment>()));
        const k = deny.join(',');
        t = m.get(k);
        if (t === undefined) m.set(k, (t = encodeFor(rule, w, 0, rule?.ask === true, deny)));
      }
      return budget(appKey === 0 ? t : { ...t, app: appKey });
    },
    pending(uid) {
      let p = byUid.get(uid);
      if (p === undefined) byUid.set(uid, (p = budget(pendingFor(uid, w))));
      return p;
    },
  };
}

/** The entry of one known cgroup (what desiredMaps gives it; the daemon writes a new cgroup's at once with this). */
export function cgroupEntry(c: KnownCgroup, w: MapsWorld, pass: Pass = passOf(w)): CgroupEntry {
  const facts = cgroupFacts(c);
  if (facts === null) {
    // A slice or directory: nothing for its own sockets (a uid rule may still apply), the most
    // restrictive of what could match for a child not classified yet.
    const own = c.uid === null ? encodeTreatment(UNTOUCHED, 0, 0)
      : pass.treatment(pass.rules.forKernel(uidFacts(c.uid)), 0);
    return { self: own, pending: pass.pending(c.uid) };
  }
  const rule = pass.rules.forKernel(facts);
  // Unknown uid and no rule of the cgroup's own: leave it to the uid entry (flags 0).
  const self = rule === undefined && c.uid === null ? pass.budget(encodeTreatment(UNTOUCHED, c.appKey, 0)) : pass.treatment(rule, c.appKey);
  // A cgroup inside a unit belongs to that unit: a child not classified yet is treated like it.
  return { self, pending: self };
}

export function desiredMaps(w: MapsWorld): DesiredMaps {
  const pass = passOf(w);
  const cgroups = new Map<bigint, CgroupEntry>();
  for (const c of w.cgroups) cgroups.set(c.id, cgroupEntry(c, w, pass));
  for (const [id, e] of w.fixed ?? []) cgroups.set(id, { self: pass.budget(e.self), pending: pass.budget(e.pending) });
  const uids = new Map<number, KernelTreatment>();
  for (const uid of pass.rules.uidOnly()) uids.set(uid, pass.treatment(pass.rules.forKernel(uidFacts(uid)), 0));
  const ifslots = new Map<number, number>();
  for (const u of w.uplinks) if (u.link) ifslots.set(u.link.index, u.slot);
  const destinations = new Map<string, DestinationValue>();
  const index = destinationIndex(w.destinations);
  for (const d of w.destinations) {
    if (d.name === INTERNET) continue;
    const dest = index.get(d.name) ?? 0;
    for (const p of d.prefixes) {
      // No uplink carries it now: no routing rule for it either (traffic follows main), slot 0;
      // the entry stays for the counters' destination.
      const slot = bestUplink(w.uplinks, d, p.family)?.slot ?? 0;
      if (slot !== 0 || dest !== 0) destinations.set(formatPrefix(p), { slot, dest });
    }
  }
  const slotOfIf = (i: number | null): number => (i === null ? 0 : ifslots.get(i) ?? 0);
  return { cgroups, uids, ifslots, destinations, main: { v4: slotOfIf(w.mainDefault.v4), v6: slotOfIf(w.mainDefault.v6) } };
}

export const sameTreatment = (a: KernelTreatment, b: KernelTreatment): boolean =>
  a.app === b.app && a.mark === b.mark && a.deny === b.deny && a.flags === b.flags;

/** What to write to get from `applied` to `desired` (deletions of what is no longer wanted included). */
export interface MapsPlan {
  readonly setCgroups: readonly (readonly [bigint, CgroupEntry])[];
  readonly delCgroups: readonly bigint[];
  readonly setUids: readonly (readonly [number, KernelTreatment])[];
  readonly delUids: readonly number[];
  readonly setIfslots: readonly (readonly [number, number])[];
  readonly delIfslots: readonly number[];
  readonly setDestinations: readonly (readonly [string, DestinationValue])[];
  readonly delDestinations: readonly string[];
  readonly main?: { readonly v4: number; readonly v6: number };
  /** How many destination prefixes of each family the kernel holds after the plan (wm_conf), when that changed. */
  readonly destinationCounts?: { readonly v4: number; readonly v6: number };
}

/** The prefixes of each family among the destinations' keys. */
export function destinationCounts(destinations: ReadonlyMap<string, DestinationValue>): { v4: number; v6: number } {
  let v6 = 0;
  for (const p of destinations.keys()) if (p.includes(':')) v6++;
  return { v4: destinations.size - v6, v6 };
}

function diff<K, V>(want: ReadonlyMap<K, V>, have: ReadonlyMap<K, V>, same: (a: V, b: V) => boolean): { set: [K, V][]; del: K[] } {
  const set: [K, V][] = [];
  for (const [k, v] of want) {
    const h = have.get(k);
    if (h === undefined || !same(h, v)) set.push([k, v]);
  }
  const del = [...have.keys()].filter((k) => !want.has(k));
  return { set, del };
}

export function planMaps(desired: DesiredMaps, applied: DesiredMaps | undefined): MapsPlan {
  const none: DesiredMaps = applied ?? { cgroups: new Map(), uids: new Map(), ifslots: new Map(), destinations: new Map(), main: { v4: -1, v6: -1 } };
  const cg = diff(desired.cgroups, none.cgroups, (a, b) => sameTreatment(a.self, b.self) && sameTreatment(a.pending, b.pending));
  const ui = diff(desired.uids, none.uids, sameTreatment);
  const ifs = diff(desired.ifslots, none.ifslots, (a, b) => a === b);
  const ds = diff(desired.destinations, none.destinations, (a, b) => a.slot === b.slot && a.dest === b.dest);
  const mainChanged = desired.main.v4 !== none.main.v4 || desired.main.v6 !== none.main.v6;
  const counts = destinationCounts(desired.destinations);
  const was = applied === undefined ? undefined : destinationCounts(applied.destinations);
  const countsChanged = was === undefined || was.v4 !== counts.v4 || was.v6 !== counts.v6;
  return {
    setCgroups: cg.set, delCgroups: cg.del, setUids: ui.set, delUids: ui.del,
    setIfslots: ifs.set, delIfslots: ifs.del, setDestinations: ds.set, delDestinations: ds.del,
    ...(mainChanged ? { main: desired.main } : {}),
    ...(countsChanged ? { destinationCounts: counts } : {}),
  };
}

/** The kernel side of the app maps (src/backstop/bpf.ts: appMapsPort; a fake in unit tests). */
export interface KernelAppMaps {
  /** Writes the plan; returns what failed (each a message), having applied the rest. */
  apply(plan: MapsPlan): readonly string[];
}
