/**
 * How the daemon's model is put together: the world first, then the services made of it, then
 * who follows which of its changes, in an order that matters (see below). The kernel is reached
 * only through the adapters passed in: main.ts passes the real ones (rtnetlink, /proc/sys, nft,
 * cgroupfs), test/unit/engine.test.ts fakes.
 */
import { appDnsRules, SESSION_CHAINS, sessionRules, uplinkDns } from '../backstop/nft.js';
import type { Config } from '../config/load.js';
import type { GenerationFile } from '../decision/generation.js';
import type { NftKernel } from '../nftables/nft.js';
import { NftReconciler } from '../nftables/reconciler.js';
import { countedUplinks, UPLINK_CHAINS, uplinkRules } from '../nftables/ruleset.js';
import { NftTable } from '../nftables/table.js';
import { RoutingReconciler, type RoutingKernel, type RpathSysctl } from '../routing/reconciler.js';
import type { Clock } from './clock.js';
import { DecisionService } from './decisions.js';
import { UplinkWatcher, type EventBus } from './events.js';
import type { Logger } from './log.js';
import { SessionService, type CgroupBackend, type SessionStore } from './sessions.js';
import { World } from './world.js';
import { AppService, type AppKeys, type AppServiceDeps } from './apps.js';
import { withLearnedHosts } from '../destination/destination.js';
import { PromptBroker } from './prompts.js';
import type { KernelBudgets } from '../accounting/service.js';

export interface Adapters {
  readonly kernel: RoutingKernel;
  readonly sysctl: RpathSysctl;
  readonly nft: NftKernel;
  /** With the cgroup2 mount, which nft paths are relative to. */
  readonly cgroups: CgroupBackend & { readonly mount: string };
  readonly clock?: Clock;
  /** The apps' kernel side and where the apps are (src/daemon/apps.ts). */
  readonly apps: Pick<AppServiceDeps, 'maps' | 'kernelOff' | 'cgroupDir' | 'mount' | 'cgroupRoot' | 'sessionsDir' | 'onConnect'>;
}

export interface ModelOptions {
  readonly config: Config;
  readonly savedSlots: Readonly<Record<string, number>>;
  readonly saveSlots: (slots: Readonly<Record<string, number>>) => Promise<void>;
  readonly sessionStore: SessionStore;
  readonly generation: GenerationFile;
  readonly events: Pick<EventBus, 'publish' | 'wants'>;
  readonly log: Logger;
  readonly appKeys: AppKeys;
  /** An app's cgroup went (its answers "until the app exits" go with it: src/daemon/rule-store.ts). */
  readonly onAppLeft?: () => void;
  /** What the budgets ask of the apps' treatments (src/accounting/service.ts: kernelBudgets). */
  readonly kernelBudgets?: () => Partial<KernelBudgets>;
}

export interface Model {
  readonly world: World;
  readonly table: NftTable;
  readonly nftables: NftReconciler;
  readonly routing: RoutingReconciler;
  readonly sessions: SessionService;
  readonly decisions: DecisionService;
  readonly apps: AppService;
  /** The ask prompt's broker: the decision path asks, the control socket's agents answer. */
  readonly prompts: PromptBroker;
}

export function assemble(o: ModelOptions, a: Adapters): Model {
  const { log } = o;
  const clock = a.clock ? { clock: a.clock } : {};
  const world = new World({ config: o.config, savedSlots: o.savedSlots, saveSlots: o.saveSlots, log, ...clock });
  const sessions = new SessionService(world, a.cgroups, o.sessionStore, log, o.events);
  // One table; each part contributes its counters and rules to its chains.
  const table = new NftTable([...UPLINK_CHAINS, ...SESSION_CHAINS]);
  table.contribute('uplinks', () => uplinkRules(countedUplinks(world.uplinks)));
  table.contribute('sessions', () => sessionRules(sessions.backstops(), uplinkDns(world.uplinks, world.config.destinations),
    { cgroupMount: a.cgroups.mount, present: (cgroup) => a.cgroups.present(cgroup) }));
  // After the sessions' (a session's own redirect comes first), the apps' by their mark; only
  // while some app rule can apply in the kernel: a nat chain turns on connection tracking for
  // every connection of the device, a cost nobody without app rules should pay.
  table.contribute('apps', () => (world.rules.someKernelApplicable
    ? appDnsRules(uplinkDns(world.uplinks, world.config.destinations)) : {}));
  const nftables = new NftReconciler(table, a.nft, log);
  // The table follows the uplinks in the same pass as the routes (its errors are the pass's).
  const routing = new RoutingReconciler({ world, kernel: a.kernel, sysctl: a.sysctl, log, follow: [() => nftables.update()], ...clock });
  const prompts = new PromptBroker({ publish: (e) => o.events.publish(e), ...clock });
  const decisions = new DecisionService(world, o.generation, log, { cgroupRoot: a.apps.cgroupRoot }, o.events);
  const uplinkEvents = new UplinkWatcher((e) => o.events.publish(e));
  const apps = new AppService({
    ...a.apps, keys: o.appKeys, log,
    publish: (e) => {
      o.events.publish(e);
      if (e.type === 'app.left') o.onAppLeft?.();
    },
    world: () => ({
      rules: world.rules, uplinks: world.uplinks, mainDefault: world.mainDefault,
      destinations: withLearnedHosts(world.config.destinations, world.learned.byDestination()),
      ...o.kernelBudgets?.(),
    }),
    sessions: () => sessions.backstops(),
  });

  // Each change reaches its followers in this order, each done before the next hears of it:
  // the event bus hears of an observation before the kernel follows it; a new config reaches
  // the kernel before the libraries' caches are voided, and those before the sessions are
  // fenced anew (and the table loaded with them).
  world.subscribe(['observed'], (c) => uplinkEvents.update(c.states));
  routing.follow(world);
  decisions.follow(world);
  sessions.follow(world);
  nftables.follow(world);
  // The apps' entries follow the same changes, and a session's is in place before its caller joins it.
  apps.follow(world);
  return { world, table, nftables, routing, sessions, decisions, apps, prompts };
}
