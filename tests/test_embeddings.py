"""Embeddings: the shipped all-MiniLM-L6-v2 through pymilvus' embedding API, offline.

The reference numbers are the similarity matrix published in the sentence-transformers
quickstart (https://sbert.net, "Quickstart"), reproduced here without a network.
"""

from __future__ import annotations

import numpy as np
import pytest

from helpers.embeddings import (
    DIM,
    cosine_similarity_matrix,
    encode_documents,
    encode_queries,
    get_embedding_function,
)

QUICKSTART = [
    "The weather is lovely today.",
    "It's so sunny outside!",
    "He drove to the stadium.",
]
# Published similarities: (0, 1) 0.6660, (0, 2) 0.1046, (1, 2) 0.1411.
PUBLISHED = {(0, 1): 0.6660, (0, 2): 0.1046, (1, 2): 0.1411}

E5_STYLE_INSTRUCTION = "query: "


@pytest.fixture(scope="module")
def quickstart_vectors() -> np.ndarray:
    return encode_documents(QUICKSTART)


def test_reproduces_the_published_quickstart_similarities(quickstart_vectors: np.ndarray) -> None:
    sims = cosine_similarity_matrix(quickstart_vectors, quickstart_vectors)
    for (i, j), published in PUBLISHED.items():
        assert sims[i, j] == pytest.approx(published, abs=5e-4), (i, j, sims[i, j])
        assert sims[j, i] == pytest.approx(sims[i, j], abs=1e-6)
    assert np.allclose(np.diag(sims), 1.0, atol=1e-5)
    # The two weather sentences are each other's nearest neighbour.
    assert sims[0, 1] > sims[0, 2] and sims[0, 1] > sims[1, 2]


def test_shape_dtype_and_unit_length(quickstart_vectors: np.ndarray) -> None:
    assert quickstart_vectors.shape == (3, DIM) == (3, 384)
    assert quickstart_vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(quickstart_vectors, axis=1), 1.0, atol=1e-5)
    assert get_embedding_function().model.get_embedding_dimension() == 384


def test_same_text_same_vector_whatever_the_batch(quickstart_vectors: np.ndarray) -> None:
    alone = encode_documents([QUICKSTART[2]])
    assert np.allclose(alone[0], quickstart_vectors[2], atol=1e-5)


def test_queries_equal_documents_for_minilm(quickstart_vectors: np.ndarray) -> None:
    queries = encode_queries(QUICKSTART)
    assert queries.shape == (3, DIM) and queries.dtype == np.float32
    assert np.allclose(queries, quickstart_vectors, atol=1e-6)


def test_a_query_instruction_makes_the_query_side_differ(quickstart_vectors: np.ndarray) -> None:
    """Asymmetric models (E5, BGE) prefix queries only: code that embeds queries with
    encode_documents silently drops that prefix. Here the same model with an instruction."""
    ef = get_embedding_function(query_instruction=E5_STYLE_INSTRUCTION)
    assert ef is not get_embedding_function()
    docs = np.stack(ef.encode_documents(QUICKSTART))
    queries = np.stack(ef.encode_queries(QUICKSTART))
    assert np.allclose(docs, quickstart_vectors, atol=1e-5)  # documents are not instructed
    cos = np.sum(docs * queries, axis=1)
    assert np.all(cos < 0.999), cos  # every query vector moved
    assert np.all(cos > 0.5), cos  # ...but still about the same sentence
    with_prefix = encode_documents([E5_STYLE_INSTRUCTION + t for t in QUICKSTART])
    assert np.allclose(queries, with_prefix, atol=1e-5)  # exactly the prefix, nothing else


@pytest.mark.parametrize("encode", [encode_documents, encode_queries])
@pytest.mark.parametrize("bad", ["", "   ", "\n\t", None, 42])
def test_empty_or_non_text_items_are_refused(encode, bad) -> None:
    with pytest.raises(ValueError) as err:
        encode(["A fine inn.", bad])
    message = str(err.value)
    assert "item 1" in message and encode.__name__ in message


@pytest.mark.parametrize("encode", [encode_documents, encode_queries])
def test_a_bare_string_is_refused(encode) -> None:
    with pytest.raises(TypeError, match=r"list of strings.*\[text\]"):
        encode("The Prancing Pony")


def test_empty_list_gives_an_empty_matrix() -> None:
    out = encode_documents([])
    assert out.shape == (0, DIM) and out.dtype == np.float32


def test_cosine_similarity_matrix_normalises() -> None:
    a = np.array([[3.0, 0.0], [1.0, 1.0]])
    b = np.array([[0.0, 2.0], [5.0, 0.0]])
    got = cosine_similarity_matrix(a, b)
    want = np.array([[0.0, 1.0], [2**-0.5, 2**-0.5]])
    assert np.allclose(got, want)
