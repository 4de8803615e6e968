"""The exceptions digest raises on purpose; anything else is a bug.

    DigestError
     ├── ConfigError (ValueError)          digest.toml or the environment is wrong
     ├── InputError (ValueError)           a digest file, feed or profile is unusable
     │    └── ProfileError                 a profile file, with the field at fault
     ├── StoreError (RuntimeError)         the database cannot be opened or written
     └── DeliveryError                     the SMTP server did not take a message
          ├── TransientDeliveryError (ConnectionError)   4xx, dropped, timed out: retry later
          ├── PermanentDeliveryError                     5xx: retrying will not help
          └── ConnectionFailure (ConnectionError)        no usable connection (refused, DNS,
                                                          TLS, login, connect timeout): the
                                                          run's error, no edition's
"""

from __future__ import annotations

from pathlib import Path


def first_line(exc: BaseException) -> str:
    """An exception's message, first line only (its name if it has none), for logs."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class DigestError(Exception):
    """Base of every expected failure; the CLI prints it as one line."""


class ConfigError(DigestError, ValueError):
    """The configuration file or environment holds a value digest cannot use."""

    def __init__(self, message: str, *, path: Path | None = None, line: int | None = None):
        self.path = path
        self.line = line
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(f"{where}{message}")


class InputError(DigestError, ValueError):
    """An input file cannot be used at all (not text, empty, missing, a directory)."""

    def __init__(self, path: Path | str, reason: str, *, line: int | None = None):
        self.path = Path(path)
        self.line = line
        self.reason = reason
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {reason}")


class ProfileError(InputError):
    """A subscriber profile is invalid; `field` names the key at fault, if any."""

    def __init__(self, path: Path | str, reason: str, *, line: int | None = None,
                 field: str | None = None):
        self.field = field
        super().__init__(path, f"{field}: {reason}" if field else reason, line=line)


class StoreError(DigestError, RuntimeError):
    """The database cannot be opened, migrated or written."""


class BrokerError(DigestError, ConnectionError):
    """The Celery broker or result store cannot be reached."""


class DeliveryError(DigestError):
    """The SMTP server did not accept a message; `smtp_code` is its reply code, if any."""

    def __init__(self, message: str, *, smtp_code: int | None = None):
        self.smtp_code = smtp_code
        super().__init__(message)


class TransientDeliveryError(DeliveryError, ConnectionError):
    """A failure worth retrying later: 4xx replies, dropped connections, timeouts."""


class PermanentDeliveryError(DeliveryError):
    """A failure that retrying will not fix: 5xx replies, a recipient the server refuses."""


class ConnectionFailure(DeliveryError, ConnectionError):
    """No connection to the SMTP server could be made fit to send: refused, a name that
    does not resolve, a certificate or TLS handshake that fails, a login refused, no answer
    in time. Until someone fixes the settings (or the server is back) no message can go,
    whichever it is, so it is the run's failure, not an edition's: the run stops, its
    editions stay pending and no attempt is charged to them. `where` is "host:port"."""

    def __init__(self, message: str, *, where: str = "", smtp_code: int | None = None):
        self.where = where
        super().__init__(message, smtp_code=smtp_code)
