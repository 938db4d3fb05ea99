#!/usr/bin/env node
/** waymark: the command-line client of waymarkd. */
import { Command, InvalidArgumentError } from 'commander';
import { Client, DaemonError, DaemonUnavailable, defaultSocketPath } from '../daemon/client.js';
import { VERSION } from '../version.js';
import { NEED_NAMES, type NeedName } from '../config/schema.js';
import { execWith } from './exec.js';
import { formatApps } from './apps.js';
import { formatStatus } from './status.js';
import { rulesCommand } from './rules.js';
import { usageCommand } from './usage.js';
import { budgetCommand } from './budget.js';
import { simCommand } from './sim.js';
import { profileCommand } from './profile.js';
import { TOPICS, type Topic } from '../daemon/events.js';
import { errorMessage } from '../errors.js';

const program = new Command('waymark')
  .description('Waymark: steer each program\'s traffic over the right uplink (Wi-Fi, cellular APNs, VPN, ...).')
  .option('-s, --socket <path>', 'waymarkd control socket or its directory (env WAYMARK_SOCKET)', defaultSocketPath())
  .version(VERSION)
  .showHelpAfterError();

const client = (): Client => new Client(program.opts<{ socket: string }>().socket);

program
  .command('status')
  .description('show uplinks (kind, state, addresses, gateway, cost, table, mark) and destinations')
  .option('--json', 'print the status as JSON', false)
  .action(async (o: { json: boolean }) => {
    const c = client();
    const s = await c.call('status');
    c.close();
    process.stdout.write(o.json ? JSON.stringify(s, null, 2) + '\n' : formatStatus(s));
  });

program
  .command('apps')
  .description('list the apps on the device now (yours; root and the waymark group: all): how each was recognised, the rule and uplink per destination that apply, its live sockets')
  .option('--json', 'print them as JSON', false)
  .action(async (o: { json: boolean }) => {
    const c = client();
    const r = await c.call('apps');
    c.close();
    process.stdout.write(o.json ? JSON.stringify(r, null, 2) + '\n' : formatApps(r));
  });

program.addCommand(rulesCommand(client));
program.addCommand(usageCommand(client));
program.addCommand(budgetCommand(client));
program.addCommand(simCommand(client));
program.addCommand(profileCommand(client));

program
  .command('reload')
  .description('re-read the configuration file; a bad file is rejected and the running one stays (needs root or group waymark)')
  .action(async () => {
    const c = client();
    const r = await c.call('reload');
    c.close();
    process.stdout.write(`configuration loaded: generation ${r.generation}, ${r.uplinks} uplinks, ${r.destinations} destinations\n`);
  });

const collect = (v: string, prev: string[]): string[] => [...prev, ...v.split(',').map((x) => x.trim()).filter(Boolean)];

program
  .command('exec')
  .description('run a command with its TCP and UDP sockets on the uplink the daemon decides for it')
  .option('-u, --uplink <name>', 'use this uplink (name or interface name) for everything it reaches')
  .option('-n, --need <need>', `what the connections need, repeatable: ${NEED_NAMES.join(', ')}`, collect, [])
  .option('-d, --deny <uplink>', 'never use this uplink, repeatable', collect, [])
  .argument('<command...>', 'the command and its arguments (put them after --)')
  .usage('[--uplink NAME] [--need NEED]... [--deny UPLINK]... -- COMMAND [ARGS...]')
  .addHelpText('after', `
Exit status: the command's own; 128+N if a signal N killed it; 126 if it was found but could not
be run; 127 if it was not found. Before it runs: 65 a wish the daemon rejects as invalid, 69
waymarkd unavailable or the session refused, 77 not permitted, 1 a bad option.`)
  .action(async (argv: string[], o: { uplink?: string; need: string[]; deny: string[] }) => {
    const bad = o.need.filter((n) => !(NEED_NAMES as readonly string[]).includes(n));
    if (bad.length) throw new Error(`unknown need ${bad.join(', ')} (known: ${NEED_NAMES.join(', ')})`);
    const wish = { ...(o.uplink ? { uplink: o.uplink } : {}), needs: o.need as NeedName[], deny: o.deny };
    process.exitCode = await execWith(client(), wish, argv);
  });

const topic = (v: string, prev: Topic[]): Topic[] => {
  const t = TOPICS.find((x) => x === v);
  if (t === undefined) throw new InvalidArgumentError(`unknown topic "${v}" (known: ${TOPICS.join(', ')})`);
  return [...prev, t];
};

program
  .command('watch')
  .description('stream the daemon\'s events live, one line each, until interrupted: uplinks changing, config reloads, denied connections, sessions, apps, prompts, usage samples and budgets')
  .option('--json', 'one JSON object per line', false)
  .option('-t, --topic <topic>', `only these topics, repeatable: ${TOPICS.join(', ')} (default: all)`, topic, [])
  .addHelpText('after', `
Denials and sessions are shown for your own programs only (root and the waymark group see
everyone's); uplink and config events for all; prompts only to their own user and root. A watcher that falls behind is told how many
events it lost. Exits 0 on Ctrl-C, 69 when waymarkd goes away.`)
  .action(async (o: { json: boolean; topic: Topic[] }) => {
    const { watch } = await import('./watch.js');
    process.exitCode = await watch(program.opts<{ socket: string }>().socket, { json: o.json, topics: o.topic });
  });

program
  .command('agent')
  .description('answer the daemon\'s prompts in this terminal: which uplink an app may use to reach a destination, when its rule says ask')
  .option('--json', 'events out and answers in as JSON lines (for scripts)', false)
  .option('--name <name>', 'what this agent calls itself', 'waymark agent')
  .option('--notify', 'show the prompts as desktop notifications on the session bus instead (org.freedesktop.Notifications: a button per uplink, always for that destination, and Deny, this time)', false)
  .addHelpText('after', `
Keys: 1-9 that uplink, d deny, * for all the app's destinations (toggle); then o this connection,
m N minutes (digits, Enter; 10 without any), x until the app exits, a always (Enter: o). Esc goes
back a step; on the first, it leaves the prompt to other agents and its timeout. q or Ctrl-C quits.
Without a terminal each input line is one answer in the same keys ("1a", "2 m 30", "d o").
Shows your prompts (root: everyone's), and a line for each budget warning, exhaustion and room
again (--notify: a notification). Exits 0 on quit, 69 when waymarkd is not there or goes
(--notify: or when the session bus has no notification server).`)
  .action(async (o: { json: boolean; name: string; notify: boolean }) => {
    if (o.notify) {
      const { runNotifyAgent } = await import('./notify-agent.js');
      process.exitCode = await runNotifyAgent(program.opts<{ socket: string }>().socket, { name: o.name });
      return;
    }
    const { runAgent } = await import('./agent.js');
    process.exitCode = await runAgent(program.opts<{ socket: string }>().socket, { json: o.json, name: o.name });
  });

program
  .command('demo')
  .description('build a simulated device in network namespaces, run waymarkd in it, show a tour (root)')
  .argument('[action]', '"down" ends a demo left running with --shell')
  .option('--shell', 'after the tour, leave the demo running and open a shell inside the device', false)
  .action(async (action: string | undefined, o: { shell: boolean }) => {
    const demo = await import('./demo.js');
    if (action === 'down') process.exitCode = await demo.demoDown();
    else if (action === undefined) process.exitCode = await demo.runDemo({ shell: o.shell });
    else throw new Error(`unknown demo action "${action}" (only "down")`);
  });

program.addHelpText('after', `
Examples:
  waymark status
  waymark apps
  waymark rules list
  waymark rules add --app org.example.Chat --dest internet --use cellular
  waymark rules explain --app org.example.Chat --dest internet
  waymark usage --by uplink --since month
  waymark budget set --uplink cellular --limit 10GB --start 5
  waymark profile list
  waymark watch --json --topic decision
  waymark agent
  waymark exec --uplink mms -- curl http://10.200.0.10/
  sudo waymark demo --shell

Exit status: 0 done; 1 bad usage or another error; 65 the daemon rejected the request as invalid
(reload: the configuration, each problem as FILE:LINE:COLUMN: FIELD: PROBLEM); 69 waymarkd
unavailable (not running, or no access to its socket) or it refused the request; 77 not
permitted. waymark exec exits with the command's status, or 126 (found, cannot run) / 127 (not
found) like a shell.`);

program.parseAsync().catch((e: unknown) => {
  if (e instanceof DaemonError) {
    process.stderr.write(`waymark: ${e.message} [${e.code}]\n`);
    process.exit(e.code === 'EPERM' || e.code === 'EACCES' ? 77 : e.code === 'EINVAL' ? 65 : 69);
  }
  process.stderr.write(`waymark: ${errorMessage(e)}\n`);
  process.exit(e instanceof DaemonUnavailable ? 69 : 1);
});
