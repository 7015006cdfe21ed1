/**
 * TCP listen addresses as Cilium's `--prometheus-serve-addr` and `--hubble-metrics-server` take
 * them: `host:port`, `[v6]:port`, or `:port` for every interface; empty turns the server off.
 * @module
 */
import { z } from 'zod';
import { Addr } from '../net/index.ts';

export interface ListenAddress {
  /** Undefined: every interface (`:9962`). */
  host: string | undefined;
  port: number;
}

const HOSTNAME = /^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;

/** Why `text` is not a listen address, or undefined when it is one (or empty: off). */
export function listenAddressProblem(text: string): string | undefined {
  if (text === '') return undefined;
  const colon = text.lastIndexOf(':');
  if (colon < 0) return `"${text}" has no port: want host:port, [ipv6]:port or :port`;
  const host = text.slice(0, colon);
  const port = text.slice(colon + 1);
  if (!/^\d{1,5}$/.test(port) || Number(port) < 1 || Number(port) > 65535) return `"${text}": port "${port}" is not a number from 1 to 65535`;
  if (host === '') return undefined;
  if (host.startsWith('[')) {
    if (!host.endsWith(']') || Addr.tryParse(host.slice(1, -1))?.is6() !== true) return `"${text}": "${host}" is not a bracketed IPv6 address`;
    return undefined;
  }
  // All digits and dots is meant as an IPv4 address, never a host name: 300.1.1.1 is a typo.
  if (/^[\d.]+$/.test(host) ? Addr.tryParse(host)?.is4() !== true : !HOSTNAME.test(host)) return `"${text}": "${host}" is not a host name or IP address`;
  return undefined;
}

/** The address of a valid, non-empty setting; undefined for empty (off). Throws on text listenAddressProblem() refuses. */
export function parseListenAddress(text: string): ListenAddress | undefined {
  const problem = listenAddressProblem(text);
  if (problem) throw new TypeError(`not a listen address: ${problem}`);
  if (text === '') return undefined;
  const colon = text.lastIndexOf(':');
  const host = text.slice(0, colon);
  return { host: host === '' ? undefined : host.replace(/^\[(.*)\]$/, '$1'), port: Number(text.slice(colon + 1)) };
}

/** A config field holding a listen address; the agent's config errors name the field and this reason. */
export function listenAddressSetting(fallback: string) {
  return z
    .string()
    .superRefine((text, ctx) => {
      const problem = listenAddressProblem(text);
      if (problem) ctx.addIssue({ code: 'custom', message: `must be host:port, [ipv6]:port, :port or empty (off): ${problem}` });
    })
    .default(fallback);
}
