"""The command line: each command loads settings, calls one library function, prints.

This module owns the terminal. Expected failures (`DigestError`) become one line on
stderr and exit status 1; a traceback is shown only with -vv.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn, TypeVar
from zoneinfo import ZoneInfo

import click

from digest import __version__
from digest.errors import DigestError
from digest.progress import Advance, counted, progress
from digest.running.liveness import recover_abandoned, utc_now

if TYPE_CHECKING:  # each command imports what it uses, so that start-up stays quick
    from rich.console import Console

    from digest.config import Settings
    from digest.errors import ProfileError
    from digest.models import Profile
    from digest.profiles import ProfileCheck
    from digest.running.editions import EditionRun
    from digest.running.sending import SendReport
    from digest.store import Store

# `digest --help` imports only what is above (tests/test_startup.py checks it). Written
# here, not imported from digest.config, which costs pydantic: the same name.
CONFIG_NAME = "digest.toml"

log = logging.getLogger("digest")
F = TypeVar("F", bound=Callable[..., Any])
RANK_CHUNK = 500  # `digest rank`: profiles ranked together before their picks are shown


@dataclass
class Context:
    config: Path | None
    data_dir: Path | None
    verbose: int
    _settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            from digest.config import load_settings

            self._settings = load_settings(self.config, data_dir=self.data_dir)
        return self._settings

    def open_store(self) -> Store:
        from digest.store import Store

        return Store.open(self.settings.db_url)


def fail(message: str) -> NoReturn:
    click.echo(f"digest: error: {message}", err=True)
    sys.exit(1)


def report_problems(problems: Sequence[object]) -> None:
    for problem in problems:
        click.echo(str(problem), err=True)


def handle_errors(command: F) -> F:
    """Turn expected errors into one line and exit status 1 (a traceback with -vv)."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context().find_object(Context)
        try:
            return command(*args, **kwargs)
        except DigestError as exc:
            if ctx is not None and ctx.verbose >= 2:
                log.exception("command failed")
            fail(str(exc))

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-c", "--config", type=click.Path(path_type=Path), envvar="DIGEST_CONFIG",
              help=f"Config file (default: ./{CONFIG_NAME} if present).")
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False),
              help="Folder for the database (default: from the config, else per-user).")
@click.option("-v", "--verbose", count=True, help="More logging: -v for info, -vv for debug "
              "and tracebacks.")
@click.version_option(__version__, prog_name="digest")
@click.pass_context
def cli(ctx: click.Context, config: Path | None, data_dir: Path | None, verbose: int) -> None:
    """Email every subscriber the new research papers that matter to them.

    \b
    Example:
        digest demo
    """
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if verbose < 2:
        for noisy in ("mail.log", "aiosmtplib", "apscheduler"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    # Long work says how far it is: a bar on a terminal, else these lines (digest/progress.py).
    logging.getLogger("digest.progress").setLevel(logging.INFO)
    ctx.obj = Context(config=config, data_dir=data_dir, verbose=verbose)


pass_context = click.make_pass_decorator(Context)


# init ----------------------------------------------------------------------------------

@cli.command()
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False), default=".")
@handle_errors
def init(folder: Path) -> None:
    """Write a commented digest.toml, an example profile and the folders.

    Existing files are left as they are.

    \b
    Example:
        digest init ~/papers && cd ~/papers && digest send --dry-run
    """
    from digest.commands.demo import DATA
    from digest.profiles import PROFILE_TEMPLATE

    folder.mkdir(parents=True, exist_ok=True)
    for sub in ("data", "profiles", "inbox", "outbox"):
        (folder / sub).mkdir(exist_ok=True)
    # The example profile is the template `digest profile new` fills: one commented form.
    for source, target in ((DATA / "digest.toml", folder / CONFIG_NAME),
                           (PROFILE_TEMPLATE, folder / "profiles" / "example.yaml")):
        if target.exists():
            click.echo(f"{target}: exists, left as it is")
        else:
            target.write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
            click.echo(f"{target}: written")
    click.echo(f"Next: edit {folder / 'profiles' / 'example.yaml'} (one file per subscriber: "
               "`digest profile new` writes one, `digest profile import-csv` one per row of a "
               f"list), drop digest files into {folder / 'inbox'}, then run `digest ingest` "
               "and `digest send --dry-run`.")


# demo ----------------------------------------------------------------------------------

DEMO_PORT = 8026  # where the demo's links point (not web.port, 8377, nor an SMTP port)

@cli.command()
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False),
              default=Path("digest-demo"), show_default=True,
              help="Where the received emails and the demo database are written.")
@click.option("--serve", is_flag=True,
              help="Then serve the emails' links on 127.0.0.1 until Ctrl-C, so that "
                   "\"more / less like this\", \"edit your interests\" and \"unsubscribe\" "
                   "can be clicked.")
@click.option("--port", type=click.IntRange(1, 65535), default=DEMO_PORT, show_default=True,
              help="The port the links point at (and --serve listens on).")
@handle_errors
def demo(out_dir: Path, serve: bool, port: int) -> None:
    """Run the whole pipeline on bundled papers and profiles, with nothing configured.

    Starts a real SMTP server on 127.0.0.1, sends three subscribers their editions to it,
    and saves what it received as .eml and .html files. Their links are signed with a
    public demo secret; with --serve they work (on copies of the demo's profiles).

    \b
    Example:
        digest demo --out /tmp/demo
        digest demo --serve        # then click the links in digest-demo/ana.html
    """
    import asyncio

    from rich.console import Console
    from rich.table import Table

    from digest.commands.demo import run_demo
    from digest.models import count_to_rate
    from digest.running.editions import Status

    started = time.perf_counter()
    wanted = os.environ.get("DIGEST_EMBEDDINGS", "auto")
    modes: dict[str, Literal["auto", "on", "off"]] = {"auto": "auto", "on": "on", "off": "off"}
    if wanted not in modes:
        fail(f"DIGEST_EMBEDDINGS={wanted!r}: expected auto, on or off")
    embeddings = modes[wanted]
    listener = _listen(port) if serve else None  # taken first: the links must point at it
    result = asyncio.run(run_demo(out_dir, now=utc_now(), embeddings=embeddings, port=port))
    report_problems(result.ingest.problems)
    report_problems(result.profiles.errors)
    console = Console()
    click.echo(f"Ingested {result.ingest.entries} entries from {result.ingest.files} "
               f"digest files: {result.ingest.new_papers} distinct papers.")
    table = Table(title=f"Editions sent to the SMTP server at {result.server}")
    for column in ("subscriber", "status", "picks", "top pick", "reason"):
        table.add_column(column, overflow="fold")
    for outcome in result.outcomes:
        top = outcome.picks[0] if outcome.picks else None
        asked = count_to_rate(outcome.picks)
        count = f"{len(outcome.picks) - asked}" + (f" + {asked} to rate" if asked else "")
        table.add_row(outcome.profile.name, str(outcome.status), count,
                      top.paper.title if top else "", top.reason if top else outcome.detail)
    console.print(table)
    click.echo(f"The server received {len(result.saved)} messages; saved in {out_dir}/ "
               f"({time.perf_counter() - started:.1f} s in all).")
    if result.saved:
        click.echo(f"Open this one in a browser: {result.saved[0][1].resolve()}")
    failed = any(o.status in (Status.FAILED, Status.ERROR) for o in result.outcomes)
    if listener is None:
        click.echo("The emails' links (more / less like this, edit your interests, "
                   f"unsubscribe) point at\nhttp://127.0.0.1:{port}/: run `digest demo "
                   "--serve` to click them.")
    else:
        import uvicorn

        from digest.commands.web import make_app

        click.echo(f"Serving the emails' links on http://127.0.0.1:{port}/ (a click edits "
                   f"the copies in {out_dir / 'demo-profiles'}); Ctrl-C stops.")
        server = uvicorn.Server(uvicorn.Config(make_app(result.settings), log_level="warning",
                                               server_header=False))
        server.run(sockets=[listener])
    if failed:
        sys.exit(1)


def _listen(port: int, host: str = "127.0.0.1", *, what: str = "the demo's links",
            hint: str = "choose another with --port") -> socket.socket:
    """A socket listening on `host`:`port`, or one line saying why not (and exit 1)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as exc:
        fail(f"cannot serve {what} on {host}:{port}: {getattr(exc, 'strerror', None) or exc}")
    listener = socket.socket(family, kind, proto)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(address)
    except OSError as exc:
        listener.close()
        fail(f"cannot serve {what} on {host}:{port}: {exc.strerror or exc} ({hint})")
    listener.listen(2048)
    return listener


# ingest --------------------------------------------------------------------------------

@cli.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--date", "file_date", type=click.DateTime(formats=["%Y-%m-%d"]),
              help="Day the files were written, to date them (default: each file's mtime).")
@click.option("--no-embed", is_flag=True,
              help="Store the papers without embedding them (a large backfill): `digest run` "
                   "embeds them in the background, else the next ingest or send.")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@pass_context
@handle_errors
def ingest(obj: Context, paths: tuple[Path, ...], file_date: datetime | None, no_embed: bool,
           as_json: bool) -> None:
    """Read digest files into the store; a paper already stored is not added again.

    Lines that cannot be used are reported as FILE:LINE: reason; the rest is kept. The
    exit status is 1 if a whole file was rejected. Without PATHS, the files in the inbox
    folder are read and moved to inbox/processed/ (or inbox/rejected/), as `digest run`
    does. With the embeddings extra, the new papers are embedded too, unless --no-embed
    (exit status 1 if that fails: the papers stay stored; each batch embedded is kept,
    also when the command is interrupted).

    \b
    Example:
        digest ingest inbox/*.txt --date 2026-03-11
    """
    from digest.embed import embed_new_papers, embedder_for, stored_name
    from digest.ingest.storing import ingest_files, ingest_inbox

    # With the embeddings extra, papers are embedded as they are stored, not when an
    # edition is due ("on" without the extra: said before anything is stored).
    embedder = None if no_embed else embedder_for(obj.settings)
    store = obj.open_store()
    embedded: int | None = 0
    unembedded = ""
    interrupted, left = False, None  # Ctrl-C while embedding; papers still to embed then
    try:
        reference = file_date.replace(tzinfo=UTC) if file_date else None
        with progress("Reading digest files", len(paths) or None, unit="file") as files_done:
            shown = _file_progress(files_done)
            if paths:
                report = ingest_files(store, paths, now=utc_now(), reference=reference,
                                      progress=shown)
            else:
                report = ingest_inbox(store, obj.settings.inbox_dir, now=utc_now(),
                                      progress=shown)
        total = store.count_papers()
        report_problems(report.problems)
        if not as_json:  # said before the papers are embedded, which takes longer
            click.echo(f"{counted(report.files, 'file')}, "
                       f"{counted(report.entries, 'entry', 'entries')}, "
                       f"{counted(report.new_papers, 'new paper')} ({total:,} stored), "
                       f"{counted(len(report.rejected), 'file')} rejected.")
        if embedder is not None:
            try:
                embedded = embed_new_papers(store, embedder, show_progress=progress)
            except KeyboardInterrupt:  # each batch embedded is kept
                interrupted, embedded = True, None
                with suppress(Exception, KeyboardInterrupt):
                    left = store.count_papers_without_embedding(stored_name(embedder))
            except Exception as exc:  # the papers are stored: the next send embeds them
                log.debug("ingest.embedding traceback", exc_info=exc)
                unembedded = f"{type(exc).__name__}: {exc}" if str(exc) else repr(exc)
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps({"files": report.files, "entries": report.entries,
                               "new_papers": report.new_papers, "papers_stored": total,
                               "papers_embedded": embedded,
                               "rejected": [str(p) for p in report.rejected]}
                              | ({"embedding_error": unembedded} if unembedded else {})
                              | ({"interrupted": True, "papers_to_embed": left}
                                 if interrupted else {})))
    elif embedder is not None and embedded:
        click.echo(f"{counted(embedded, 'paper')} embedded ({embedder.name}).")
    if unembedded:
        click.echo(f"The papers are stored, but embedding them failed: {unembedded} (a send "
                   "embeds what is missing; -vv shows where it failed)", err=True)
    if interrupted:
        still = (f"{counted(left, 'paper')} still to embed" if left is not None
                 else "not all embedded")
        click.echo(f"Interrupted: the papers are stored, {still} (`digest run` embeds them in "
                   "the background, else the next ingest or send).", err=True)
        sys.exit(130)
    if report.rejected or unembedded:
        sys.exit(1)


LARGE_FILE = 2_000  # entries: a digest file this big shows the progress of its own papers


def _file_progress(files_done: Advance
                   ) -> Callable[[Path, int], AbstractContextManager[Advance | None]]:
    """What `ingest_files` tells of each file: a bar of its papers for a large one, and one
    more file done when it is stored."""

    @contextmanager
    def file(path: Path, entries: int) -> Iterator[Advance | None]:
        if entries >= LARGE_FILE:
            with progress(f"Storing {path.name}", entries, unit="paper") as advance:
                yield advance
        else:
            yield None
        files_done(1)

    return file


# rank ----------------------------------------------------------------------------------

@cli.command()
@click.argument("profiles", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--top", default=10, show_default=True, type=click.IntRange(1, 1000),
              help="How many picks per profile (papers the email would ask the reader to "
                   "rate come after them, in their own section).")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per line per profile: profile, subscriber, picks.")
@pass_context
@handle_errors
def rank(obj: Context, profiles: tuple[Path, ...], top: int, as_json: bool) -> None:
    """Rank the stored papers for each profile and explain every pick.

    Papers already sent to the subscriber, and their liked and disliked papers, are left
    out. Nothing is recorded or sent.

    \b
    Example:
        digest --data-dir data rank profiles/ana.yaml --top 5 --json
    """
    from rich.console import Console

    from digest.profiles import load_profiles
    from digest.progress import progress
    from digest.running.editions import EditionRun
    from digest.running.processes import run_in_frozen_memory

    store = obj.open_store()
    try:
        run = EditionRun(store, obj.settings, preview=True, show_progress=progress)
        _say_if_preview_links(run)
        # Parsed as sending parses them (the same cache), each picks `top` papers anyway.
        loaded = load_profiles(profiles, default_max_papers=obj.settings.default_max_papers,
                               for_sending=False, cache=run.profile_cache())
        report_problems(loaded.errors)
        run.prefetch(loaded.profiles)
        by_path = {p.path: p for p in loaded.profiles}
        errors = {e.path: e for e in loaded.errors}
        console = Console()
        with run_in_frozen_memory(run):  # as `digest send` ranks, in one process
            _rank_and_show(run, profiles, by_path, errors, top=top, as_json=as_json,
                           console=console)
    finally:
        store.close()
    if loaded.errors:
        sys.exit(1)


def _rank_and_show(run: EditionRun, profiles: Sequence[Path], by_path: dict[Path, Profile],
                   errors: dict[Path, ProfileError], *, top: int, as_json: bool,
                   console: Console) -> None:
    """`digest rank`'s picks, RANK_CHUNK profiles ranked together and shown as done."""
    for start in range(0, len(profiles), RANK_CHUNK):
        paths = profiles[start:start + RANK_CHUNK]
        ranked = iter(run.choose_picks_many([by_path[p] for p in paths if p in by_path],
                                            now=utc_now(), everything=True, top=top))
        lines = []  # the chunk's JSON lines, written at once
        for path in paths:
            profile = by_path.get(path)
            if profile is None:
                if as_json:
                    lines.append(json.dumps({"profile": str(path), "subscriber": None,
                                             "picks": [], "error": str(errors.get(path))}))
                continue
            picks = next(ranked)
            if as_json:
                lines.append(json.dumps({
                    "profile": str(path), "subscriber": profile.name,
                    "picks": [{"id": p.paper.key, "title": p.paper.title, "score": p.score,
                               "reason": p.reason, "section": p.section} for p in picks]},
                    ensure_ascii=False))
            else:
                _print_picks(console, profile, picks)
        if lines:
            click.echo("\n".join(lines))


def _print_picks(console: Console, profile: Profile, picks: Sequence[Any]) -> None:
    from rich.table import Table

    table = Table(title=f"{profile.name} ({profile.path})")
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    table.add_column("title", overflow="fold")
    table.add_column("section", overflow="fold")
    table.add_column("reason", overflow="fold")
    for i, pick in enumerate(picks, 1):
        table.add_row(str(i), f"{pick.score:.3f}", pick.paper.title, pick.section,
                      pick.reason)
    console.print(table if picks else f"{profile.name}: nothing relevant among stored papers")


def _say_if_preview_links(run: Any) -> None:
    """A command that sends nothing, with links but no DIGEST_SECRET: say that its links
    are signed with the public preview key."""
    if run.preview_only:
        click.echo("DIGEST_SECRET is not set: the links here are signed with a public "
                   "preview key and will not work (nothing is sent).", err=True)


# preview -------------------------------------------------------------------------------

@cli.command()
@click.argument("profile_path", metavar="PROFILE", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False),
              help="HTML file to write (default: SUBSCRIBER-preview.html here).")
@pass_context
@handle_errors
def preview(obj: Context, profile_path: Path, out: Path | None) -> None:
    """Render the subscriber's next edition to an HTML file; nothing is sent or recorded.

    \b
    Example:
        digest preview profiles/ana.yaml && xdg-open ana-preview.html
    """
    from digest.profiles import load_profile
    from digest.progress import progress
    from digest.running.editions import EditionRun
    from digest.schedule import parse_schedule

    settings = obj.settings
    profile = load_profile(profile_path, default_max_papers=settings.default_max_papers)
    now = utc_now()
    slot = parse_schedule(profile.schedule, profile.timezone).next_slot(now)
    store = obj.open_store()
    try:
        run = EditionRun(store, settings, preview=True, show_progress=progress)
        _say_if_preview_links(run)
        picks = run.choose_picks(profile, now=now)
        message = run.render(profile, picks, slot=slot, now=now).email
    finally:
        store.close()
    html_part = message.get_body(preferencelist=("html",))
    assert html_part is not None
    out = out or Path(f"{profile.subscriber_id}-preview.html")
    try:
        out.write_text(html_part.get_content(), encoding="utf-8")
    except OSError as exc:
        fail(f"{out}: cannot be written: {exc.strerror or exc}")
    click.echo(f"{len(picks)} papers for {profile.name}'s edition of "
               f"{slot.astimezone().isoformat(timespec='minutes')}; written to {out}")


# send ----------------------------------------------------------------------------------

def _plural(count: int, noun: str) -> str:
    """"1 edition", "2 editions"."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _test_address(_ctx: click.Context, _param: click.Parameter, value: str | None
                  ) -> str | None:
    """`send --to`: an address digest can send to (no line breaks, name@domain)."""
    from digest.identity import check_email

    if value is None:
        return None
    try:
        return check_email(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


@cli.command()
@click.argument("profiles", nargs=-1, type=click.Path(path_type=Path))
@click.option("--dry-run", is_flag=True, help="Write .eml files to the outbox folder instead "
              "of sending; the ledger is not touched.")
@click.option("--retry-failed", is_flag=True, help="First put the failed editions of each "
              "profile's current slot back in the queue, attempts reset (once the cause, "
              "such as a refused recipient, is fixed).")
@click.option("--to", "to", metavar="ADDRESS", callback=_test_address,
              help="Send one PROFILE's next edition to ADDRESS instead, as a test "
              "(\"[test]\" in its subject); nothing is recorded.")
@pass_context
@handle_errors
def send(obj: Context, profiles: tuple[Path, ...], dry_run: bool, retry_failed: bool,
         to: str | None) -> None:
    """Send each subscriber's due edition, once: a second run sends nothing new.

    Without PROFILE arguments, every profile in the profiles folder is served. If the SMTP
    server cannot be reached (refused, unknown host, TLS or login failing), the run stops
    at once with one line saying what to check; its editions wait, pending, for the next
    run.

    \b
    Example:
        digest send --to me@example.org profiles/ana.yaml
        digest send --dry-run && digest send
    """
    from rich.console import Console
    from rich.table import Table

    from digest.profilecache import ProfileCache
    from digest.profiles import profile_paths
    from digest.running.editions import Status
    from digest.running.processes import send_all
    from digest.running.sending import SHOW_ALL, requeue_failed

    settings = obj.settings
    if to is not None:
        if len(profiles) != 1 or dry_run or retry_failed:
            raise click.UsageError("--to sends one PROFILE's edition as a test: give one "
                                   "PROFILE, without --dry-run or --retry-failed")
        _send_test(settings, profiles[0], to)
        return
    if dry_run and retry_failed:
        raise click.UsageError("--retry-failed changes the ledger; a --dry-run does not")
    paths = list(profiles) or profile_paths(settings.profiles_dir)
    if not paths:
        fail(f"no profiles in {settings.profiles_dir} (run `digest init`, or pass files)")
    started = time.perf_counter()
    store = obj.open_store()
    try:
        if dry_run:
            report = _dry_run(store, settings, paths)
        else:
            recover_abandoned(store, now=utc_now())
            if retry_failed:
                requeued = requeue_failed(store, settings, paths, now=utc_now())
                click.echo(f"Re-queued {_plural(requeued, 'failed edition')}.")
    finally:
        store.close()  # workers open their own; none may inherit this one
    if not dry_run:
        if settings.send.workers == "celery":  # on the hosts of `digest worker`s
            from digest.running.workers import send_through_celery

            report = send_through_celery(settings, [(path, None) for path in paths],
                                         now=utc_now(), show_all=len(paths) <= SHOW_ALL)
        else:  # on this machine's cores
            from digest.progress import progress

            report = send_all(settings, paths, now=utc_now(),
                              processes=settings.send.processes, show_progress=progress)
        if not profiles:  # the whole folder was served: forget profiles no longer in it
            cache = ProfileCache.for_settings(settings)
            cache.keep_only(paths)
            cache.close()
    elapsed = time.perf_counter() - started
    stages = " ".join(f"{stage}_s={seconds:.2f}" for stage, seconds in report.timings.items())
    log.info("send.stages editions=%d sent=%d %s wall_s=%.2f", report.editions,
             report.counts[Status.SENT], stages, elapsed)
    if report.shown:
        table = Table(title="Dry run: nothing sent" if dry_run else "Editions")
        for column in ("subscriber", "status", "picks", "detail"):
            table.add_column(column, overflow="fold")
        for o in report.shown:
            detail = o.detail + (" (will retry)" if o.status is Status.FAILED and o.retry else "")
            table.add_row(o.profile.subscriber_id, str(o.status), str(o.count), detail)
        Console().print(table)
    counts = ", ".join(f"{n} {status}" for status, n in report.counts.most_common())
    click.echo(f"{_plural(report.editions, 'edition')} in {elapsed:.1f} s: "
               f"{counts or 'none due'}.")
    report_problems(report.errors)
    for o in report.shown:
        if o.status is Status.FAILED:
            again = "" if o.retry else " (once fixed: digest send --retry-failed)"
            click.echo(f"{o.profile.path}: edition not delivered: {o.detail}{again}",
                       err=True)
        elif o.status is Status.ERROR:
            click.echo(f"{o.profile.path}: edition not sent: {o.detail} (a bug: please "
                       "report it with the output of -vv)", err=True)
    if report.counts[Status.FAILED] or report.counts[Status.ERROR] or report.errors:
        sys.exit(1)


def _send_test(settings: Settings, path: Path, to: str) -> None:
    """`send --to`: the profile's next edition to `to` as a test; the server's refusal of
    it is one line (a ConnectionFailure says it itself, through handle_errors)."""
    from digest.errors import PermanentDeliveryError, TransientDeliveryError
    from digest.running.sending import send_test

    try:
        sent = send_test(settings, path, to, now=utc_now())
    except (TransientDeliveryError, PermanentDeliveryError) as exc:
        fail(f"the test email to {to} was not delivered: {exc}")
    asked = f" and {sent.asked} to rate" if sent.asked else ""
    nothing = (": nothing new, so the real edition would be skipped"
               if not sent.picks and sent.profile.when_nothing == "skip" else "")
    click.echo(f"Sent a test of {sent.profile.name}'s edition of "
               f"{sent.slot.astimezone().isoformat(timespec='minutes')} "
               f"({_plural(sent.picks, 'paper')}{asked}{nothing}) to {to}: {sent.reply}")


def _dry_run(store: Store, settings: Settings, paths: Sequence[Path]) -> SendReport:
    """Every due edition written to the outbox as .eml, in this process; nothing recorded."""

    import asyncio

    from digest.deliver import OutboxMailer
    from digest.profiles import load_profiles
    from digest.running.editions import EditionRun
    from digest.running.sending import SendReport

    loaded = load_profiles(paths, default_max_papers=settings.default_max_papers)
    report = SendReport(errors=[str(e) for e in loaded.errors])
    outbox = OutboxMailer(settings.outbox_dir)
    run = EditionRun(store, settings, preview=True)
    _say_if_preview_links(run)
    outcomes = asyncio.run(run.run_editions(loaded.profiles, outbox, now=utc_now(),
                                            dry_run=True))
    for o in outcomes:
        report.counts[o.status] += 1
        report.shown.append(o.lite())
    return report


# run -----------------------------------------------------------------------------------

@cli.command()
@pass_context
@handle_errors
def run(obj: Context) -> None:
    """Run the daemon: watch the inbox, poll feeds, send editions on schedule.

    Logs one line per event on stderr. SIGTERM or Ctrl-C finishes the email in flight
    and exits; a second one exits at once. SIGHUP reloads the config and profiles.

    \b
    Example:
        digest -c /etc/digest/digest.toml run
    """
    import asyncio

    from digest.config import load_settings
    from digest.running.daemon import Daemon

    settings = obj.settings
    if obj.verbose == 0:
        logging.getLogger().setLevel(settings.daemon.log_level)
    daemon = Daemon(lambda: load_settings(obj.config, data_dir=obj.data_dir))
    sys.exit(asyncio.run(daemon.run()))


# worker --------------------------------------------------------------------------------

@cli.command()
@pass_context
@handle_errors
def worker(obj: Context) -> None:
    """Run a Celery worker: take shards of editions from the broker and rank, render and
    send them against the shared database ([send] workers = "celery", [celery]).

    One process takes one shard at a time: run one per core, on as many hosts as needed,
    each with the same configuration, database and profiles folder. SIGTERM finishes the
    shard in hand; a worker killed mid-shard loses nothing (another takes the shard over).

    \b
    Example:
        digest -c /etc/digest/digest.toml worker   # DIGEST_BROKER_URL in the environment
    """
    from digest.running.workers import run_worker

    settings = obj.settings
    if obj.verbose == 0:
        logging.getLogger().setLevel(settings.daemon.log_level)
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
    sys.exit(run_worker(settings, loglevel=level if isinstance(level, str) else "INFO"))


# serve ---------------------------------------------------------------------------------

@cli.command()
@click.option("--host", help="Address to listen on (default: web.host, 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535),
              help="Port to listen on (default: web.port, 8377).")
@pass_context
@handle_errors
def serve(obj: Context, host: str | None, port: int | None) -> None:
    """Serve the pages behind the links in emails: unsubscribe, more / less like this,
    and editing one's interests. Needs DIGEST_SECRET, the secret the links were signed
    with; put it behind your HTTPS proxy at web.base_url.

    \b
    Example:
        digest serve --port 8377   # with DIGEST_SECRET set
    """
    import uvicorn

    from digest.commands.web import make_app

    settings = obj.settings
    app = make_app(settings)
    host = host or settings.web.host
    port = port or settings.web.port
    listener = _listen(port, host, what=f"the links of {settings.mail.list_id}",
                       hint="choose another with --port or [web] port")
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"Serving the links of {settings.mail.list_id} on http://{shown}:{port}/ "
               "(Ctrl-C stops)", err=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", server_header=False,
                                           proxy_headers=True))
    server.run(sockets=[listener])


# status --------------------------------------------------------------------------------

@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the state as one JSON object.")
@pass_context
@handle_errors
def status(obj: Context, as_json: bool) -> None:
    """Show whether a daemon runs (the leader and any standbys), each subscriber's next
    and last edition, each feed's last poll, and counts. Reads only: with no digest.toml
    and no database, it says so and creates nothing.

    \b
    Example:
        digest status --json
    """
    from rich.console import Console

    from digest.commands.status import (
        collect_status,
        print_status,
        read_status_snapshot,
        sqlite_file,
    )

    settings = obj.settings
    snapshot = read_status_snapshot(settings.db_url)
    if snapshot is None:  # a SQLite file that is not there
        where = sqlite_file(settings.db_url)
        if settings.config_path is None:
            fail(f"no {CONFIG_NAME} here and no database at {where}: nothing to show (run "
                 "it in a folder `digest init` made, or give -c CONFIG)")
        click.echo(f"No database yet at {where} (the first `digest ingest`, `send` or "
                   "`run` makes it).", err=True)
    now = utc_now()
    report = collect_status(snapshot, settings, now=now)
    if as_json:
        click.echo(json.dumps(report.as_dict(), ensure_ascii=False))
        return
    print_status(report, Console(), now=now)
    report_problems(report.problems)


# profile -------------------------------------------------------------------------------

@cli.group()
def profile() -> None:
    """Work with subscriber profiles.

    \b
    Example:
        digest profile validate profiles/*.yaml
    """


@profile.command("validate")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@pass_context
@handle_errors
def profile_validate(obj: Context, paths: tuple[Path, ...]) -> None:
    """Check profile files and report every problem of each, one per line, as FILE:LINE:
    field: problem (with the nearest known key or value where one is close), then a count.

    Without arguments, every profile in the profiles folder is checked. The exit status is
    1 if any file has a problem.

    \b
    Example:
        digest profile validate profiles/ana.yaml
    """
    from digest.profiles import check_profiles, profile_paths

    checks = check_profiles(list(paths) or profile_paths(obj.settings.profiles_dir))
    if not checks:
        click.echo(f"No profiles in {obj.settings.profiles_dir}: `digest profile new ADDRESS "
                   "--name NAME` writes one.")
        return
    for check in checks:
        if check.profile is not None:
            p = check.profile
            click.echo(f"{p.path}: ok ({p.name} <{p.email}>, {p.schedule} {p.timezone})")
        report_problems(check.problems)
    broken = [c for c in checks if c.problems]
    problems = sum(len(c.problems) for c in broken)
    if not broken:
        click.echo(f"{counted(len(checks), 'file')}, no problems.")
        return
    ok = len(checks) - len(broken)
    where = f" (in {counted(len(broken), 'file')}; {ok:,} ok)" if len(checks) > 1 else ""
    click.echo(f"{counted(len(checks), 'file')}, {counted(problems, 'problem')}{where}.")
    sys.exit(1)


def _feedback(obj: Context, profile_path: Path, references: Sequence[str], *,
              liked: bool, as_given: bool) -> None:
    """Move papers into liked or disliked. A reference that matches no stored paper is
    answered with the nearest stored ones and nothing is changed, unless `as_given`."""

    from digest.profiles import load_profile, set_feedback

    current = load_profile(profile_path)
    store = obj.open_store()
    try:
        found = store.find_papers([*references, *current.liked, *current.disliked])
        missing = [r for r in dict.fromkeys(references) if r not in found]
        stored = store.papers() if missing and not as_given else []
    finally:
        store.close()
    if missing and not as_given:
        _no_such_papers(profile_path, missing, stored)

    def key(entry: str) -> str:
        paper = found.get(entry)
        return paper.key if paper is not None else entry.casefold()

    def same(a: str, b: str) -> bool:  # a title and an arXiv id of one paper are one paper
        return key(a) == key(b)

    for reference in references:
        paper = found.get(reference)
        entry = paper.title if paper is not None else reference
        if paper is None:
            click.echo(f"{reference!r} matches no stored paper; recorded as given "
                       "(--as-given: a title still steers the ranking)", err=True)
        else:
            found[entry] = paper
        outcome = set_feedback(profile_path, entry, liked=liked, same=same)
        click.echo(f"{profile_path}: {entry!r} {outcome}")


def _no_such_papers(profile_path: Path, missing: Sequence[str], stored: Sequence[Any]
                    ) -> NoReturn:
    """Say which references match no stored paper, with the nearest stored ones, and exit 1
    (the profile is not edited)."""

    from digest.profiles import nearest_papers

    if not stored:
        fail(f"no papers are stored yet, so {missing[0]!r} matches none: run `digest ingest` "
             f"first, or add --as-given to record it as written ({profile_path} is unchanged)")
    for reference in missing:
        near = nearest_papers(reference, stored)
        if not near:
            click.echo(f"{reference!r} matches no stored paper, nor nearly "
                       f"({counted(len(stored), 'paper')} stored).", err=True)
            continue
        click.echo(f"{reference!r} matches no stored paper; the nearest:", err=True)
        for paper in near:
            known = f"  (arXiv {paper.arxiv_id})" if paper.arxiv_id else ""
            click.echo(f"  \"{paper.title}\"{known}", err=True)
    fail(f"{profile_path} is unchanged: give each paper as stored (its title, arXiv id or "
         "DOI), or add --as-given to record it as written")


_AS_GIVEN = click.option(
    "--as-given", is_flag=True,
    help="Record a paper that matches no stored one as written (by default the nearest "
         "stored titles are shown and nothing is changed).")


@profile.command("like")
@click.argument("profile_path", metavar="PROFILE", type=click.Path(path_type=Path))
@click.argument("papers", nargs=-1, required=True)
@_AS_GIVEN
@pass_context
@handle_errors
def profile_like(obj: Context, profile_path: Path, papers: tuple[str, ...],
                 as_given: bool) -> None:
    """More like this: add stored papers (title, arXiv id or DOI) to the profile's liked
    list.

    A paper that matches no stored one is answered with the nearest stored titles, and
    the profile is left as it was (exit status 1), unless --as-given. The edit keeps the
    file's comments and layout; the next edition reflects it.

    \b
    Example:
        digest profile like profiles/ana.yaml 2209.11755
    """
    _feedback(obj, profile_path, papers, liked=True, as_given=as_given)


@profile.command("import")
@click.argument("profile_path", metavar="PROFILE", type=click.Path(path_type=Path))
@click.argument("files", metavar="FILE...", nargs=-1, required=True,
                type=click.Path(path_type=Path))
@pass_context
@handle_errors
def profile_import(obj: Context, profile_path: Path, files: tuple[Path, ...]) -> None:
    """Your library is your profile: add the papers of BibTeX, RIS or CSL-JSON files (as
    Zotero and Mendeley export them) to the profile's liked list.

    Each entry is matched to a stored paper by arXiv id, then DOI, then title; the others
    are stored as references (they steer the ranking, and are never sent as new). The edit
    keeps the file's comments and layout, and importing again adds nothing twice. Entries
    that cannot be read are reported as FILE:LINE: reason and the rest are imported; the
    exit status is 1 only if a file cannot be read at all or no entry can.

    \b
    Example:
        digest profile import profiles/ana.yaml ~/Zotero/library.bib
    """
    from digest.library import import_library
    from digest.progress import progress

    if obj.verbose < 2:  # bibtexparser logs what it skips; the report says it, by line
        logging.getLogger("bibtexparser").setLevel(logging.ERROR)
    store = obj.open_store()
    try:
        report = import_library(store, profile_path, files, now=utc_now(),
                                show_progress=progress)
    finally:
        store.close()
    report_problems(report.problems)
    click.echo(f"{profile_path}: {report.files} files, {report.entries:,} entries, "
               f"{report.papers:,} papers ({report.papers - report.new_papers:,} already "
               f"stored, {report.new_papers:,} stored as references); {report.added:,} added "
               f"to liked, {report.already_liked:,} already there.")
    if report.rejected or not report.entries:
        sys.exit(1)


@profile.command("dislike")
@click.argument("profile_path", metavar="PROFILE", type=click.Path(path_type=Path))
@click.argument("papers", nargs=-1, required=True)
@_AS_GIVEN
@pass_context
@handle_errors
def profile_dislike(obj: Context, profile_path: Path, papers: tuple[str, ...],
                    as_given: bool) -> None:
    """Less like this: add stored papers to the profile's disliked list (out of liked).

    A paper that matches no stored one is answered as by `digest profile like`.

    \b
    Example:
        digest profile dislike profiles/ana.yaml "Some Paper Title"
    """
    _feedback(obj, profile_path, papers, liked=False, as_given=as_given)


@profile.command("set")
@click.argument("profile_path", metavar="PROFILE", type=click.Path(path_type=Path))
@click.argument("key")
@click.argument("value")
@pass_context
@handle_errors
def profile_set(obj: Context, profile_path: Path, key: str, value: str) -> None:
    """Set one field of a profile, keeping its comments and layout. VALUE is read as YAML:
    `15`, `false`, `"weekdays 08:00"`, or a list like `[dense retrieval, rag]`;
    `keywords.mute` names a nested field. An invalid value changes nothing.

    \b
    Example:
        digest profile set profiles/ana.yaml max_papers 15
    """
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    from digest.profiles import set_field

    try:
        parsed = YAML(typ="safe").load(value)
    except YAMLError as exc:
        fail(f"{value!r} is not a YAML value: {exc}")
    if parsed is None:
        parsed = value  # an empty string stays a string, not null
    click.echo(f"{profile_path}: {set_field(profile_path, key, parsed)}")


@profile.command("new")
@click.argument("email")
@click.option("--name", required=True, help="The subscriber's name, as the email greets them.")
@click.option("--interest", "interests", multiple=True, help="An interest (repeatable).")
@click.option("--timezone", default="UTC", show_default=True, help="An IANA time zone.")
@click.option("--schedule", default="daily 07:00", show_default=True)
@click.option("--id", "subscriber_id", help="File name and subscriber id (default: from the "
              "address, e.g. ana for ana@example.org).")
@pass_context
@handle_errors
def profile_new(obj: Context, email: str, name: str, interests: tuple[str, ...],
                timezone: str, schedule: str, subscriber_id: str | None) -> None:
    """Write a new profile file into the profiles folder: the commented template that
    `digest init` writes as example.yaml, with these values and nothing liked yet.

    \b
    Example:
        digest profile new ana@example.org --name "Ana Lima" --interest "dense retrieval"
    """
    from digest.profiles import (
        check_profile_text,
        new_profile_text,
        subscriber_id_for,
        write_new_profile,
    )

    path = obj.settings.profiles_dir / f"{subscriber_id or subscriber_id_for(email)}.yaml"
    text = new_profile_text(name, email, interests, timezone, schedule)
    check = check_profile_text(text, path)
    if check.problems:  # each said as the option that gave the value
        for problem in check.problems:
            reason = (problem.reason.removeprefix(f"{problem.field}: ") if problem.field else
                      f"{path.stem!r} cannot be a subscriber id (and file name): letters, "
                      "digits, '.', '_' or '-', starting with a letter or digit")
            click.echo(f"digest: error: {_new_option(problem.field)}: {reason}", err=True)
        sys.exit(1)
    if not write_new_profile(path, text):  # never over someone's file
        fail(f"{path} exists already (choose another --id)")
    click.echo(f"{path}: written")


def _new_option(field: str | None) -> str:
    """The option of `digest profile new` that gave a profile's field."""
    if field is None:
        return "--id"  # only the file name has problems without a field
    name = field.partition("[")[0]
    return {"email": "EMAIL", "interests": "--interest"}.get(name, f"--{name}")


@profile.command("list")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per line per profile: id, file, name, email, schedule, "
                   "timezone, next_edition (local ISO time; null when paused), active, error.")
@pass_context
@handle_errors
def profile_list(obj: Context, as_json: bool) -> None:
    """List the subscribers of the profiles folder: id, name, address, schedule and time
    zone, their next edition (in their own time) and whether they are active.

    A broken profile is listed with its first problem, and the exit status is then 1
    (`digest profile validate` lists every problem).

    \b
    Example:
        digest profile list --json
    """
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from digest.profiles import check_profiles, profile_paths

    settings = obj.settings
    checks = check_profiles(profile_paths(settings.profiles_dir),
                            default_max_papers=settings.default_max_papers)
    now = utc_now()
    rows = [_listed(check, now) for check in checks]
    broken = [row for row in rows if row["error"] is not None]
    if as_json:
        for row in rows:
            click.echo(json.dumps(row, ensure_ascii=False))
    elif not rows:
        click.echo(f"No profiles in {settings.profiles_dir}: `digest profile new ADDRESS "
                   "--name NAME` writes one.")
    else:
        # Without rules at the edges, six columns fit 80 characters; a long address folds.
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                      collapse_padding=True)
        for column in ("id", "name", "email"):
            table.add_column(column, overflow="fold")
        table.add_column("schedule", overflow="fold", min_width=14)
        table.add_column("next edition", min_width=12)
        table.add_column("active", no_wrap=True, min_width=6)
        for row in rows:
            if row["error"] is None:
                table.add_row(row["id"], row["name"], row["email"],
                              f"{row['schedule']}\n{row['timezone']}",
                              _local_time(row["next_edition"]), "yes" if row["active"] else "no")
        Console().print(table)
        for row in broken:
            click.echo(f"broken: {row['error']}", err=True)
        active = sum(1 for row in rows if row["active"])
        click.echo(f"{counted(len(rows), 'profile')} in {settings.profiles_dir}: {active:,} "
                   f"active, {len(rows) - active - len(broken):,} paused, {len(broken):,} "
                   "broken.")
    if broken:
        sys.exit(1)


def _listed(check: ProfileCheck, now: datetime) -> dict[str, Any]:
    """One profile as `digest profile list --json` gives it."""

    from digest.schedule import parse_schedule

    p = check.profile
    if p is None:
        more = len(check.problems) - 1
        error = str(check.problems[0]) + (f" (and {counted(more, 'more problem')}: `digest "
                                          "profile validate` lists them)" if more else "")
        return {"id": None, "file": str(check.path), "name": None, "email": None,
                "schedule": None, "timezone": None, "next_edition": None, "active": None,
                "error": error}
    following = None
    if p.active:
        slot = parse_schedule(p.schedule, p.timezone).next_slot(now)
        following = slot.astimezone(ZoneInfo(p.timezone)).isoformat(timespec="minutes")
    return {"id": p.subscriber_id, "file": str(p.path), "name": p.name, "email": p.email,
            "schedule": p.schedule, "timezone": p.timezone, "next_edition": following,
            "active": p.active, "error": None}


def _local_time(iso: str | None) -> str:
    """A local ISO time as the table shows it: `26 Nov 07:00`."""
    return datetime.fromisoformat(iso).strftime("%d %b %H:%M") if iso else "paused"


@profile.command("import-csv")
@click.argument("csv_path", metavar="FILE", type=click.Path(path_type=Path))
@pass_context
@handle_errors
def profile_import_csv(obj: Context, csv_path: Path) -> None:
    """Write a profile for each person of a roster: a CSV file whose header is
    name,email,interests (interests separated by ';'), and if wanted schedule, timezone
    and id.

    Each profile is the commented one `digest profile new` writes, in the profiles folder.
    A person who has a profile already (the same address) is left as they are, and said
    so: importing again writes nothing twice. A row that cannot make a valid profile is
    reported as FILE:LINE: reason and the others are written; the exit status is then 1.
    At most 10,000 rows (docs/limits.md).

    \b
    Example:
        digest profile import-csv lab.csv
    """
    from digest.profiles import import_roster

    report = import_roster(csv_path, obj.settings.profiles_dir)
    report_problems(report.notes)
    for path in report.written:
        click.echo(f"{path}: written")
    for note in report.existing:
        click.echo(str(note))
    report_problems(report.problems)
    refused = len({problem.line for problem in report.problems})
    click.echo(f"{csv_path}: {counted(len(report.written), 'profile')} written, "
               f"{len(report.existing):,} left as they were (a profile exists), "
               f"{counted(refused, 'row')} refused.")
    if report.problems:
        sys.exit(1)


@profile.command("schema")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False),
              help="File to write (default: standard output).")
def profile_schema_command(out: Path | None) -> None:
    """Print the JSON Schema of profile files, for editors that validate and complete YAML
    (e.g. `# yaml-language-server: $schema=profile.schema.json` atop a profile).

    \b
    Example:
        digest profile schema --out profile.schema.json
    """
    from digest.profiles import profile_schema

    text = json.dumps(profile_schema(), indent=2) + "\n"
    if out is None:
        click.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
        click.echo(f"{out}: written", err=True)


# db ------------------------------------------------------------------------------------

@cli.group()
def db() -> None:
    """The database: which schema revision it is at, and upgrading it.

    digest upgrades the schema itself whenever it opens the database; these commands
    show it and do it at a moment you choose (before restarting after an update).

    \b
    Example:
        digest db current
    """


@db.command("current")
@click.option("--json", "as_json", is_flag=True, help="Print it as one JSON object.")
@pass_context
@handle_errors
def db_current(obj: Context, as_json: bool) -> None:
    """Show the database (without its password) and the schema revision it is at.

    \b
    Example:
        digest -c /etc/digest/digest.toml db current --json
    """
    from digest.store import Store

    store = Store.open(obj.settings.db_url, upgrade=False)
    try:
        current, newest = store.revision()
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps({"database": store.name, "engine": store.engine.dialect.name,
                               "revision": current, "newest": newest}))
        return
    state = ("the newest" if current == newest else
             f"the newest is {newest}: run `digest db upgrade`")
    click.echo(f"database  {store.name}")
    click.echo(f"revision  {current or 'none'} ({state})")


@db.command("upgrade")
@pass_context
@handle_errors
def db_upgrade(obj: Context) -> None:
    """Bring the database schema to the newest revision, creating the tables if needed.

    Safe while other digest processes run; a database made before migrations is adopted
    with its data.

    \b
    Example:
        digest -c /etc/digest/digest.toml db upgrade
    """
    from digest.store import Store

    store = Store.open(obj.settings.db_url, upgrade=False)
    try:
        before, after = store.upgrade()
    finally:
        store.close()
    if before == after:
        click.echo(f"{store.name}: already at revision {after}, the newest.")
    else:
        click.echo(f"{store.name}: upgraded from revision {before or 'none'} to {after}.")


def main() -> None:
    """Entry point of the `digest` console script."""
    cli(prog_name="digest")

