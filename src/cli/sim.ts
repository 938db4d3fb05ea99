/** `waymark sim [show]|set|clear`: the device's SIM and modems as ModemManager reports them, or a SIM set by hand. */
import { Command, InvalidArgumentError } from 'commander';
import type { Client } from '../daemon/client.js';
import type { SimShowResult } from '../daemon/protocol.js';
import { renderTable } from './table.js';

const ICCID = /^89\d{16,20}$/;
const MCCMNC = /^\d{5,6}$/;

const iccid = (v: string): string => {
  if (!ICCID.test(v)) throw new InvalidArgumentError('an ICCID: 18-22 digits starting with 89');
  return v;
};
const operator = (v: string): string => {
  if (!MCCMNC.test(v)) throw new InvalidArgumentError('MCC and MNC: 5 or 6 digits, such as 26201');
  return v;
};

/** The SIM, by hand or not, the services that answered, and each modem with its bearers. */
export function formatSim(r: SimShowResult): string {
  const yes = (b: boolean): string => (b ? 'yes' : 'no');
  const lines: string[] = [];
  lines.push(r.sim
    ? `SIM ${r.sim.iccid}${r.sim.operator ? `, home network ${r.sim.operator}` : ''}${r.sim.operatorName ? ` (${r.sim.operatorName})` : ''}: `
      + (r.sim.source === 'manual' ? 'set by hand (waymark sim clear: ModemManager\'s again)' : 'from ModemManager')
    : 'no SIM known (no modem with a SIM, and none set by hand: waymark sim set ICCID)');
  if (r.manual?.roaming !== undefined) lines.push(`registration set by hand: ${r.manual.roaming ? 'roaming' : 'home'}`);
  lines.push(`system bus ${r.bus}: ModemManager ${yes(r.modemmanager)}, NetworkManager ${yes(r.networkmanager)}, systemd-resolved ${yes(r.resolved)}`);
  if (r.modems.length > 0) {
    lines.push('', renderTable(['MODEM', 'SIM', 'REGISTRATION', 'NETWORK', 'BEARER', 'APN', 'CONNECTED', 'DNS'],
      r.modems.flatMap((m) => {
        const head = [m.path.replace(/^\/org\/freedesktop\/ModemManager1\//, ''), m.iccid ?? '-', m.registration, m.operatorCode ?? '-'];
        if (m.bearers.length === 0) return [[...head, '-', '-', '-', '-']];
        return m.bearers.map((b, i) => [...(i === 0 ? head : ['', '', '', '']), b.interface ?? '-', b.apn ?? '-', yes(b.connected), b.dns.join(' ') || '-']);
      })).trimEnd());
  }
  return lines.join('\n') + '\n';
}

export function simCommand(client: () => Client): Command {
  const cmd = new Command('sim')
    .description('the device\'s SIM and modems (from ModemManager), or a SIM set by hand for a device without it: the SIM chooses the profile')
    .addHelpText('after', `
Examples:
  waymark sim
  waymark sim set 8944500000000000001 --operator 23415 --roaming
  waymark sim clear`);
  const show = async (o: { json: boolean }): Promise<void> => {
    const c = client();
    const r = await c.call('sim.show');
    c.close();
    process.stdout.write(o.json ? JSON.stringify(r, null, 2) + '\n' : formatSim(r));
  };
  cmd.option('--json', 'print it as JSON', false).action(show);
  cmd.command('show').description('the SIM, the services that answer, the modems and their bearers (the default)').option('--json', 'print it as JSON', false).action(show);
  cmd.command('set')
    .description('say which SIM the device has, in place of ModemManager\'s (kept across restarts; root or the waymark group)')
    .argument('<iccid>', 'the SIM\'s ICCID', iccid)
    .option('--operator <mccmnc>', 'its home network\'s MCC and MNC (ties profiles by operator)', operator)
    .option('--roaming', 'the device is roaming (its cellular uplinks are marked roaming)')
    .option('--home', 'the device is at home (not roaming), whatever ModemManager says')
    .action(async (v: string, o: { operator?: string; roaming?: boolean; home?: boolean }) => {
      if (o.roaming && o.home) throw new InvalidArgumentError('--roaming or --home, not both');
      const c = client();
      const r = await c.call('sim.set', { iccid: v, ...(o.operator ? { operator: o.operator } : {}), ...(o.roaming ? { roaming: true } : o.home ? { roaming: false } : {}) });
      c.close();
      process.stdout.write(formatSim(r));
    });
  cmd.command('clear')
    .description('forget the SIM set by hand: ModemManager\'s counts again')
    .action(async () => {
      const c = client();
      const r = await c.call('sim.clear');
      c.close();
      process.stdout.write(formatSim(r));
    });
  return cmd;
}
