/**
 * What the device's own services say about its connections, as plain data: ModemManager (the
 * modems' SIMs, registration, bearers), NetworkManager (each device's metered state and DNS),
 * systemd-resolved (per-link DNS), and what `waymark sim set` says by hand. The D-Bus readers
 * (src/system/modemmanager.ts, networkmanager.ts, resolved.ts, watched by watcher.ts) produce it;
 * src/system/compose.ts folds it into the uplinks. Nothing here does I/O.
 */

/** A modem's 3GPP registration, from MMModem3gppRegistrationState. */
export type Registration = 'home' | 'roaming' | 'searching' | 'denied' | 'idle' | 'emergency' | 'unknown';

export interface SimFacts {
  /** The ICCID (Sim.SimIdentifier). */
  readonly iccid: string;
  /** MCC+MNC of the SIM's home network (Sim.OperatorIdentifier), e.g. "26201"; absent: not known. */
  readonly operator?: string;
  /** Sim.OperatorName (the home network's name), when known. */
  readonly operatorName?: string;
}

export interface BearerFacts {
  /** Its D-Bus object path. */
  readonly path: string;
  /** The network interface it brought up (Bearer.Interface); absent while it has none. */
  readonly interface?: string;
  /** The APN it was asked for (Bearer.Properties "apn"), as given. */
  readonly apn?: string;
  readonly connected: boolean;
  /** DNS servers of its IP configs (Ip4Config dns1..3, then Ip6Config dns1..3), in that order. */
  readonly dns: readonly string[];
}

export interface ModemFacts {
  /** Its D-Bus object path (/org/freedesktop/ModemManager1/Modem/N). */
  readonly path: string;
  /** The SIM in it (Modem.Sim, read from the Sim object); absent: none ("/") or not readable. */
  readonly sim?: SimFacts;
  /** Modem3gpp.RegistrationState; 'unknown' without the interface. */
  readonly registration: Registration;
  /** MCC+MNC of the network it is registered with (Modem3gpp.OperatorCode), when registered. */
  readonly operatorCode?: string;
  readonly bearers: readonly BearerFacts[];
}

/** A NetworkManager device (org.freedesktop.NetworkManager.Device). */
export interface DeviceFacts {
  /** Device.Interface (or IpInterface when it has one). */
  readonly interface: string;
  /** Device.Metered: yes/guess-yes → true, no/guess-no → false, unknown → absent. */
  readonly metered?: boolean;
  /** DNS servers of its Ip4Config then Ip6Config. */
  readonly dns: readonly string[];
}

/** systemd-resolved's DNS servers of one link (Manager.DNS entries with that ifindex). */
export interface ResolvedLinkFacts {
  readonly ifindex: number;
  readonly dns: readonly string[];
}

/** A SIM set by hand (`waymark sim set`): stands in for ModemManager's while set. */
export interface ManualSim {
  readonly iccid: string;
  readonly operator?: string;
  /** Registration by hand: roaming or at home (absent: not said; ModemManager's, else home). */
  readonly roaming?: boolean;
}

/** Which services answered, for `waymark status` and the logs. */
export interface ServicePresence {
  /** The system bus: 'off' (no address: `--system-bus none`), 'connected', or 'unavailable' (retrying). */
  readonly bus: 'off' | 'connected' | 'unavailable';
  readonly modemmanager: boolean;
  readonly networkmanager: boolean;
  readonly resolved: boolean;
}

export interface SystemFacts {
  readonly modems: readonly ModemFacts[];
  readonly devices: readonly DeviceFacts[];
  readonly resolved: readonly ResolvedLinkFacts[];
  readonly services: ServicePresence;
}

export const NO_SYSTEM_FACTS: SystemFacts = {
  modems: [], devices: [], resolved: [],
  services: { bus: 'off', modemmanager: false, networkmanager: false, resolved: false },
};

/**
 * MMModem3gppRegistrationState (ModemManager-enums.h): 0 idle, 1 home, 2 searching, 3 denied,
 * 4 unknown, 5 roaming, 6 home-sms-only, 7 roaming-sms-only, 8 emergency-only,
 * 9 home-csfb-not-preferred, 10 roaming-csfb-not-preferred, 11 attached-rlos.
 */
export function registrationOf(code: number): Registration {
  switch (code) {
    case 0: return 'idle';
    case 1: case 6: case 9: return 'home';
    case 2: return 'searching';
    case 3: return 'denied';
    case 5: case 7: case 10: return 'roaming';
    case 8: case 11: return 'emergency';
    default: return 'unknown';
  }
}
