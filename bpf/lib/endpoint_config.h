/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Per-endpoint configuration. Cilium compiles one object per endpoint with these as macros; we
 * compile once and the loader writes them into .rodata before each load (BpfObject.load's
 * `constants`), so the verifier still sees them as constants and prunes dead branches.
 * Include once per object.
 */
#pragma once

#include "vmlinux.h"

/* The endpoint's id (Cilium's LXC_ID): reported as the source of every event. */
volatile const __u16 ENDPOINT_ID = 0;
/* The endpoint's security identity (Cilium's SECLABEL). */
volatile const __u32 ENDPOINT_IDENTITY = 0;
/* The endpoint's IPv4 address (Cilium's LXC_IPV4), in network order: the only source address
 * its packets may carry. 0 until the loader sets it, which lets nothing out: an endpoint loaded
 * without its address fails closed. */
volatile const __be32 ENDPOINT_IPV4 = 0;
