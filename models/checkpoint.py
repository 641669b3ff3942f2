"""One checkpoint format for both models (the classifier and the normal-X-ray DiT).

A checkpoint is ``torch.save`` of a plain dict: ``format`` (which model, which version),
``config`` (the dataclass that builds the network), ``state_dict`` and named plain sections
(the classifier's card, the DiT's training record). It loads with ``weights_only=True``, so no
code is unpickled; every section is plain data, checked when saved, and the config is checked
field by field when loaded (a field this code does not know is an error, not ignored). Its
identity is the sha256 of its bytes, the ``classifier_id`` / ``generator_id`` of lineage.
"""

from __future__ import annotations

import hashlib
import io
import numbers
from dataclasses import asdict, fields
from typing import Any

import torch


def save(format_name: str, config, state_dict: dict, **sections: dict) -> bytes:
    """Checkpoint bytes (deterministic for identical inputs)."""
    state = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    blob = {"format": format_name, "config": to_plain(asdict(config), "config"),
            **{name: to_plain(value, name) for name, value in sections.items()}, "state_dict": state}
    buffer = io.BytesIO()
    torch.save(blob, buffer)
    return buffer.getvalue()


def load(data: bytes, format_name: str, aliases: tuple[str, ...] = (),
         map_location: str | torch.device = "cpu") -> dict:
    """The checkpoint's dict; an error naming what it is when it is not ``format_name`` (or one
    of the ``aliases`` older files carry)."""
    blob = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    found = (blob.get("format") or blob.get("kind")) if isinstance(blob, dict) else type(blob).__name__
    if found != format_name and found not in aliases:
        raise ValueError(f"not a {format_name} checkpoint (format {found!r})")
    return blob


def from_dict(cls, values: dict[str, Any]):
    """``cls(**values)``, refusing fields this code does not know."""
    known = {f.name for f in fields(cls)}
    extra = sorted(set(values) - known)
    if extra:
        raise ValueError(f"checkpoint {cls.__name__} has fields this code does not know: {extra}")
    return cls(**values)


def checkpoint_id(data: bytes) -> str:
    """The checkpoint's identity: sha256 hex of its bytes."""
    return hashlib.sha256(data).hexdigest()


def to_plain(value: Any, where: str) -> Any:
    """A copy made of dict/list/str/int/float/bool/None only (what weights_only loading accepts).

    numpy scalars become Python numbers; anything else fails now, not at a later load.
    """
    if value is None or isinstance(value, bool):
        return None if value is None else bool(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (list, tuple)):  # tuples stay tuples (timm kwargs such as depths)
        items = [to_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
        return tuple(items) if isinstance(value, tuple) else items
    if isinstance(value, dict):
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise ValueError(f"{where} has non-string keys {bad!r}")
        return {k: to_plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    raise ValueError(f"{where} holds a {type(value).__name__}; store plain dict/list/str/int/float/bool/None "
                     f"(convert arrays with .tolist())")
