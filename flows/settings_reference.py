"""The settings reference: every YAML key, its default and what it means, read from the code.

One table answers "where does setting X come from and what is its default": the rows are the
fields of the settings dataclasses (flows/settings.py, and the augment and fine-tune settings
the tasks define), the meaning is the comment on the field's line, the default is the field's
own default. `tailforge config --reference` prints it; docs/settings.md carries a copy that a test
keeps equal to it, so the docs cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re

_FIELD = re.compile(r"^\s+(\w+)\s*:[^=#]*(?:=[^#]*)?(?:#\s*(.*))?$")


def _comments(cls) -> dict[str, str]:
    """Field name -> the comment on its line in the class body (empty when there is none)."""
    out: dict[str, str] = {}
    for line in inspect.getsource(cls).splitlines()[1:]:
        match = _FIELD.match(line)
        if match and match.group(1) not in out:
            out[match.group(1)] = (match.group(2) or "").strip()
    return out


def _default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    return field.default_factory()  # type: ignore[misc]


def _shown(value) -> str:
    if dataclasses.is_dataclass(value):
        return ""
    text = json.dumps(list(value) if isinstance(value, tuple) else value)
    return f"`{text}`"


def rows(cls, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, default, meaning, defined in) for every leaf setting under ``cls``."""
    from flows.settings import FactorySettings, finetune_settings
    from tasks.augment import AugmentSettings

    nested = {(FactorySettings, "augment"): AugmentSettings,
              (FactorySettings, "finetune"): type(finetune_settings(FactorySettings()))}
    comments, out = _comments(cls), []
    for field in dataclasses.fields(cls):
        key = f"{prefix}{field.name}"
        child = nested.get((cls, field.name))
        default = child() if child else _default(field)
        if dataclasses.is_dataclass(default):
            out += rows(type(default), f"{key}.")
        else:
            out.append((key, _shown(default), comments.get(field.name, ""), f"{cls.__module__}.{cls.__qualname__}"))
    return out


def markdown() -> str:
    """The reference as a markdown table, one row per setting."""
    from flows.settings import FactorySettings

    lines = ["| setting | default | meaning | defined in |", "|---|---|---|---|"]
    for key, default, meaning, where in rows(FactorySettings):
        meaning = meaning.replace("|", "\\|")  # a pipe inside a table cell
        lines.append(f"| `{key}` | {default} | {meaning} | `{where}` |")
    return "\n".join(lines) + "\n"
