#!/usr/bin/env bash
# Compiles the eBPF library's Node-API addon (src/ebpf/native/*.c) into build/native/<name>.node,
# against the Node-API headers that ship inside the npm `node` package (Node-API is ABI-stable, so
# the addon loads in any Node 24).
set -euo pipefail
cd "$(dirname "$0")/.."
CC=${CC:-gcc}
out=build/native
mkdir -p "$out"
headers=$(dirname "$(find node_modules/node/node_modules -path '*/include/node/node_api.h' -print -quit)")
if [ ! -f "$headers/node_api.h" ]; then echo "build-native: no Node-API headers under node_modules/node (run npm ci)" >&2; exit 1; fi
for src in src/ebpf/native/*.c; do
  obj="$out/$(basename "${src%.c}").node"
  [ "$obj" -nt "$src" ] && continue
  "$CC" -O2 -Wall -Werror -fPIC -shared -I "$headers" "$src" -o "$obj"
done
