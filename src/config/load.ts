/**
 * Loads waymark.yaml: YAML → schema → cross-checks → the resolved Config.
 * Every problem becomes a ConfigIssue naming file, line, column and field; loading either
 * yields a whole Config or a list of issues, never half of one.
 */
import { readFile } from 'node:fs/promises';
import { isAlias, isCollection, isMap, isPair, isScalar, LineCounter, parseDocument, type Document, type Node } from 'yaml';
import type { z } from 'zod';
import { MAX_SLOTS } from '../constants.js';
import { INTERNET, type DestinationSpec } from '../destination/destination.js';
import { formatPrefix, overlaps, parsePrefix, type Prefix } from '../net/prefix.js';
import type { FixedAction, Rule, RuleMatch } from '../policy/rules.js';
import { userId } from '../identity/users.js';
import { counterName, nftUplinkId } from '../nftables/ruleset.js';
import { compileGlob } from '../glob.js';
import { globProblem, type UplinkSpec } from '../uplink/uplink.js';
import { configSchema, STABILITY_VALUES, warnPercent, type RawBudget, type RawConfig, type RawFixedAction, type RawProfile, type RawRule } from './schema.js';
import type { Profile, UplinkOverride } from '../profile/profile.js';
import { parseLimit } from '../accounting/cost.js';
import { startProblem } from '../accounting/budget.js';
import type { BudgetSetParams } from '../accounting/view.js';
import { errorMessage } from '../errors.js';

export const DEFAULT_CONFIG_PATH = '/etc/waymark/waymark.yaml';

export interface Config {
  readonly uplinks: readonly UplinkSpec[];
  /** Every destination, the Internet included (always present, always last). */
  readonly destinations: readonly DestinationSpec[];
  /** The rules of the file (src/policy/rules.ts), `apps:` entries included (read as rules). */
  readonly rules: readonly Rule[];
  /** The budgets of the file (read-only for `waymark budget`: source 'config'). */
  readonly budgets: readonly ConfigBudget[];
  /** What is accepted but should change (e.g. the `apps:` section), located like errors. */
  readonly notices: readonly ConfigIssue[];
  /** The file's profiles (src/profile/profile.ts); absent in configs made in code: none. */
  readonly profiles?: readonly Profile[];
  /** The profile chosen when none matches the SIM (`default_profile:`). */
  readonly defaultProfile?: string;
}

/**
 * A budget of the file, as `budget.set` takes one (src/accounting/view.ts) with its id always
 * given and `user` resolved: `uid` limits the budget to that user's app (null: any user's app
 * of that name, or the whole uplink when there is no `app`).
 */
export type ConfigBudget = Readonly<Omit<BudgetSetParams, 'id'> & { id: string; uid: number | null }>;

export interface ParseOptions {
  /** Resolves `match.user` and budgets' `user` (default: /etc/passwd). */
  readonly userId?: (name: string) => number | undefined;
}

export interface ConfigIssue {
  readonly file: string;
  readonly line: number;
  readonly column: number;
  /** Dotted path of the field, e.g. uplinks[1].kind. */
  readonly field: string;
  readonly message: string;
}

export class ConfigError extends Error {
  constructor(readonly issues: readonly ConfigIssue[]) {
    super(issues.map(formatIssue).join('\n'));
    this.name = 'ConfigError';
  }
}

export function formatIssue(i: ConfigIssue): string {
  return `${i.file}:${i.line}:${i.column}: ${i.field || '(top level)'}: ${i.message}`;
}

type Path = readonly (string | number)[];

export function fieldName(path: Path): string {
  return path.reduce<string>((s, p) => (typeof p === 'number' ? `${s}[${p}]` : s ? `${s}.${p}` : p), '');
}

export async function loadConfigFile(file: string): Promise<Config> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new ConfigError([{ file, line: 0, column: 0, field: '', message: `cannot read: ${err.code ?? err.message}` }]);
  }
  return parseConfig(text, file);
}

/** A YAML document read for validation: its JS value and how to locate a path in it. */
interface ReadDocument {
  readonly data: unknown;
  readonly locate: (path: Path, key?: string) => number | undefined;
  readonly at: (offset: number | undefined, field: string, message: string) => ConfigIssue;
}

/** YAML text → its JS value (aliases bounded), every syntax problem located; throws ConfigError. */
function readDocument(text: string, file: string): ReadDocument {
  const lc = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lc, prettyErrors: false, uniqueKeys: true });
  const at = (offset: number | undefined, field: string, message: string): ConfigIssue => {
    const pos = offset === undefined ? { line: 1, col: 1 } : lc.linePos(offset);
    return { file, line: pos.line, column: pos.col, field, message };
  };
  if (doc.errors.length > 0) {
    throw new ConfigError(doc.errors.map((e) => at(e.pos[0], '', e.message.split('\n')[0] ?? e.message)));
  }
  const locate = (path: Path, key?: string): number | undefined => locateNode(doc, path, key);

  const bomb = aliasExpansion(doc);
  if (bomb) throw new ConfigError([at(bomb.offset, fieldName(bomb.path), bomb.message)]);
  let data: unknown;
  try {
    // aliasExpansion() bounded what aliases add, so the library's own (coarser) limit is off.
    data = doc.toJS({ maxAliasCount: -1 }) as unknown;
  } catch (e) {
    throw new ConfigError([at(undefined, '', errorMessage(e))]);
  }
  return { data, locate, at };
}

/** The document validated by the schema; throws ConfigError with every schema issue, located. */
function schemaParse(d: ReadDocument): RawConfig {
  const parsed = configSchema.safeParse(d.data ?? {});
  if (!parsed.success) throw new ConfigError(parsed.error.issues.flatMap((i) => zodIssue(i, d.locate, d.at)));
  return parsed.data;
}

/** Parses and validates config text; throws ConfigError with every issue found. */
export function parseConfig(text: string, file = '<config>', opts: ParseOptions = {}): Config {
  const d = readDocument(text, file);
  const raw = schemaParse(d);
  const issues: ConfigIssue[] = [];
  const check = (path: Path, message: string): void => {
    issues.push(d.at(d.locate(path), fieldName(path), message));
  };
  const notices: ConfigIssue[] = [];
  const config = resolve(raw, check, opts.userId ?? ((n) => userId(n)), (path, message) => notices.push(d.at(d.locate(path), fieldName(path), message)));
  const rawProfiles = (d.data as { profiles?: unknown } | null)?.profiles;
  const profiles = resolveProfiles(raw, Array.isArray(rawProfiles) ? rawProfiles : [], config, check, opts.userId ?? ((n) => userId(n)), file);
  if (issues.length > 0) throw new ConfigError(issues);
  return { ...config, notices, profiles, ...(raw.default_profile !== undefined ? { defaultProfile: raw.default_profile } : {}) };
}

/**
 * A profile document (what `waymark profile export` prints, `profile import` reads): a config
 * document with `version` and exactly one profile in `profiles:`, nothing else; its references
 * checked against `base` (the running config). Throws ConfigError with every issue, located.
 */
export function parseProfileText(text: string, file: string, base: Config, opts: ParseOptions = {}): Profile {
  const d = readDocument(text, file);
  const raw = schemaParse(d);
  const issues: ConfigIssue[] = [];
  const check = (path: Path, message: string): void => {
    issues.push(d.at(d.locate(path), fieldName(path), message));
  };
  const top = d.data !== null && typeof d.data === 'object' ? Object.keys(d.data) : [];
  for (const k of top) if (k !== 'version' && k !== 'profiles') check([k], `a profile document holds version and profiles only (${k} belongs in waymark.yaml)`);
  if (raw.profiles.length !== 1) check(['profiles'], `a profile document holds exactly one profile (${raw.profiles.length} given)`);
  if (raw.default_profile !== undefined) check(['default_profile'], 'a profile document holds version and profiles only');
  const rawProfiles = (d.data as { profiles?: unknown }).profiles;
  const profiles = issues.length > 0 ? [] : resolveProfiles(raw, Array.isArray(rawProfiles) ? rawProfiles : [], base, check, opts.userId ?? ((n) => userId(n)), file);
  const p = profiles[0];
  if (issues.length > 0 || p === undefined) throw new ConfigError(issues);
  return p;
}

function zodIssue(
  issue: z.core.$ZodIssue,
  locate: (path: Path, key?: string) => number | undefined,
  at: (offset: number | undefined, field: string, message: string) => ConfigIssue,
): ConfigIssue[] {
  const path = issue.path.filter((p): p is string | number => typeof p !== 'symbol');
  if (issue.code === 'unrecognized_keys') {
    return issue.keys.map((k) => at(locate(path, k), fieldName([...path, k]), `unknown field "${k}"`));
  }
  let message = issue.message;
  if (issue.code === 'invalid_type' && message.includes('received undefined')) message = 'required field is missing';
  if (issue.code === 'invalid_value' && 'values' in issue) message = `must be one of: ${issue.values.map(String).join(', ')}`;
  return [at(locate(path), fieldName(path), message)];
}

/**
 * Most nodes that aliases may add to the document when expanded (each alias counts the size of
 * what it stands for). A real config needs a handful; a "billion laughs" file would otherwise
 * have the schema walk millions of nodes.
 */
export const MAX_ALIAS_NODES = 10_000;

/**
 * Walks the document in order, counting what each alias expands to, and returns the first alias
 * at which the total passes MAX_ALIAS_NODES (or that refers to a node containing itself).
 */
function aliasExpansion(doc: Document): { offset: number | undefined; path: Path; message: string } | undefined {
  const sizes = new Map<Node, number>();
  const open = new Set<Node>();
  let added = 0;
  // Size of the node once every alias in it is expanded (Infinity for a cycle), memoised.
  const size = (node: unknown): number => {
    if (isAlias(node)) {
      const target = node.resolve(doc);
      return target ? size(target) : 1;
    }
    if (!isCollection(node)) return 1;
    const known = sizes.get(node);
    if (known !== undefined) return known;
    if (open.has(node)) return Infinity;
    open.add(node);
    let n = 1;
    for (const item of node.items) n += isPair(item) ? size(item.key) + size(item.value) : size(item);
    open.delete(node);
    sizes.set(node, n);
    return n;
  };
  type Found = { offset: number | undefined; path: Path; message: string };
  const walk = (node: unknown, path: Path): Found | undefined => {
    if (isAlias(node)) {
      if (!node.resolve(doc)) return { offset: node.range?.[0], path, message: `alias *${node.source} has no anchor &${node.source} before it` };
      added += size(node);
      if (added > MAX_ALIAS_NODES) {
        const message = added === Infinity ? `alias *${node.source} refers to a node that contains it`
          : `aliases expand to more than ${MAX_ALIAS_NODES} nodes (alias *${node.source}): refusing what looks like an alias bomb`;
        return { offset: node.range?.[0], path, message };
      }
      return undefined;
    }
    if (!isCollection(node)) return undefined;
    for (const [i, item] of node.items.entries()) {
      if (isPair(item)) {
        const key = isScalar(item.key) ? String(item.key.value) : String(i);
        const found = walk(item.key, path) ?? walk(item.value, [...path, key]);
        if (found) return found;
      } else {
        const found = walk(item, [...path, i]);
        if (found) return found;
      }
    }
    return undefined;
  };
  return walk(doc.contents, []);
}

/** Offset of the node at `path` (or of the key `key` inside that map), falling back to the nearest parent. */
function locateNode(doc: Document, path: Path, key?: string): number | undefined {
  for (let n = path.length; n >= 0; n--) {
    const node = doc.getIn(path.slice(0, n), true);
    if (node && typeof node === 'object' && 'range' in node) {
      if (key !== undefined && n === path.length && isMap(node)) {
        const pair = node.items.find((p) => isScalar(p.key) && p.key.value === key);
        if (pair && isScalar(pair.key) && pair.key.range) return pair.key.range[0];
      }
      const range = (node as { range?: [number, number, number] | null }).range;
      if (range) return range[0];
    }
  }
  return undefined;
}

/** Cross-field checks and defaults; reports through `check`. */
function resolve(
  raw: RawConfig, check: (path: Path, message: string) => void, users: (name: string) => number | undefined, notice: (path: Path, message: string) => void,
): Omit<Config, 'notices'> {
  const seen = new Map<string, number>();
  const nftIds = new Map<string, number>();
  if (raw.uplinks.length > MAX_SLOTS) {
    check(['uplinks', MAX_SLOTS], `too many uplinks: at most ${MAX_SLOTS} are supported (${raw.uplinks.length} given)`);
  }
  const uplinks: UplinkSpec[] = raw.uplinks.map((u, i) => {
    const prev = seen.get(u.name);
    if (prev !== undefined) check(['uplinks', i, 'name'], `duplicate uplink "${u.name}" (first defined as uplinks[${prev}])`);
    seen.set(u.name, i);
    const sameId = nftIds.get(nftUplinkId(u.name));
    if (sameId !== undefined && prev === undefined) {
      check(['uplinks', i, 'name'], `uplink "${u.name}" and uplinks[${sameId}] "${raw.uplinks[sameId]?.name ?? ''}" differ only in "-" and "_": ` +
        `both would be counted as ${counterName(u.name, 'tx')} in nftables; rename one`);
    }
    if (sameId === undefined) nftIds.set(nftUplinkId(u.name), i);
    const iface = typeof u.match === 'string' ? u.match : undefined;
    const badGlob = iface === undefined ? undefined : globProblem(iface);
    if (badGlob !== undefined) check(['uplinks', i, 'match'], badGlob);
    if (iface === 'lo') check(['uplinks', i, 'match'], 'the loopback interface is never an uplink');
    if (iface === undefined && u.kind !== 'cellular') check(['uplinks', i, 'match', 'apn'], `only cellular uplinks have an APN (kind is ${u.kind})`);
    if (u.sim && u.kind !== 'cellular') check(['uplinks', i, 'sim'], `only cellular uplinks have a SIM (kind is ${u.kind})`);
    if (u.cost?.per_minute && u.kind !== 'dialup') check(['uplinks', i, 'cost', 'per_minute'], 'a per-minute price applies to dial-up uplinks only');
    const gateway: UplinkSpec['gateway'] = {};
    if (u.gateway?.ipv4 !== undefined) {
      if (u.gateway.ipv4.includes(':')) check(['uplinks', i, 'gateway', 'ipv4'], 'must be an IPv4 address');
      gateway[4] = u.gateway.ipv4;
    }
    if (u.gateway?.ipv6 !== undefined) {
      if (!u.gateway.ipv6.includes(':')) check(['uplinks', i, 'gateway', 'ipv6'], 'must be an IPv6 address');
      gateway[6] = u.gateway.ipv6;
    }
    return {
      name: u.name,
      match: iface ?? '',
      ...(iface === undefined && typeof u.match === 'object' ? { apn: u.match.apn } : {}),
      ...(u.roaming !== undefined ? { roamingSet: true } : {}),
      sources: {
        match: iface === undefined ? 'none' : 'config',
        metered: u.metered === undefined ? 'kind' : 'config',
        roaming: u.roaming === undefined ? 'default' : 'config',
        dns: u.dns && u.dns.length > 0 ? 'config' : 'none',
        sim: u.sim ? 'config' : 'none',
      },
      kind: u.kind,
      cost: { perMB: u.cost?.per_mb ?? 0, perMinute: u.cost?.per_minute ?? 0, currency: u.cost?.currency ?? 'EUR' },
      metered: u.metered ?? (u.kind === 'cellular' || u.kind === 'dialup'),
      roaming: u.roaming ?? false,
      ...(u.sim ? { sim: { iccid: u.sim.iccid, ...(u.sim.apn !== undefined ? { apn: u.sim.apn } : {}) } } : {}),
      preference: u.preference,
      gateway,
      dns: u.dns ?? [],
      properties: {
        ...(u.bandwidth_mbps !== undefined ? { bandwidthMbps: u.bandwidth_mbps } : {}),
        ...(u.latency_ms !== undefined ? { latencyMs: u.latency_ms } : {}),
        ...(u.stability !== undefined ? { stability: typeof u.stability === 'number' ? u.stability : STABILITY_VALUES[u.stability] } : {}),
      },
    };
  });
  raw.uplinks.forEach((u, i) => {
    const same = (o: typeof u): boolean => typeof o.match === typeof u.match &&
      (typeof u.match === 'string' ? o.match === u.match : typeof o.match === 'object' && o.match.apn.toLowerCase() === u.match.apn.toLowerCase());
    const other = raw.uplinks.findIndex((o, j) => j < i && same(o));
    if (other >= 0) {
      check(['uplinks', i, 'match'], typeof u.match === 'string' ? `interface "${u.match}" is already matched by uplinks[${other}]`
        : `APN "${u.match.apn}" is already matched by uplinks[${other}]`);
    }
  });

  const destinations: DestinationSpec[] = [];
  const claimed: { prefix: Prefix; dest: string }[] = [];
  const domains = new Map<string, string>();
  const destSeen = new Map<string, number>();
  let internet: DestinationSpec | undefined;
  raw.destinations.forEach((d, i) => {
    const prev = destSeen.get(d.name);
    if (prev !== undefined) check(['destinations', i, 'name'], `duplicate destination "${d.name}" (first defined as destinations[${prev}])`);
    destSeen.set(d.name, i);
    d.via.forEach((v, j) => {
      if (!seen.has(v)) check(['destinations', i, 'via', j], `no uplink named "${v}"`);
      if (d.via.indexOf(v) !== j) check(['destinations', i, 'via', j], `uplink "${v}" listed twice`);
    });
    const prefixes = d.prefixes.map((t) => parsePrefix(t) as Prefix);
    prefixes.forEach((p, j) => {
      const clash = claimed.find((c) => overlaps(c.prefix, p));
      if (clash) {
        check(['destinations', i, 'prefixes', j], `${formatPrefix(p)} overlaps ${formatPrefix(clash.prefix)} of destination "${clash.dest}"`);
      }
      claimed.push({ prefix: p, dest: d.name });
    });
    const doms = d.domains.map((x) => x.toLowerCase());
    doms.forEach((dom, j) => {
      const owner = domains.get(dom);
      if (owner !== undefined) check(['destinations', i, 'domains', j], `domain ${dom} already belongs to destination "${owner}"`);
      domains.set(dom, d.name);
    });
    const spec: DestinationSpec = { name: d.name, prefixes, domains: doms, via: d.via };
    if (d.name === INTERNET) {
      if (prefixes.length > 0) check(['destinations', i, 'prefixes'], 'the internet is the default destination: it takes no prefixes');
      internet = spec;
    } else destinations.push(spec);
  });
  destinations.push(internet ?? { name: INTERNET, prefixes: [], domains: [], via: uplinks.map((u) => u.name) });

  const refs: Refs = { check, users, uplinks, destNames: new Set(destinations.map((d) => d.name)) };
  const ruleSeen = new Map<string, string>();
  const rules = resolveRules(raw.rules, ['rules'], refs, ruleSeen, { source: 'config' });

  // The apps: section of earlier versions: each entry a rule for every destination.
  if (raw.apps.length > 0) {
    notice(['apps'], 'apps: is read as rules: (each entry as a rule for every destination: uplinks: as only:, deny: as never:); move them to rules: to use destinations and the other actions');
  }
  raw.apps.forEach((a, i) => {
    const prev = ruleSeen.get(a.name);
    if (prev !== undefined) check(['apps', i, 'name'], `duplicate rule "${a.name}" (first defined as ${prev})`);
    ruleSeen.set(a.name, `apps[${i}]`);
    for (const field of ['uplinks', 'deny'] as const) (a[field] ?? []).forEach((v, j) => uplinkRef(refs, ['apps', i, field, j], v));
    a.deny.forEach((v, j) => {
      if (a.uplinks?.includes(v)) check(['apps', i, 'deny', j], `uplink "${v}" is both allowed and denied`);
    });
    globProblems(check, ['apps', i], a.match, ['unit', 'app', 'flatpak']);
    const match: RuleMatch = Object.fromEntries(Object.entries(a.match).filter(([, v]) => v !== undefined));
    rules.push({
      id: a.name, source: 'config', match, action: a.uplinks ? { kind: 'only', uplinks: a.uplinks } : { kind: 'use', uplinks: [] }, never: a.deny, needs: a.needs,
    });
  });
  const budgets = resolveBudgets(raw.budgets, ['budgets'], refs, new Map());
  return { uplinks, destinations, rules, budgets };
}

/** What rules and budgets refer to: the uplinks and destinations they may name, and the users. */
interface Refs {
  readonly check: (path: Path, message: string) => void;
  readonly users: (name: string) => number | undefined;
  readonly uplinks: readonly UplinkSpec[];
  readonly destNames: ReadonlySet<string>;
}

/** An uplink name a rule lists: it must be one of the config's. */
function uplinkRef(refs: Refs, path: Path, v: string): void {
  if (!refs.uplinks.some((u) => u.name === v)) refs.check(path, `no uplink named "${v}"`);
}

function globProblems(check: Refs['check'], path: Path, m: Record<string, unknown>, fields: readonly string[]): void {
  for (const field of fields) {
    const pattern = m[field];
    const bad = typeof pattern === 'string' ? compileGlob(pattern) : undefined;
    if (typeof bad === 'string') check([...path, 'match', field], bad);
  }
}

/**
 * The rules of a `rules:` list at `prefix` (the file's, or a profile's); `seen` collects their
 * names (a duplicate is reported). A profile's rules get the source 'profile' and an id unique
 * in any rule set ("name@profile").
 */
function resolveRules(raw: readonly RawRule[], prefix: Path, refs: Refs, seen: Map<string, string>, of: { source: 'config' } | { source: 'profile'; profile: string }): Rule[] {
  const { check, users } = refs;
  return raw.map((r, i) => {
    const at: Path = [...prefix, i];
    const prev = seen.get(r.name);
    if (prev !== undefined) check([...at, 'name'], `duplicate rule "${r.name}" (first defined as ${prev})`);
    seen.set(r.name, fieldName(at));
    const actions = (['use', 'only', 'deny', 'pass', 'ask'] as const).filter((k) => r[k] !== undefined);
    if (actions.length > 1) check([...at, actions[1] ?? ''], `a rule has one action: ${actions.join(' and ')} given`);
    for (const field of ['use', 'only', 'never'] as const) (r[field] ?? []).forEach((v, j) => uplinkRef(refs, [...at, field, j], v));
    const def = r.ask?.default;
    if (def !== undefined && typeof def !== 'string') ('use' in def ? def.use : def.only).forEach((v, j) => uplinkRef(refs, [...at, 'ask', 'default', 'use' in def ? 'use' : 'only', j], v));
    r.never.forEach((v, j) => {
      if (r.only?.includes(v) || r.use?.includes(v)) check([...at, 'never', j], `uplink "${v}" is both listed and never to be used`);
    });
    const { user, ...m } = r.match;
    if (m.destination !== undefined && !refs.destNames.has(m.destination)) check([...at, 'match', 'destination'], `no destination named "${m.destination}"`);
    globProblems(check, at, m, ['exe', 'unit', 'app', 'flatpak', 'name']);
    let uid = m.uid;
    if (user !== undefined) {
      const found = users(user.replace(/\$$/, ''));
      if (found === undefined) check([...at, 'match', 'user'], `no user named "${user}" on this machine`);
      else if (uid !== undefined && uid !== found) check([...at, 'match', 'user'], `user ${user} is uid ${found}, not ${uid}`);
      uid = found ?? uid;
    }
    const match: RuleMatch = Object.fromEntries(Object.entries({ ...m, uid }).filter(([, v]) => v !== undefined));
    const action = r.ask ? { kind: 'ask' as const, default: fixedAction(r.ask.default), timeoutMs: r.ask.timeout * 1000 } : ruleAction(r);
    const rule = { match, action, never: r.never, needs: r.needs };
    return of.source === 'config' ? { id: r.name, source: 'config', ...rule } : { id: `${r.name}@${of.profile}`, source: 'profile', profile: of.profile, ...rule };
  });
}

/** The budgets of a `budgets:` list at `prefix`; `seen` holds the ids taken (with where), and collects these. */
function resolveBudgets(raw: readonly RawBudget[], prefix: Path, refs: Refs, seen: Map<string, string>): ConfigBudget[] {
  const { check, users } = refs;
  return raw.map((b, i): ConfigBudget => {
    const at: Path = [...prefix, i];
    const id = b.id ?? budgetId(b);
    const prev = seen.get(id);
    if (prev !== undefined) {
      check(b.id !== undefined ? [...at, 'id'] : at, b.id !== undefined ? `duplicate budget "${id}" (first defined as ${prev})`
        : `this budget and ${prev} are both "${id}": give one an id`);
    }
    seen.set(id, fieldName(at));
    const start = b.start ?? 1;
    const badStart = startProblem(b.period, start);
    if (badStart !== undefined) check([...at, 'start'], badStart);
    const limit = parseLimit(b.limit); // the schema checked it parses
    const uplink = refs.uplinks.find((u) => u.name === b.uplink);
    if (uplink === undefined) check([...at, 'uplink'], `no uplink named "${b.uplink}"`);
    else if ('money' in limit) {
      if (limit.currency !== uplink.cost.currency) check([...at, 'limit'], `uplink "${uplink.name}" is priced in ${uplink.cost.currency}, not ${limit.currency}`);
      else if (!(uplink.cost.perMB > 0)) {
        check([...at, 'limit'], `uplink "${uplink.name}" has no price per MB (cost.per_mb): a money budget on it can never run out; give a size such as 500MB`);
      }
    }
    let uid: number | null = null;
    if (b.user !== undefined) {
      if (b.app === undefined) check([...at, 'user'], 'user says whose app the budget limits: give app too (without app, a budget is the whole uplink\'s)');
      const found = users(b.user.replace(/\$$/, ''));
      if (found === undefined) check([...at, 'user'], `no user named "${b.user}" on this machine`);
      uid = found ?? null;
    }
    const warnAt = b.warn_at === undefined ? 0.8 : typeof b.warn_at === 'number' ? b.warn_at : (warnPercent(b.warn_at) ?? 0.8);
    return {
      id, uplink: b.uplink, ...(b.app !== undefined ? { app: b.app } : {}), uid, period: b.period, start, limit, warnAt, block: b.block,
    };
  });
}

/**
 * The file's profiles (or an import's one), checked against `base`'s uplinks, destinations and
 * budgets. `data` is each profile as written (before defaults): a profile's `raw`. Also checks
 * default_profile names one of them.
 */
function resolveProfiles(raw: RawConfig, data: readonly unknown[], base: Omit<Config, 'notices'>, check: Refs['check'], users: Refs['users'], file: string): Profile[] {
  const destNames = new Set(base.destinations.map((d) => d.name));
  const refs: Refs = { check, users, uplinks: base.uplinks, destNames };
  const names = new Map<string, number>();
  const simOwner = new Map<string, string>();
  const budgetIds = new Map(base.budgets.map((b) => [b.id, `the configuration's budget "${b.id}"`] as const));
  const profiles = raw.profiles.map((p: RawProfile, i): Profile => {
    const at: Path = ['profiles', i];
    const prev = names.get(p.name);
    if (prev !== undefined) check([...at, 'name'], `duplicate profile "${p.name}" (first defined as profiles[${prev}])`);
    names.set(p.name, i);
    p.sims.forEach((s, j) => {
      const owner = simOwner.get(s);
      if (owner !== undefined) check([...at, 'sims', j], `SIM ${s} is already tied to ${owner}`);
      else simOwner.set(s, `profile "${p.name}" (${fieldName([...at, 'sims', j])})`);
    });
    p.operators.forEach((o, j) => {
      if (p.operators.indexOf(o) !== j) check([...at, 'operators', j], `operator ${o} listed twice`);
    });
    if (typeof p.roaming === 'object') {
      p.roaming.only.forEach((d, j) => {
        if (!destNames.has(d)) check([...at, 'roaming', 'only', j], `no destination named "${d}"`);
      });
    }
    const overridden = new Set<string>();
    const uplinks = p.uplinks.map((u, j): UplinkOverride => {
      if (!base.uplinks.some((x) => x.name === u.name)) check([...at, 'uplinks', j, 'name'], `no uplink named "${u.name}"`);
      if (overridden.has(u.name)) check([...at, 'uplinks', j, 'name'], `uplink "${u.name}" listed twice`);
      overridden.add(u.name);
      return {
        name: u.name,
        ...(u.cost !== undefined ? { cost: { perMB: u.cost.per_mb, perMinute: u.cost.per_minute, currency: u.cost.currency } } : {}),
        ...(u.metered !== undefined ? { metered: u.metered } : {}),
        ...(u.preference !== undefined ? { preference: u.preference } : {}),
        properties: {
          ...(u.bandwidth_mbps !== undefined ? { bandwidthMbps: u.bandwidth_mbps } : {}),
          ...(u.latency_ms !== undefined ? { latencyMs: u.latency_ms } : {}),
          ...(u.stability !== undefined ? { stability: typeof u.stability === 'number' ? u.stability : STABILITY_VALUES[u.stability] } : {}),
        },
      };
    });
    // Budgets on the uplinks as the profile prices them (a money budget needs its per_mb).
    const priced = base.uplinks.map((x) => {
      const o = uplinks.find((y) => y.name === x.name);
      return o?.cost ? { ...x, cost: o.cost } : x;
    });
    const rules = resolveRules(p.rules, [...at, 'rules'], refs, new Map(), { source: 'profile', profile: p.name });
    const budgets = resolveBudgets(p.budgets, [...at, 'budgets'], { ...refs, uplinks: priced }, new Map(budgetIds));
    return {
      name: p.name, ...(p.description !== undefined ? { description: p.description } : {}), sims: p.sims, operators: p.operators,
      roaming: p.roaming, uplinks, rules, budgets, raw: data[i] ?? {}, file,
    };
  });
  if (raw.default_profile !== undefined && !names.has(raw.default_profile)) check(['default_profile'], `no profile named "${raw.default_profile}"`);
  return profiles;
}

/** The id of a budget written without one: uplink, app, user and period in lower case, "-" between ("cellular-org-mozilla-firefox-month"). */
function budgetId(b: RawBudget): string {
  const words = [b.uplink, b.app, b.user, b.period].filter((w): w is string => w !== undefined);
  return words.join('-').toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-+/, '').slice(0, 40).replace(/-+$/, '');
}

/** The action of a rule as written (none given: `use` nothing in particular, so `never`/`needs` alone make a rule). */
function ruleAction(r: RawRule): FixedAction {
  if (r.deny) return { kind: 'deny' };
  if (r.pass) return { kind: 'pass' };
  if (r.only) return { kind: 'only', uplinks: r.only };
  return { kind: 'use', uplinks: r.use ?? [] };
}

export function fixedAction(a: RawFixedAction): FixedAction {
  if (a === 'deny' || a === 'pass') return { kind: a };
  return 'use' in a ? { kind: 'use', uplinks: a.use } : { kind: 'only', uplinks: a.only };
}

