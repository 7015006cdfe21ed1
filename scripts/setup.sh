#!/usr/bin/env bash
# Makes a fresh Debian machine ready to build and run Ciliate: Debian packages, npm dependencies
# (Node 24 arrives as the `node` npm package and runs every npm script), the BPF objects and a type check.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then echo "ciliate setup: must run as root (it installs packages and loads eBPF programs)" >&2; exit 1; fi
pkgs=(clang-19 llvm-19 libbpf1 libbpf-dev bpftool iproute2 iputils-ping gcc libc6-dev make util-linux nftables
  etcd-server podman runc containernetworking-plugins busybox-static iperf3 sockperf)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# BPF maps and links are pinned here; the kernel only offers bpffs where it is mounted.
# Mounted here for an agent run by hand; scripts/with-bpffs.sh (the tests, the demo, benches) takes
# a mount made here away again when nothing is pinned in it, so the kernel is left as it was found.
if ! mountpoint -q /sys/fs/bpf; then mount -t bpf bpf /sys/fs/bpf && touch /run/ciliate-mounted-bpffs; fi
# Tracepoint programs find their event ids in tracefs.
mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-fund --no-audit
fi
npm run --silent build
# `ciliate` on the PATH, running the CLI on the Node 24 the npm package brought, with bash completion.
repo=$(pwd)
cat > /usr/local/bin/ciliate <<WRAPPER
#!/bin/sh
exec "$repo/node_modules/.bin/node" "$repo/src/cli/main.ts" "\$@"
WRAPPER
chmod 0755 /usr/local/bin/ciliate
mkdir -p /usr/share/bash-completion/completions
/usr/local/bin/ciliate completion bash > /usr/share/bash-completion/completions/ciliate
