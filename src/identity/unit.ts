/**
 * systemd unit names (pure): what a service or scope unit's name says about the app in it.
 * Desktops name app units (https://systemd.io/DESKTOP_ENVIRONMENTS/)
 *   app-[<launcher>-]<ApplicationID>[@<RANDOM>].service
 *   app-[<launcher>-]<ApplicationID>-<RANDOM>.scope
 * and Flatpak `app-flatpak-<ApplicationID>-<N>.scope`. Inside a unit name '-' is escaped as
 * \x2d (and any byte outside [A-Za-z0-9:_.] as \xNN), so the last unescaped dash before the ID
 * separates the optional launcher.
 *
 * Shared by identify() (./app.ts, a connection's process) and classifyCgroup() (./cgroup.ts,
 * a cgroup directory).
 */

/** A systemd unit name (systemd's charset; a backslash only in \xNN escapes) of a service, scope or slice. */
const UNIT_NAME_RE = /^(?:[A-Za-z0-9:_.@-]|\\x[0-9a-fA-F]{2})+\.(?:service|scope|slice)$/;

/** Application IDs as desktop entries name them (reverse DNS mostly, "firefox-esr" too). */
const APP_ID_RE = /^[A-Za-z0-9_.+-]{1,255}$/;
const LAUNCHER_RE = /^[A-Za-z0-9_.-]{1,64}$/;

/** Whether `name` is a well-formed systemd .service, .scope or .slice name (anything else is a plain directory). */
export function isUnitName(name: string): boolean {
  return name.length <= 255 && UNIT_NAME_RE.test(name);
}

/** A well-formed .service or .scope name: a unit that holds processes (a slice does not). */
export function isProcessUnitName(name: string): boolean {
  return (name.endsWith('.service') || name.endsWith('.scope')) && isUnitName(name);
}

/** systemd unit-name unescaping: \xNN -> the byte. */
export function unescapeUnit(s: string): string {
  return s.replace(/\\x([0-9a-fA-F]{2})/g, (_, h: string) => String.fromCharCode(parseInt(h, 16)));
}

/**
 * Launcher and application ID of a desktop app unit name; null for other units, and for an ID
 * or launcher that unescapes to characters no application ID has (control characters, '/',
 * spaces: a hostile name is not an app).
 */
export function appOfUnit(unit: string | null): { launcher: string | null; app: string } | null {
  if (unit === null || !unit.startsWith('app-')) return null;
  let body: string;
  if (unit.endsWith('.scope')) {
    body = unit.slice(4, -'.scope'.length);
    const dash = body.lastIndexOf('-'); // the -<RANDOM> suffix is mandatory for scopes
    if (dash <= 0 || dash === body.length - 1) return null;
    body = body.slice(0, dash);
  } else if (unit.endsWith('.service')) {
    body = unit.slice(4, -'.service'.length);
    const at = body.indexOf('@');
    if (at >= 0) body = body.slice(0, at);
  } else {
    return null;
  }
  // Dashes inside the ID are escaped, so the last dash separates an optional launcher.
  const dash = body.lastIndexOf('-');
  const launcher = dash >= 0 ? unescapeUnit(body.slice(0, dash)) : null;
  const app = unescapeUnit(dash >= 0 ? body.slice(dash + 1) : body);
  if (!APP_ID_RE.test(app) || (launcher !== null && !LAUNCHER_RE.test(launcher))) return null;
  return { launcher, app };
}

/** The Flatpak ID in a scope name app-flatpak-<ID>-<N>.scope. */
export function flatpakOfUnit(unit: string | null): string | null {
  const a = appOfUnit(unit);
  return a !== null && a.launcher === 'flatpak' && unit!.endsWith('.scope') ? a.app : null;
}
