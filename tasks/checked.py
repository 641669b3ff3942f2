"""Settings checked at load: name-valued settings, and errors that name the setting.

A name-valued setting is a string that must name an entry of a registry (the tuple, dict or enum
in the module that implements the choices), checked when the settings are validated (pydantic)
and listed as an ``enum`` in the settings' JSON Schema.

The registry is imported when a value is checked or the schema is built, not when a settings
module is imported: `import flows.cli` stays free of torch, and a setting left at its default is
not checked (pydantic does not validate defaults).
"""

from __future__ import annotations

import dataclasses
import importlib
import typing
from typing import Annotated, Any

from pydantic import AfterValidator, ConfigDict, Field, TypeAdapter, ValidationError

CHECKED = ConfigDict(extra="forbid")  # a settings dataclass's config: an unknown key is an error that names it


def names(registry: str, also: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The names in ``registry`` ("module:ATTRIBUTE": a tuple, a dict's keys or a str enum's
    values), after ``also``."""
    module, attribute = registry.split(":")
    entries = getattr(importlib.import_module(module), attribute)
    return also + tuple(getattr(entry, "value", entry) for entry in entries)


@dataclasses.dataclass(frozen=True)
class Choices:
    """The registry a name-valued setting's type names (``one_of``): the CLI reads it for its
    flags' choices."""
    registry: str
    also: tuple[str, ...] = ()

    def names(self) -> tuple[str, ...]:
        return names(self.registry, self.also)


def one_of(registry: str, also: tuple[str, ...] = ()) -> Any:
    """The type of a setting that names one entry of ``registry`` (see ``names``)."""
    choices = Choices(registry, also)

    def check(value: str) -> str:
        if value not in choices.names():
            raise ValueError(f"must be one of {', '.join(choices.names())}, not {value!r}")
        return value

    def listed(schema: dict) -> None:
        schema["enum"] = list(choices.names())

    return Annotated[str, choices, AfterValidator(check), Field(json_schema_extra=listed)]


def choices_of(cls, name: str) -> tuple[str, ...] | None:
    """The choices of the setting ``name`` of the settings dataclass ``cls``; None when it is not
    name-valued."""
    hint = typing.get_type_hints(cls, include_extras=True)[name]
    for part in (hint, *typing.get_args(hint)):  # `one_of(...) | None` too
        for meta in getattr(part, "__metadata__", ()):
            if isinstance(meta, Choices):
                return meta.names()
    return None


def validated(cls, data: Any, section: str = ""):
    """``data`` (a mapping) validated as the settings dataclass ``cls``; a ``ValueError`` that
    names each bad setting by its path (``section`` first) and says what it accepts otherwise."""
    try:
        return TypeAdapter(cls).validate_python({} if data is None else data)
    except ValidationError as exc:
        raise ValueError(explain(exc, cls, section)) from None


def explain(exc: ValidationError, cls=None, section: str = "") -> str:
    """A pydantic error as one line: each bad setting's path and what it accepts (with ``cls``,
    an unknown key lists the known ones)."""
    return "; ".join(_explain(error, cls, section) for error in exc.errors())


def _explain(error: dict, cls, section: str) -> str:
    loc = tuple(str(part) for part in error["loc"])
    path = ".".join((section, *loc) if section else loc)
    if error["type"] == "unexpected_keyword_argument":
        where = ".".join((section, *loc[:-1]) if section else loc[:-1])
        known = ", ".join(_known(cls, loc[:-1])) if cls is not None else "see `tailforge config --reference`"
        return f"unknown setting {path!r}; known {'in ' + where if where else 'at the top'}: {known}"
    message = error["msg"].removeprefix("Value error, ")
    return message if not path or message.startswith(path) else f"{path}: {message}"


def _known(cls, loc: tuple[str, ...]) -> list[str]:
    """The keys the settings at ``loc`` under ``cls`` accept (read from its defaults)."""
    value = cls()
    for name in loc:
        value = getattr(value, name, None)
    return [f.name for f in dataclasses.fields(value)] if dataclasses.is_dataclass(value) else []
