"""One checkpoint format for both models (the classifier and the normal-X-ray DiT).

A checkpoint is ``torch.save`` of a plain dict: ``format`` (which model, which version),
``config`` (the dataclass that builds the network), ``state_dict`` and named plain sections
(the classifier's card, the DiT's training record). It loads with ``weights_only=True``, so no
code is unpickled; every section is plain data, checked when saved, and the config is checked
field by field when loaded (a field this code does not know is an error, not ignored). Its
identity is the sha256 of its bytes, the ``classifier_id`` / ``generator_id`` of lineage.
Shipped weights (weights/) are the same content as a safetensors file (``save_safetensors``);
``load`` reads both.
"""

from __future__ import annotations

import hashlib
import io
import json
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


def save_safetensors(format_name: str, config, state_dict: dict, **sections: dict) -> bytes:
    """The same checkpoint as a safetensors file (the format weights are shipped in): the
    tensors, and ``format``, ``config`` and each section as JSON strings in its metadata."""
    from safetensors.torch import save as save_tensors

    state = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    metadata = {"format": format_name, "config": json.dumps(to_plain(asdict(config), "config"), sort_keys=True),
                **{name: json.dumps(to_plain(value, name), sort_keys=True) for name, value in sections.items()}}
    return save_tensors(state, metadata=metadata)


def is_safetensors(data: bytes) -> bool:
    """safetensors bytes: a little-endian u64 header length, then the JSON header."""
    return len(data) > 9 and data[8:9] == b"{" and 0 < int.from_bytes(data[:8], "little") <= len(data) - 8


def _load_safetensors(data: bytes, map_location) -> dict:
    from safetensors.torch import load as load_tensors

    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    metadata = header.get("__metadata__", {})
    blob = {name: (value if name == "format" else json.loads(value)) for name, value in metadata.items()}
    blob["state_dict"] = {k: v.to(map_location) for k, v in load_tensors(data).items()}
    return blob


def load(data: bytes, format_name: str, aliases: tuple[str, ...] = (),
         map_location: str | torch.device = "cpu") -> dict:
    """The checkpoint's dict, from ``save`` or ``save_safetensors`` bytes; an error naming what
    it is when it is not ``format_name`` (or one of the ``aliases`` older files carry)."""
    blob = (_load_safetensors(data, map_location) if is_safetensors(data)
            else torch.load(io.BytesIO(data), map_location=map_location, weights_only=True))
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
