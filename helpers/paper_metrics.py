"""The metrics the model-collapse and source-bias papers use, beside the kit's own.

Each function states its formula. Embeddings are normalised to unit length first, so cosine
similarity is a dot product and Euclidean distance ``|a - b| = sqrt(2 - 2 cos)`` orders pairs
as the cosine distance does.

* :func:`fact_retention`: facts of the tavern's fields and of its human reference kept.
* :func:`within_tavern_spread`: dispersion among >= 4 samples of one tavern (not across taverns).
* :func:`knn_precision_recall`: Kynkaanniemi et al. 2019, as Alemohammad et al. 2024 use it.
* :func:`vendi_score`: Friedman and Dieng 2023.
* :func:`perplexity`: under the frozen local SmolLM2 (:mod:`helpers.perplexity`).
* :func:`k_occurrence`, :func:`hubness`, :func:`gini`: Radovanovic et al. 2010.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from helpers.evaluation import _proper_phrases, fact_coverage, fact_variants, mentions
from helpers.perplexity import (  # noqa: F401  (part of this module's API)
    PerplexityError,
    perplexity,
    token_logprobs,
)

MIN_SAMPLES = 4


def _unit(vectors: Any, what: str) -> np.ndarray:
    m = np.asarray(vectors, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D array (one vector per row), got {m.shape}.")
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    if len(m) and not np.all(norms > 0):
        raise ValueError(f"{what}: a row is all zeros (an empty text slipped in?).")
    return m / norms


# ---------------------------------------------------------------------------------------------
# Facts


# Words that start sentences without naming anything (a heuristic list: a sentence-initial
# single capitalised word is a fact unless it is one of these).
_STARTERS = frozenset(
    {
        "a",
        "an",
        "the",
        "in",
        "on",
        "at",
        "it",
        "its",
        "his",
        "her",
        "their",
        "there",
        "this",
        "that",
        "these",
        "those",
        "he",
        "she",
        "they",
        "we",
        "you",
        "when",
        "while",
        "where",
        "here",
        "now",
        "later",
        "after",
        "before",
        "once",
        "long",
        "today",
        "many",
        "some",
        "few",
        "every",
        "each",
        "years",
        "yet",
        "but",
        "and",
        "or",
        "so",
        "if",
        "though",
        "although",
        "as",
        "by",
        "for",
        "from",
        "with",
        "of",
        "to",
    }
)


def reference_facts(reference: str) -> list[str]:
    """The named things of a human reference: per sentence, its runs of capitalised words
    (joined across 'of'/'the', as :func:`helpers.evaluation.fact_variants` reads a location),
    without a sentence's first word when that is a common word capitalised only because it
    starts the sentence (``The``, ``In``, ``Years``)."""
    out: dict[str, None] = {}
    for sentence in re.split(r"(?<=[.!?])\s+", reference):
        for phrase in _proper_phrases(sentence):
            if " " not in phrase and phrase.casefold() in _STARTERS:
                continue
            if len(phrase) >= 3:
                out.setdefault(phrase, None)
    return list(out)


@dataclass(frozen=True)
class FactRetention:
    """``fields``: share of the three prompted facts (name, location, famous visitor) the text
    mentions; ``reference``: share of :func:`reference_facts` it mentions (NaN if none);
    ``overall = (fields kept + reference facts kept) / (3 + number of reference facts)``."""

    fields: float
    reference: float
    overall: float
    kept: tuple[str, ...]
    lost: tuple[str, ...]


def fact_retention(text: str, tavern: Mapping[str, str]) -> FactRetention:
    """The facts of ``tavern`` (``name``, ``location``, ``famous_visitor``, and ``description``,
    the human reference) that ``text`` keeps; mentions are matched as in
    :func:`helpers.evaluation.fact_coverage` (whole words, normalised, nicknames allowed)."""
    cover = fact_coverage(text, tavern["name"], tavern["location"], tavern["famous_visitor"])
    field_hits = [cover.name, cover.location, cover.famous_visitor]
    facts = reference_facts(tavern.get("description", ""))
    ref_hits = [mentions(text, fact_variants("location", f)) for f in facts]
    kept = tuple(f for f, hit in zip(facts, ref_hits, strict=True) if hit)
    lost = tuple(f for f, hit in zip(facts, ref_hits, strict=True) if not hit)
    return FactRetention(
        fields=sum(field_hits) / 3,
        reference=sum(ref_hits) / len(facts) if facts else float("nan"),
        overall=(sum(field_hits) + sum(ref_hits)) / (3 + len(facts)),
        kept=kept,
        lost=lost,
    )


# ---------------------------------------------------------------------------------------------
# Spread, precision/recall, Vendi


def within_tavern_spread(samples: Mapping[str, Any]) -> dict[str, float]:
    """Per tavern: the mean pairwise cosine distance among its ``n >= 4`` samples (texts
    generated for the same tavern at the same iteration, different seeds),
    ``2 / (n (n - 1)) sum_{i<j} (1 - cos(v_i, v_j))``. Why within: dispersion across taverns
    mixes lost variety with taverns growing alike; the spread of one tavern's samples is the
    generator's own variance, Shumailov's shrinking tails. Fewer than 4 samples is an error
    (the estimate of a spread from 2-3 samples is too noisy to compare)."""
    out = {}
    for tid, vectors in samples.items():
        u = _unit(vectors, f"tavern {tid}")
        n = len(u)
        if n < MIN_SAMPLES:
            raise ValueError(f"tavern {tid}: {n} samples; within-tavern spread needs >= 4.")
        sims = u @ u.T
        out[tid] = float((1.0 - sims)[np.triu_indices(n, 1)].mean())
    return out


def _kth_radius(u: np.ndarray, k: int) -> np.ndarray:
    d = np.sqrt(np.clip(2.0 - 2.0 * u @ u.T, 0.0, None))
    np.fill_diagonal(d, np.inf)
    return np.sort(d, axis=1)[:, k - 1]


def knn_precision_recall(real: Any, generated: Any, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019). Around each real embedding a
    ball of radius ``r_k(x)`` = distance to its k-th nearest *other* real embedding;
    ``precision = (1/|G|) sum_{g in G} 1[exists x in R: |g - x| <= r_k(x)]``;
    ``recall = (1/|R|) sum_{x in R} 1[exists g in G: |x - g| <= r_k^G(g)]`` with radii from the
    generated set. Precision: generated texts lie where real ones do (quality); recall: the
    real variety is covered (diversity). Each set needs more than ``k`` rows."""
    r, g = _unit(real, "real"), _unit(generated, "generated")
    if len(r) <= k or len(g) <= k:
        raise ValueError(f"each set needs more than k={k} rows: real {len(r)}, generated {len(g)}.")
    cross = np.sqrt(np.clip(2.0 - 2.0 * g @ r.T, 0.0, None))  # (G, R)
    precision = np.mean((cross <= _kth_radius(r, k)[None, :]).any(axis=1))
    recall = np.mean((cross <= _kth_radius(g, k)[:, None]).any(axis=0))
    return float(precision), float(recall)


def vendi_score(vectors: Any) -> float:
    """Vendi score (Friedman and Dieng 2023): with ``K`` the n x n cosine-similarity matrix
    (``K_ii = 1``) and ``lambda_i`` the eigenvalues of ``K / n``,
    ``VS = exp(-sum_i lambda_i log lambda_i)``: the effective number of distinct items
    (1 when all are the same, n when all are orthogonal)."""
    u = _unit(vectors, "vectors")
    if not len(u):
        return float("nan")
    lam = np.clip(np.linalg.eigvalsh(u @ u.T / len(u)), 0.0, None)
    lam = lam[lam > 1e-12]
    return float(np.exp(-np.sum(lam * np.log(lam))))


# ---------------------------------------------------------------------------------------------
# Hubness of retrieval


def k_occurrence(hit_lists: Iterable[Sequence[str]], ids: Iterable[str], k: int) -> np.ndarray:
    """``N_k(x)``: how often row ``x`` appears in the top ``k`` of the retrievals
    (``hit_lists``: ranked row ids per query or per generation), for every row in ``ids``
    (rows never retrieved count 0)."""
    index = {row: i for i, row in enumerate(ids)}
    counts = np.zeros(len(index))
    for hits in hit_lists:
        for row in list(hits)[:k]:
            if row not in index:
                raise KeyError(f"retrieved row {row!r} is not among the ids given.")
            counts[index[row]] += 1
    return counts


def hubness(counts: Any) -> float:
    """Skewness of the k-occurrence: ``E[(N - mu)^3] / sigma^3`` (population moments). Large
    and positive: a few rows (hubs) are retrieved for many queries. NaN when all counts agree."""
    n = np.asarray(counts, dtype=float)
    sd = n.std()
    return float(np.mean((n - n.mean()) ** 3) / sd**3) if sd > 0 else float("nan")


def gini(counts: Any) -> float:
    """Gini coefficient of the retrieval counts, ``sum_i sum_j |x_i - x_j| / (2 n^2 mu)``: 0 when
    every row is retrieved equally often, ``1 - 1/n`` when one row takes every retrieval."""
    x = np.asarray(counts, dtype=float)
    if not len(x) or x.sum() == 0:
        return float("nan")
    return float(np.abs(x[:, None] - x[None, :]).sum() / (2 * len(x) ** 2 * x.mean()))
