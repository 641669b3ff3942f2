"""What a run on a lent GPU machine carries, against its 64 MiB: the tracked tree, the wheels in
.whl and the data pack in .gpu-data (benchmarks/gpu_generator.py). Standard library only, so
`make gpu-size` runs before anything is installed:

    python3 -m benchmarks.gpu_carry        # tree + .whl + .gpu-data: N MiB of the 64 MiB ...
"""

from __future__ import annotations

import subprocess
from pathlib import Path

LIMIT = 64 * 2**20  # bytes a lent machine is sent (tracked and untracked-not-ignored files, carried paths)
CARRIED = (".whl", ".gpu-data")  # the ignored folders a GPU run names in its carry
ROOT = Path(__file__).resolve().parents[1]


def tracked_bytes(root: Path = ROOT) -> int:
    """The files that travel by themselves: tracked, and untracked but not ignored."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                            capture_output=True, check=True)
    names = listed.stdout.split(b"\0")
    return sum((root / n.decode()).stat().st_size for n in names if n and (root / n.decode()).is_file())


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def carried_bytes(root: Path = ROOT, folders: tuple[str, ...] = CARRIED) -> int:
    return tracked_bytes(root) + sum(folder_bytes(root / f) for f in folders)


def main() -> None:
    size = carried_bytes()
    print(f"tree + {' + '.join(CARRIED)}: {size / 2**20:.1f} MiB of the {LIMIT / 2**20:.0f} MiB a GPU run carries"
          + (" -- too much: carry fewer wheels (make gpu-check-wheels) or a smaller pack" if size > LIMIT else ""))


if __name__ == "__main__":
    main()
