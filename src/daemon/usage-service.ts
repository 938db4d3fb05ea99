/**
 * The control protocol's usage and budget methods (src/accounting/view.ts), and the budgets set
 * from the CLI (kept in the usage history's database, with the counts they limit).
 *
 * Who may do what: anyone may see their own apps' usage and budgets, and every uplink-wide budget
 * (device facts, like the uplinks' traffic in `status`); root and the waymark group see all. A
 * user may set, remove and reset budgets on their own apps; a whole uplink's budget, or one on
 * every user's app of a name, needs root or the waymark group. A budget from the config file is
 * changed there (`budget rm` refuses it); root and the group may reset it. A budget only ever
 * narrows what an app may do, so setting one on one's own app widens nothing.
 */
import type { ConfigBudget } from '../config/load.js';
import type { PeerCred } from '../native/index.js';
import type { StoredBudget } from '../accounting/history.js';
import type { AccountingService, BudgetDef, HistoryPort } from '../accounting/service.js';
import type { BudgetSetParams, BudgetView, UsageQuery, UsageResult } from '../accounting/view.js';
import type { UplinkState } from '../uplink/state.js';
import { mayChangeState } from './access.js';
import type { Handlers } from './protocol.js';
import { RequestError } from './server.js';

/** Budgets `budget set` may keep, per user and in all (each is one row and one track per app key). */
export const MAX_BUDGETS_PER_USER = 100;
export const MAX_BUDGETS = 2000;

/** The budgets set from the CLI, in memory and in the history database. */
export class BudgetBook {
  private stored: StoredBudget[];

  /** `invalid`: a stored budget that no longer parses (it is skipped). */
  constructor(private readonly history: Pick<HistoryPort, 'budgets' | 'putBudget' | 'deleteBudget'>, invalid?: (id: string, why: string) => void) {
    this.stored = history.budgets(invalid);
  }

  /** The config's budgets, then the stored ones. */
  all(config: readonly BudgetDef[]): BudgetDef[] {
    return [...config, ...this.stored.map(defOf)];
  }

  get(id: string): StoredBudget | undefined {
    return this.stored.find((b) => b.id === id);
  }

  put(b: StoredBudget): void {
    this.history.putBudget(b);
    this.stored = [...this.stored.filter((x) => x.id !== b.id), b];
  }

  remove(id: string): boolean {
    const gone = this.history.deleteBudget(id);
    this.stored = this.stored.filter((x) => x.id !== id);
    return gone;
  }

  ownedBy(uid: number): number {
    return this.stored.filter((b) => b.owner === uid).length;
  }

  get size(): number {
    return this.stored.length;
  }

  /** An id no budget has, stored or `taken` (the config's): "b-<n>". */
  freshId(taken: (id: string) => boolean): string {
    for (let n = 1; ; n++) {
      const id = `b-${n}`;
      if (!taken(id) && this.get(id) === undefined) return id;
    }
  }
}

/** The config file's budgets as the accounting runs them (set by the administrator: owner root). */
export const configBudgets = (budgets: readonly ConfigBudget[]): BudgetDef[] => budgets.map((b) => ({
  id: b.id, source: 'config', uplink: b.uplink, app: b.app ?? null, uid: b.uid, period: b.period, start: b.start,
  limit: b.limit, warnAt: b.warnAt, block: b.block, owner: 0,
}));

const defOf = (b: StoredBudget): BudgetDef => ({
  id: b.id, source: 'cli', uplink: b.spec.uplink, app: b.spec.app ?? null, uid: b.spec.uid, period: b.spec.period,
  start: b.spec.start, limit: b.spec.limit, warnAt: b.spec.warnAt, block: b.spec.block, owner: b.owner,
});

export interface UsageServiceDeps {
  readonly accounting: AccountingService;
  readonly book: BudgetBook;
  readonly world: () => { readonly uplinks: readonly UplinkState[]; readonly budgets: readonly BudgetDef[] };
}

export class UsageService {
  constructor(private readonly deps: UsageServiceDeps) {}

  handlers(): Pick<Handlers, 'usage.query' | 'budget.list' | 'budget.set' | 'budget.rm' | 'budget.reset'> {
    return {
      'usage.query': (p: UsageQuery, cred) => this.query(p, cred),
      'budget.list': async (_p, cred) => ({ budgets: await this.deps.accounting.list(cred) }),
      'budget.set': (p, cred) => this.set(p, cred),
      'budget.rm': (p, cred) => this.remove(p.id, cred),
      'budget.reset': (p, cred) => this.reset(p.id, cred),
    };
  }

  private query(p: UsageQuery, cred: PeerCred): Promise<UsageResult> {
    if (p.since !== undefined && p.until !== undefined && Date.parse(p.since) >= Date.parse(p.until)) {
      throw new RequestError({ code: 'EINVAL', message: `since (${p.since}) must be before until (${p.until})` });
    }
    return this.deps.accounting.query(p, cred);
  }

  private async set(p: BudgetSetParams, cred: PeerCred): Promise<BudgetView> {
    const admin = mayChangeState(cred);
    const u = this.deps.world().uplinks.find((x) => x.spec.name === p.uplink);
    if (u === undefined) throw new RequestError({ code: 'EINVAL', message: `no uplink named ${JSON.stringify(p.uplink)}` });
    if (p.app === undefined && !admin) {
      throw new RequestError({ code: 'EPERM', message: 'a whole uplink\'s budget needs root or membership of the waymark group; name your app with --app' });
    }
    if ('money' in p.limit && p.limit.currency !== u.spec.cost.currency) {
      throw new RequestError({ code: 'EINVAL', message: `uplink ${p.uplink} is priced in ${u.spec.cost.currency}, not ${p.limit.currency}` });
    }
    if ('money' in p.limit && u.spec.cost.perMB === 0) {
      throw new RequestError({ code: 'EINVAL', message: `uplink ${p.uplink} costs nothing per MB: a budget in money never runs out; give one in bytes` });
    }
    if (p.period === 'week' && p.start > 7) throw new RequestError({ code: 'EINVAL', message: 'a weekly budget starts on day 1 (Monday) to 7 (Sunday)' });
    const book = this.deps.book;
    const prev = p.id !== undefined ? book.get(p.id) : undefined;
    if (p.id !== undefined) {
      if (prev === undefined) {
        if (this.deps.world().budgets.some((b) => b.id === p.id)) throw new RequestError({ code: 'EPERM', message: `budget ${p.id} is set in the config file: change it there` });
        throw new RequestError({ code: 'ENOENT', message: `no budget ${p.id}` });
      }
      if (prev.owner !== cred.uid && !admin) throw new RequestError({ code: 'EPERM', message: `budget ${p.id} is not yours` });
    } else {
      if (book.size >= MAX_BUDGETS || book.ownedBy(cred.uid) >= MAX_BUDGETS_PER_USER) {
        throw new RequestError({ code: 'EBUSY', message: 'too many budgets: remove some first' });
      }
    }
    // An app budget of a user limits that user's app; root's and the group's, every user's app of that name.
    const uid = p.app === undefined ? null : admin ? prev?.spec.uid ?? null : cred.uid;
    const id = p.id ?? book.freshId((x) => this.deps.world().budgets.some((b) => b.id === x));
    book.put({ id, spec: { ...p, id, uid }, owner: prev?.owner ?? cred.uid });
    await this.deps.accounting.changed();
    return this.viewOf(id, cred);
  }

  private async remove(id: string, cred: PeerCred): Promise<{ id: string }> {
    const b = this.mayTouch(id, cred, 'remove');
    if (b.source === 'config') throw new RequestError({ code: 'EPERM', message: `budget ${id} is set in the config file: remove it there` });
    this.deps.book.remove(id);
    await this.deps.accounting.changed();
    return { id };
  }

  private async reset(id: string, cred: PeerCred): Promise<BudgetView> {
    const b = this.mayTouch(id, cred, 'reset');
    await this.deps.accounting.reset(b);
    return this.viewOf(id, cred);
  }

  private mayTouch(id: string, cred: PeerCred, what: string): BudgetDef {
    const b = this.deps.world().budgets.find((x) => x.id === id);
    if (b === undefined) throw new RequestError({ code: 'ENOENT', message: `no budget ${id}` });
    if (!mayChangeState(cred) && (b.source === 'config' || b.owner !== cred.uid)) {
      throw new RequestError({ code: 'EPERM', message: `budget ${id} is not yours to ${what}` });
    }
    return b;
  }

  private async viewOf(id: string, cred: PeerCred): Promise<BudgetView> {
    const v = (await this.deps.accounting.list(cred)).find((x) => x.id === id);
    if (v === undefined) throw new RequestError({ code: 'ENOENT', message: `no budget ${id}` });
    return v;
  }
}
