#!/usr/bin/env bash
# Runs a command (the tests, the demo, a bench) with bpffs at /sys/fs/bpf, and leaves the kernel as
# it was found. Every fresh bpffs gets the kernel's bpf_preload iterators (maps.debug, progs.debug),
# which cannot be unlinked; so a mount made by this script or by scripts/setup.sh (it leaves
# MOUNTED_MARK) is taken away again by the last of these runs to end, once nothing but those is
# left in it. A mount someone else made, or one that still holds pins, stays.
set -u
BPFFS=/sys/fs/bpf
MOUNTED_MARK=/run/ciliate-mounted-bpffs
# Every run holds this lock shared while it runs: only one that can take it alone is the last.
exec 9>/run/ciliate-bpffs.lock
flock -s 9
if ! mountpoint -q "$BPFFS"; then
  mount -t bpf bpf "$BPFFS" || exit 1
  touch "$MOUNTED_MARK"
fi
"$@" 9>&-
status=$?
if flock -x -n 9 && [ -e "$MOUNTED_MARK" ] && mountpoint -q "$BPFFS"; then
  left=$(find "$BPFFS" -mindepth 1 -maxdepth 1 ! -name maps.debug ! -name progs.debug | head -1)
  if [ -z "$left" ] && umount "$BPFFS"; then rm -f "$MOUNTED_MARK"; fi
fi
exit "$status"
