/** `waymark watch`: the daemon's events, live, one line each (text, or JSON with --json). */
import { formatBytes } from '../accounting/cost.js';
import { Client, DaemonUnavailable } from '../daemon/client.js';
import type { DaemonEvent, Topic } from '../daemon/events.js';

/** EX_UNAVAILABLE: the daemon is not there (any more). */
const EXIT_UNAVAILABLE = 69;

const list = (xs: readonly string[]): string => (xs.length > 0 ? xs.join(' ') : '-');

/** One event as a line of text (without the newline). */
export function formatEvent(e: DaemonEvent): string {
  const at = e.at.slice(11, 23); // HH:MM:SS.mmm (UTC)
  switch (e.type) {
    case 'uplink.changed':
      return `${at} uplink ${e.uplink}${e.ifname ? ` (${e.ifname})` : ''}: ${e.previous ? `${e.previous} -> ` : ''}${e.status}`
        + `, carrier ${e.carrier === null ? '-' : e.carrier ? 'yes' : 'no'}, addresses ${list(e.addresses)}`;
    case 'config.reloaded':
      return `${at} config reloaded: generation ${e.generation}, ${e.uplinks} uplinks, ${e.destinations} destinations, ${e.rules} rules`;
    case 'config.rejected':
      return `${at} config rejected (the running one stays): ${e.issues.map((i) => `${i.file}:${i.line}:${i.column} ${i.field}: ${i.message}`).join('; ') || e.file}`;
    case 'decision.denied':
      return `${at} denied ${e.exe ?? '(unknown program)'} (uid ${e.uid}, pid ${e.pid}${e.app ? `, app ${e.app}` : ''})`
        + ` -> ${e.address.includes(':') ? `[${e.address}]` : e.address}:${e.port}/${e.proto} (destination ${e.destination}${e.uplink ? `, uplink ${e.uplink}` : ''}): ${e.errno} ${e.reason}`;
    case 'session.started':
      return `${at} session ${e.id} started (uid ${e.uid}${e.uplink ? `, uplink ${e.uplink}` : ''}): ${e.command}`;
    case 'session.ended':
      return `${at} session ${e.id} ended (uid ${e.uid})`;
    case 'app.appeared':
      return `${at} app ${e.name} appeared (${e.kind} ${e.unit}, ${e.uid === null ? 'system' : `uid ${e.uid}`})`
        + `: rule ${e.rule ?? '-'}, uplink ${e.uplink ?? 'default routing'}`;
    case 'app.left':
      return `${at} app ${e.name} left (${e.unit}, ${e.uid === null ? 'system' : `uid ${e.uid}`})`;
    case 'prompt.asked': {
      const p = e.prompt;
      return `${at} prompt ${p.id} asked (uid ${p.app.uid}${p.app.pid !== null ? `, pid ${p.app.pid}` : ''}): ${p.app.name ?? p.app.exe ?? '(unknown program)'}`
        + ` -> ${p.target.host ?? p.target.address}:${p.target.port}/${p.target.proto} (destination ${p.target.destination}),`
        + ` choices ${list(p.choices.map((c) => c.uplink))}, rule ${p.rule}, until ${p.expiresAt}`;
    }
    case 'prompt.closed':
      return `${at} prompt ${e.id} closed (uid ${e.uid}): ${e.outcome.by === 'agent'
        ? `answered by uid ${e.outcome.uid}: ${'uplink' in e.outcome.answer.choice ? e.outcome.answer.choice.uplink : 'deny'} ${e.outcome.answer.scope}`
          + `${e.outcome.answer.minutes !== undefined ? ` ${e.outcome.answer.minutes} min` : ''}${e.outcome.answer.allDestinations === true ? ', all destinations' : ''}`
        : e.outcome.by}`;
    case 'usage.sampled':
      return `${at} usage: ${e.uplinks.map((u) => `${u.uplink} sent ${formatBytes(u.txBytes)}, received ${formatBytes(u.rxBytes)}`).join('; ') || 'nothing'}`;
    case 'budget.warning':
    case 'budget.exhausted':
    case 'budget.restored': {
      const what = e.type === 'budget.warning' ? 'nearly used' : e.type === 'budget.exhausted' ? (e.blocked ? 'exhausted, blocked' : 'exhausted') : 'has room again';
      return `${at} budget ${e.id} (${e.app ?? 'the whole uplink'}${e.uid !== null ? `, uid ${e.uid}` : ''} on ${e.uplink}) ${what}:`
        + ` ${formatBytes(e.usedBytes)} of ${formatBytes(e.limitBytes)}, period ends ${e.periodEnd}`;
    }
    case 'profile.activated':
      return `${at} profile ${e.name ?? '(none)'} active (${e.by}${e.sim !== undefined ? `, SIM ${e.sim}` : ''})`;
    case 'profile.changed':
      return `${at} profile ${e.name} ${e.change}`;
    case 'system.changed':
      return `${at} system: SIM ${e.sim ?? 'none'}, roaming ${list(e.roaming)} (generation ${e.generation})`;
    case 'events.lost':
      return `${at} events lost: ${e.count} (this watcher did not keep up; the last lost was #${e.lastSeq})`;
    default: {
      // A newer daemon's event type: shown as it came.
      const other: { type: string } = e;
      return `${at} ${other.type} ${JSON.stringify(other)}`;
    }
  }
}

/**
 * Streams events until SIGINT/SIGTERM (exit 0) or until the daemon goes (exit 69, with a
 * message). On stderr first: what it watches, once the subscription is in place.
 */
export async function watch(socket: string, o: { json: boolean; topics: readonly Topic[] }): Promise<number> {
  const client = new Client(socket);
  let done: (code: number) => void = () => undefined;
  const finished = new Promise<number>((resolve) => (done = resolve));
  const onSignal = (): void => {
    client.close();
    done(0);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const write = (e: DaemonEvent): void => {
    process.stdout.write((o.json ? JSON.stringify(e) : formatEvent(e)) + '\n');
  };
  let subscribed = false;
  try {
    const sub = await client.subscribe(o.topics, write, (why) => {
      // Before the subscription answered, the failed call says why (refused, not running).
      if (!subscribed) return;
      process.stderr.write(`waymark: ${why}; no more events\n`);
      done(EXIT_UNAVAILABLE);
    });
    subscribed = true;
    process.stderr.write(`watching ${sub.topics.join(', ')} events (${sub.seesAll ? 'of every user' : `of uid ${process.getuid?.() ?? '?'} and the whole device`}); Ctrl-C to stop\n`);
  } catch (e) {
    client.close();
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
    if (e instanceof DaemonUnavailable) {
      process.stderr.write(`waymark: ${e.message}\n`);
      return EXIT_UNAVAILABLE;
    }
    throw e;
  }
  return finished;
}
