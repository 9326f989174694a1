"""The base of every result type: a frozen dataclass with ``as_dict()`` for JSON."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from torch import Tensor


def jsonable(v: Any) -> Any:
    """``v`` with tensors as (nested) lists, mappings as dicts with string keys, dataclasses as dicts."""
    if isinstance(v, Tensor):
        return v.detach().cpu().tolist()
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: jsonable(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, Mapping):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    return v


class Result:
    """Mixin for ``@dataclass(frozen=True)`` results: :meth:`as_dict` gives plain JSON-ready values."""

    def as_dict(self) -> dict[str, Any]:
        """Every field by name; tensors become lists, mapping keys strings."""
        return jsonable(self)
