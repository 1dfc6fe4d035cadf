"""Local images for the kubelet stand-in: a root filesystem directory per image name (not real).

There is no registry and nothing is pulled. A container whose `image` has a directory under the
bed's `DIR/images/` (`add`) runs on an overlay of that directory instead of this machine's root
filesystem, so a test can give a pod an image that holds only what it puts there (busybox's
`/bin/sh`, the agent's runtime). Images without a directory run on this machine's root, as before.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

SYSTEM_DIRS = ("proc", "sys", "dev", "tmp", "etc", "root")  # mount points and what every image has


def path(bed_dir: Path, image: str) -> Path:
    return bed_dir / "images" / re.sub(r"[^A-Za-z0-9._-]", "_", image)


def lower_dir(node_root: Path, image: str) -> str:
    """The directory a container of `image` runs on: its local image, else this machine's root."""
    found = path(node_root.parent.parent, image)  # node_root is DIR/nodes/<node>
    return str(found) if image and found.is_dir() else "/"


def busybox() -> Path:
    """A statically linked busybox (Debian's busybox-static), or an error naming the package."""
    found = shutil.which("busybox")
    if found is None or b"/lib64/ld-linux" in Path(found).read_bytes()[:4096]:
        raise FileNotFoundError("a static busybox is needed: scripts/install-tools (busybox-static)")
    return Path(found)


def add(
    bed_dir: Path, image: str, applets: tuple[str, ...] = ("sh",), extra: dict[str, Path] | None = None
) -> Path:
    """Make `image` a root filesystem holding busybox, the named applets in /bin, and `extra`
    (path inside the image -> directory here, copied)."""
    root = path(bed_dir, image)
    (root / "bin").mkdir(parents=True, exist_ok=True)
    for name in SYSTEM_DIRS:
        (root / name).mkdir(exist_ok=True)
    shutil.copy2(busybox(), root / "bin" / "busybox")
    for applet in applets:
        (root / "bin" / applet).unlink(missing_ok=True)
        (root / "bin" / applet).symlink_to("busybox")
    for inside, source in (extra or {}).items():
        shutil.copytree(source, root / inside.lstrip("/"), symlinks=True, dirs_exist_ok=True)
    return root
