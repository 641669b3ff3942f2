"""The settings reference: every YAML key, its default and what it means, read from the code.

One table answers "where does setting X come from and what is its default": the rows are the
fields of the settings dataclasses (flows/settings.py, and the augment and fine-tune settings
the tasks define), the meaning is the comment on the field's line, the default is the field's
own default. `tailforge config --reference` prints it; docs/settings.md carries a copy that a test
keeps equal to it, so the docs cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import re

_FIELD = re.compile(r"^\s+(\w+)\s*:[^=#]*(?:=[^#]*)?(?:#\s*(.*))?$")


@functools.cache  # the CLI's parser asks once per flag; a class's source does not change in a process
def meanings(cls) -> dict[str, str]:
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
    from flows.settings import FactorySettings

    nested = _mapped_sections() if cls is FactorySettings else {}
    comments, out = meanings(cls), []
    for field in dataclasses.fields(cls):
        key = f"{prefix}{field.name}"
        child = nested.get(field.name)
        default = child() if child else _default(field)
        if dataclasses.is_dataclass(default):
            out += rows(type(default), f"{key}.")
        else:
            out.append((key, _shown(default), comments.get(field.name, ""), f"{cls.__module__}.{cls.__qualname__}"))
    return out


def _mapped_sections() -> dict:
    """The sections FactorySettings keeps as plain mappings (flow parameters), and the settings
    class each is validated as (flows.settings.augment_settings / finetune_settings)."""
    from tasks.augment import AugmentSettings
    from tasks.finetune import FinetuneSettings

    return {"augment": AugmentSettings, "finetune": FinetuneSettings}


def markdown() -> str:
    """The reference as a markdown table, one row per setting."""
    from flows.settings import FactorySettings

    lines = ["| setting | default | meaning | defined in |", "|---|---|---|---|"]
    for key, default, meaning, where in rows(FactorySettings):
        meaning = meaning.replace("|", "\\|")  # a pipe inside a table cell
        lines.append(f"| `{key}` | {default} | {meaning} | `{where}` |")
    return "\n".join(lines) + "\n"


def schema() -> dict:
    """The settings file's JSON Schema (draft 2020-12, as pydantic writes it): the factory's tree
    with the augment and fine-tune sections' own schemas in place of their mappings, every
    name-valued setting's choices as an ``enum`` and every setting's meaning as its
    ``description`` (the comment on its field's line, as in the reference table)."""
    from pydantic import TypeAdapter

    from flows.settings import FactorySettings

    def of(cls) -> tuple[dict, dict]:
        tree = TypeAdapter(cls).json_schema()
        return tree, tree.pop("$defs", {})

    tree, definitions = of(FactorySettings)
    for section, cls in _mapped_sections().items():
        part, more = of(cls)
        definitions.update(more)
        definitions[cls.__name__] = part
        tree["properties"][section] = {"$ref": f"#/$defs/{cls.__name__}"}
    for key, _, meaning, _ in rows(FactorySettings):
        _property(tree, definitions, key.split("."))["description"] = meaning
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "tailforge settings file", **tree, "$defs": definitions}


def _property(tree: dict, definitions: dict, path: list[str]) -> dict:
    """The schema of the setting at ``path``, following ``$ref``s into ``definitions``."""
    node = tree
    for name in path:
        while "$ref" in node:
            node = definitions[node["$ref"].rsplit("/", 1)[1]]
        node = node["properties"][name]
    return node
