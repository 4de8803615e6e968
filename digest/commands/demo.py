"""`digest demo`: the whole pipeline on bundled data, with nothing configured.

Ingests the bundled digest files, ranks them for three example subscribers, and sends
their editions through a real SMTP server on 127.0.0.1, keeping what it received. The
emails carry their signed links (more / less like this, edit your interests,
unsubscribe), signed with a demo secret and pointing at 127.0.0.1, where `digest demo
--serve` serves them; a click edits the demo's copies of the profiles, in the output
folder.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import SecretStr

from digest.commands.smtpsink import SmtpSink
from digest.config import MailSettings, RankSettings, Settings, SmtpSettings, WebSettings
from digest.deliver import SmtpMailer
from digest.ingest.storing import ingest_files
from digest.models import IngestReport
from digest.profiles import ProfileSet, load_profiles, profile_paths
from digest.running.editions import EditionOutcome, EditionRun
from digest.store import Store

DATA = Path(__file__).resolve().parent.parent / "data"
# Signs the demo's links: public, so they act only on the demo's own copies of its
# profiles, served on this machine. Never the secret of a real list.
DEMO_SECRET = "digest-demo-secret-public-do-not-use-for-a-real-list"


@dataclass(frozen=True)
class DemoResult:
    ingest: IngestReport
    profiles: ProfileSet
    outcomes: tuple[EditionOutcome, ...]
    saved: tuple[tuple[Path, Path], ...]  # (.eml, .html) per message received
    server: str
    settings: Settings  # the demo's, for serving its links


def bundled_seeds() -> list[Path]:
    return sorted((DATA / "seeds").glob("*.txt"))


async def run_demo(out_dir: Path, *, now: datetime,
                   embeddings: Literal["auto", "on", "off"] = "auto",
                   port: int = 8026) -> DemoResult:
    """Run the demo into `out_dir` (its own database, in demo-data/, and its copies of the
    bundled profiles, in demo-profiles/, start afresh); the links point at `port`."""
    data_dir = out_dir / "demo-data"  # never `data/`, where `digest init` keeps a real one
    data_dir.mkdir(parents=True, exist_ok=True)
    for old in data_dir.glob("digest.sqlite3*"):
        old.unlink()
    profiles_dir = out_dir / "demo-profiles"  # what a click edits: never the bundled ones
    shutil.rmtree(profiles_dir, ignore_errors=True)
    shutil.copytree(DATA / "profiles", profiles_dir)
    with SmtpSink() as sink:
        settings = Settings(
            data_dir=data_dir,
            profiles_dir=profiles_dir,
            inbox_dir=out_dir / "inbox",
            outbox_dir=out_dir / "outbox",
            smtp=SmtpSettings(host=sink.host, port=sink.port, security="none", timeout_s=10),
            mail=MailSettings(from_address="digest@demo.example", from_name="digest demo",
                              list_id="demo.digest.example"),
            rank=RankSettings(embeddings=embeddings),
            web=WebSettings(base_url=f"http://127.0.0.1:{port}", port=port,
                            secret=SecretStr(DEMO_SECRET)),
        )
        store = Store.open(settings.db_url)
        try:
            report = ingest_files(store, bundled_seeds(), now=now, reference=now)
            profiles = load_profiles(profile_paths(settings.profiles_dir))
            run = EditionRun(store, settings)
            async with SmtpMailer(settings.smtp, sender=settings.mail.from_address) as mailer:
                outcomes = await run.run_editions(profiles.profiles, mailer, now=now)
        finally:
            store.close()
        received = sink.received
    saved = []
    # By address, whatever order the messages arrived in: the first one shown is stable.
    for item in sorted(received, key=lambda i: i.recipients[0]):
        message = item.message
        name = item.recipients[0].split("@")[0]
        eml = out_dir / f"{name}.eml"
        eml.write_bytes(item.data)
        html_part = message.get_body(preferencelist=("html",))
        html = out_dir / f"{name}.html"
        html.write_text(html_part.get_content() if html_part else "", encoding="utf-8")
        saved.append((eml, html))
    return DemoResult(report, profiles, tuple(outcomes), tuple(saved),
                      f"{sink.host}:{sink.port}", settings)
