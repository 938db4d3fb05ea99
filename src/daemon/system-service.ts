/**
 * The config in force: the base config (waymark.yaml) with the device's own facts folded in
 * (src/system/compose.ts) and the active profile applied on top (src/profile/profile.ts). Whenever
 * one of them changes (a reload, a profile switch, what ModemManager, NetworkManager or
 * systemd-resolved say, the uplinks' links, a SIM set by hand) the effective config is computed
 * again and, when it differs from the one in force, the world's is replaced: every reconciler
 * follows, and the next decisions are the new config's. Changes are applied one at a time, in order.
 *
 * Also the control methods of `waymark sim`: show the SIM and the modems, set a SIM by hand
 * (for a device without ModemManager), clear it.
 */
import type { Config } from '../config/load.js';
import { applyProfile, type Profile } from '../profile/profile.js';
import { applyFacts, currentSim, roamingUplinks, type CurrentSim, type SystemInput, type UplinkLink } from '../system/compose.js';
import { NO_SYSTEM_FACTS, type ManualSim, type SystemFacts } from '../system/facts.js';
import { errorMessage } from '../errors.js';
import type { Logger } from './log.js';
import type { Handlers, SimShowResult, SystemStatusView } from './protocol.js';
import type { World } from './world.js';

export interface SystemServiceOptions {
  readonly base: Config;
  readonly log: Logger;
  /** The SIM set by hand, from the state file. */
  readonly manual?: ManualSim;
  /** Keeps the SIM set by hand (the state file). */
  readonly saveManual: (sim: ManualSim | undefined) => Promise<void>;
  /** The device's SIM changed (another ICCID, or none): the profile service chooses. */
  readonly onSim: (sim: CurrentSim | undefined) => void;
  /** After each change applied: the SIM and the roaming uplinks (the `system.changed` event). */
  readonly onApplied?: (e: { sim: string | null; roaming: readonly string[]; generation: number }) => void;
}

/** Config → a string that is equal exactly when the configs are (prefix bytes included). */
function fingerprint(c: Config): string {
  return JSON.stringify(c, (_k, v: unknown) => (v instanceof Uint8Array ? Array.from(v) : v));
}

export class SystemService {
  private base: Config;
  private profile: Profile | null = null;
  private facts: SystemFacts = NO_SYSTEM_FACTS;
  private manual: ManualSim | undefined;
  private applied = '';
  private lastSim: string | undefined;
  private queue: Promise<unknown> = Promise.resolve();
  private world: Pick<World, 'replaceConfig' | 'uplinks' | 'subscribe' | 'config'> | undefined;
  private unsubscribe = (): void => undefined;
  /** A reload is under way: changes wait for it (setBase applies them all at once). */
  private holding = false;

  /** Made before the world (whose first config is {@link effective}'s); {@link bind} gives it the world. */
  constructor(private readonly opts: SystemServiceOptions) {
    this.base = opts.base;
    this.manual = opts.manual;
  }

  /** From now on, changes replace the world's config. */
  bind(world: Pick<World, 'replaceConfig' | 'uplinks' | 'subscribe' | 'config'>): void {
    this.world = world;
    this.applied = fingerprint(world.config);
    // An uplink's link appearing (or changing) may bring its facts: its device's DNS, say.
    this.unsubscribe = world.subscribe(['uplinks'], () => void this.update());
  }

  /** The SIM the device has now. */
  get sim(): CurrentSim | undefined {
    return currentSim(this.facts, this.manual);
  }

  /** What the effective config is made of now (pure: the world's is replaced by update()). */
  effective(): Config {
    // The facts first: the profile's word (its metered, say) is the user's and goes over them.
    const withFacts = applyFacts(this.base, this.input());
    return applyProfile(withFacts, this.profile, roamingUplinks(withFacts));
  }

  /**
   * A reload: the new base config, applied once even when nothing changed (a reload always bumps
   * the generation). `first` runs before (the profiles checked against the new base): what it
   * changes is applied with the base, not on its own.
   */
  async setBase(config: Config, first: () => Promise<void> = () => Promise.resolve()): Promise<number> {
    this.base = config;
    this.holding = true;
    try {
      await first();
    } finally {
      this.holding = false;
    }
    return this.enqueue(async () => (await this.apply(true)) ?? 0);
  }

  /** The profile in force changed (resolves once the kernel follows). */
  async setProfile(profile: Profile | null): Promise<void> {
    this.profile = profile;
    await this.update();
  }

  /** What the device's services say now (the watcher's onChange). */
  noteFacts(facts: SystemFacts): void {
    this.facts = facts;
    this.simMaybeChanged();
    void this.update();
  }

  /** Recomputes and applies when the effective config changed; resolves with the new generation, if any. */
  update(): Promise<number | undefined> {
    if (this.holding) return Promise.resolve(undefined);
    return this.enqueue(() => this.apply(false));
  }

  close(): void {
    this.unsubscribe();
  }

  /** `sim.set`: a SIM by hand (in place of ModemManager's), kept across restarts. */
  async setManual(sim: ManualSim | undefined): Promise<void> {
    await this.opts.saveManual(sim);
    this.manual = sim;
    this.simMaybeChanged();
    await this.update();
  }

  /** `waymark sim` and `status`: the services, the SIM, the modems. */
  view(): SystemStatusView {
    const f = this.facts;
    const sim = this.sim;
    return {
      bus: f.services.bus, modemmanager: f.services.modemmanager, networkmanager: f.services.networkmanager, resolved: f.services.resolved,
      sim: sim ? { iccid: sim.iccid, operator: sim.operator ?? null, operatorName: sim.operatorName ?? null, source: sim.source } : null,
      modems: f.modems.map((m) => ({
        path: m.path, iccid: m.sim?.iccid ?? null, registration: m.registration, operatorCode: m.operatorCode ?? null,
        bearers: m.bearers.map((b) => ({ interface: b.interface ?? null, apn: b.apn ?? null, connected: b.connected, dns: [...b.dns] })),
      })),
    };
  }

  /** `waymark sim`: show (anyone: device facts, as `status` shows them), set and clear (privileged: the protocol checks). */
  handlers(): Pick<Handlers, 'sim.show' | 'sim.set' | 'sim.clear'> {
    const show = (): SimShowResult => {
      const m = this.manual;
      return { ...this.view(), manual: m ? { iccid: m.iccid, operator: m.operator ?? null, ...(m.roaming !== undefined ? { roaming: m.roaming } : {}) } : null };
    };
    return {
      'sim.show': () => Promise.resolve(show()),
      'sim.set': async (p) => {
        await this.setManual({ iccid: p.iccid, ...(p.operator !== undefined ? { operator: p.operator } : {}), ...(p.roaming !== undefined ? { roaming: p.roaming } : {}) });
        return show();
      },
      'sim.clear': async () => {
        await this.setManual(undefined);
        return show();
      },
    };
  }

  private simMaybeChanged(): void {
    const sim = this.sim;
    if (sim?.iccid === this.lastSim) return;
    this.lastSim = sim?.iccid;
    this.opts.log.info('SIM changed', { iccid: sim?.iccid ?? null, operator: sim?.operator ?? null, source: sim?.source ?? null });
    this.opts.onSim(sim);
  }

  private input(): SystemInput {
    const links = new Map<string, UplinkLink>();
    for (const u of this.world?.uplinks ?? []) if (u.link) links.set(u.spec.name, { name: u.link.name, index: u.link.index });
    return { facts: this.facts, ...(this.manual ? { manual: this.manual } : {}), links, homeOperators: this.profile?.operators ?? [] };
  }

  private async apply(force: boolean): Promise<number | undefined> {
    if (!this.world) return undefined;
    const next = this.effective();
    const fp = fingerprint(next);
    if (!force && fp === this.applied) return undefined;
    this.applied = fp;
    const generation = await this.world.replaceConfig(next);
    const roaming = next.uplinks.filter((u) => u.roaming).map((u) => u.name);
    this.opts.log.info('effective configuration applied', {
      generation, profile: this.profile?.name ?? null, sim: this.sim?.iccid ?? null, roaming,
      dns: next.uplinks.filter((u) => u.dns.length > 0).map((u) => `${u.name}: ${u.dns.join(' ')} (${u.sources.dns})`),
    });
    this.opts.onApplied?.({ sim: this.sim?.iccid ?? null, roaming, generation });
    return generation;
  }

  private enqueue<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn);
    this.queue = run.catch((e: unknown) => this.opts.log.error('cannot apply the effective configuration', { error: errorMessage(e) }));
    return run;
  }
}
