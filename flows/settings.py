"""Settings: where local state lives, and (as the factory grows) one YAML -> frozen dataclasses.

All local state — the demo's Prefect home, the decision cache, default outputs — lives under
one folder, ``$TAILFORGE_HOME`` (default ``./.tailforge``), so a user can move or wipe it and
tests can isolate it.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_VARIABLE = "TAILFORGE_HOME"
DEFAULT_HOME = ".tailforge"


def tailforge_home() -> Path:
    """The state folder, made absolute (not created)."""
    return Path(os.environ.get(HOME_VARIABLE) or DEFAULT_HOME).expanduser().resolve()


def default_dataset_uri(name: str) -> str:
    """Where a dataset goes when the user names no ``--out``."""
    return str(tailforge_home() / "datasets" / name)
