"""The store: every SQL statement digest runs lives in this package.

`Store` takes and returns records from `digest.models`; no caller sees a row.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from digest.store.store import Attempt, Store

__all__ = ["Attempt", "Store"]


def __getattr__(name: str) -> Any:
    """`Store` and `Attempt`, imported on first use: they bring SQLAlchemy (a fifth of a
    second), which `digest status` on SQLite (`snapshot`) and `digest --help` do without."""
    if name in __all__:
        from digest.store import store

        value = getattr(store, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
