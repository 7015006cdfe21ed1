/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Strings matched in an LPM trie, for both runtime engines (runtime_policy_strings of the
 * tracepoint hooks, sock_enforce_strings of the socket hooks): one trie answers Equal / In (the
 * value stored with its NUL, so only the whole string matches), Prefix (stored without it) and
 * Postfix (stored reversed, under the filter with STRING_KEY_REVERSED set, and looked up
 * reversed). The agent writes the keys (src/runtime: stringKeys, prefixKeys).
 */
#pragma once

#define STRING_KEY_BYTES 248
#define STRING_KEY_POSTFIX 128 /* characters a Postfix compares (Tetragon: 128) */
#define STRING_KEY_REVERSED (1u << 31)

/* `filter` is the matchArgs / matchBinaries entry; `data` the string. Also what runtime_binaries
 * holds per process, ready to be looked up. */
struct string_key {
	__u32 prefixlen;
	__u32 filter;
	__u8 data[STRING_KEY_BYTES];
};

/*
 * Whether the string in `key` (prefixlen holding its length with the NUL) is in `map` under
 * `filter`; `rev` is scratch for a Postfix lookup only (the string reversed, without its NUL, over at
 * most STRING_KEY_POSTFIX characters). Leaves key->prefixlen as it was.
 */
static __always_inline bool string_key_found(void *map, struct string_key *key, struct string_key *rev, __u32 filter, bool postfix)
{
	__u32 len = key->prefixlen;
	if (postfix) {
		__u32 chars = len > 0 ? len - 1 : 0;
		if (chars > STRING_KEY_POSTFIX)
			chars = STRING_KEY_POSTFIX;
		rev->filter = filter | STRING_KEY_REVERSED;
		for (__u32 j = 0; j < STRING_KEY_POSTFIX; j++) {
			if (j >= chars)
				break;
			__u32 from = len - 2 - j;
			if (from >= STRING_KEY_BYTES)
				break;
			rev->data[j & (STRING_KEY_POSTFIX - 1)] = key->data[from];
		}
		rev->prefixlen = 32 + 8 * chars;
		return bpf_map_lookup_elem(map, rev) != NULL;
	}
	key->filter = filter;
	key->prefixlen = 32 + 8 * len;
	bool found = bpf_map_lookup_elem(map, key) != NULL;
	key->prefixlen = len;
	return found;
}
