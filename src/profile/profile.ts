/**
 * Profiles (pure; docs/profiles.md): what changes with the SIM in the device, or when the user
 * says so. A profile overrides uplink properties (cost, metered, preference, what the needs
 * compare), adds rules and budgets to the configuration's, and says what roaming uplinks may
 * carry. The daemon keeps the base config (waymark.yaml) and the active profile; the config the
 * world runs is applyProfile(base with the system facts in, profile, its roaming uplinks).
 *
 * Profiles come from the file (`profiles:`, read-only) or are saved in the state directory
 * (src/profile/store.ts). Either way one is exported as a config document with only it in
 * `profiles:` (byte-identical on re-export: the YAML as written is kept in `raw`), which the
 * config loader reads, so an exported profile can be pasted into waymark.yaml.
 */
import { stringify } from 'yaml';
import { parseProfileText, type Config, type ConfigBudget, type ParseOptions } from '../config/load.js';
import type { Rule } from '../policy/rules.js';
import type { UplinkProperties, UplinkSpec } from '../uplink/uplink.js';

/** What roaming uplinks may carry: everything, nothing, or only these destinations. */
export type RoamingPolicy = 'allow' | 'deny' | { readonly only: readonly string[] };

/** A profile's changes to one uplink (absent fields: the configuration's). */
export interface UplinkOverride {
  readonly name: string;
  readonly cost?: UplinkSpec['cost'];
  readonly metered?: boolean;
  readonly preference?: number;
  readonly properties: UplinkProperties;
}

export interface Profile {
  readonly name: string;
  readonly description?: string;
  /** ICCIDs that choose it. */
  readonly sims: readonly string[];
  /** Home networks (MCC+MNC) that choose it, when no profile names the SIM. */
  readonly operators: readonly string[];
  readonly roaming: RoamingPolicy;
  readonly uplinks: readonly UplinkOverride[];
  /** Source 'profile', ids "rule@profile": ordered before the configuration's at equal specificity. */
  readonly rules: readonly Rule[];
  readonly budgets: readonly ConfigBudget[];
  /** The profile as written (YAML's JS value before defaults): what export prints. */
  readonly raw: unknown;
  /** Where it was read from (the config file, a saved profile's file, an import's name). */
  readonly file: string;
}

export interface SimInfo {
  readonly iccid: string;
  /** MCC+MNC of the SIM's home network. */
  readonly operator?: string;
}

/**
 * The config with `profile` on top of `base` (null: base unchanged): its uplink overrides; its
 * rules before the base's (equal specificity: the profile's first); the base's budgets, then its;
 * and the roaming uplinks taken out of each destination's `via` unless the profile lets them
 * carry it. A destination may be left with no uplink at all (it is then unreachable: connects
 * fail rather than go over a roaming uplink).
 */
export function applyProfile(base: Config, profile: Profile | null, roamingUplinks: ReadonlySet<string>): Config {
  if (profile === null) return base;
  const uplinks = base.uplinks.map((u): UplinkSpec => {
    const o = profile.uplinks.find((x) => x.name === u.name);
    if (o === undefined) return u;
    return {
      ...u,
      ...(o.cost !== undefined ? { cost: o.cost } : {}),
      // A profile's word on metered is the user's: NetworkManager's does not change it (src/system/compose.ts).
      ...(o.metered !== undefined ? { metered: o.metered, sources: { ...u.sources, metered: 'profile' as const } } : {}),
      ...(o.preference !== undefined ? { preference: o.preference } : {}),
      properties: { ...u.properties, ...o.properties },
    };
  });
  const r = profile.roaming;
  const keeps = (dest: string): boolean => r === 'allow' || (r !== 'deny' && r.only.includes(dest));
  const destinations = base.destinations.map((d) =>
    keeps(d.name) || !d.via.some((v) => roamingUplinks.has(v)) ? d : { ...d, via: d.via.filter((v) => !roamingUplinks.has(v)) });
  return { ...base, uplinks, destinations, rules: [...profile.rules, ...base.rules], budgets: [...base.budgets, ...profile.budgets] };
}

/** The profile for a SIM: the one naming its ICCID, else its operator, else the default; null: none (or no SIM). */
export function chooseProfile(profiles: readonly Profile[], sim: SimInfo | undefined, defaultName?: string): Profile | null {
  if (sim !== undefined) {
    const bySim = profiles.find((p) => p.sims.includes(sim.iccid));
    if (bySim) return bySim;
    const op = sim.operator;
    const byOperator = op === undefined ? undefined : profiles.find((p) => p.operators.includes(op));
    if (byOperator) return byOperator;
  }
  return profiles.find((p) => p.name === defaultName) ?? null;
}

/** The document `waymark profile export` prints: a config document with only this profile, as written. */
export function exportProfile(p: Pick<Profile, 'raw'>): string {
  return stringify({ version: 1, profiles: [p.raw] });
}

/**
 * An imported (or saved) profile document, validated as the config loader validates the file and
 * cross-checked against `base`: exactly one profile and nothing else but `version`. Throws
 * ConfigError with every problem, located (file:line:col: field: message).
 */
export function parseProfileDocument(text: string, file: string, base: Config, opts: ParseOptions = {}): Profile {
  return parseProfileText(text, file, base, opts);
}
