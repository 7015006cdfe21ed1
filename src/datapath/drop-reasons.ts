/**
 * Drop reasons of the datapath (bpf/lib/drop_reasons.h), with the names Hubble gives them.
 * The numbers are Cilium's, so flows read here mean what they mean to Hubble clients;
 * layout.test.ts checks every row against the C enum in the compiled object's BTF.
 * @module
 */

/**
 * One row per reason: the C enumerator, its number, Hubble's DropReason name, and the description
 * Cilium's monitor and hubble's compact output print ("Policy denied").
 */
const DROP_REASON_ROWS = [
  ['DROP_INVALID_SIP', 132, 'INVALID_SOURCE_IP', 'Invalid source ip'],
  ['DROP_POLICY', 133, 'POLICY_DENIED', 'Policy denied'],
  ['DROP_INVALID_PACKET', 134, 'INVALID_PACKET_DROPPED', 'Invalid packet'],
  ['DROP_CT_INVALID_HDR', 135, 'CT_TRUNCATED_OR_INVALID_HEADER', 'CT: Truncated or invalid header'],
  ['DROP_UNKNOWN_L3', 139, 'UNSUPPORTED_L3_PROTOCOL', 'Unsupported L3 protocol'],
  ['DROP_UNROUTABLE', 151, 'STALE_OR_UNROUTABLE_IP', 'Stale or unroutable IP'],
  ['DROP_CT_MAP_INSERTION_FAILED', 155, 'CT_MAP_INSERTION_FAILED', 'CT: Map insertion failed'],
  ['DROP_NO_SERVICE', 158, 'SERVICE_BACKEND_NOT_FOUND', 'Service backend not found'],
  ['DROP_NO_TUNNEL_ENDPOINT', 160, 'NO_TUNNEL_OR_ENCAPSULATION_ENDPOINT', 'No tunnel/encapsulation endpoint (datapath BUG!)'],
  ['DROP_FIB_LOOKUP_FAILED', 169, 'FIB_LOOKUP_FAILED', 'FIB lookup failed'],
  ['DROP_INVALID_IDENTITY', 171, 'INVALID_IDENTITY', 'Invalid identity'],
  ['DROP_PROXY_LOOKUP_FAILED', 178, 'PROXY_LOOKUP_FAILED', 'Socket lookup failed'],
  ['DROP_PROXY_SET_FAILED', 179, 'PROXY_SET_FAILED', 'Socket assign failed'],
  ['DROP_PROXY_UNSUPPORTED', 180, 'PROXY_UNKNOWN_PROTO', 'Proxy redirection not supported for protocol'],
  ['DROP_POLICY_DENY', 181, 'POLICY_DENY', 'Policy denied by denylist'],
  ['DROP_EP_NOT_READY', 203, 'DROP_EP_NOT_READY', 'Endpoint not ready'],
] as const;

type Row = (typeof DROP_REASON_ROWS)[number];

/** The C enumerators of `enum ciliate_drop_reason`, by name: `DropReasonCode.DROP_POLICY === 133`. */
export const DropReasonCode = Object.freeze(Object.fromEntries(DROP_REASON_ROWS.map(([c, code]) => [c, code]))) as {
  readonly [R in Row as R[0]]: R[1];
};
export type DropReasonCode = Row[1];

/** Hubble's name of each drop reason, by number: `DropReason[133] === 'POLICY_DENIED'`. */
export const DropReason: Readonly<Record<number, string>> = Object.freeze(
  Object.fromEntries(DROP_REASON_ROWS.map(([, code, name]) => [code, name])),
);

/** Hubble's name of a drop reason, or `UNKNOWN_DROP_REASON(n)` for a number this build does not know. */
export function dropReasonName(code: number): string {
  return DropReason[code] ?? `UNKNOWN_DROP_REASON(${code})`;
}

/** How Cilium's monitor and hubble's compact output describe a drop reason ("Policy denied"). */
export function dropReasonDescription(code: number): string {
  return DROP_REASON_DESCRIPTIONS.get(code) ?? dropReasonName(code);
}

const DROP_REASON_DESCRIPTIONS: ReadonlyMap<number, string> = new Map(DROP_REASON_ROWS.map(([, code, , description]) => [code, description]));
