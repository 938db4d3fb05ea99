/**
 * Rule sets for the benchmarks, shaped like a device that has been asked a lot: mostly
 * remembered answers (one app by its executable, app ID or Flatpak ID, for one user and one
 * destination), some rules per user, destination and port, a few globs written by hand.
 */
import { RuleSet, type Rule } from '../src/policy/rules.js';
import type { AppFacts } from '../src/policy/app.js';
import type { Config } from '../src/config/load.js';

const DESTS = ['internet', 'mms', 'office'] as const;

/** `n` rules: 98 % exact answers, 1.5 % per uid × destination × port, 0.5 % globs. */
export function benchRules(n: number): Rule[] {
  const out: Rule[] = [];
  for (let i = 0; i < n; i++) {
    const dest = DESTS[i % 3] as string;
    const kind = i % 200;
    let match: Rule['match'];
    if (kind === 0) match = { exe: `/opt/vendor${i}/*`, destination: dest };
    else if (kind <= 3) match = { uid: 1000 + (i % 50), destination: dest, port: 1000 + (i % 60000), proto: 'tcp' };
    else if (i % 3 === 0) match = { uid: 1000 + (i % 50), exe: `/opt/app${i}/bin/app`, destination: dest };
    else if (i % 3 === 1) match = { uid: 1000 + (i % 50), app: `org.example.App${i}`, destination: dest };
    else match = { uid: 1000 + (i % 50), flatpak: `org.flathub.App${i}`, destination: dest };
    out.push({ id: `r${i}`, source: 'answer', match, action: i % 7 === 0 ? { kind: 'deny' } : { kind: 'only', uplinks: [i % 2 ? 'wifi' : 'cellular'] }, never: [], needs: [] });
  }
  return out;
}

/** The apps the queries come from: most of them have a rule, some have none. */
export function benchFacts(n: number, count: number): AppFacts[] {
  const out: AppFacts[] = [];
  for (let k = 0; k < count; k++) {
    const i = (k * 7919) % Math.max(n, 1);
    const uid = 1000 + (i % 50);
    if (k % 5 === 4) out.push({ uid, exe: `/usr/bin/unknown${k}`, unit: 'session-2.scope', app: null, flatpakId: null });
    else if (i % 3 === 0) out.push({ uid, exe: `/opt/app${i}/bin/app`, unit: null, app: null, flatpakId: null });
    else if (i % 3 === 1) out.push({ uid, exe: '/usr/bin/gjs', unit: `app-gnome-org.example.App${i}-1.scope`, app: `org.example.App${i}`, flatpakId: null });
    else out.push({ uid, exe: '/app/bin/app', unit: `app-flatpak-org.flathub.App${i}-1.scope`, app: `org.flathub.App${i}`, flatpakId: `org.flathub.App${i}` });
  }
  return out;
}

/** The same rules as a rules: section of the config (for the daemon's benchmark). */
export function benchRulesYaml(rules: readonly Rule[]): string {
  return rules.map((r) => {
    const m = Object.entries(r.match).map(([k, v]) => `${k}: ${typeof v === 'string' ? JSON.stringify(v) : String(v)}`).join(', ');
    const a = r.action.kind === 'deny' ? 'deny: true' : r.action.kind === 'only' ? `only: [${r.action.uplinks.join(', ')}]` : 'pass: true';
    return `  - name: r${r.id.slice(1)}\n    match: { ${m} }\n    ${a}\n`;
  }).join('');
}

/** µs per rule evaluation (RuleSet.decideFor for one socket) with n rules: p50, p99 over individually timed calls. */
export function measureRules(config: Config, n: number): { p50: number; p99: number; compileMs: number; hits: number } {
  const t0 = process.hrtime.bigint();
  const set = RuleSet.compile(config.rules, benchRules(n), config);
  const compileMs = Number(process.hrtime.bigint() - t0) / 1e6;
  const facts = benchFacts(n, 4096);
  const samples: number[] = [];
  let hits = 0;
  for (let round = 0; round < 2; round++) {
    for (let k = 0; k < 50_000; k++) {
      const f = facts[k % facts.length] as AppFacts;
      const destination = DESTS[k % 3] as string;
      const s = process.hrtime.bigint();
      const r = set.decideFor(f, [], { destination, proto: 'tcp', port: 443, needs: [] });
      const e = process.hrtime.bigint();
      if (round === 1) samples.push(Number(e - s) / 1000);
      if (r.rule) hits++;
    }
  }
  samples.sort((a, b) => a - b);
  const at = (q: number): number => samples[Math.min(samples.length - 1, Math.floor(q * samples.length))] ?? NaN;
  return { p50: at(0.5), p99: at(0.99), compileMs, hits };
}
