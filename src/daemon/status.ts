/** The `status` answer's daemon, uplinks and destinations parts, from the world (pure). */
import { MARK_MASK } from '../constants.js';
import { INTERNET } from '../destination/destination.js';
import { formatPrefix } from '../net/prefix.js';
import { counterName } from '../nftables/ruleset.js';
import { bestUplink } from '../routing/desired.js';
import { PROTOCOL_VERSION, type DestinationStatusView, type StatusResult, type UplinkStatusView } from './protocol.js';
import type { LastReconcile } from '../routing/reconciler.js';
import type { World } from './world.js';
import { bandwidthMbps, DEFAULT_STABILITY, latencyMs, stability } from '../decision/needs.js';
import { FLAP_WINDOW_MS } from '../uplink/health.js';
import type { UplinkState } from '../uplink/state.js';

const hex = (n: number): string => `0x${(n >>> 0).toString(16).padStart(8, '0')}`;

export interface DaemonFacts {
  readonly version: string;
  readonly configPath: string;
  readonly pid: number;
  readonly startedAt: Date;
}

function propertiesView(s: UplinkState): NonNullable<UplinkStatusView['properties']> {
  const p = s.spec.properties;
  const lat = latencyMs(s);
  return {
    bandwidthMbps: { value: bandwidthMbps(s), source: p.bandwidthMbps === undefined ? 'kind' : 'config' },
    latencyMs: { value: Math.round(lat.ms * 100) / 100, source: lat.source },
    stability: { value: p.stability ?? DEFAULT_STABILITY[s.spec.kind], source: p.stability === undefined ? 'kind' : 'config' },
    effectiveStability: stability(s),
  };
}

export function statusView(
  world: Pick<World, 'config' | 'uplinks' | 'generation' | 'fallback'>,
  counters: ReadonlyMap<string, { readonly packets: number; readonly bytes: number }>,
  lastReconcile: LastReconcile,
  daemon: DaemonFacts,
): StatusResult {
  const states = world.uplinks;
  const uplinks: UplinkStatusView[] = states.map((s) => {
    const tx = counters.get(counterName(s.spec.name, 'tx'));
    const rx = counters.get(counterName(s.spec.name, 'rx'));
    const fam = (f: 4 | 6) => s.families.find((x) => x.family === f);
    return {
      name: s.spec.name,
      kind: s.spec.kind,
      status: s.status,
      ifname: s.link?.name ?? null,
      ifindex: s.link?.index ?? null,
      addresses: s.families.flatMap((f) => f.addresses),
      gateways: { ipv4: fam(4)?.gateway ?? null, ipv6: fam(6)?.gateway ?? null },
      dns: { servers: [...s.dns], source: s.dnsSource },
      cost: { ...s.spec.cost },
      apn: s.spec.apn ?? null,
      metered: s.spec.metered,
      roaming: s.spec.roaming,
      sources: { match: s.spec.sources.match, metered: s.spec.sources.metered, roaming: s.spec.sources.roaming, sim: s.spec.sources.sim },
      sim: s.spec.sim ? { iccid: s.spec.sim.iccid, apn: s.spec.sim.apn ?? null } : null,
      preference: s.spec.preference,
      table: s.table,
      mark: hex(s.mark),
      markMask: hex(MARK_MASK),
      traffic: tx && rx ? { txBytes: tx.bytes, rxBytes: rx.bytes } : null,
      properties: propertiesView(s),
      observed: {
        rttMs: s.observed?.rttMs === undefined ? null : Math.round(s.observed.rttMs * 100) / 100,
        rttSamples: s.observed?.rttSamples ?? 0,
        drops: s.observed?.drops ?? 0,
        windowMinutes: FLAP_WINDOW_MS / 60_000,
      },
    };
  });
  const destinations: DestinationStatusView[] = world.config.destinations.map((d) => {
    const pick = (f: 4 | 6): string | null => {
      // The Internet goes by main's default, or by the fallback while main has none.
      if (d.name === INTERNET) return (f === 4 ? world.fallback.v4 : world.fallback.v6)?.spec.name ?? null;
      if (!d.prefixes.some((p) => p.family === f)) return null;
      return bestUplink(states, d, f)?.spec.name ?? null;
    };
    return {
      name: d.name,
      prefixes: d.prefixes.map(formatPrefix),
      domains: [...d.domains],
      via: [...d.via],
      active: { ipv4: pick(4), ipv6: pick(6) },
      ...(d.name === INTERNET ? { fallback: world.fallback.v4 !== undefined || world.fallback.v6 !== undefined } : {}),
    };
  });
  return {
    daemon: {
      version: daemon.version, protocol: PROTOCOL_VERSION, pid: daemon.pid, configPath: daemon.configPath,
      generation: world.generation, startedAt: daemon.startedAt.toISOString(),
    },
    uplinks,
    destinations,
    lastReconcile,
  };
}
