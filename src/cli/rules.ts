/** `waymark rules list|add|rm|explain`: the rules per app × destination, and why one decides. */
import { Command, InvalidArgumentError, Option } from 'commander';
import { NEED_NAMES, type NeedName } from '../config/schema.js';
import type { Client } from '../daemon/client.js';
import type { ParamsIn, RulesExplainResult, RuleView } from '../daemon/protocol.js';
import { ruleAction, type ActionIn } from '../daemon/rule-store.js';
import { describeAction } from '../policy/rules.js';
import { renderTable } from './table.js';

const list = (v: string, prev: string[] | undefined): string[] => [...(prev ?? []), ...v.split(',').map((x) => x.trim()).filter(Boolean)];
const needList = (v: string, prev: NeedName[]): NeedName[] => [...prev, ...v.split(',').map((x) => {
  const n = NEED_NAMES.find((k) => k === x.trim());
  if (n === undefined) throw new InvalidArgumentError(`unknown need "${x}" (known: ${NEED_NAMES.join(', ')})`);
  return n;
})];
const int = (what: string, lo: number, hi: number) => (v: string): number => {
  const n = Number(v);
  if (!/^\d+$/.test(v) || n < lo || n > hi) throw new InvalidArgumentError(`${what}: a whole number, ${lo} to ${hi}`);
  return n;
};

/** "deny", "pass", "use:wifi,cellular", "only:wifi" */
function fixedAction(v: string): Exclude<ActionIn, { ask: unknown }> {
  if (v === 'deny' || v === 'pass') return v;
  const m = /^(use|only):([a-z][a-z0-9_,-]*)$/.exec(v);
  if (!m?.[2]) throw new InvalidArgumentError('deny, pass, use:UPLINK[,UPLINK...] or only:UPLINK[,UPLINK...]');
  const uplinks = m[2].split(',').filter(Boolean);
  return m[1] === 'use' ? { use: uplinks } : { only: uplinks };
}

/** A rule's action as the wire carries it, in words (src/policy/rules.ts: describeAction). */
const describe = (a: ActionIn): string => describeAction(ruleAction(a));

function describeMatch(m: Record<string, unknown>): string {
  const parts = Object.entries(m).map(([k, v]) => `${k}=${Array.isArray(v) ? v.join(',') : String(v)}`);
  return parts.length ? parts.join(' ') : '(everything)';
}

export function formatRules(rules: readonly RuleView[]): string {
  if (rules.length === 0) return 'No rules: every app uses default routing (see rules: in the configuration, or waymark rules add).\n';
  return renderTable(['#', 'ID', 'SOURCE', 'MATCH', 'ACTION', 'NEVER', 'NEEDS', 'UNTIL'], rules.map((r) => [
    String(r.order), r.id, r.source, describeMatch(r.match), describe(r.action), r.never.join(',') || '-', r.needs.join(',') || '-',
    r.untilExit ? 'app exits' : r.expiresAt ?? '-',
  ])) + '\n';
}

export function formatExplain(e: RulesExplainResult): string {
  const a = e.app;
  const who = [a.name ?? '(unnamed)', `uid ${a.uid}`, a.exe ? `exe ${a.exe}` : '', a.unit ? `unit ${a.unit}` : '', a.flatpakId ? `flatpak ${a.flatpakId}` : '', a.app ? `app ${a.app}` : '']
    .filter(Boolean).join(', ');
  const lines = [`app: ${who} (${a.how})`, `destination: ${e.destination}`, ''];
  lines.push('rules, in decision order:');
  if (e.considered.length === 0) lines.push('  (none)');
  for (const c of e.considered) lines.push(`  ${c.skipped === undefined ? '→' : ' '} ${c.id} [${c.source}]${c.skipped !== undefined ? `: skipped, ${c.skipped}` : ': matches: decides'}`);
  lines.push('');
  lines.push(e.rule ? `deciding rule: ${e.rule.id}: ${describe(e.rule.action)}${e.rule.never.length ? `, never ${e.rule.never.join(',')}` : ''}${e.ask ? ' (the user is asked; until answered, the default)' : ''}`
    : 'deciding rule: none: default routing');
  const d = e.decision;
  lines.push(d.action === 'steer' ? `decision: ${d.uplink} (${d.reason})` : d.action === 'deny' ? `decision: denied, ${d.errno} (${d.reason})` : `decision: default routing (${d.reason})`);
  lines.push('candidates:');
  for (const c of e.candidates) lines.push(`  ${c.uplink.padEnd(14)} ${c.rank !== undefined ? `#${c.rank}${c.rank === 1 ? ' (taken)' : ''}` : `skipped: ${c.skipped ?? ''}`}`);
  return lines.join('\n') + '\n';
}

interface AddOpts {
  exe?: string; unit?: string; app?: string; flatpak?: string; name?: string; uid?: number; user?: string; dest?: string; proto?: 'tcp' | 'udp'; port?: number;
  matchNeed: NeedName[]; use?: string[]; only?: string[]; deny?: boolean; pass?: boolean; ask?: boolean; default?: Exclude<ActionIn, { ask: unknown }>; timeout?: number;
  never: string[]; need: NeedName[]; minutes?: number; json: boolean;
}

export function rulesCommand(client: () => Client): Command {
  const cmd = new Command('rules').description('the rules per app × destination: list them, add or remove one, explain which decides');
  cmd.command('list')
    .description('every rule in decision order: most specific first, then the added ones (newest first), then the config file\'s')
    .option('--json', 'print them as JSON', false)
    .action(async (o: { json: boolean }) => {
      const c = client();
      const r = await c.call('rules.list');
      c.close();
      process.stdout.write(o.json ? JSON.stringify(r.rules, null, 2) + '\n' : formatRules(r.rules));
    });
  cmd.command('add')
    .description('add a rule (kept in the state directory); yours apply to your own apps')
    .option('--exe <path>', 'the executable (absolute path or glob)')
    .option('--unit <unit>', 'the systemd unit (glob)')
    .option('--app <id>', 'the desktop application ID (glob)')
    .option('--flatpak <id>', 'the Flatpak ID (glob)')
    .option('--name <name>', 'the app name as waymark apps shows it (glob)')
    .option('--uid <uid>', 'the user id', int('uid', 0, 0xfffffffe))
    .option('--user <name>', 'the user name')
    .option('--dest <destination>', 'the destination (default: all)')
    .addOption(new Option('--proto <proto>', 'only this protocol').choices(['tcp', 'udp']))
    .option('--port <port>', 'only this destination port', int('port', 1, 65535))
    .option('--match-need <need>', 'only when the program asked for this need, repeatable', needList, [])
    .option('--use <uplinks>', 'prefer these uplinks in order (others after them), comma-separated', list)
    .option('--only <uplinks>', 'only these uplinks, in order (fail rather than move)', list)
    .option('--deny', 'no uplink at all')
    .option('--pass', 'no opinion: default routing')
    .option('--ask', 'ask the user (waymark agent, notifications)')
    .option('--default <action>', 'with --ask: without an answer: deny, pass, use:UPLINKS or only:UPLINKS (default pass)', fixedAction)
    .option('--timeout <seconds>', 'with --ask: how long a connect waits for the answer (default 30)', int('timeout', 1, 600))
    .option('--never <uplinks>', 'never these uplinks, repeatable', list, [])
    .option('--need <need>', 'its connections need this, repeatable', needList, [])
    .option('--minutes <n>', 'the rule holds this long', int('minutes', 1, 525_600))
    .option('--json', 'print the rule as JSON', false)
    .action(async (o: AddOpts) => {
      const actions = [o.use && 'use', o.only && 'only', o.deny && 'deny', o.pass && 'pass', o.ask && 'ask'].filter(Boolean);
      if (actions.length > 1) throw new Error(`one action: ${actions.join(' and ')} given`);
      if ((o.default !== undefined || o.timeout !== undefined) && !o.ask) throw new Error('--default and --timeout go with --ask');
      const action: ActionIn = o.use ? { use: o.use } : o.only ? { only: o.only } : o.deny ? 'deny' : o.pass ? 'pass'
        : o.ask ? { ask: { default: o.default ?? 'pass', timeout: o.timeout ?? 30 } } : { use: [] };
      if (actions.length === 0 && o.never.length === 0 && o.need.length === 0) throw new Error('give an action: --use, --only, --deny, --pass or --ask (or --never / --need)');
      const match: ParamsIn<'rules.add'>['match'] = {
        ...(o.exe ? { exe: o.exe } : {}), ...(o.unit ? { unit: o.unit } : {}), ...(o.app ? { app: o.app } : {}), ...(o.flatpak ? { flatpak: o.flatpak } : {}),
        ...(o.name ? { name: o.name } : {}), ...(o.uid !== undefined ? { uid: o.uid } : {}), ...(o.user ? { user: o.user } : {}),
        ...(o.dest ? { destination: o.dest } : {}), ...(o.proto ? { proto: o.proto } : {}), ...(o.port !== undefined ? { port: o.port } : {}),
        ...(o.matchNeed.length ? { needs: o.matchNeed } : {}),
      };
      const c = client();
      const r = await c.call('rules.add', { match, action, never: o.never, needs: o.need, ...(o.minutes !== undefined ? { minutes: o.minutes } : {}) });
      c.close();
      process.stdout.write(o.json ? JSON.stringify(r, null, 2) + '\n' : `rule ${r.id} added (#${r.order} in decision order): ${describeMatch(r.match)}: ${describe(r.action)}\n`);
    });
  cmd.command('rm')
    .description('remove a rule added from the CLI or a remembered answer')
    .argument('<id>', 'its id, as waymark rules list shows it')
    .action(async (id: string) => {
      const c = client();
      await c.call('rules.rm', { id });
      c.close();
      process.stdout.write(`rule ${id} removed\n`);
    });
  cmd.command('explain')
    .description('which rule decides for an app and a destination, every rule considered before it, and the candidate uplinks')
    .requiredOption('--app <app>', 'a running app\'s name (waymark apps), an application ID, a unit, or an executable path')
    .requiredOption('--dest <destination>', 'the destination')
    .option('--need <need>', 'what the program asks for, repeatable', needList, [])
    .option('--uid <uid>', 'the app\'s user (default: yours)', int('uid', 0, 0xfffffffe))
    .addOption(new Option('--proto <proto>', 'the protocol').choices(['tcp', 'udp']))
    .option('--port <port>', 'the destination port', int('port', 1, 65535))
    .option('--json', 'print it as JSON', false)
    .action(async (o: { app: string; dest: string; need: NeedName[]; uid?: number; proto?: 'tcp' | 'udp'; port?: number; json: boolean }) => {
      const c = client();
      const r = await c.call('rules.explain', {
        app: o.app, destination: o.dest, needs: o.need, ...(o.uid !== undefined ? { uid: o.uid } : {}), ...(o.proto ? { proto: o.proto } : {}), ...(o.port !== undefined ? { port: o.port } : {}),
      });
      c.close();
      process.stdout.write(o.json ? JSON.stringify(r, null, 2) + '\n' : formatExplain(r));
    });
  return cmd;
}
