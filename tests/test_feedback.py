"""More / less like this: the profile file is edited safely and the ranking follows."""

from __future__ import annotations

import json
import threading

import pytest

from digest.errors import ProfileError
from digest.profiles import load_profile, set_feedback

COMMENTED = """\
# Ana's profile: keep these comments!
name: Ana Lima            # shown in the greeting
email: ana@example.org
interests:
    - dense retrieval     # indented by four, on purpose
    - text: reranking
      weight: 2
liked:
    - "Promptagator: Few-shot Dense Retrieval From 8 Examples"
disliked: []   # nothing yet
"""


def test_feedback_edits_keep_comments_and_layout(write_profile):
    path = write_profile("ana", text=COMMENTED)
    assert set_feedback(path, "Titans: Learning to Memorize at Test Time",
                        liked=True) == "added to liked"
    assert set_feedback(path, "2401.01234", liked=True) == "added to liked"
    assert set_feedback(path, "Titans: learning to memorize at test time!",
                        liked=True) == "already in liked"
    assert set_feedback(path, "Promptagator: Few-shot Dense Retrieval From 8 Examples",
                        liked=False) == "added to disliked, removed from liked"
    text = path.read_text()
    before, after = COMMENTED.splitlines(), text.splitlines()
    assert after[:7] == before[:7]  # everything above the edited lists, byte for byte
    assert '    - "Titans: Learning to Memorize at Test Time"' in after
    assert '    - "2401.01234"' in after  # quoted: it stays a string, not a number
    profile = load_profile(path)
    assert profile.liked == ("Titans: Learning to Memorize at Test Time", "2401.01234")
    assert profile.disliked == ("Promptagator: Few-shot Dense Retrieval From 8 Examples",)


def test_a_broken_file_is_reported_and_left_alone(write_profile):
    broken = "name: Ana\nemail: ana@example.org\nliked: [unclosed\n"
    path = write_profile("ana", text=broken)
    with pytest.raises(ProfileError, match="not valid YAML"):
        set_feedback(path, "Some Title", liked=True)
    assert path.read_text() == broken


def test_concurrent_edits_lose_nothing(write_profile):
    path = write_profile("ana", text=COMMENTED)
    titles = [f"Paper number {i}" for i in range(12)]
    threads = [threading.Thread(target=set_feedback, args=(path, t), kwargs={"liked": True})
               for t in titles]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(titles) <= set(load_profile(path).liked)


def test_dislike_and_like_change_the_next_ranking(run_cli, seeds, tmp_path, write_profile):
    path = write_profile("ana", interests=["dense retrieval"])
    data = ["--data-dir", tmp_path / "d"]
    run_cli(*data, "ingest", *seeds)

    def top() -> list[dict[str, str]]:
        result = run_cli(*data, "rank", path, "--top", "10", "--json")
        return json.loads(result.stdout)["picks"]

    before = top()
    first = before[0]
    result = run_cli(*data, "profile", "dislike", path, first["id"])
    assert result.exit_code == 0, result.output
    assert "added to disliked" in result.stdout
    after_dislike = top()
    assert first["id"] not in [p["id"] for p in after_dislike]

    liked = "Titans: Learning to Memorize at Test Time"
    assert run_cli(*data, "profile", "like", path, liked).exit_code == 0
    after_like = top()
    assert [p["id"] for p in after_like] != [p["id"] for p in after_dislike]
    assert any(p["section"] == f"Because you liked \u201c{liked}\u201d" for p in after_like)
    assert load_profile(path).disliked == (first["title"],)


def test_edits_keep_line_endings_bom_mode_and_links(write_profile, tmp_path):
    import os

    path = write_profile("ana", text="")
    path.write_bytes(b"\xef\xbb\xbfname: Ana\r\nemail: ana@example.org\r\nliked:\r\n")
    os.chmod(path, 0o600)
    link = tmp_path / "link.yaml"
    link.symlink_to(path)
    assert set_feedback(link, "A Paper", liked=True) == "added to liked"
    data = path.read_bytes()
    assert data.startswith(b"\xef\xbb\xbf") and b"\r\n" in data and b"\n" not in data.replace(
        b"\r\n", b"")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert link.is_symlink() and load_profile(path).liked == ("A Paper",)
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_liking_by_arxiv_id_and_title_is_one_paper(run_cli, tmp_path, write_profile, store):
    from digest.models import PaperEntry

    from .conftest import NOW

    store.add_entries([PaperEntry(title="Graph Neural Networks for Molecules", abstract="x",
                                  source="feed", arxiv_id="2401.01234")], NOW)
    path = write_profile("ana", liked=["2401.01234"])
    result = run_cli("--data-dir", tmp_path, "profile", "dislike", path,
                     "Graph Neural Networks for Molecules")
    assert result.exit_code == 0, result.output
    profile = load_profile(path)
    assert profile.liked == () and profile.disliked == ("Graph Neural Networks for Molecules",)
