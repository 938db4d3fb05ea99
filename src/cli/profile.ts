/** `waymark profile list|show|use|save|export|import|rm`: what changes with the SIM (docs/profiles.md). */
import { readFile, writeFile } from 'node:fs/promises';
import { Command, InvalidArgumentError } from 'commander';
import type { Client } from '../daemon/client.js';
import type { ActiveProfileView, ParamsIn, ProfileListResult, ProfileShowResult, ProfileSummary } from '../daemon/protocol.js';
import { describeAction } from '../policy/rules.js';
import { ruleAction } from '../daemon/rule-store.js';
import { renderTable } from './table.js';

const NAME = /^[a-z][a-z0-9_-]{0,30}$/;
const name = (v: string): string => {
  if (!NAME.test(v)) throw new InvalidArgumentError('a profile name: 1-31 of a-z, 0-9, "-" and "_", starting with a letter');
  return v;
};
const many = (re: RegExp, what: string) => (v: string, prev: string[] = []): string[] => [...prev, ...v.split(',').map((x) => x.trim()).filter(Boolean).map((x) => {
  if (!re.test(x)) throw new InvalidArgumentError(`${JSON.stringify(x)} is not ${what}`);
  return x;
})];

/** --roaming: allow, deny or only:DEST,DEST. */
export function parseRoaming(v: string): ProfileSummary['roaming'] {
  if (v === 'allow' || v === 'deny') return v;
  const m = /^only:([a-z][a-z0-9_,-]*)$/.exec(v);
  if (!m?.[1]) throw new InvalidArgumentError('allow, deny or only:DESTINATION[,DESTINATION...]');
  return { only: m[1].split(',').filter(Boolean) };
}

export const describeRoaming = (r: ProfileSummary['roaming']): string => (typeof r === 'string' ? r : `only ${r.only.join(', ') || '(no destination)'}`);

/** "home (by SIM 8949...)", "travel (chosen by the user)", "none". */
export function describeActive(a: ActiveProfileView): string {
  switch (a.by) {
    case 'sim': return `${a.name ?? 'none'} (chosen for SIM ${a.sim ?? '?'})`;
    case 'user': return `${a.name ?? 'none'} (chosen by the user until the next SIM change)`;
    case 'default': return `${a.name ?? 'none'} (default_profile: no profile names the SIM)`;
    case 'none': return 'none (the configuration as written)';
  }
}

export function formatProfiles(r: ProfileListResult): string {
  const lines = [`Active: ${describeActive(r.active)}`];
  if (r.profiles.length === 0) {
    lines.push('No profiles (see profiles: in the configuration, or waymark profile save).');
    return lines.join('\n') + '\n';
  }
  const rows = r.profiles.map((p) => [
    (p.active ? '* ' : '  ') + p.name, p.source, p.sims.join(',') || '-', p.operators.join(',') || '-', describeRoaming(p.roaming),
    p.valid ? (p.description ?? '') : 'INVALID',
  ]);
  lines.push(renderTable(['PROFILE', 'SOURCE', 'SIMS', 'OPERATORS', 'ROAMING', 'DESCRIPTION'], rows));
  for (const p of r.profiles.filter((x) => !x.valid)) lines.push(`${p.name} (${p.file}) does not fit the configuration: ${p.problem ?? ''}`);
  if (r.defaultProfile !== null) lines.push(`Default (no profile names the SIM): ${r.defaultProfile}.`);
  return lines.join('\n') + '\n';
}

export function formatProfile(r: ProfileShowResult): string {
  const p = r.profile;
  const lines = [
    `profile ${p.name}${p.active ? ' (active)' : ''}: ${p.source === 'config' ? `from ${p.file} (read-only)` : `saved, ${p.file}`}`,
    ...(p.description !== null ? [`  ${p.description}`] : []),
    `  SIMs: ${p.sims.join(', ') || '-'}; home operators: ${p.operators.join(', ') || '-'}; roaming uplinks: ${describeRoaming(p.roaming)}`,
  ];
  if (!p.valid) lines.push(`  INVALID: ${p.problem ?? ''}`);
  for (const u of r.uplinks) {
    const parts = [
      ...(u.cost ? [`${u.cost.perMB} ${u.cost.currency}/MB`] : []), ...(u.metered !== undefined ? [u.metered ? 'metered' : 'unmetered'] : []),
      ...(u.preference !== undefined ? [`preference ${u.preference}`] : []), ...(u.properties.bandwidthMbps !== undefined ? [`${u.properties.bandwidthMbps} Mbit/s`] : []),
      ...(u.properties.latencyMs !== undefined ? [`${u.properties.latencyMs} ms`] : []), ...(u.properties.stability !== undefined ? [`stability ${u.properties.stability}`] : []),
    ];
    lines.push(`  uplink ${u.name}: ${parts.join(', ') || '(no change)'}`);
  }
  for (const x of r.rules) lines.push(`  rule ${x.id}: ${describeAction(ruleAction(x.action))}`);
  for (const b of r.budgets) lines.push(`  budget ${b.id}: uplink ${b.uplink}${b.app !== undefined ? `, ${b.app}` : ''}, ${'bytes' in b.limit ? `${b.limit.bytes} bytes` : `${b.limit.money} ${b.limit.currency}`} per ${b.period}`);
  return lines.join('\n') + '\n';
}

export interface SaveOptions { description?: string; sim?: string[]; currentSim: boolean; operator?: string[]; roaming?: ProfileSummary['roaming'] }

export function saveParams(n: string, o: SaveOptions): ParamsIn<'profile.save'> {
  return {
    name: n, ...(o.description !== undefined ? { description: o.description } : {}), ...(o.sim ? { sims: o.sim } : {}),
    ...(o.operator ? { operators: o.operator } : {}), ...(o.roaming !== undefined ? { roaming: o.roaming } : {}), ...(o.currentSim ? { fromCurrentSim: true } : {}),
  };
}

export function profileCommand(client: () => Client): Command {
  const cmd = new Command('profile')
    .description('profiles: uplink prices, rules, budgets and roaming behaviour that go with a SIM (list, show, use, save, export, import, rm)')
    .addHelpText('after', `
Examples:
  waymark profile list
  waymark profile use travel          (until the next SIM change)
  waymark profile use --auto          (choose by the SIM now)
  waymark profile save home --current-sim --roaming deny
  waymark profile export home -o home.yaml
  waymark profile import home.yaml --replace
Showing, exporting and changing profiles needs root or the waymark group.`);
  cmd.command('list')
    .description('the profiles (the configuration\'s and the saved ones), their SIMs and operators, and which is active and why')
    .option('--json', 'print them as JSON', false)
    .action(async (o: { json: boolean }) => {
      const c = client();
      const r = await c.call('profile.list');
      c.close();
      process.stdout.write(o.json ? JSON.stringify(r, null, 2) + '\n' : formatProfiles(r));
    });
  cmd.command('show')
    .description('what a profile changes: uplinks, rules, budgets, roaming')
    .argument('<name>', 'the profile', name)
    .option('--json', 'print it as JSON', false)
    .action(async (n: string, o: { json: boolean }) => {
      const c = client();
      const r = await c.call('profile.show', { name: n });
      c.close();
      process.stdout.write(o.json ? JSON.stringify(r, null, 2) + '\n' : formatProfile(r));
    });
  cmd.command('use')
    .description('make a profile active until the next SIM change; --auto: choose by the SIM now')
    .argument('[name]', 'the profile', name)
    .option('--auto', 'choose by the SIM (its ICCID, its operator, else default_profile)', false)
    .action(async (n: string | undefined, o: { auto: boolean }) => {
      if ((n === undefined) === !o.auto) throw new Error('give a profile name or --auto (not both)');
      const c = client();
      const r = await c.call('profile.use', o.auto ? { auto: true } : { name: n ?? '' });
      c.close();
      process.stdout.write(`active profile: ${describeActive(r.active)}\n`);
    });
  cmd.command('save')
    .description('save the active profile\'s contents (none active: an empty profile) under a new name, tied to these SIMs and operators')
    .argument('<name>', 'the new profile\'s name (one saved under it is replaced)', name)
    .option('--description <text>', 'what it is for')
    .option('--sim <iccid>', 'choose it for this SIM, repeatable', many(/^89\d{16,20}$/, 'an ICCID (18-22 digits starting with 89)'))
    .option('--current-sim', 'choose it for the SIM in the device now', false)
    .option('--operator <mccmnc>', 'choose it for SIMs of this home network (MCC+MNC), repeatable', many(/^\d{5,6}$/, 'an operator code (MCC+MNC, 5 or 6 digits)'))
    .option('--roaming <policy>', 'what roaming uplinks may carry: allow, deny, only:DEST[,DEST...]', parseRoaming)
    .action(async (n: string, o: SaveOptions) => {
      const c = client();
      const r = await c.call('profile.save', saveParams(n, o));
      c.close();
      process.stdout.write(`profile ${r.profile.name} saved (${r.profile.file}); active: ${describeActive(r.active)}\n`);
    });
  cmd.command('export')
    .description('print a profile as a configuration document (profile import reads it; it can go in waymark.yaml)')
    .argument('<name>', 'the profile', name)
    .option('-o, --output <file>', 'write it to this file instead')
    .action(async (n: string, o: { output?: string }) => {
      const c = client();
      const r = await c.call('profile.export', { name: n });
      c.close();
      if (o.output !== undefined) await writeFile(o.output, r.text, { mode: 0o600 });
      else process.stdout.write(r.text);
    });
  cmd.command('import')
    .description('save a profile document (as profile export writes it), validated against the running configuration first')
    .argument('<file>', 'the document ("-": standard input)')
    .option('--replace', 'replace a saved profile of that name', false)
    .action(async (file: string, o: { replace: boolean }) => {
      const text = file === '-' ? await readStdin() : await readFile(file, 'utf8');
      const c = client();
      const r = await c.call('profile.import', { text, file: file === '-' ? '<stdin>' : file, replace: o.replace });
      c.close();
      process.stdout.write(`profile ${r.profile.name} imported (${r.profile.file}); active: ${describeActive(r.active)}\n`);
    });
  cmd.command('rm')
    .description('remove a saved profile (the configuration\'s are removed there); removing the active one chooses by the SIM')
    .argument('<name>', 'the profile', name)
    .action(async (n: string) => {
      const c = client();
      const r = await c.call('profile.rm', { name: n });
      c.close();
      process.stdout.write(`profile ${r.name} removed; active: ${describeActive(r.active)}\n`);
    });
  return cmd;
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}
