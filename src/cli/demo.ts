/**
 * `waymark demo`: a simulated phone in network namespaces (see src/lab/lab.ts), waymarkd running
 * inside it with the shipped example config, and a short tour of what steering does.
 * Nothing outside the lab's own namespaces is touched.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CLI_JS, startDevice, type Device } from '../lab/device.js';
import { DETACHED_DIR, Lab, LAB, destroyDetached, sweepStale, type Role } from '../lab/lab.js';
import { errorMessage } from '../errors.js';
import type { AppsResult } from '../daemon/protocol.js';

const bold = (s: string): string => (process.stdout.isTTY ? `\x1b[1m${s}\x1b[0m` : s);

/** One stop of the tour: `waymark exec ARGS -- curl URL`, and whether it should get through. */
interface Stop { args: readonly string[]; url: string; expect: 'ok' | 'fail'; note?: string }
const url = (a: string): string => (a.includes(':') ? `http://[${a}]/` : `http://${a}/`);
const via = (uplink: string, addr: string, expect: 'ok' | 'fail' = 'ok'): Stop => ({ args: ['--uplink', uplink], url: url(addr), expect });

const TOUR: readonly Stop[] = [
  via('wifi', LAB.internet.v4), via('wifi', LAB.internet.v6),
  via('cellular', LAB.internet.v4), via('cellular', LAB.internet.v6),
  via('mms', LAB.mmsc.v4), via('mms', LAB.mmsc.v6),
  via('office-vpn', LAB.office.v4), via('office-vpn', LAB.office.v6),
  via('mms', LAB.internet.v4, 'fail'), via('wifi', LAB.mmsc.v4, 'fail'),
  { args: ['--need', 'long-lived'], url: url(LAB.internet.v4), expect: 'ok', note: 'a long TCP session: cellular, which does not come and go' },
  { args: ['--need', 'long-lived'], url: url(LAB.mmsc.v4), expect: 'ok', note: 'same program, the MMSC: only the MMS APN reaches it' },
  { args: ['--need', 'cheapest'], url: url(LAB.internet.v6), expect: 'ok', note: 'the flat-rate Wi-Fi' },
  { args: [], url: `http://${LAB.office.host}/`, expect: 'ok', note: 'resolved by the VPN\'s DNS, connected via the VPN' },
  { args: [], url: `http://${LAB.mmsc.host}/`, expect: 'ok', note: 'resolved by the MMS APN\'s DNS' },
];

async function tourStop(dev: Device, s: Stop): Promise<string> {
  const t0 = performance.now();
  const r = await dev.waymark(['exec', ...s.args, '--', 'curl', '-sS', '-g', '--max-time', '3', s.url], { timeoutMs: 8000 });
  const ms = Math.round(performance.now() - t0);
  const what = `waymark exec ${[...s.args, '--'].join(' ')} curl ${s.url}`.padEnd(72);
  const note = s.note ? `  (${s.note})` : '';
  if (r.code === 0) {
    try {
      const reply = JSON.parse(r.stdout) as { server: string; path: string; remote: string };
      return `${what} → ${reply.server} answered; arrived via ${bold(reply.path)} from ${reply.remote} (${ms} ms)${note}`;
    } catch {
      return `${what} → unexpected answer: ${r.stdout.trim()}`;
    }
  }
  const lines = r.stderr.trim().split('\n');
  // Prefer the library's own explanation over curl's generic one.
  const err = (lines.find((l) => l.startsWith('waymark:')) ?? lines.pop() ?? '').replace(/^waymark: (\[\d+\] )?/, '').replace(/^curl: \(\d+\) /, '');
  return `${what} → ${s.expect === 'fail' ? 'refused at once, as it should' : 'FAILED'}: ${err} (${ms} ms)`;
}

export async function runDemo(opts: { shell: boolean }): Promise<number> {
  if (process.getuid?.() !== 0) throw new Error('the demo builds network namespaces: run it as root');
  await sweepStale();
  process.stdout.write('Building the simulated device (namespaces: device, Wi-Fi, cellular, MMS, office, Internet)...\n');
  const lab = await Lab.create({ detachable: opts.shell });
  let dev: Device | undefined;
  let failures = 0;
  try {
    dev = await startDevice(lab);
    process.stdout.write(`waymarkd is running inside ${lab.ns('dev')} (log: ${join(dev.dir, 'waymarkd.log')})\n\n`);
    process.stdout.write(bold('$ waymark status') + '\n');
    process.stdout.write((await dev.waymark(['status'])).stdout + '\n');
    process.stdout.write(bold('Tour: programs under `waymark exec`; each server reports which uplink the connection came in by') + '\n');
    for (const stop of TOUR) {
      const line = await tourStop(dev, stop);
      const ok = stop.expect === 'ok' ? line.includes(' answered; ') : line.includes('refused at once');
      if (!ok) failures++;
      process.stdout.write(`  ${line}\n`);
    }
    const plain = await lab.run('dev', ['curl', '-sS', '--max-time', '3', `http://${LAB.mmsc.v4}/`]);
    process.stdout.write(`\n  plain curl http://${LAB.mmsc.v4}/ (no exec): destination "mms" routes it by the MMS APN → ${plain.stdout.trim() || plain.stderr.trim()}\n`);
    failures += await appTour(lab, dev);
    failures += await usageTour(lab, dev);
    failures += await profileTour(dev);
    if (opts.shell) {
      await leaveShell(lab, dev);
      return failures ? 1 : 0;
    }
  } catch (e) {
    failures++;
    process.stderr.write(`demo failed: ${errorMessage(e)}\n`);
  } finally {
    if (!opts.shell || failures) {
      await dev?.dispose();
      await lab.destroy();
      process.stdout.write('\nDemo torn down: every namespace it created is gone.\n');
    }
  }
  return failures ? 1 : 0;
}

/**
 * An app as the desktop starts it: a systemd-style scope for the chat app (rule chat-desktop:
 * cellular, never MMS), plain curl in it with no library and no `waymark exec`. Returns the
 * number of stops that did not go as they should.
 */
async function appTour(lab: Lab, dev: Device): Promise<number> {
  if (!lab.cgroups) return 0;
  const scope = 'user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-org.example.Chat-1234.scope';
  lab.cgroups.mkdir(scope);
  // The daemon sees the scope within a millisecond or so; a demo may simply look again.
  for (let i = 0; i < 100; i++) {
    const r = await dev.waymark(['apps', '--json']);
    if (r.code === 0 && (JSON.parse(r.stdout) as AppsResult).apps.some((a) => a.cgroup === scope)) break;
    await new Promise((res) => setTimeout(res, 20));
  }
  process.stdout.write(`\n${bold('An app the desktop started (its systemd scope, no library, no exec): the kernel steers it')}\n`);
  let failures = 0;
  for (const [url, want] of [[`http://${LAB.internet.v4}/`, 'wwan0'], [`http://${LAB.mmsc.v4}/`, null]] as const) {
    const r = await lab.run('dev', ['curl', '-sS', '--max-time', '3', url], { cgroup: scope, uid: 1000 });
    const path = /"path":"([^"]+)"/.exec(r.stdout)?.[1] ?? null;
    if (path !== want) failures++;
    process.stdout.write(`  curl ${url} in ${scope.split('/').pop() ?? scope} → ${path !== null ? `arrived via ${path}` : `refused (${r.stderr.trim() || 'no answer'}), as its rule says`}\n`);
  }
  process.stdout.write(`\n${bold('$ waymark apps')}\n${(await dev.waymark(['apps'])).stdout}`);
  // Which rule decided, and why each uplink was or was not a candidate.
  process.stdout.write(`\n${bold('$ waymark rules list')}\n${(await dev.waymark(['rules', 'list'])).stdout}`);
  const explain = await dev.waymark(['rules', 'explain', '--app', 'org.example.Chat', '--dest', 'mms', '--uid', '1000']);
  if (!/deciding rule: chat-desktop/.test(explain.stdout)) failures++;
  process.stdout.write(`\n${bold('$ waymark rules explain --app org.example.Chat --dest mms --uid 1000')}\n${explain.stdout}`);
  return failures;
}

/**
 * What the tour's traffic came to, per app and per uplink, then a budget on the chat app's
 * cellular traffic (the app of the tour that uses cellular; without a cgroup hierarchy there is
 * no such app, and the budget goes on the whole uplink). The query reads the kernel's counters
 * and flushes them first, so everything the tour sent is in. Returns the steps that failed.
 */
async function usageTour(lab: Lab, dev: Device): Promise<number> {
  let failures = 0;
  const step = async (args: readonly string[], ok: (out: string) => boolean): Promise<void> => {
    const r = await dev.waymark(args);
    if (r.code !== 0 || !ok(r.stdout)) failures++;
    process.stdout.write(`\n${bold(`$ waymark ${args.join(' ')}`)}\n${r.stdout}${r.code !== 0 ? r.stderr : ''}`);
  };
  process.stdout.write(`\n${bold('What the tour used: counted in the kernel per app, uplink and destination, priced per uplink')}\n`);
  const app = lab.cgroups ? 'org.example.Chat' : undefined;
  await step(['usage', '--by', 'app'], (out) => /^TOTAL /m.test(out) && (app === undefined || out.includes(app)));
  if (app !== undefined) process.stdout.write('  (each `waymark exec` of the tour ran in a session cgroup of its own, which is no app\'s: counted under\n'
    + '  that cgroup and its uid, named after its program if it still ran when the counters were read, else\n'
    + '  "cgroup waymark/exec-N"; the plain curl ran outside the device\'s cgroup subtree: unattributed)\n');
  await step(['usage', '--by', 'uplink'], (out) => /^cellular /m.test(out) && /^wifi /m.test(out));
  const budget = ['budget', 'set', '--uplink', 'cellular', ...(app ? ['--app', app] : []), '--limit', '50MB'];
  await step(budget, (out) => out.startsWith('budget '));
  await step(['budget', 'list'], (out) => /^b-1 +cellular /m.test(out));
  return failures;
}

/**
 * A profile tied to a SIM, chosen when that SIM is in: the demo device has no ModemManager, so
 * `waymark sim set` says which SIM is in, and that it roams. The profile lets roaming uplinks
 * carry only MMS: a pinned cellular connect is refused, the MMSC still answers over its APN.
 * The SIM set by hand is cleared and the file's configuration (no profile) restored at the end.
 */
async function profileTour(dev: Device): Promise<number> {
  let failures = 0;
  const step = async (args: readonly string[], ok: (out: string, code: number | null) => boolean): Promise<void> => {
    const r = await dev.waymark(args, { timeoutMs: 15_000 });
    if (!ok(r.stdout + r.stderr, r.code)) failures++;
    process.stdout.write(`\n${bold(`$ waymark ${args.join(' ')}`)}\n${r.stdout}${r.code !== 0 ? r.stderr : ''}`);
  };
  const sim = '8944500000000000019';
  process.stdout.write(`\n${bold('Profiles: the rules and prices of a SIM, chosen when it is in; what roaming uplinks may carry')}\n`);
  await step(['profile', 'save', 'abroad', '--sim', sim, '--roaming', 'only:mms', '--description', 'the travel SIM: nothing but MMS while roaming'],
    (_o, code) => code === 0);
  await step(['sim', 'set', sim, '--operator', '23415', '--roaming'], (out) => out.includes(`SIM ${sim}`));
  await step(['profile', 'list'], (out) => /abroad/.test(out));
  await step(['status'], (out) => /cellular: interface wwan0 \(config\).*roaming yes \(manual\)/.test(out) && /profile abroad \(sim\)/.test(out));
  await step(['exec', '--uplink', 'cellular', '--', 'curl', '-sS', '--max-time', '3', `http://${LAB.internet.v4}/`], (_o, code) => code !== 0);
  await step(['exec', '--', 'curl', '-sS', '--max-time', '3', `http://${LAB.mmsc.v4}/`], (out, code) => code === 0 && out.includes('wwan1'));
  await step(['profile', 'export', 'abroad'], (out) => out.startsWith('version: 1\nprofiles:\n'));
  await step(['sim', 'clear'], (_o, code) => code === 0);
  await step(['profile', 'use', '--auto'], (_o, code) => code === 0);
  return failures;
}

async function leaveShell(lab: Lab, dev: Device): Promise<void> {
  lab.detach();
  const bin = join(dev.dir, 'bin');
  mkdirSync(bin, { recursive: true });
  writeFileSync(join(bin, 'waymark'), `#!/bin/sh\nexec "${process.execPath}" "${CLI_JS}" "$@"\n`, { mode: 0o755 });
  const env = { ...process.env, WAYMARK_SOCKET: dev.socket, PATH: `${bin}:${process.env['PATH'] ?? '/usr/bin:/bin'}`, PS1: 'waymark-demo# ' };
  const enter = `sudo ip netns exec ${lab.ns('dev')} env WAYMARK_SOCKET=${dev.socket} PATH=${bin}:$PATH bash`;
  process.stdout.write(`\nThe demo keeps running. Inside the device try: waymark status; waymark exec --uplink mms -- curl http://${LAB.mmsc.v4}/\n`);
  process.stdout.write(`Re-enter later with: ${enter}\nEnd it with: npm run demo -- down (or waymark demo down)\n`);
  if (!process.stdin.isTTY) return;
  const role: Role = 'dev';
  await new Promise<void>((resolve) => {
    const sh = spawn('ip', ['netns', 'exec', lab.ns(role), 'bash', '--norc', '-i'], { stdio: 'inherit', env });
    sh.once('exit', () => resolve());
    sh.once('error', () => resolve());
  });
  // `demo down` (from this shell or another) removes the record before it ends anything.
  process.stdout.write(existsSync(`${DETACHED_DIR}/${lab.runId}.json`)
    ? 'Shell closed; the demo is still running. `npm run demo -- down` ends it.\n'
    : 'Shell closed; the demo has been ended.\n');
}

export async function demoDown(): Promise<number> {
  const removed = await destroyDetached();
  for (const runId of removed) rmSync(`/tmp/waymark-lab-${runId}`, { recursive: true, force: true });
  process.stdout.write(removed.length ? `Ended demo ${removed.join(', ')}.\n` : 'No demo is running.\n');
  return 0;
}
