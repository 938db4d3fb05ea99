/**
 * The device's own facts folded into the uplinks (pure): which modem and bearer each cellular
 * uplink is, its DNS servers, metered and roaming state and SIM, each with where it came from.
 *
 * Order of precedence, per fact (docs/profiles.md, "Facts from the system"):
 *   - interface: the config's match; `match: { apn }`: the interface of a connected bearer with
 *     that APN (case-insensitive), none while there is none;
 *   - DNS: the config's `dns:`, else the uplink's bearer's (ModemManager), else its device's
 *     (NetworkManager), else systemd-resolved's for its link; else (src/uplink/state.ts) what the
 *     link's router announces (RDNSS);
 *   - metered: the config's or the profile's, else NetworkManager's for its device, else the kind's;
 *   - roaming (cellular): the config's `roaming:`, else a SIM set by hand with `--roaming`, else
 *     ModemManager's registration of its modem, unless the network it is registered with is one
 *     of the active profile's home operators;
 *   - SIM: the config's, else the modem's, else one set by hand.
 */
import type { Config } from '../config/load.js';
import { isGlob, type UplinkSpec } from '../uplink/uplink.js';
import type { BearerFacts, ManualSim, ModemFacts, SystemFacts } from './facts.js';

/** The link an uplink has now (the world's last observation). */
export interface UplinkLink {
  readonly name: string;
  readonly index: number;
}

export interface SystemInput {
  readonly facts: SystemFacts;
  /** A SIM set by hand (`waymark sim set`), standing in for the modems' while set. */
  readonly manual?: ManualSim;
  /** By uplink name: the link it has now. */
  readonly links: ReadonlyMap<string, UplinkLink>;
  /** MCC+MNC of networks that count as home (the active profile's `operators`). */
  readonly homeOperators: readonly string[];
}

/** The device's SIM: the one set by hand, else the first modem's that has one. */
export interface CurrentSim {
  readonly iccid: string;
  readonly operator?: string;
  readonly operatorName?: string;
  readonly source: 'manual' | 'modemmanager';
  /** The modem it is in (ModemManager's object path). */
  readonly modem?: string;
}

export function currentSim(facts: SystemFacts, manual: ManualSim | undefined): CurrentSim | undefined {
  if (manual) return { iccid: manual.iccid, ...(manual.operator !== undefined ? { operator: manual.operator } : {}), source: 'manual' };
  const m = facts.modems.find((x) => x.sim !== undefined);
  if (!m?.sim) return undefined;
  return { ...m.sim, source: 'modemmanager', modem: m.path };
}

const sameApn = (a: string, b: string): boolean => a.toLowerCase() === b.toLowerCase();

/** The connected bearer with this APN and an interface, and its modem. */
function bearerForApn(facts: SystemFacts, apn: string): { modem: ModemFacts; bearer: BearerFacts & { interface: string } } | undefined {
  for (const modem of facts.modems) {
    for (const b of modem.bearers) {
      if (b.connected && b.interface !== undefined && b.apn !== undefined && sameApn(b.apn, apn)) return { modem, bearer: { ...b, interface: b.interface } };
    }
  }
  return undefined;
}

/** The modem (and bearer) of a cellular uplink on this interface: the bearer's, else the only modem. */
function modemOf(facts: SystemFacts, ifname: string | undefined): { modem: ModemFacts; bearer?: BearerFacts } | undefined {
  if (ifname !== undefined) {
    for (const modem of facts.modems) {
      const bearer = modem.bearers.find((b) => b.interface === ifname && b.connected);
      if (bearer) return { modem, bearer };
    }
  }
  const only = facts.modems.length === 1 ? facts.modems[0] : undefined;
  return only ? { modem: only } : undefined;
}

/** Whether a modem's registration counts as roaming (a home operator of the profile lifts it). */
function roams(modem: ModemFacts, homeOperators: readonly string[]): boolean {
  if (modem.registration !== 'roaming') return false;
  return !(modem.operatorCode !== undefined && homeOperators.includes(modem.operatorCode));
}

/** One uplink with the system's facts in. */
export function uplinkWithFacts(spec: UplinkSpec, input: SystemInput): UplinkSpec {
  const { facts, manual } = input;
  const byApn = spec.apn !== undefined ? bearerForApn(facts, spec.apn) : undefined;
  const match = spec.apn === undefined ? { match: spec.match, origin: spec.sources.match }
    : byApn ? { match: byApn.bearer.interface, origin: 'modemmanager' as const } : { match: '', origin: 'none' as const };
  // The uplink's link as last observed; a plain interface name (no glob) is known before that.
  const observed = input.links.get(spec.name);
  const link = spec.apn !== undefined
    ? (byApn ? { name: byApn.bearer.interface, index: observed?.name === byApn.bearer.interface ? observed.index : undefined } : undefined)
    : observed ?? (spec.match !== '' && !isGlob(spec.match) ? { name: spec.match, index: undefined } : undefined);
  const cellular = spec.kind === 'cellular';
  const mine = cellular ? (byApn ?? modemOf(facts, link?.name)) : undefined;
  const device = link ? facts.devices.find((d) => d.interface === link.name) : undefined;
  const resolvedDns = link?.index !== undefined ? facts.resolved.find((r) => r.ifindex === link.index)?.dns ?? [] : [];

  let dns = { dns: spec.dns, origin: spec.sources.dns };
  if (spec.sources.dns !== 'config') {
    if (mine?.bearer && mine.bearer.dns.length > 0) dns = { dns: mine.bearer.dns, origin: 'modemmanager' };
    else if (device && device.dns.length > 0) dns = { dns: device.dns, origin: 'networkmanager' };
    else if (resolvedDns.length > 0) dns = { dns: resolvedDns, origin: 'resolved' };
    else dns = { dns: [], origin: 'none' };
  }

  let metered = { metered: spec.metered, origin: spec.sources.metered };
  if (spec.sources.metered === 'kind' && device?.metered !== undefined) metered = { metered: device.metered, origin: 'networkmanager' };

  let roaming = { roaming: spec.roaming, origin: spec.sources.roaming };
  if (cellular && spec.roamingSet !== true) {
    if (manual?.roaming !== undefined) roaming = { roaming: manual.roaming, origin: 'manual' };
    else if (mine) roaming = { roaming: roams(mine.modem, input.homeOperators), origin: 'modemmanager' };
    else roaming = { roaming: false, origin: 'default' };
  }

  let sim: { sim: UplinkSpec['sim']; origin: UplinkSpec['sources']['sim'] } = { sim: spec.sim, origin: spec.sources.sim };
  if (cellular && spec.sources.sim !== 'config') {
    const apn = mine?.bearer?.apn;
    if (manual) sim = { sim: { iccid: manual.iccid, ...(apn !== undefined ? { apn } : {}) }, origin: 'manual' };
    else if (mine?.modem.sim) sim = { sim: { iccid: mine.modem.sim.iccid, ...(apn !== undefined ? { apn } : {}) }, origin: 'modemmanager' };
    else sim = { sim: undefined, origin: 'none' };
  }

  const rest: UplinkSpec = { ...spec };
  delete (rest as { sim?: unknown }).sim;
  return {
    ...rest,
    match: match.match,
    dns: dns.dns,
    metered: metered.metered,
    roaming: roaming.roaming,
    ...(sim.sim ? { sim: sim.sim } : {}),
    sources: { match: match.origin, dns: dns.origin, metered: metered.origin, roaming: roaming.origin, sim: sim.origin },
  };
}

/** The config's uplinks with the system's facts in (destinations, rules and budgets as they are). */
export function applyFacts(config: Config, input: SystemInput): Config {
  return { ...config, uplinks: config.uplinks.map((u) => uplinkWithFacts(u, input)) };
}

/** The uplinks of a config with the facts in ({@link applyFacts}) that are roaming now: what a profile's roaming behaviour applies to. */
export function roamingUplinks(config: Config): Set<string> {
  return new Set(config.uplinks.filter((u) => u.roaming).map((u) => u.name));
}
