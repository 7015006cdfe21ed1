/**
 * The datapath's one network-configuration boundary: links (veth, vxlan), addresses, routes,
 * neighbours, sysctls and address events, over rtnetlink from the agent's own process.
 * @module
 */
export { Netlink, netnsCookie, type Address, type BpfFilter, type BpfFilterSpec, type Clsact, type AddressSpec, type FwmarkRuleSpec, type Link, type LinkChanges, type LinkRef, type NeighbourSpec, type NetlinkOptions, type Route, type RouteEncap, type RouteSpec, type VethSpec, type VxlanSpec } from './netlink.ts';
export { AddressEvents, type AddressEvent, type AddressEventsOptions } from './events.ts';
export { NetlinkError, errnoName, errnoOf, type ErrnoName } from './errors.ts';
export { type Family, type ScopeName } from './codec.ts';
