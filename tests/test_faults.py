"""Fault injection: an SMTP server that answers 421, 451 and 550 and drops connections at
set rates. Afterwards every edition is sent, or failed with the server's reply, and each
message the server acknowledged arrived exactly once."""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections import Counter

from digest.commands.smtpsink import DROP, SmtpSink
from digest.config import MailSettings
from digest.deliver import SmtpMailer
from digest.ingest.storing import ingest_files
from digest.models import EditionState
from digest.profiles import load_profile
from digest.running.editions import EditionRun, Status

from .conftest import NOW

SUBSCRIBERS = 300
TOPICS = ["dense retrieval", "language models", "attention", "image classification"]


def test_flaky_server_every_edition_sent_or_failed_with_reply(store, seeds, settings,
                                                              write_profile):
    ingest_files(store, seeds, now=NOW, reference=NOW)
    rng = random.Random(3)
    paths = [write_profile(f"r{i:04d}", interests=rng.sample(TOPICS, 2))
             for i in range(SUBSCRIBERS)]
    faults = random.Random(11)
    answers: Counter[str] = Counter()

    def respond(message) -> str:
        number = int(re.search(r"r(\d+)@", message.recipients[0]).group(1))
        if number % 25 == 0:
            answer = "550 5.1.1 no such mailbox"  # this recipient never works
        else:
            roll = faults.random()
            answer = ("421 4.7.0 too busy, closing" if roll < 0.10 else
                      "451 4.3.0 local error, try later" if roll < 0.20 else
                      DROP if roll < 0.25 else "250 OK")
        answers[answer[:3]] += 1
        return answer

    mail = MailSettings(from_address="digest@test.example", max_attempts=10,
                        retry_delay_s=0.01)
    with SmtpSink(respond=respond) as server:
        flaky = settings.model_copy(update={
            "mail": mail,
            "smtp": settings.smtp.model_copy(update={"port": server.port})})

        async def go():
            run = EditionRun(store, flaky)
            async with SmtpMailer(flaky.smtp, sender=mail.from_address) as mailer:
                return await run.run_editions([load_profile(p) for p in paths], mailer,
                                              now=NOW, rng=random.Random(5))

        outcomes = asyncio.run(go())
        received = Counter(r.message["Message-ID"] for r in server.received)

    assert answers["421"] and answers["451"] and answers["DRO"] and answers["550"]
    editions = [store.get_edition(o.profile.subscriber_id, o.slot) for o in outcomes]
    sent = {e.message_id for e in editions if e.state is EditionState.SENT}
    failed = [e for e in editions if e.state is EditionState.FAILED]
    assert len(sent) + len(failed) == SUBSCRIBERS
    assert all(not e.retryable and e.smtp_reply for e in failed)
    assert sorted(e.subscriber_id for e in failed) == [
        f"r{i:04d}" for i in range(0, SUBSCRIBERS, 25)]
    assert all(e.smtp_reply.startswith("550 5.1.1") and e.attempts == 1 for e in failed)
    assert set(received) == sent and set(received.values()) == {1}
    assert [o.status for o in outcomes].count(Status.SENT) == len(sent)
    print(json.dumps(dict(answers)))
