"""Settings: `digest.toml` plus `DIGEST_*` environment variables, loaded once by the CLI.

Relative paths in the file are relative to the file's folder. Secrets come only from the
environment and are held in `SecretStr`, whose repr is `**********`.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from digest.errors import ConfigError
from digest.identity import check_email
from digest.models import MAX_PAPERS

CONFIG_NAME = "digest.toml"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SmtpSettings(_Frozen):
    """Where and how editions are handed over for delivery."""

    host: str = "localhost"
    port: int = Field(default=587, ge=1, le=65535)
    # starttls: plain connection upgraded with STARTTLS (port 587); tls: TLS from the first
    # byte (port 465); none: no encryption, only for a relay on this machine.
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str | None = None
    password: SecretStr | None = Field(default=None, exclude=True)  # DIGEST_SMTP_PASSWORD
    validate_certs: bool = True
    ca_file: Path | None = None  # a private CA's certificates (PEM), added to the system's
    timeout_s: float = Field(default=30.0, gt=0)
    # Connections kept open to the server and used at once; relays often cap this.
    connections: int = Field(default=4, ge=1, le=100)
    # Relays limit how fast they take mail; 0 means no limit.
    max_per_second: float = Field(default=0, ge=0)
    max_per_hour: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _no_clear_text_password(self) -> SmtpSettings:
        local = self.host in ("localhost", "127.0.0.1", "::1")
        if self.security == "none" and self.username and not local:
            raise ValueError(f"security is \"none\" but a username is set: the password would "
                             f"cross the network to {self.host} in clear text; use starttls or tls")
        return self


class MailSettings(_Frozen):
    """What the emails say about who sent them."""

    from_address: str = "digest@localhost"
    from_name: str = "digest"
    reply_to: str | None = None
    list_id: str = "papers.digest.localhost"
    # DKIM signing (the `dkim` extra): the DNS selector and the PEM private key; the domain
    # is from_address's. Off unless both are set.
    dkim_selector: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    dkim_key_file: Path | None = None
    max_attempts: int = Field(default=5, ge=1)  # tries per edition before it stays failed
    # An edition left "sending" this long ago (its sender died mid-way) may be sent again.
    sending_stale_s: float = Field(default=600, gt=0)
    # Within one run, transient failures are retried after this, doubling each time.
    retry_delay_s: float = Field(default=2.0, ge=0)
    retry_delay_max_s: float = Field(default=60.0, ge=0)

    @field_validator("from_address")
    @classmethod
    def _from_address(cls, value: str) -> str:
        return check_email(value)

    @model_validator(mode="after")
    def _dkim_both_or_neither(self) -> MailSettings:
        if (self.dkim_selector is None) != (self.dkim_key_file is None):
            raise ValueError("dkim_selector and dkim_key_file go together: set both or none")
        return self

    @field_validator("reply_to")
    @classmethod
    def _reply_to(cls, value: str | None) -> str | None:
        return check_email(value) if value else None

    @field_validator("from_name", "list_id")
    @classmethod
    def _one_line(cls, value: str) -> str:
        if not value.isprintable():
            raise ValueError("must be one line of printable text")
        return value


class FeedSettings(_Frozen):
    """One RSS or Atom feed to poll."""

    url: str = Field(pattern=r"^https?://\S+$")
    name: str | None = None
    poll_s: float | None = Field(default=None, ge=1)  # default: daemon.feed_poll_s


class DaemonSettings(_Frozen):
    """How `digest run` paces its work; every duration is in seconds."""

    inbox_poll_s: float = Field(default=10, gt=0)
    inbox_settle_s: float = Field(default=2, ge=0)  # a file this recently changed may be
    # still being written: it waits for the next look
    feed_poll_s: float = Field(default=1800, ge=1)
    feed_timeout_s: float = Field(default=30, gt=0)  # each connect and read of a fetch
    feed_deadline_s: float = Field(default=120, gt=0)  # a whole fetch, however it trickles
    feed_max_backoff_s: float = Field(default=6 * 3600, ge=1)
    feed_max_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)  # as sent and decompressed
    profiles_poll_s: float = Field(default=5, gt=0)
    catchup_grace_s: float = Field(default=12 * 3600, ge=0)  # a missed edition younger than
    # this is sent when the daemon comes back; an older one is skipped
    retry_base_s: float = Field(default=300, gt=0)  # first retry of a failed edition; doubles
    retry_max_s: float = Field(default=2 * 3600, gt=0)
    shutdown_timeout_s: float = Field(default=60, gt=0)
    # One `digest run` per database leads (schedules and sends); others wait as standbys
    # and check this often whether the leader is gone.
    standby_poll_s: float = Field(default=5, gt=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


# The sentence models digest can embed papers with (digest/embed.py's MODELS says which
# packages ship each one's weights).
EmbeddingModel = Literal["all-MiniLM-L6-v2", "all-mpnet-base-v2"]


class RankSettings(_Frozen):
    """How papers are ranked."""

    # Sentence embeddings: "auto" uses them when the `embeddings` extra is installed,
    # "on" requires it, "off" ranks lexically only.
    embeddings: Literal["auto", "on", "off"] = "auto"
    # Which model (DIGEST_EMBEDDING_MODEL). Vectors are stored per model: after a change
    # the stored papers are embedded again, once; a change back finds the old ones.
    embedding_model: EmbeddingModel = "all-MiniLM-L6-v2"


class WebSettings(_Frozen):
    """`digest serve`: the pages behind the links in each email.

    Links are put in emails only when `base_url` is set and the environment holds the
    signing secret (DIGEST_SECRET)."""

    base_url: str | None = Field(default=None, pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$")
    host: str = "127.0.0.1"  # what `digest serve` listens on; behind a proxy, keep it local
    port: int = Field(default=8377, ge=1, le=65535)  # no common tool's default
    link_days: int = Field(default=90, ge=1)  # how long the links in an email work
    body_timeout_s: float = Field(default=10, gt=0)  # to receive a whole request body
    # The link-signing secret (DIGEST_SECRET) and older ones still accepted, so that a
    # rotation leaves sent links working (DIGEST_OLD_SECRETS, comma-separated): only from
    # the environment, and never printed.
    secret: SecretStr | None = Field(default=None, exclude=True)
    old_secrets: tuple[SecretStr, ...] = Field(default=(), exclude=True)

    @field_validator("base_url")
    @classmethod
    def _no_trailing_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else value


class SendSettings(_Frozen):
    """How a run of many editions uses the machine."""

    processes: int = Field(default=0, ge=0, le=256)  # worker processes; 0: one per CPU core
    # "processes": this machine's cores; "celery": shards go through a broker to
    # `digest worker`s on any number of hosts ([celery]).
    workers: Literal["processes", "celery"] = "processes"
    shard_size: int = Field(default=500, ge=1, le=100_000)  # profiles per Celery task


class CelerySettings(_Frozen):
    """The broker that carries shards of an edition run to `digest worker`s.

    A broker password is read only from the environment: DIGEST_BROKER_URL replaces
    `broker_url` whole."""

    broker_url: str = Field(default="redis://127.0.0.1:6379/0",
                            pattern=r"^(redis|rediss|amqp|amqps|pyamqp)://\S*$")
    # Where `digest send` collects the shards' reports; default: the broker's own
    # (Redis itself, or RabbitMQ's rpc:// replies).
    result_backend: str | None = None
    queue: str = Field(default="digest", pattern=r"^[A-Za-z0-9._:-]+$")
    # Redis only: a task unacknowledged this long (its worker died) is given to another
    # worker. The ledger makes an early hand-over harmless, but it must be longer than a
    # task waits to be tried again (up to 60 s), or the waiting copy is handed out twice.
    visibility_timeout_s: float = Field(default=300, ge=120)
    shard_timeout_s: float = Field(default=3600, gt=0)  # `digest send` waits this long

    @property
    def backend(self) -> str:
        if self.result_backend:
            return self.result_backend
        return self.broker_url if self.broker_url.startswith("redis") else "rpc://"


# `password=`, and libpq's `sslpassword=` (the client key's passphrase) and the like.
_QUERY_PASSWORD = re.compile(r"([?&][\w.-]*password=)[^&#]*", re.IGNORECASE)


def _has_password(url: str) -> bool:
    """Whether a broker or backend URL holds a password (even a badly encoded one)."""
    rest = url.partition("://")[2]
    userinfo, at, _ = rest.rpartition("@")
    return bool(at and ":" in userinfo) or bool(_QUERY_PASSWORD.search(url))


def redact_url(url: str) -> str:
    """The URL with its password (in the user part or a `password` parameter) as ***."""
    scheme, sep, rest = url.partition("://")
    if sep:
        userinfo, at, place = rest.rpartition("@")
        if at and ":" in userinfo:
            rest = f"{userinfo.split(':', 1)[0]}:***@{place}"
        url = f"{scheme}://{rest}"
    return _QUERY_PASSWORD.sub(r"\1***", url)


class Settings(_Frozen):
    """Every setting digest uses, with its default beside it."""

    data_dir: Path
    database_url: str | None = None  # default: SQLite file digest.sqlite3 in data_dir
    # From DIGEST_DATABASE_PASSWORD, or the password in DIGEST_DATABASE_URL; never the file.
    database_password: SecretStr | None = Field(default=None, exclude=True)
    profiles_dir: Path
    inbox_dir: Path
    outbox_dir: Path
    templates_dir: Path | None = None  # operator's overrides, searched before the defaults
    first_edition_lookback_days: int = Field(default=7, ge=0)
    default_max_papers: int = Field(default=10, ge=1, le=MAX_PAPERS)
    smtp: SmtpSettings = SmtpSettings()
    mail: MailSettings = MailSettings()
    daemon: DaemonSettings = DaemonSettings()
    rank: RankSettings = RankSettings()
    send: SendSettings = SendSettings()
    web: WebSettings = WebSettings()
    celery: CelerySettings = CelerySettings()
    feeds: tuple[FeedSettings, ...] = ()
    config_path: Path | None = None

    @property
    def db_url(self) -> str:
        """The URL to connect with, password included: show `store.engine_name(db_url)`."""
        url = self.database_url or f"sqlite:///{self.data_dir / 'digest.sqlite3'}"
        if self.database_password is None:
            return url
        from sqlalchemy.engine import make_url

        password = self.database_password.get_secret_value()
        return make_url(url).set(password=password).render_as_string(hide_password=False)


def _url_password(url: object) -> str | None:
    """The password in a database URL (user part or `password` parameter), if any."""
    if not isinstance(url, str):
        return None
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # not a URL SQLAlchemy reads: look for the signs
        return "?" if _has_password(url) else None
    if parsed.password:
        return str(parsed.password)
    value = parsed.query.get("password")
    return (value if isinstance(value, str) else value[0]) if value else None


def default_data_dir(env: Mapping[str, str]) -> Path:
    """The per-user data folder: $XDG_DATA_HOME/digest, else ~/.local/share/digest."""
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "digest"


def find_config(explicit: Path | None, env: Mapping[str, str]) -> Path | None:
    """The config file to read: -c, then $DIGEST_CONFIG, then ./digest.toml if present."""
    if explicit is not None:
        return explicit
    if env.get("DIGEST_CONFIG"):
        return Path(env["DIGEST_CONFIG"])
    local = Path.cwd() / CONFIG_NAME
    return local if local.is_file() else None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ConfigError("config file not found (run `digest init` to write one)",
                          path=path) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", path=path) from exc
    except OSError as exc:
        raise ConfigError(f"cannot be read: {exc.strerror or exc}", path=path) from exc


def _resolve(base: Path, value: Any) -> Any:
    if isinstance(value, str) and value:
        path = Path(value).expanduser()
        return path if path.is_absolute() else base / path
    return value


def load_settings(
    config_path: Path | None = None,
    *,
    data_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Load settings from the config file (if any), the environment and overrides."""
    env = os.environ if env is None else env
    path = find_config(config_path, env)
    raw: dict[str, Any] = _read_toml(path) if path is not None else {}
    for table in ("smtp", "mail", "daemon", "rank", "send", "web", "celery"):
        if not isinstance(raw.get(table, {}), dict):
            raise ConfigError(f"{table}: expected a table ([{table}])", path=path)
    for key in ("data_dir", "profiles_dir", "inbox_dir", "outbox_dir", "templates_dir",
                "database_url"):
        if key in raw and not isinstance(raw[key], str):
            raise ConfigError(f"{key}: expected a string", path=path)
    if not isinstance(raw.get("feeds", []), list):
        raise ConfigError("feeds: expected a list of URLs or tables", path=path)
    base = path.parent.resolve() if path is not None else Path.cwd()
    for key in ("data_dir", "profiles_dir", "inbox_dir", "outbox_dir", "templates_dir"):
        if key in raw:
            raw[key] = _resolve(base, raw[key])
    if env.get("DIGEST_DATA_DIR"):
        raw["data_dir"] = Path(env["DIGEST_DATA_DIR"])
    if data_dir is not None:
        raw["data_dir"] = data_dir
    for key, variable in (("embeddings", "DIGEST_EMBEDDINGS"),
                          ("embedding_model", "DIGEST_EMBEDDING_MODEL")):
        if env.get(variable):
            raw["rank"] = {**(raw.get("rank") or {}), key: env[variable]}
    for where, value in (("database_url", raw.get("database_url")),
                         ("DIGEST_DATABASE_URL", env.get("DIGEST_DATABASE_URL"))):
        if isinstance(value, str) and "://" in value:
            authority = value.split("://", 1)[1].split("/", 1)[0]
            if authority.count("@") > 1:  # never echo it: it may hold a password
                raise ConfigError(f"{where}: more than one @ before the host; write an @ in "
                                  "the user or password as %40", path=path)
    in_file = raw.get("database_url")
    if _url_password(in_file) or (isinstance(in_file, str) and _QUERY_PASSWORD.search(in_file)):
        raise ConfigError("database_url: holds a password; secrets are not read from the file: "
                          "set DIGEST_DATABASE_PASSWORD in the environment", path=path)
    if env.get("DIGEST_DATABASE_URL"):
        raw["database_url"] = env["DIGEST_DATABASE_URL"]
        if _url_password(raw["database_url"]):  # kept apart, as a secret
            from sqlalchemy.engine import make_url

            password = _url_password(raw["database_url"])
            try:
                parsed = make_url(raw["database_url"]).difference_update_query(["password"])
            except ValueError as exc:  # e.g. a port that is not a number; no URL echoed
                raise ConfigError(f"DIGEST_DATABASE_URL: not a database URL ({exc})",
                                  path=path) from None
            without = parsed._replace(password=None)  # set(password=None) changes nothing
            raw["database_url"] = without.render_as_string(hide_password=False)
            raw["database_password"] = SecretStr(str(password))
    if env.get("DIGEST_DATABASE_PASSWORD"):
        raw["database_password"] = SecretStr(env["DIGEST_DATABASE_PASSWORD"])
    home = Path(raw.get("data_dir") or default_data_dir(env))
    raw["data_dir"] = home
    raw.setdefault("profiles_dir", base / "profiles" if path is not None else home / "profiles")
    raw.setdefault("inbox_dir", home / "inbox")
    raw.setdefault("outbox_dir", home / "outbox")
    raw["config_path"] = path
    smtp = dict(raw.get("smtp") or {})
    if "ca_file" in smtp:
        smtp["ca_file"] = _resolve(base, smtp["ca_file"])
    mail = dict(raw.get("mail") or {})
    if "dkim_key_file" in mail:
        mail["dkim_key_file"] = _resolve(base, mail["dkim_key_file"])
        raw["mail"] = mail
    if "password" in smtp:
        raise ConfigError(
            "smtp.password: secrets are not read from the file; set DIGEST_SMTP_PASSWORD",
            path=path,
        )
    if env.get("DIGEST_SMTP_PASSWORD"):
        smtp["password"] = SecretStr(env["DIGEST_SMTP_PASSWORD"])
    raw["smtp"] = smtp
    for key, variable in (("broker_url", "DIGEST_BROKER_URL"),
                          ("result_backend", "DIGEST_RESULT_BACKEND")):
        value = (raw.get("celery") or {}).get(key)
        if isinstance(value, str) and _has_password(value):
            raise ConfigError(f"celery.{key}: holds a password; secrets are not read from "
                              f"the file: set {variable} in the environment", path=path)
        if env.get(variable):
            raw["celery"] = {**(raw.get("celery") or {}), key: env[variable]}
    web = dict(raw.get("web") or {})
    for key, variable in (("secret", "DIGEST_SECRET"), ("old_secrets", "DIGEST_OLD_SECRETS")):
        if key in web:
            raise ConfigError(f"web.{key}: secrets are not read from the file; set {variable} "
                              "in the environment", path=path)
    if env.get("DIGEST_SECRET", "").strip():
        web["secret"] = SecretStr(env["DIGEST_SECRET"].strip())
        web["old_secrets"] = tuple(SecretStr(s.strip()) for s in
                                   env.get("DIGEST_OLD_SECRETS", "").split(",") if s.strip())
    raw["web"] = web
    if env.get("DIGEST_WORKERS"):  # containers: the same image, told how to send
        raw["send"] = {**(raw.get("send") or {}), "workers": env["DIGEST_WORKERS"]}
    # `feeds` may list bare URLs or tables with url, name and poll_s.
    raw["feeds"] = [f if isinstance(f, dict) else {"url": f} for f in raw.get("feeds") or []]
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"{field}: {first['msg']}{more}", path=path) from exc
