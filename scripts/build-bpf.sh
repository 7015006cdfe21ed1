#!/usr/bin/env bash
# Compiles every BPF C program into build/bpf/<name>.o.
# vmlinux.h comes from this kernel's BTF at build time and is never committed:
# CO-RE relocations make the objects portable, the header only has to describe some kernel.
set -euo pipefail
cd "$(dirname "$0")/.."
CLANG=${CLANG:-clang-19}
out=build/bpf
mkdir -p "$out" build/include
if [ ! -s build/include/vmlinux.h ]; then
  bpftool btf dump file /sys/kernel/btf/vmlinux format c > build/include/vmlinux.h.tmp
  mv build/include/vmlinux.h.tmp build/include/vmlinux.h
fi
compile() {
  local src=$1 obj=$2
  if [ "$obj" -nt "$src" ] && [ -z "$(find bpf src/ebpf/testdata src/ebpf/include -name '*.h' -newer "$obj" 2>/dev/null)" ]; then return 0; fi
  "$CLANG" -target bpf -O2 -g -D__TARGET_ARCH_x86 -Wall -Werror -Wno-unused-function \
    -I build/include -I bpf -I bpf/lib -I src/ebpf/include -c "$src" -o "$obj"
}
pids=()
for src in bpf/*.c src/ebpf/testdata/*.c; do
  [ -e "$src" ] || continue
  compile "$src" "$out/$(basename "${src%.c}").o" &
  pids+=($!)
done
# A bare `wait` returns 0 whatever the compilers said: wait for each, so a failed one fails the build.
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit $status
