/**
 * What app a cgroup belongs to, from its path alone (pure): the systemd layout
 * (https://systemd.io/DESKTOP_ENVIRONMENTS/, https://systemd.io/CGROUP_DELEGATION/):
 *
 *   system.slice/nginx.service                                  a system service
 *   user.slice/user-1000.slice/session-3.scope                  a login session (logind)
 *   user.slice/user-1000.slice/user@1000.service                the user's service manager
 *   user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-org.gnome.Chat-1234.scope
 *                                                              a desktop app (./unit.ts)
 *   .../user@1000.service/app.slice/app-flatpak-org.foo.Bar-5.scope   a Flatpak app
 *
 * The walk from the root: slices (`*.slice`) are the inner nodes a service manager makes; the
 * first service or scope below them is the unit. Only the system manager's user@UID.service is
 * entered as a manager of its own (its slices, then the user's units). Whatever lies below a
 * unit's own directory (a delegated subtree: a container, a browser's sandbox, a nested systemd,
 * a directory a user made with a unit's name) belongs to that enclosing unit, the outermost one
 * below its manager: its owner controls the subtree and could name its directories anything, so
 * nothing below the unit is trusted to name another unit or app. A plain directory among the
 * slices (not systemd's, e.g. Waymark's own `waymark/exec-42`) belongs to no unit: null; so do
 * slices and the root. Below user@UID.service a plain directory belongs to the user manager
 * itself (the user's delegated subtree).
 *
 * uid: from the system manager's user-UID.slice and user@UID.service (root makes those; a user
 * can only add below them); null elsewhere (system.slice).
 *
 * Kinds: 'app' a unit named like a desktop or Flatpak app (in any manager, as identify() sees
 * it); 'service' any other .service; 'login' session-ID.scope placed by logind under
 * user-UID.slice; 'scope' any other .scope (init.scope, a user's `systemd-run --scope`).
 */
import { appOfUnit, flatpakOfUnit, isProcessUnitName, isUnitName } from './unit.js';

export type CgroupKind = 'app' | 'service' | 'login' | 'scope';

export interface CgroupApp {
  readonly kind: CgroupKind;
  /** The enclosing unit, e.g. "app-gnome-org.gnome.Chat-1234.scope" or "nginx.service". */
  readonly unit: string;
  /** The application ID (unescaped), for kind 'app'; otherwise null. */
  readonly appId: string | null;
  /** The launcher part of an app unit's name ("gnome", "kde", "flatpak"), null when absent. */
  readonly launcher: string | null;
  /** The Flatpak ID of an app-flatpak-<ID>-<N>.scope. */
  readonly flatpakId: string | null;
  /** The user whose slice or manager holds the unit; null for the system's units. */
  readonly uid: number | null;
  /** What a user calls it: the Flatpak ID, else the application ID, else the unit. */
  readonly name: string;
  /** The cgroup is below the unit's own directory (a delegated subtree), not the unit's. */
  readonly nested: boolean;
}

const USER_SLICE_RE = /^user-(\d{1,10})\.slice$/;
const USER_MANAGER_RE = /^user@(\d{1,10})\.service$/;
const LOGIN_RE = /^session-[A-Za-z0-9]{1,32}\.scope$/;

function uidOf(m: RegExpExecArray | null): number | null {
  const n = m === null ? NaN : Number(m[1]);
  return Number.isSafeInteger(n) && n <= 0xffffffff ? n : null;
}

/**
 * The user a path belongs to: the uid of its user.slice/user-UID.slice (the system manager's,
 * where every one of a user's cgroups lives), for any directory there, a slice included; null
 * elsewhere (system.slice, the root).
 */
export function userOfCgroup(rel: string): number | null {
  const [top, slice] = rel.split('/');
  return top === 'user.slice' && slice !== undefined ? uidOf(USER_SLICE_RE.exec(slice)) : null;
}

interface Placement {
  unit: string;
  uid: number | null;
  /** Directly under a user-UID.slice of the system manager (where logind puts sessions). */
  inUserSlice: boolean;
  nested: boolean;
}

/** Where the path's unit is in the layout (see the module comment); null when there is none. */
function place(parts: readonly string[]): Placement | null {
  let uid: number | null = null;
  let userManager: string | null = null; // user@UID.service, once entered
  let inUserSlice = false;
  for (let i = 0; i < parts.length; i++) {
    const p = parts[i]!;
    const last = i === parts.length - 1;
    if (p.endsWith('.slice') && isUnitName(p)) {
      if (userManager === null) {
        const u = uidOf(USER_SLICE_RE.exec(p));
        inUserSlice = u !== null;
        uid ??= u;
      }
      continue;
    }
    if (isProcessUnitName(p)) {
      const manager = userManager === null ? uidOf(USER_MANAGER_RE.exec(p)) : null;
      if (manager !== null) {
        uid ??= manager;
        if (!last) {
          userManager = p;
          inUserSlice = false;
          continue;
        }
      }
      return { unit: p, uid, inUserSlice: inUserSlice && userManager === null, nested: !last };
    }
    // A plain directory: the user's own below their manager, nobody's among the system's slices.
    return userManager === null ? null : { unit: userManager, uid, inUserSlice: false, nested: true };
  }
  return null; // the root, or a slice
}

/**
 * The app a cgroup belongs to, for a path relative to a cgroup2 root ("system.slice/x.service";
 * a leading '/' and empty components are ignored), or null (see the module comment).
 */
export function classifyCgroup(rel: string): CgroupApp | null {
  const pl = place(rel.split('/').filter((p) => p !== ''));
  if (pl === null) return null;
  const { unit, uid, nested } = pl;
  const app = appOfUnit(unit);
  const flatpakId = flatpakOfUnit(unit);
  const kind: CgroupKind = app !== null ? 'app'
    : unit.endsWith('.service') ? 'service'
      : pl.inUserSlice && LOGIN_RE.test(unit) ? 'login' : 'scope';
  return {
    kind, unit, appId: app?.app ?? null, launcher: app?.launcher ?? null, flatpakId, uid,
    name: flatpakId ?? app?.app ?? unit, nested,
  };
}

/** The unit a cgroup path belongs to (the enclosing unit, see the module comment), or null. */
export function unitOf(cgroupPath: string | null): string | null {
  return cgroupPath === null ? null : (classifyCgroup(cgroupPath)?.unit ?? null);
}
