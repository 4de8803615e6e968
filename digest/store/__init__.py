"""The store: every SQL statement digest runs lives in this package.

`Store` takes and returns records from `digest.models`; no caller sees a row.
"""

from digest.store.store import Attempt, Store

__all__ = ["Attempt", "Store"]
