"""Enter one container of the kubelet stand-in: run inside `unshare --mount --uts`, then exec.

No image is pulled: the container's root is a copy-on-write overlay of this machine's root
filesystem (writes land in the container's own upper directory and vanish with it), with the
pod's volumes bind-mounted at their mount paths. Only this mount namespace sees them, so two
pods may mount different directories at the same path. The hostname is the pod's name.

Usage: python -I container_init.py SPEC.json (stdlib only; SPEC describes root, mounts, argv).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def inside(root: Path, path: str) -> Path:
    """`path` as seen from `root` after chroot: symlinks on the way (Debian's /var/run -> /run)
    resolve within root, not on this machine (which would mount outside the container)."""
    parts, current, hops = list(Path(path).parts[1:]), root, 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            current = current.parent if current != root else root
            continue
        candidate = current / part
        if not candidate.is_symlink():
            current = candidate
            continue
        hops += 1
        if hops > 40:
            raise OSError(f"too many symbolic links in {path}")
        link = Path(os.readlink(candidate))
        if link.is_absolute():
            current, link = root, link.relative_to("/")
        parts = [*link.parts, *parts]
    return current


def enter(spec: dict[str, object]) -> None:
    base = Path(str(spec["dir"]))
    upper, work, root = base / "upper", base / "work", base / "root"
    for path in (upper, work, root):
        path.mkdir(parents=True, exist_ok=True)
    lower = str(spec.get("lower") or "/")  # a local image's root filesystem (images.py), else this machine's
    mount("-t", "overlay", "overlay", "-o", f"lowerdir={lower},upperdir={upper},workdir={work}", str(root))
    for system in ("/proc", "/sys", "/dev"):
        mount("--rbind", system, f"{root}{system}")
    for item in spec["mounts"]:  # type: ignore[attr-defined]
        target = inside(root, str(item["target"]))
        source = Path(item["source"])
        if source.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:  # a subPath may name a file
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch(exist_ok=True)
        mount("--bind", str(source), str(target))
        if item.get("read_only"):
            mount("-o", "remount,bind,ro", str(target))
    socket.sethostname(str(spec["hostname"]))
    os.chroot(root)
    workdir = str(spec.get("workdir") or "/")
    os.makedirs(workdir, exist_ok=True)  # container runtimes create a missing workingDir
    os.chdir(workdir)


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    argv = [str(a) for a in spec["argv"]]
    try:
        enter(spec)
    except (OSError, subprocess.CalledProcessError) as err:
        print(f"stand-in kubelet: cannot create the container: {err}", file=sys.stderr)
        sys.exit(128)  # what runtimes report for a container that could not start
    try:
        os.execvpe(argv[0], argv, os.environ)
    except OSError as err:
        print(f"stand-in kubelet: cannot run {argv[0]!r}: {err}", file=sys.stderr)
        sys.exit(127)


if __name__ == "__main__":
    main()
