#!/usr/bin/env node
/** waymarkd: the Waymark daemon. */
import { Command, InvalidArgumentError, Option } from 'commander';
import { mkdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { createCgroupBackend } from '../backstop/backend.js';
import { AppMaps, appMapsPort, usageKernelPort } from '../backstop/bpf.js';
import { WAYMARK_CGROUP_DIR } from '../backstop/cgroup.js';
import { CgroupTree } from '../identity/cgroup-tree.js';
import { AppKeys, seenOf } from './apps.js';
import { ConfigError, DEFAULT_CONFIG_PATH, loadConfigFile, type Config } from '../config/load.js';
import { RuleService } from './rule-service.js';
import { RuleStore } from './rule-store.js';
import { GenerationFile } from '../decision/generation.js';
import { DEFAULT_BUSY_POLL_US, DecisionServer } from '../decision/server.js';
import { DECIDE_SOCKET } from '../decision/wire.js';
import { mayChangeState } from './access.js';
import { refusalsSeenBy } from './limits.js';
import { VERSION } from '../version.js';
import { nftCommand } from '../nftables/nft.js';
import { KernelRouting } from '../routing/kernel.js';
import { SrcValidMark } from '../routing/sysctl.js';
import { statusView } from './status.js';
import { assemble } from './assemble.js';
import { createLogger, type Level, type Logger } from './log.js';
import { controlSocketPath } from './client.js';
import { AlreadyRunning, claimInstance, EX_ALREADY_RUNNING } from './lock.js';
import { EventBus, TOPICS } from './events.js';
import { agentHandlers } from './agents.js';
import { DEFAULT_SOCKET, METHODS, PROTOCOL_VERSION, PROTOCOL_VERSIONS, type HelloResult, type ReloadResult } from './protocol.js';
import { ControlServer, RequestError } from './server.js';
import { DEFAULT_STATE_DIR, StateStore } from './state.js';
import { errorMessage } from '../errors.js';
import { DEFAULT_RTT_INTERVAL_MS, RttMonitor, sockDiagPort } from './rtt-monitor.js';
import type { Handlers } from './protocol.js';
import { UsageHistory } from '../accounting/history.js';
import { AccountingService, DEFAULT_FLUSH_MS } from '../accounting/service.js';
import { KernelIdentities } from '../accounting/identity.js';
import { destinationIndex } from '../backstop/desired.js';
import { BudgetBook, configBudgets, UsageService } from './usage-service.js';
import { SystemService } from './system-service.js';
import { ProfileService } from './profile-service.js';
import { ProfileStore } from '../profile/store.js';
import { SystemWatcher, systemBusAddress } from '../system/watcher.js';
import { ModemManagerReader } from '../system/modemmanager.js';
import { NetworkManagerReader } from '../system/networkmanager.js';
import { ResolvedReader } from '../system/resolved.js';

/** The usage methods while there is no history (its database could not be opened): they say why. */
function usageUnavailable(why: string): Pick<Handlers, 'usage.query' | 'budget.list' | 'budget.set' | 'budget.rm' | 'budget.reset'> {
  const no = (): Promise<never> => Promise.reject(new RequestError({ code: 'EIO', message: `usage accounting is off: ${why}` }));
  return { 'usage.query': no, 'budget.list': no, 'budget.set': no, 'budget.rm': no, 'budget.reset': no };
}

const program = new Command('waymarkd')
  .description('Waymark daemon: watches the uplinks, keeps per-uplink policy routing in the kernel, answers on a Unix socket.')
  .option('-c, --config <path>', 'configuration file', process.env['WAYMARK_CONFIG'] ?? DEFAULT_CONFIG_PATH)
  .option('-s, --socket <path>', 'control socket to serve, or its directory (decide.sock goes next to it)', process.env['WAYMARK_SOCKET'] || DEFAULT_SOCKET)
  .option('--state-dir <dir>', 'where durable state is kept', DEFAULT_STATE_DIR)
  .option('--keep-state', 'leave rules, routes and the nftables table in place on exit', false)
  .option('--check', 'validate the configuration and exit', false)
  .option('--cgroup-root <path>', 'the cgroup subtree whose apps are recognised and steered in the kernel, relative to the cgroup2 mount ("/": every process of the device); session cgroups go in its waymark/', cgroupRoot, '')
  .addOption(new Option('--log-level <level>', 'least severe level logged').choices(['debug', 'info', 'warn', 'error']).default('info'))
  .addOption(new Option('--busy-poll-us <µs>', 'after a decision request, poll this long (yielding the CPU) before sleeping: answers the next first connect of a burst without a wake-up; 0 turns it off')
    .default(DEFAULT_BUSY_POLL_US).argParser(busyPollUs))
  .addOption(new Option('--rtt-interval <s>', 'how often the RTT of the TCP connections over each uplink is read (sock_diag), in seconds')
    .default(DEFAULT_RTT_INTERVAL_MS / 1000).argParser(rttInterval))
  .addOption(new Option('--usage-flush <s>', 'how often the usage counted in the kernel is written to the history (STATE_DIR/usage.sqlite), in seconds: at most this much is lost in a crash')
    .default(DEFAULT_FLUSH_MS / 1000).argParser(usageFlush))
  .option('--system-bus <address>', 'D-Bus address of the bus to read ModemManager, NetworkManager and systemd-resolved on (SIM, registration, bearers, DNS, metered); "none": read none of them (default: DBUS_SYSTEM_BUS_ADDRESS, else the system bus)')
  .version(VERSION)
  .addHelpText('after', `
Signals: SIGHUP reloads the configuration (a bad file is rejected and the running one stays);
SIGTERM/SIGINT stop cleanly, removing Waymark's kernel state unless --keep-state is given.
Environment: WAYMARK_CONFIG and WAYMARK_SOCKET set the defaults of --config and --socket.
One daemon per state directory and socket directory: it holds waymarkd.lock (flock) in both.
Exit status: 0 stopped cleanly (--check: the configuration is valid); 1 bad option, failed to
start or unclean stop; 75 another waymarkd holds a lock or answers on the socket (that one keeps
running); 78 configuration rejected (each problem as FILE:LINE:COLUMN: FIELD: PROBLEM).`);

interface Opts {
  config: string; socket: string; stateDir: string; keepState: boolean; check: boolean; logLevel: Level; busyPollUs: number; cgroupRoot: string;
  rttInterval: number; usageFlush: number; systemBus?: string;
}

/** "/", "" or "a/b" (no "." or ".." components): the root relative to the mount, '' for the whole hierarchy. */
function cgroupRoot(v: string): string {
  const parts = v.split('/').filter((p) => p !== '');
  if (parts.some((p) => p === '.' || p === '..' || /[\0\n]/.test(p))) throw new InvalidArgumentError('a path below the cgroup2 mount, without . or .. components');
  return parts.join('/');
}

function busyPollUs(v: string): number {
  const n = Number(v);
  if (!/^\d+$/.test(v) || n > 100_000) throw new InvalidArgumentError('a whole number of microseconds, 0 to 100000');
  return n;
}

function rttInterval(v: string): number {
  const n = Number(v);
  if (!/^\d+$/.test(v) || n < 1 || n > 3600) throw new InvalidArgumentError('a whole number of seconds, 1 to 3600');
  return n;
}

function usageFlush(v: string): number {
  const n = Number(v);
  if (!/^\d+$/.test(v) || n < 1 || n > 3600) throw new InvalidArgumentError('a whole number of seconds, 1 to 3600');
  return n;
}

let showStack = false;

/** What the config says that is accepted but should change (the `apps:` section), located. */
function logNotices(log: Logger, config: Config): void {
  for (const n of config.notices) log.warn('config notice', { file: n.file, line: n.line, field: n.field, notice: n.message });
}

async function main(): Promise<void> {
  program.parse();
  const opts = program.opts<Opts>();
  opts.socket = controlSocketPath(opts.socket);
  showStack = opts.logLevel === 'debug';
  const log = createLogger(opts.logLevel);
  let config;
  try {
    config = await loadConfigFile(opts.config);
  } catch (e) {
    if (e instanceof ConfigError) {
      process.stderr.write(`waymarkd: configuration rejected:\n${e.message}\n`);
      process.exit(78); // EX_CONFIG
    }
    throw e;
  }
  if (opts.check) {
    process.stdout.write(`${opts.config}: ok (${config.uplinks.length} uplinks, ${config.destinations.length} destinations)\n`);
    return;
  }
  const runDir = dirname(opts.socket);
  mkdirSync(runDir, { recursive: true, mode: 0o755 });
  // Before anything is read, unlinked or changed: another daemon may own all of it.
  try {
    await claimInstance({ stateDir: opts.stateDir, runDir, socket: opts.socket });
  } catch (e) {
    if (!(e instanceof AlreadyRunning)) throw e;
    process.stderr.write(`waymarkd: ${e.message}\n`);
    process.exit(EX_ALREADY_RUNNING);
  }
  const store = new StateStore(opts.stateDir);
  const saved = await store.load((why) => log.warn('state file unreadable, starting fresh', { why }));
  const generation = new GenerationFile(runDir);
  const cgroups = await createCgroupBackend(opts.cgroupRoot);
  const cgroupDir = join(cgroups.mount, opts.cgroupRoot);
  // The apps' BPF programs, attached at the cgroup root; without them apps are still listed.
  let appMaps: AppMaps | null = null;
  let kernelOff: string | null = null;
  try {
    appMaps = AppMaps.open(cgroupDir);
  } catch (e) {
    kernelOff = `the BPF programs could not be loaded at ${cgroupDir}: ${errorMessage(e)}`;
    log.error('apps are not steered in the kernel', { reason: kernelOff });
  }
  const events = new EventBus();
  const startedAt = new Date();
  // The config in force: the base (waymark.yaml) with the active profile and the device's own
  // facts (ModemManager, NetworkManager, resolved, a SIM set by hand) on top (system-service.ts).
  let baseConfig = config;
  const profileStore = new ProfileStore(opts.stateDir, (name, file, why) => log.warn('a saved profile does not fit the configuration', { profile: name, file, why }));
  await profileStore.load(config);
  // eslint-disable-next-line prefer-const -- the two services refer to each other; both exist before either is called
  let profiles: ProfileService;
  const system = new SystemService({
    base: config, log, ...(saved.sim ? { manual: saved.sim } : {}),
    saveManual: (sim) => store.update({ sim }),
    onSim: (sim) => void profiles.simChanged(sim ? { iccid: sim.iccid, ...(sim.operator !== undefined ? { operator: sim.operator } : {}) } : undefined),
    onApplied: (e) => events.publish({ type: 'system.changed', ...e }),
  });
  profiles = new ProfileService({
    store: profileStore, base: () => baseConfig, apply: (p) => system.setProfile(p),
    currentSim: () => {
      const sim = system.sim;
      return sim ? { iccid: sim.iccid, ...(sim.operator !== undefined ? { operator: sim.operator } : {}) } : undefined;
    },
    publish: (e) => events.publish(e), log, saved: saved.profile, persist: (p) => store.update({ profile: p }),
  });
  // The kept profile (or the one the SIM set by hand chooses) is in the world's first config.
  await profiles.start();
  const appKeys = new AppKeys(saved.appKeys, (all) => void store.update({ appKeys: all }).catch((e: unknown) => log.error('cannot save state', { error: errorMessage(e) })));
  // The usage history: without it (a database that cannot be opened) the daemon steers all the same.
  let history: UsageHistory | null = null;
  let historyOff = '';
  try {
    history = UsageHistory.open(join(opts.stateDir, 'usage.sqlite'));
  } catch (e) {
    historyOff = errorMessage(e);
    log.error('usage accounting is off: the history cannot be opened', { error: historyOff });
  }
  let accounting: AccountingService | null = null;
  let appLeft = (): void => undefined;
  const { world, nftables, routing, sessions, decisions, apps, prompts } = assemble({
    onAppLeft: () => appLeft(),
    kernelBudgets: () => accounting?.kernelBudgets ?? {},
    config: system.effective(), savedSlots: saved.slots, saveSlots: (slots) => store.update({ slots: { ...slots } }), generation, events, log, appKeys,
    sessionStore: { save: (all) => store.update({ sessions: all.map((x) => ({ ...x, needs: [...x.needs], deny: [...x.deny], apps: [...x.apps] })) }) },
  }, {
    kernel: new KernelRouting(), sysctl: new SrcValidMark(), nft: nftCommand, cgroups,
    apps: {
      maps: appMaps ? appMapsPort(appMaps) : { apply: () => [] }, kernelOff,
      cgroupDir, mount: cgroups.mount, cgroupRoot: `/${opts.cgroupRoot}`, sessionsDir: cgroups.sessionsDir,
      // A connect the kernel reported for an app whose rule asks: the user is asked all the same.
      onConnect: (e) => decisions.connectReported(e),
    },
  });
  system.bind(world);
  const ruleStore = new RuleStore(world, (all, nextRule) => store.update({ rules: all, nextRule }), log, { cgroupMount: cgroups.mount });
  appLeft = () => void ruleStore.prune();
  // Rules that ask go to the prompt broker; answers that outlast their connection are kept as rules.
  decisions.askWith({
    ask: (req) => prompts.ask(req),
    remember: async (r) => {
      await ruleStore.add({
        source: 'answer', match: r.match, action: r.action, owner: r.owner, transient: r.scope === 'once',
        ...(r.expiresAt !== undefined ? { expiresAt: r.expiresAt } : {}), ...(r.until ? { until: r.until } : {}),
      });
    },
  });
  const rules = new RuleService({ world, store: ruleStore, apps: (cred) => apps.list(cred) });
  let usage: UsageService | null = null;
  if (history !== null) {
    const book = new BudgetBook(history, (id, why) => log.error('a stored budget is invalid, skipped', { budget: id, why }));
    const budgetWorld = (): { uplinks: typeof world.uplinks; destinations: typeof world.config.destinations; budgets: ReturnType<BudgetBook['all']> } => ({
      uplinks: world.uplinks, destinations: world.config.destinations, budgets: book.all(configBudgets(world.config.budgets)),
    });
    accounting = new AccountingService({
      kernel: appMaps ? usageKernelPort(appMaps) : null,
      uplinkCounters: () => nftables.readCounters(),
      history, world: budgetWorld, destinationIndex,
      identities: new KernelIdentities({ keys: appKeys, apps }),
      publish: (e) => events.publish(e), log,
      // The kernel's treatments and every library's cached answers follow exhausted and restored budgets.
      onKernelChange: () => {
        apps.refresh();
        decisions.invalidate();
      },
      mayChangeState,
    });
    usage = new UsageService({ accounting, book, world: budgetWorld });
    const acc = accounting;
    decisions.budgetsWith({ blocked: (uid, name) => acc.blockedUplinks(uid, name), left: (uid, name, uplink) => acc.budgetLeft(uid, name, uplink) });
  }
  const decideServer = new DecisionServer(join(runDir, DECIDE_SOCKET), decisions, log, { busyPollUs: opts.busyPollUs });

  const reload = async (): Promise<ReloadResult> => {
    try {
      const next = await loadConfigFile(opts.config);
      // Resolves once the kernel follows and running sessions are held to the new app rules:
      // before the caller hears back.
      baseConfig = next;
      // The saved profiles checked against the new file first (one that no longer fits gives way).
      const generation = await system.setBase(next, () => profiles.baseChanged());
      log.info('configuration reloaded', { file: opts.config, generation });
      logNotices(log, next);
      events.publish({ type: 'config.reloaded', generation, uplinks: next.uplinks.length, destinations: next.destinations.length, rules: next.rules.length });
      return { generation, uplinks: next.uplinks.length, destinations: next.destinations.length };
    } catch (e) {
      if (!(e instanceof ConfigError)) throw e;
      log.error('configuration rejected; keeping the running one', { file: opts.config, errors: e.issues.length });
      for (const i of e.issues) log.error('config issue', { file: i.file, line: i.line, column: i.column, field: i.field, problem: i.message });
      events.publish({ type: 'config.rejected', file: opts.config, issues: e.issues.map((i) => ({ file: i.file, line: i.line, column: i.column, field: i.field, message: i.message })) });
      throw new RequestError({ code: 'EINVAL', message: `configuration rejected; the running one stays\n${e.message}`, issues: e.issues });
    }
  };

  const server: ControlServer = new ControlServer(opts.socket, {
    hello: () => Promise.resolve<HelloResult>({
      daemon: 'waymarkd', version: VERSION, protocol: PROTOCOL_VERSION, protocols: [...PROTOCOL_VERSIONS], methods: Object.keys(METHODS), topics: [...TOPICS],
    }),
    status: async (_params, cred) => ({
      ...statusView(world, await nftables.readCounters(), routing.lastReconcile, { version: VERSION, configPath: opts.config, pid: process.pid, startedAt }),
      // Sessions name users and command lines (arguments may hold secrets): to others, only their own.
      sessions: sessions.registry.all().filter((x) => x.uid === cred.uid || mayChangeState(cred)).map((x) => ({
        id: x.id, uid: x.uid, uplink: x.uplink ?? null, needs: [...x.needs], deny: [...x.deny], command: x.command, startedAt: x.startedAt,
      })),
      // Which uids were refused connections: to others, only whether they were.
      decisions: refusalsSeenBy(decideServer.stats, cred.uid, mayChangeState(cred)),
      control: refusalsSeenBy(server.stats, cred.uid, mayChangeState(cred)),
      events: events.stats,
      apps: { ...apps.kernel, cgroupRoot: `/${opts.cgroupRoot}`, ...apps.counts },
      prompts: prompts.stats,
      system: system.view(),
      profile: profiles.activeView,
    }),
    reload,
    'exec.begin': (params, cred) => sessions.begin(params, cred),
    'exec.end': (params, cred) => sessions.end(params.id, cred),
    'events.subscribe': (params, _cred, ctx) => Promise.resolve(ctx.subscribe(params.topics)),
    apps: (_params, cred) => Promise.resolve({ cgroupRoot: `/${opts.cgroupRoot}`, kernel: apps.kernel, apps: apps.list(cred) }),
    'rules.list': (_params, cred) => Promise.resolve({ rules: rules.list(cred) }),
    'rules.add': (params, cred) => rules.add(params, cred),
    'rules.rm': (params, cred) => rules.remove(params.id, cred),
    'rules.explain': (params, cred) => Promise.resolve(rules.explain(params, cred)),
    ...agentHandlers(prompts),
    ...system.handlers(),
    ...profiles.handlers(),
    ...(usage ? usage.handlers() : usageUnavailable(historyOff)),
  }, log, { events });

  logNotices(log, config);
  await world.saveSlots();
  // The stored rules before anything enforces: the kernel gets the apps' entries with them.
  await ruleStore.load(saved.rules, saved.nextRule);
  await routing.start();
  // After the first pass: the uplinks' links and addresses are known to attribute sockets to.
  const rtt = new RttMonitor(world, sockDiagPort(), log, opts.rttInterval * 1000);
  rtt.start();
  await sessions.restore(saved.sessions);
  await sessions.refresh();
  // The apps: the root's entry, then every cgroup below it as the tree finds them, live from now on.
  apps.start(statSync(cgroupDir, { bigint: true }).ino);
  const tree = new CgroupTree(cgroupDir, {
    exclude: [WAYMARK_CGROUP_DIR],
    onAdded: (e) => apps.added(seenOf(e.rel, e.id, e.app)),
    onRemoved: (e) => apps.removed(e.rel),
    warn: (m) => log.warn(m),
  });
  // The kernel's connect reports (apps whose rule asks), resolved by the app service.
  appMaps?.onConnect((r) => apps.connected(r));
  apps.refresh();
  // The first reading of the kernel's counters (the uplinks' baselines), then every few seconds.
  await accounting?.start(undefined, opts.usageFlush * 1000);
  // The device's services, followed from now on; what they say replaces the config as it comes.
  const watcher = new SystemWatcher({
    address: systemBusAddress(opts.systemBus, process.env), log, onChange: (f) => system.noteFacts(f),
    readers: { modemmanager: new ModemManagerReader(log), networkmanager: new NetworkManagerReader(log), resolved: new ResolvedReader(log) },
  });
  // Not awaited: a service that owns its name but never answers must not hold the daemon's start.
  void watcher.start().catch((e: unknown) => log.error('cannot read the system services', { error: errorMessage(e) }));
  decideServer.listen();
  // Only now: a new generation voids every library's cached answers, and from this very tick on
  // the decide socket answers them, so none falls back to default routing in between.
  generation.open();
  await server.listen();
  log.info('waymarkd started', { version: VERSION, config: opts.config, socket: opts.socket, uplinks: config.uplinks.length });

  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    log.info('stopping', { signal, keepState: opts.keepState });
    void (async () => {
      decideServer.close();
      decisions.close(); // its prune timer
      ruleStore.close();
      rtt.close();
      watcher.close();
      system.close();
      prompts.close(); // connects still waiting for an answer get their rule's default
      // Libraries drop their cached answers at once and fall back to their fail-open/closed mode.
      if (generation.opened) generation.bump();
      sessions.close();
      tree.close();
      await server.close();
      // What the kernel counted since the last flush, before its counters go.
      await accounting?.stop();
      history?.close();
      const changes = await routing.stop(opts.keepState);
      if (!opts.keepState) {
        await nftables.remove();
        log.info('removed kernel state', { changes });
      }
      routing.close();
      // Detaches the apps' programs (they would go with the process anyway).
      appMaps?.close();
      process.exit(0);
    })().catch((e: unknown) => {
      log.error('unclean stop', { error: errorMessage(e) });
      process.exit(1);
    });
  };
  // One failed background task must not take the daemon (and everyone's decisions) down.
  process.on('unhandledRejection', (e) => log.error('unhandled failure', { error: e instanceof Error ? e.stack ?? e.message : String(e) }));
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGHUP', () => void reload().catch(() => undefined));
}

main().catch((e: unknown) => {
  // A failure to start is reported as what failed; the stack only helps a developer.
  const what = e instanceof Error ? (showStack ? e.stack ?? e.message : e.message) : String(e);
  process.stderr.write(`waymarkd: cannot start: ${what}\n`);
  process.exit(1);
});
