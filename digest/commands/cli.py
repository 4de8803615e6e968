"""The command line: each command loads settings, calls one library function, prints.

This module owns the terminal. Expected failures (`DigestError`) become one line on
stderr and exit status 1; a traceback is shown only with -vv.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import Any, Literal, NoReturn, TypeVar

import click
from rich.console import Console
from rich.table import Table
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from digest import __version__
from digest.config import CONFIG_NAME, Settings, load_settings
from digest.deliver import OutboxMailer
from digest.errors import DigestError
from digest.models import Profile
from digest.profilecache import ProfileCache
from digest.profiles import (
    load_profile,
    load_profiles,
    new_profile_text,
    parse_profile,
    profile_paths,
    profile_schema,
    set_feedback,
    set_field,
)
from digest.running.editions import EditionRun, Status, ingest_files, ingest_inbox
from digest.running.liveness import recover_abandoned, utc_now
from digest.running.processes import send_all
from digest.running.sending import SHOW_ALL, SendReport
from digest.schedule import parse_schedule
from digest.store import Store

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
            self._settings = load_settings(self.config, data_dir=self.data_dir)
        return self._settings

    def open_store(self) -> Store:
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

    folder.mkdir(parents=True, exist_ok=True)
    for sub in ("data", "profiles", "inbox", "outbox"):
        (folder / sub).mkdir(exist_ok=True)
    for source, target in ((DATA / "digest.toml", folder / CONFIG_NAME),
                           (DATA / "example-profile.yaml", folder / "profiles" / "example.yaml")):
        if target.exists():
            click.echo(f"{target}: exists, left as it is")
        else:
            target.write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
            click.echo(f"{target}: written")
    click.echo(f"Next: edit {folder / 'profiles' / 'example.yaml'}, drop digest files into "
               f"{folder / 'inbox'}, then run `digest ingest` and `digest send --dry-run`.")


# demo ----------------------------------------------------------------------------------

DEMO_PORT = 8026  # where the demo's links point (not web.port, 8025, nor an SMTP port)

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
    from digest.commands.demo import run_demo

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
        table.add_row(outcome.profile.name, str(outcome.status), str(len(outcome.picks)),
                      top.paper.title if top else "", top.reason if top else outcome.detail)
    console.print(table)
    click.echo(f"The server received {len(result.saved)} messages; saved in {out_dir}/.")
    if result.saved:
        click.echo(f"Open this one in a browser: {result.saved[0][1].resolve()}")
    click.echo(f"({time.perf_counter() - started:.1f} s)")
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


def _listen(port: int) -> socket.socket:
    """A socket listening on 127.0.0.1:`port`, or one line saying why not."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("127.0.0.1", port))
    except OSError as exc:
        listener.close()
        fail(f"cannot serve the demo's links on 127.0.0.1:{port}: {exc.strerror or exc} "
             "(choose another with --port)")
    listener.listen(64)
    return listener


# ingest --------------------------------------------------------------------------------

@cli.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--date", "file_date", type=click.DateTime(formats=["%Y-%m-%d"]),
              help="Day the files were written, to date them (default: each file's mtime).")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@pass_context
@handle_errors
def ingest(obj: Context, paths: tuple[Path, ...], file_date: datetime | None,
           as_json: bool) -> None:
    """Read digest files into the store; a paper already stored is not added again.

    Lines that cannot be used are reported as FILE:LINE: reason; the rest is kept. The
    exit status is 1 if a whole file was rejected. Without PATHS, the files in the inbox
    folder are read and moved to inbox/processed/ (or inbox/rejected/), as `digest run`
    does.

    \b
    Example:
        digest ingest inbox/*.txt --date 2026-03-11
    """
    store = obj.open_store()
    try:
        reference = file_date.replace(tzinfo=UTC) if file_date else None
        if paths:
            report = ingest_files(store, paths, now=utc_now(), reference=reference)
        else:
            report = ingest_inbox(store, obj.settings.inbox_dir, now=utc_now())
        total = store.count_papers()
    finally:
        store.close()
    report_problems(report.problems)
    if as_json:
        click.echo(json.dumps({"files": report.files, "entries": report.entries,
                               "new_papers": report.new_papers, "papers_stored": total,
                               "rejected": [str(p) for p in report.rejected]}))
    else:
        click.echo(f"{report.files} files, {report.entries} entries, {report.new_papers} new "
                   f"papers ({total} stored), {len(report.rejected)} files rejected.")
    if report.rejected:
        sys.exit(1)


# rank ----------------------------------------------------------------------------------

@cli.command()
@click.argument("profiles", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--top", default=10, show_default=True, type=click.IntRange(1, 1000),
              help="How many picks per profile.")
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
    loaded = load_profiles(profiles, default_max_papers=top, for_sending=False)
    report_problems(loaded.errors)
    store = obj.open_store()
    try:
        run = EditionRun(store, obj.settings)
        run.prefetch(loaded.profiles)
        by_path = {p.path: p for p in loaded.profiles}
        errors = {e.path: e for e in loaded.errors}
        console = Console()
        for start in range(0, len(profiles), RANK_CHUNK):  # ranked together, shown as done
            paths = profiles[start:start + RANK_CHUNK]
            ranked = iter(run.choose_picks_many([by_path[p] for p in paths if p in by_path],
                                                now=utc_now(), everything=True, top=top))
            for path in paths:
                profile = by_path.get(path)
                if profile is None:
                    if as_json:
                        click.echo(json.dumps({"profile": str(path), "subscriber": None,
                                               "picks": [], "error": str(errors.get(path))}))
                    continue
                picks = next(ranked)
                if as_json:
                    click.echo(json.dumps({
                        "profile": str(path), "subscriber": profile.name,
                        "picks": [{"id": p.paper.key, "title": p.paper.title,
                                   "score": p.score, "reason": p.reason,
                                   "section": p.section} for p in picks]},
                        ensure_ascii=False))
                else:
                    _print_picks(console, profile, picks)
    finally:
        store.close()
    if loaded.errors:
        sys.exit(1)


def _print_picks(console: Console, profile: Profile, picks: Sequence[Any]) -> None:
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

    settings = obj.settings
    profile = load_profile(profile_path, default_max_papers=settings.default_max_papers)
    now = utc_now()
    slot = parse_schedule(profile.schedule, profile.timezone).next_slot(now)
    store = obj.open_store()
    try:
        run = EditionRun(store, settings)
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

@cli.command()
@click.argument("profiles", nargs=-1, type=click.Path(path_type=Path))
@click.option("--dry-run", is_flag=True, help="Write .eml files to the outbox folder instead "
              "of sending; the ledger is not touched.")
@pass_context
@handle_errors
def send(obj: Context, profiles: tuple[Path, ...], dry_run: bool) -> None:
    """Send each subscriber's due edition, once: a second run sends nothing new.

    Without PROFILE arguments, every profile in the profiles folder is served.

    \b
    Example:
        digest send --dry-run && digest send
    """
    settings = obj.settings
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
    finally:
        store.close()  # workers open their own; none may inherit this one
    if not dry_run:
        if settings.send.workers == "celery":  # on the hosts of `digest worker`s
            from digest.running.workers import send_through_celery

            report = send_through_celery(settings, [(path, None) for path in paths],
                                         now=utc_now(), show_all=len(paths) <= SHOW_ALL)
        else:  # on this machine's cores
            report = send_all(settings, paths, now=utc_now(),
                              processes=settings.send.processes)
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
    click.echo(f"{report.editions} editions in {elapsed:.1f} s: {counts or 'none due'}.")
    report_problems(report.errors)
    for o in report.shown:
        if o.status is Status.FAILED:
            click.echo(f"{o.profile.path}: edition not delivered: {o.detail}", err=True)
        elif o.status is Status.ERROR:
            click.echo(f"{o.profile.path}: edition not sent: {o.detail} (a bug: please "
                       "report it with the output of -vv)", err=True)
    if report.counts[Status.FAILED] or report.counts[Status.ERROR] or report.errors:
        sys.exit(1)


def _dry_run(store: Store, settings: Settings, paths: Sequence[Path]) -> SendReport:
    """Every due edition written to the outbox as .eml, in this process; nothing recorded."""
    loaded = load_profiles(paths, default_max_papers=settings.default_max_papers)
    report = SendReport(errors=[str(e) for e in loaded.errors])
    outbox = OutboxMailer(settings.outbox_dir)
    outcomes = asyncio.run(EditionRun(store, settings).run_editions(
        loaded.profiles, outbox, now=utc_now(), dry_run=True))
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
@click.option("--port", type=int, help="Port to listen on (default: web.port, 8025).")
@pass_context
@handle_errors
def serve(obj: Context, host: str | None, port: int | None) -> None:
    """Serve the pages behind the links in emails: unsubscribe, more / less like this,
    and editing one's interests. Needs DIGEST_SECRET, the secret the links were signed
    with; put it behind your HTTPS proxy at web.base_url.

    \b
    Example:
        digest serve --port 8025   # with DIGEST_SECRET set
    """
    import uvicorn

    from digest.commands.web import make_app

    settings = obj.settings
    app = make_app(settings)
    host = host or settings.web.host
    port = port or settings.web.port
    click.echo(f"Serving the links of {settings.mail.list_id} on http://{host}:{port}/ "
               "(Ctrl-C stops)", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", server_header=False,
                proxy_headers=True)


# status --------------------------------------------------------------------------------

@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the state as one JSON object.")
@pass_context
@handle_errors
def status(obj: Context, as_json: bool) -> None:
    """Show each subscriber's next and last edition, each feed's last poll, and counts.

    \b
    Example:
        digest status --json
    """
    from digest.commands.status import collect_status

    settings = obj.settings
    store = obj.open_store()
    try:
        report = collect_status(store, settings, now=utc_now())
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(report.as_dict(), ensure_ascii=False))
        return
    console = Console()
    table = Table(title="Subscribers")
    for column in ("subscriber", "schedule", "next edition", "last edition", "state",
                   "detail"):
        table.add_column(column, overflow="fold")
    for s in report.subscribers:
        table.add_row(s.subscriber_id, s.schedule, s.next_slot or "", s.last_slot or "",
                      s.last_state or "", s.detail or "")
    console.print(table)
    if report.feeds:
        feeds = Table(title="Feeds")
        for column in ("feed", "last poll", "result", "new papers", "next poll"):
            feeds.add_column(column, overflow="fold")
        for f in report.feeds:
            feeds.add_row(f.url, f.last_poll or "never", f.result, str(f.new_papers),
                          f.next_poll or "now")
        console.print(feeds)
    counts = ", ".join(f"{n} {state}" for state, n in sorted(report.editions.items()))
    click.echo(f"{report.papers} papers stored; editions: {counts or 'none yet'}.")
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
    """Check profile files and report every problem as FILE:LINE: field: problem.

    Without arguments, every profile in the profiles folder is checked.

    \b
    Example:
        digest profile validate profiles/ana.yaml
    """
    targets = list(paths) or profile_paths(obj.settings.profiles_dir)
    loaded = load_profiles(targets)
    report_problems(loaded.errors)
    for p in loaded.profiles:
        click.echo(f"{p.path}: ok ({p.name} <{p.email}>, {p.schedule} {p.timezone})")
    if loaded.errors:
        sys.exit(1)


def _feedback(obj: Context, profile_path: Path, references: Sequence[str], *,
              liked: bool) -> None:
    current = load_profile(profile_path)
    store = obj.open_store()
    try:
        found = store.find_papers([*references, *current.liked, *current.disliked])
    finally:
        store.close()

    def key(entry: str) -> str:
        paper = found.get(entry)
        return paper.key if paper is not None else entry.casefold()

    def same(a: str, b: str) -> bool:  # a title and an arXiv id of one paper are one paper
        return key(a) == key(b)

    for reference in references:
        paper = found.get(reference)
        entry = paper.title if paper is not None else reference
        if paper is None:
            click.echo(f"{reference!r} is not among the stored papers; recorded as given "
                       "(titles still steer the ranking)", err=True)
        else:
            found[entry] = paper
        outcome = set_feedback(profile_path, entry, liked=liked, same=same)
        click.echo(f"{profile_path}: {entry!r} {outcome}")


@profile.command("like")
@click.argument("profile_path", metavar="PROFILE", type=click.Path(path_type=Path))
@click.argument("papers", nargs=-1, required=True)
@pass_context
@handle_errors
def profile_like(obj: Context, profile_path: Path, papers: tuple[str, ...]) -> None:
    """More like this: add papers (id, arXiv id or title) to the profile's liked list.

    The edit keeps the file's comments and layout; the next edition reflects it.

    \b
    Example:
        digest profile like profiles/ana.yaml 2209.11755
    """
    _feedback(obj, profile_path, papers, liked=True)


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

    if obj.verbose < 2:  # bibtexparser logs what it skips; the report says it, by line
        logging.getLogger("bibtexparser").setLevel(logging.ERROR)
    store = obj.open_store()
    try:
        report = import_library(store, profile_path, files, now=utc_now())
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
@pass_context
@handle_errors
def profile_dislike(obj: Context, profile_path: Path, papers: tuple[str, ...]) -> None:
    """Less like this: add papers to the profile's disliked list (out of liked).

    \b
    Example:
        digest profile dislike profiles/ana.yaml "Some Paper Title"
    """
    _feedback(obj, profile_path, papers, liked=False)


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
    """Write a new, commented profile file into the profiles folder.

    \b
    Example:
        digest profile new ana@example.org --name "Ana Lima" --interest "dense retrieval"
    """
    folder = obj.settings.profiles_dir
    stem = subscriber_id or re.sub(r"[^A-Za-z0-9._-]+", "-", email.partition("@")[0]).strip(".-")
    path = folder / f"{stem or 'subscriber'}.yaml"
    text = new_profile_text(name, email, interests, timezone, schedule)
    parse_profile(text, path)  # the file name must make a valid subscriber id
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with path.open("x", encoding="utf-8") as handle:  # never over someone's file
            handle.write(text)
    except FileExistsError:
        fail(f"{path} exists already (choose another --id)")
    click.echo(f"{path}: written")


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

