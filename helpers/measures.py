"""Metrics as plain functions over lists, numpy arrays and DataFrames, each checkable on a
hand-made case: ranking metrics over the benchmark queries, distances between embeddings, and
lexical diversity and copying of texts. How a run changes them, iteration by iteration, is
:mod:`helpers.run_analysis`; :mod:`helpers.metrics` gathers both.

A query in ``data/queries.csv`` has a set of relevant taverns. A search returns a ranked list of
tavern ids (several stored texts of one tavern count once, at their best rank).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from helpers.evaluation import copied_share, dispersion, distinct_n, words


def dedupe_ranking(ranked_ids: Iterable[str]) -> list[str]:
    """Keep each tavern at its first (best) rank: two texts of one inn are one answer."""
    seen: set[str] = set()
    out = []
    for tid in ranked_ids:
        if tid not in seen:
            seen.add(tid)
            out.append(tid)
    return out


def first_relevant_rank(ranked_ids: Sequence[str], relevant: Iterable[str]) -> int | None:
    """1-based rank of the first relevant tavern, or None when none was retrieved."""
    rel = set(relevant)
    for rank, tid in enumerate(ranked_ids, start=1):
        if tid in rel:
            return rank
    return None


def recall_at_k(ranked_ids: Sequence[str], relevant: Iterable[str], k: int) -> float:
    """recall@k = |relevant ∩ top k| / |relevant|.

    For a query with many relevant taverns recall@1 can be at most 1/|relevant|; see
    :func:`hit_at_k` for "was anything relevant in the top k".
    """
    rel = set(relevant)
    if not rel:
        raise ValueError("a query needs at least one relevant tavern")
    return len(rel.intersection(ranked_ids[:k])) / len(rel)


def hit_at_k(ranked_ids: Sequence[str], relevant: Iterable[str], k: int) -> float:
    """1.0 when at least one relevant tavern is in the top k, else 0.0."""
    rank = first_relevant_rank(ranked_ids, relevant)
    return float(rank is not None and rank <= k)


def reciprocal_rank(ranked_ids: Sequence[str], relevant: Iterable[str]) -> float:
    """1 / rank of the first relevant tavern (0 when none was retrieved). MRR is its mean."""
    rank = first_relevant_rank(ranked_ids, relevant)
    return 0.0 if rank is None else 1.0 / rank


def score_rankings(
    rankings: Mapping[str, Sequence[str]], queries: pd.DataFrame, ks: Sequence[int] = (1, 3)
) -> pd.DataFrame:
    """One row per query: recall@k and hit@k for each k, reciprocal rank, first relevant rank.

    ``rankings`` maps query_id to the ranked tavern ids returned for it; ``queries`` is
    ``helpers.data.load_queries()`` (columns query_id, relevant, difficulty).
    """
    rows = []
    for q in queries.itertuples():
        ranked = dedupe_ranking(rankings[q.query_id])
        row: dict[str, object] = {"query_id": q.query_id, "difficulty": q.difficulty}
        for k in ks:
            row[f"recall@{k}"] = recall_at_k(ranked, q.relevant, k)
            row[f"hit@{k}"] = hit_at_k(ranked, q.relevant, k)
        row["rr"] = reciprocal_rank(ranked, q.relevant)
        row["first_relevant_rank"] = first_relevant_rank(ranked, q.relevant)
        rows.append(row)
    return pd.DataFrame(rows)


def summarize_scores(per_query: pd.DataFrame) -> pd.Series:
    """Means over queries; ``rr`` becomes MRR."""
    numeric = per_query.drop(columns=["query_id", "difficulty", "first_relevant_rank"])
    return numeric.mean().rename({"rr": "MRR"})


def restrict_queries(queries: pd.DataFrame, tavern_ids: Iterable[str]) -> pd.DataFrame:
    """Queries judged on a subset of taverns: relevant sets cut to the subset, queries with no
    relevant tavern left dropped. Lets a small test run score the same way as a full one."""
    keep = set(tavern_ids)
    out = queries.copy()
    out["relevant"] = [tuple(t for t in rel if t in keep) for rel in out["relevant"]]
    return out[out["relevant"].map(len) > 0].reset_index(drop=True)


def generated_share(hit_sources: Sequence[Sequence[str]], k: int) -> float:
    """Mean over queries of the fraction of the top ``k`` hits whose source is ``generated``."""
    shares = [sum(s == "generated" for s in sources[:k]) / k for sources in hit_sources if sources]
    return float(sum(shares) / len(shares)) if shares else float("nan")


# ---------------------------------------------------------------------------------------------
# Embedding geometry: drift and dispersion
#
# Every function normalises rows itself, so it gives the same answer for unit-length MiniLM
# vectors and for hand-made test vectors. Distances are cosine distances, d = 1 - cos, in
# [0, 2]: 0 = same direction, 1 = orthogonal (unrelated), 2 = opposite.


def _unit_rows(vectors: Any, what: str = "vectors") -> np.ndarray:
    """Rows scaled to unit length (float64). A zero row has no direction: an error, not a NaN,
    because it means an empty text slipped into the embeddings."""
    m = np.asarray(vectors, dtype=np.float64)
    if m.ndim == 1:
        m = m.reshape(1, -1)
    if m.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D array (one vector per row), got shape {m.shape}.")
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    if len(m) and not np.all(norms > 0):
        bad = [int(i) for i in np.flatnonzero(norms[:, 0] == 0)][:5]
        raise ValueError(f"{what}: row(s) {bad} are all zeros and have no direction.")
    return m / np.where(norms > 0, norms, 1.0)


def cosine_distances(a: Any, b: Any) -> np.ndarray:
    """Row-wise cosine distance: ``d_i = 1 - (a_i · b_i) / (|a_i| |b_i|)``, in [0, 2].

    ``a`` and ``b`` have the same shape ``(n, dim)``; row ``i`` of one is compared with row ``i``
    of the other (a tavern's newest version with its first version, or with its human
    reference). That is the per-item drift of the model-collapse literature.
    """
    x, y = _unit_rows(a, "a"), _unit_rows(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"a and b must have the same shape, got {x.shape} and {y.shape}.")
    d = np.clip(1.0 - np.einsum("ij,ij->i", x, y), 0.0, 2.0)
    d[d < 1e-12] = 0.0  # rounding leaves ~1e-16 for identical vectors; show it as the 0 it is
    return d


def centroid_shift(a: Any, b: Any) -> float:
    """Cosine distance between the centroids of two sets of embeddings:
    ``1 - cos(mean_i â_i, mean_j b̂_j)`` with ``x̂ = x / |x|``.

    Why besides the mean per-item drift: items can each move a lot in different directions (the
    centroid stays put) or all move the same way (the whole collection slides towards one
    style); only the centroid tells these apart. The sets need not have the same size. NaN when
    either set is empty or its unit vectors cancel out exactly.
    """
    x, y = _unit_rows(a, "a"), _unit_rows(b, "b")
    if not len(x) or not len(y):
        return float("nan")
    ca, cb = x.mean(axis=0), y.mean(axis=0)
    na, nb = np.linalg.norm(ca), np.linalg.norm(cb)
    if na == 0 or nb == 0:
        return float("nan")
    return float(np.clip(1.0 - ca @ cb / (na * nb), 0.0, 2.0))


def embedding_dispersion(vectors: Any) -> float:
    """Mean pairwise cosine distance ``2 / (n (n - 1)) * sum_{i<j} (1 - cos(v_i, v_j))``.

    Falls when the descriptions collapse towards one another (homogenisation, the stand-in for
    the lost tails of Shumailov et al.). NaN for fewer than two vectors. The same number as
    :func:`helpers.evaluation.dispersion`, which the loop writes to ``metrics.csv``.
    """
    m = np.asarray(vectors, dtype=np.float64)
    if m.ndim == 2 and len(m) >= 2:
        _unit_rows(m)  # the clear error for a zero row
    return float(dispersion(m)) if len(m) >= 2 else float("nan")


def spread(values: Iterable[float], prefix: str) -> dict[str, float]:
    """``{prefix_mean, prefix_std, prefix_q25, prefix_median, prefix_q75, prefix_n}`` over the
    finite values (NaN skipped). ``std`` is the population standard deviation (ddof 0): the
    taverns of a run are the whole population we describe, not a sample of one."""
    arr = np.asarray([float(v) for v in values], dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if not len(arr):
        nan = float("nan")
        return {f"{prefix}_{s}": nan for s in ("mean", "std", "q25", "median", "q75")} | {
            f"{prefix}_n": 0
        }
    q25, median, q75 = np.percentile(arr, [25, 50, 75])
    return {
        f"{prefix}_mean": float(arr.mean()),
        f"{prefix}_std": float(arr.std()),
        f"{prefix}_q25": float(q25),
        f"{prefix}_median": float(median),
        f"{prefix}_q75": float(q75),
        f"{prefix}_n": len(arr),
    }


# ---------------------------------------------------------------------------------------------
# Lexical diversity, copying, Self-BLEU


def _ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def corpus_distinct_n(texts: Iterable[str], n: int) -> float:
    """Distinct-n over a set of texts (Li et al. 2016): ``|unique n-grams| / |n-grams|``, with
    the n-grams of all texts pooled (none spans two texts). Words as in
    :func:`helpers.evaluation.words` (lower case, no punctuation).

    Why pooled: the per-text distinct-n in ``metrics.csv`` catches a text repeating itself;
    pooled, it also falls when different taverns are described with the same phrases. It
    depends on how many words there are (more words, more repeats), so compare iterations
    whose texts have similar lengths. 0.0 when there is no n-gram at all.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}.")
    grams: list[tuple[str, ...]] = []
    for text in texts:
        grams += _ngrams(words(text), n)
    return len(set(grams)) / len(grams) if grams else 0.0


def mean_distinct_n(texts: Iterable[str], n: int) -> float:
    """Mean over texts of the per-text distinct-n (:func:`helpers.evaluation.distinct_n`);
    NaN for no text."""
    values = [distinct_n(t, n) for t in texts]
    return float(np.mean(values)) if values else float("nan")


def copy_rate(texts: Sequence[str], contexts: Sequence[Sequence[str]], min_span: int = 6) -> float:
    """Mean over texts of the share of words copied from their own context:
    ``mean_i copied_share(text_i, contexts_i)``, where :func:`helpers.evaluation.copied_share`
    counts the words inside a run of at least ``min_span`` words that also appears in one of
    the context texts. NaN for no text.

    ``contexts[i]`` are the texts that were in the prompt of ``texts[i]``. The loop stores the
    same number per text as ``copy_share`` in its ledger; :func:`drift_table` reads it from there.
    """
    if len(texts) != len(contexts):
        raise ValueError(f"{len(texts)} texts but {len(contexts)} context lists; give one each.")
    values = [copied_share(t, c, min_span) for t, c in zip(texts, contexts, strict=True)]
    return float(np.mean(values)) if values else float("nan")


def _self_bleu_scores(toks: Sequence[Sequence[str]], max_n: int) -> list[float]:
    """BLEU of each token list against all the others, smoothed like NLTK's ``method1``.

    The clipped count of an n-gram of text ``i`` needs its highest count among the *other*
    texts; keeping the highest and the second-highest count of every n-gram (and which text
    has the highest) gives that for all ``i`` in one pass, instead of merging N-1 counters per
    text (measured: 47 texts of 130 words, 1.2 s -> well under 0.1 s).
    """
    counts = [[Counter(_ngrams(t, n)) for t in toks] for n in range(1, max_n + 1)]
    tops: list[dict[tuple[str, ...], tuple[int, int, int]]] = []  # gram -> (best, who, second)
    for per_text in counts:
        top: dict[tuple[str, ...], tuple[int, int, int]] = {}
        for i, counter in enumerate(per_text):
            for gram, c in counter.items():
                best, who, second = top.get(gram, (0, -1, 0))
                if c > best:
                    top[gram] = (c, i, best)
                elif c > second:
                    top[gram] = (best, who, c)
        tops.append(top)
    lengths = [len(t) for t in toks]
    scores = []
    for i, hyp in enumerate(toks):
        log_p = 0.0
        for per_text, top in zip(counts, tops, strict=True):
            clipped = 0
            for gram, c in per_text[i].items():
                best, who, second = top[gram]
                clipped += min(c, second if who == i else best)
            total = max(1, sum(per_text[i].values()))
            log_p += math.log((clipped if clipped else 0.1) / total) / max_n
        others = lengths[:i] + lengths[i + 1 :]
        ref_len = min(others, key=lambda r: (abs(r - len(hyp)), r))
        bp = 1.0 if len(hyp) > ref_len else math.exp(1.0 - ref_len / len(hyp))
        scores.append(bp * math.exp(log_p))
    return scores


def self_bleu(texts: Sequence[str], max_n: int = 4) -> float:
    """Self-BLEU (Zhu et al. 2018, Texygen): the mean BLEU-``max_n`` of each text against all
    the others as references,
    ``(1/N) sum_i BP_i * exp(sum_{n=1..max_n} (1/max_n) log p_n(t_i; {t_j, j != i}))``,
    where ``p_n`` is the clipped n-gram precision (a zero count becomes 0.1, NLTK's
    ``method1`` smoothing) and ``BP`` the brevity penalty against the closest reference length.

    High means the texts share phrases: 1.0 for identical texts, near 0 for texts with no word
    in common. Chen et al. (Spiral of Silence) report it for retrieved texts. NaN for fewer than
    two non-empty texts.
    """
    if max_n < 1:
        raise ValueError(f"max_n must be >= 1, got {max_n}.")
    toks = [w for w in (words(t) for t in texts) if w]
    if len(toks) < 2:
        return float("nan")
    return float(np.mean(_self_bleu_scores(toks, max_n)))
