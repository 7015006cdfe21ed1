/* SPDX-License-Identifier: Apache-2.0 */
/* Packet pointers of a tc program's context. */
#pragma once

#include "common.h"

/*
 * skb->data and skb->data_end, each read by a single load from the unmodified context pointer.
 * Plain C lets clang fold the field offsets into the ctx pointer and load through `ctx + off`,
 * which the verifier refuses ("dereference of modified ctx ptr"); the asm pins the access form.
 */
static __always_inline void *ctx_data(const struct __sk_buff *skb)
{
	void *data;

	asm volatile("%0 = *(u32 *)(%1 + %2)" : "=r"(data) : "r"(skb), "i"(__builtin_offsetof(struct __sk_buff, data)));
	return data;
}

static __always_inline void *ctx_data_end(const struct __sk_buff *skb)
{
	void *data_end;

	asm volatile("%0 = *(u32 *)(%1 + %2)" : "=r"(data_end)
		     : "r"(skb), "i"(__builtin_offsetof(struct __sk_buff, data_end)));
	return data_end;
}
