/**
 * Where a pod's containers run: the cgroup v2 a container runtime makes for each container, named
 * after the container's id. A containerSelector tells containers apart in the kernel by these
 * cgroups (a cgroup's id is its directory's inode number), and process events name the container
 * of the cgroup a process runs in. Assumes the agent sees the host's cgroup v2 hierarchy (its
 * cgroup namespace is the host's), as it does the host's network namespaces.
 * @module
 */
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';

/**
 * The container id a cgroup directory is named after: a systemd scope (`libpod-<id>.scope`,
 * `cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope`) or the cgroupfs driver's
 * bare `<id>`. Monitors' scopes (`libpod-conmon-<id>.scope`) give `conmon-<id>`: not the container.
 */
export function containerIdOfCgroup(name: string): string {
  return name.replace(/\.scope$/, '').replace(/^(libpod|cri-containerd|crio|docker)-/, '');
}

/** Levels below the cgroup v2 root searched for containers' cgroups (Kubernetes' are 3 to 5 down). */
const SEARCH_DEPTH = 8;

/** A cgroup v2 directory's id (bpf_get_current_cgroup_id()'s number); undefined when it is gone. */
export function cgroupId(path: string): bigint | undefined {
  try {
    return statSync(path, { bigint: true }).ino;
  } catch {
    return undefined;
  }
}

/**
 * The cgroups of the containers `ids` under `root` (the cgroup v2 mount), by container id. Below a
 * container's cgroup nothing is searched: what is there is the container's too, and the kernel
 * looks through a caller's ancestors.
 */
export function findContainerCgroups(root: string, ids: ReadonlySet<string>): Map<string, bigint[]> {
  const found = new Map<string, bigint[]>();
  if (ids.size === 0 || !root) return found;
  const walk = (dir: string, depth: number): void => {
    let entries;
    try {
      entries = readdirSync(dir, { withFileTypes: true });
    } catch {
      return; // removed meanwhile
    }
    for (const entry of entries) {
      if (!entry.isDirectory()) continue;
      const path = join(dir, entry.name);
      const id = containerIdOfCgroup(entry.name);
      if (!ids.has(id)) {
        if (depth < SEARCH_DEPTH) walk(path, depth + 1);
        continue;
      }
      const cgroup = cgroupId(path);
      if (cgroup !== undefined) found.set(id, [...(found.get(id) ?? []), cgroup]);
    }
  };
  walk(root, 1);
  return found;
}

/**
 * Which of the containers `ids` process `pid` runs in, from its cgroup v2 path in /proc: the
 * innermost directory of the path named after one of them, and that cgroup's id. null: none of
 * them; undefined: the process is gone (nothing can be concluded).
 */
export function containerOfProcess(root: string, pid: number, ids: ReadonlySet<string>): { id: string; cgroup: bigint } | null | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/cgroup`, 'utf8');
  } catch {
    return undefined;
  }
  const path = text.split('\n').find((line) => line.startsWith('0::'))?.slice(3);
  if (!path || !root) return null;
  const parts = path.split('/').filter(Boolean);
  for (let i = parts.length; i > 0; i--) {
    const id = containerIdOfCgroup(parts[i - 1]);
    if (!ids.has(id)) continue;
    const cgroup = cgroupId(join(root, ...parts.slice(0, i)));
    return cgroup === undefined ? undefined : { id, cgroup };
  }
  return null;
}
