/**
 * The one adapter between Waymark's routing model and the kernel: rtnetlink dumps to observe,
 * rtnetlink requests to apply a Plan, and a multicast subscription that reports changes.
 */
import { AF_INET, AF_INET6, decodeAddr, decodeLink, decodeRoute, decodeRule, dumpRequestBody, encodeRoute, encodeRule,
  NLM_F, RTM, RTMGRP, type AddrMsg, type LinkMsg, type NlMessage, type RouteMsg, type RuleMsg } from '../netlink/message.js';
import { NetlinkError, RtnlSocket } from '../netlink/socket.js';
import { describeRoute, describeRule } from './describe.js';
import type { Plan } from './reconcile.js';

const AF_UNSPEC = 0;

export interface KernelSnapshot {
  readonly links: readonly LinkMsg[];
  readonly addrs: readonly AddrMsg[];
  readonly routes: readonly RouteMsg[];
  readonly rules: readonly RuleMsg[];
}

export interface ApplyResult {
  readonly applied: number;
  readonly errors: readonly Error[];
}

const defined = <T>(x: T | undefined): x is T => x !== undefined;

export class KernelRouting {
  private readonly sock = new RtnlSocket();

  async snapshot(): Promise<KernelSnapshot> {
    const dump = (type: number, family: number): Promise<NlMessage[]> =>
      this.sock.request(type, NLM_F.DUMP, dumpRequestBody(type, family), `dump ${type}`);
    const links = (await dump(RTM.GETLINK, AF_UNSPEC)).map(decodeLink).filter(defined);
    const addrs = (await dump(RTM.GETADDR, AF_UNSPEC)).map(decodeAddr).filter(defined);
    const routes = [...(await dump(RTM.GETROUTE, AF_INET)), ...(await dump(RTM.GETROUTE, AF_INET6))].map(decodeRoute).filter(defined);
    const rules = [...(await dump(RTM.GETRULE, AF_INET)), ...(await dump(RTM.GETRULE, AF_INET6))].map(decodeRule).filter(defined);
    return { links, addrs, routes, rules };
  }

  /** Applies a plan: adds before deletes, every step attempted, all errors returned together. */
  async apply(plan: Plan, ifname?: (index: number) => string | undefined): Promise<ApplyResult> {
    let applied = 0;
    const errors: Error[] = [];
    const step = async (type: number, flags: number, body: Buffer, what: string, benign: readonly string[]): Promise<void> => {
      try {
        await this.sock.request(type, flags, body, what);
        applied++;
      } catch (e) {
        if (e instanceof NetlinkError && benign.includes(e.code)) return;
        errors.push(e instanceof Error ? e : new Error(String(e)));
      }
    };
    const ADD = NLM_F.CREATE | NLM_F.REPLACE;
    for (const r of plan.addRoutes) await step(RTM.NEWROUTE, ADD, encodeRoute(r), `add: ${describeRoute(r, ifname)}`, []);
    for (const r of plan.addRules) await step(RTM.NEWRULE, NLM_F.CREATE | NLM_F.EXCL, encodeRule(r), `add: ${describeRule(r)}`, ['EEXIST']);
    for (const r of plan.delRules) await step(RTM.DELRULE, 0, encodeRule(r), `delete: ${describeRule(r)}`, ['ENOENT', 'ESRCH']);
    for (const r of plan.delRoutes) await step(RTM.DELROUTE, 0, encodeRoute(r), `delete: ${describeRoute(r, ifname)}`, ['ENOENT', 'ESRCH']);
    return { applied, errors };
  }

  /** Follows the kernel's changes (see watchKernel). */
  watch(onChange: (lost: boolean, m?: NlMessage) => void): { close(): void } {
    return watchKernel(onChange);
  }

  close(): void {
    this.sock.close();
  }
}

/**
 * Calls `onChange` for every link, address, route or rule change (both families) and every
 * router-announced option (RDNSS), and with
 * `lost = true` when the kernel dropped events (the caller then resynchronises anyway).
 */
export function watchKernel(onChange: (lost: boolean, m?: NlMessage) => void): { close(): void } {
  const groups = RTMGRP.LINK | RTMGRP.IPV4_IFADDR | RTMGRP.IPV6_IFADDR | RTMGRP.IPV4_ROUTE | RTMGRP.IPV6_ROUTE
    | RTMGRP.IPV4_RULE | RTMGRP.IPV6_RULE | RTMGRP.ND_USEROPT;
  const s = new RtnlSocket(groups, (m) => onChange(m === undefined, m));
  return { close: () => s.close() };
}

