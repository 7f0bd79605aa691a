"""Retrieval metrics over the benchmark queries, and drift metrics of a feedback-loop run.

Plain functions over lists, numpy arrays and DataFrames, so each can be checked on a hand-made
case. A query in ``data/queries.csv`` has a set of relevant taverns. A search returns a ranked
list of tavern ids (several stored texts of one tavern count once, at their best rank).

Drift and homogenisation (what the model-collapse papers measure, on our scale; see
``RESEARCH.md``): :func:`cosine_distances`, :func:`centroid_shift`, :func:`embedding_dispersion`,
:func:`corpus_distinct_n`, :func:`copy_rate`, :func:`self_bleu`, gathered per iteration of a run
by :func:`drift_table`. Retrieval as the loop changes the store (the "spiral of silence"):
:func:`retrieval_by_iteration`, summarised per iteration by :func:`retrieval_summary`.

Notebook use::

    from helpers.metrics import drift_table, retrieval_by_iteration, retrieval_summary
    drift = drift_table(run)                         # one row per iteration; no Milvus needed
    per_query = retrieval_by_iteration(run, k=5)     # one row per (query, iteration); needs Milvus
    retrieval_summary(per_query)                     # means over queries, per iteration
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # annotations only: importing the loop module here is not needed at runtime
    from helpers.feedback_loop import LoopRun, Milvus


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
    from helpers.evaluation import dispersion

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
    from helpers.evaluation import words

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}.")
    grams: list[tuple[str, ...]] = []
    for text in texts:
        grams += _ngrams(words(text), n)
    return len(set(grams)) / len(grams) if grams else 0.0


def mean_distinct_n(texts: Iterable[str], n: int) -> float:
    """Mean over texts of the per-text distinct-n (:func:`helpers.evaluation.distinct_n`);
    NaN for no text."""
    from helpers.evaluation import distinct_n

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
    from helpers.evaluation import copied_share

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
    from helpers.evaluation import words

    if max_n < 1:
        raise ValueError(f"max_n must be >= 1, got {max_n}.")
    toks = [w for w in (words(t) for t in texts) if w]
    if len(toks) < 2:
        return float("nan")
    return float(np.mean(_self_bleu_scores(toks, max_n)))


# ---------------------------------------------------------------------------------------------
# Drift of a run, per iteration (from the ledger: no Milvus needed)


def finished_iterations(records: Sequence[Mapping[str, Any]], n_taverns: int) -> list[int]:
    """Iterations 0, 1, ... for which every tavern has a ledger record (the same rule as the
    loop's ``metrics.csv``: a half-done iteration of a crashed run is left out)."""
    counts = Counter(int(r["iteration"]) for r in records)
    out = []
    while counts.get(len(out), 0) >= n_taverns > 0:
        out.append(len(out))
    return out


def current_versions(
    records: Sequence[Mapping[str, Any]], upto: int
) -> dict[str, Mapping[str, Any]]:
    """Each tavern's current version after iteration ``upto``: its newest *stored* record with
    ``iteration <= upto`` (a version ``gated`` rejected, or an empty text, never entered the
    store, so the tavern keeps its previous one)."""
    out: dict[str, Mapping[str, Any]] = {}
    for rec in records:
        it = int(rec["iteration"])
        if rec.get("stored") and rec.get("vector_b64") and it <= upto:
            old = out.get(rec["tavern_id"])
            if old is None or int(old["iteration"]) < it:
                out[rec["tavern_id"]] = rec
    return out


def reference_texts(run: LoopRun) -> dict[str, str]:
    """The human reference description of each tavern of the run, from the taverns file the
    run was made from (``params["data_file"]``; the settings' data folder if it moved)."""
    from pathlib import Path

    from helpers.data import load_taverns

    path = Path(str(run.params.get("data_file", "")))
    frame = load_taverns(path) if path.is_file() else load_taverns(settings=run.settings)
    by_id = dict(zip(frame["tavern_id"], frame["description"], strict=True))
    missing = [t for t in run.params["tavern_ids"] if t not in by_id]
    if missing:
        raise ValueError(
            f"Taverns {missing} of run {run.run_id} are not in {frame.attrs.get('source_path')}; "
            "drift from the human reference needs their descriptions."
        )
    return {t: by_id[t] for t in run.params["tavern_ids"]}


def reference_embeddings(run: LoopRun, texts: Mapping[str, str] | None = None) -> dict[str, Any]:
    """MiniLM embeddings of the run's human references (one batch; they match the vectors the
    loop stored for the human rows to about 1e-7)."""
    from helpers.embeddings import encode_documents

    texts = dict(texts) if texts is not None else reference_texts(run)
    ids = list(texts)
    vectors = encode_documents([texts[t] for t in ids]) if ids else np.zeros((0, 384))
    return dict(zip(ids, vectors, strict=True))


def drift_per_tavern(
    run: LoopRun, *, reference_vectors: Mapping[str, Any] | None = None
) -> pd.DataFrame:
    """One row per (iteration, tavern): the tavern's current version after that iteration and
    how far it has moved.

    Columns: ``iteration``, ``tavern_id``, ``version_iteration`` (the iteration that wrote the
    current version: lags behind under ``gated``), ``drift_from_start`` (cosine distance of the
    current version from the tavern's iteration-0 version), ``drift_from_reference`` (from its
    human reference). NaN where a tavern has no such version (an empty first text).
    ``reference_vectors``: tavern id -> embedding (default: :func:`reference_embeddings`).
    """
    from helpers.ledger import decode_vector

    records = run.records()
    tavern_ids = list(run.params["tavern_ids"])
    refs = reference_vectors if reference_vectors is not None else reference_embeddings(run)
    start = current_versions([r for r in records if int(r["iteration"]) == 0], 0)
    rows = []
    for it in finished_iterations(records, len(tavern_ids)):
        current = current_versions(records, it)
        for tid in tavern_ids:
            rec = current.get(tid)
            row: dict[str, Any] = {"iteration": it, "tavern_id": tid}
            if rec is None:
                row |= {"version_iteration": np.nan, "drift_from_start": np.nan,
                        "drift_from_reference": np.nan}  # fmt: skip
            else:
                vec = decode_vector(rec["vector_b64"])
                first = start.get(tid)
                row["version_iteration"] = int(rec["iteration"])
                row["drift_from_start"] = (
                    float(cosine_distances([vec], [decode_vector(first["vector_b64"])])[0])
                    if first is not None
                    else np.nan
                )
                row["drift_from_reference"] = (
                    float(cosine_distances([vec], [refs[tid]])[0]) if tid in refs else np.nan
                )
            rows.append(row)
    columns = ["iteration", "tavern_id", "version_iteration", "drift_from_start",
               "drift_from_reference"]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def drift_table(
    run: LoopRun,
    *,
    reference_vectors: Mapping[str, Any] | None = None,
    with_self_bleu: bool = True,
) -> pd.DataFrame:
    """Drift, dispersion and lexical diversity of a run: one row per finished iteration,
    computed over every tavern's *current* version after that iteration (what the store
    describes the tavern with; see :func:`current_versions`). Reads the ledger only.

    Columns (``x_mean/_std/_q25/_median/_q75/_n`` are :func:`spread` over taverns):

    ``iteration``, ``taverns`` (taverns with a current version);
    ``drift_start_*``: :func:`cosine_distances` from each tavern's iteration-0 version;
    ``drift_reference_*``: from each tavern's human reference;
    ``centroid_shift_start`` / ``centroid_shift_reference``: :func:`centroid_shift` of the
    current versions from the iteration-0 versions / from the human references;
    ``dispersion``: :func:`embedding_dispersion` of the current versions, and
    ``reference_dispersion`` of the human references (a constant baseline);
    ``corpus_distinct_1`` / ``corpus_distinct_2``: :func:`corpus_distinct_n` of the current texts,
    ``reference_corpus_distinct_1/2`` the same for the human texts;
    ``text_distinct_2``: mean per-text distinct-2 (:func:`mean_distinct_n`);
    ``copy_rate``: mean ``copy_share`` of the current versions as the loop scored them
    (:func:`copy_rate`'s formula, against each text's own prompt context);
    ``self_bleu`` / ``reference_self_bleu``: :func:`self_bleu` (left out with
    ``with_self_bleu=False``; ~0.02 s for 50 texts of 130 words).

    ``metrics.csv`` has a ``dispersion`` too, over the texts generated *in* the iteration; the
    two differ only when a version was not stored (``gated``, or an empty text).
    """
    from helpers.ledger import decode_vector

    records = run.records()
    tavern_ids = list(run.params["tavern_ids"])
    ref_texts = reference_texts(run)
    refs = (
        dict(reference_vectors)
        if reference_vectors is not None
        else reference_embeddings(run, ref_texts)
    )
    ref_matrix = np.asarray([refs[t] for t in tavern_ids if t in refs], dtype=np.float64)
    ref_corpus = [ref_texts[t] for t in tavern_ids]
    baseline = {
        "reference_dispersion": embedding_dispersion(ref_matrix),
        "reference_corpus_distinct_1": corpus_distinct_n(ref_corpus, 1),
        "reference_corpus_distinct_2": corpus_distinct_n(ref_corpus, 2),
    }
    if with_self_bleu:
        baseline["reference_self_bleu"] = self_bleu(ref_corpus)
    per_tavern = drift_per_tavern(run, reference_vectors=refs)
    start = current_versions([r for r in records if int(r["iteration"]) == 0], 0)
    start_matrix = [decode_vector(r["vector_b64"]) for r in start.values()]
    rows = []
    for it, group in per_tavern.groupby("iteration", sort=True):
        current = current_versions(records, int(it))
        recs = [current[t] for t in tavern_ids if t in current]
        vectors = np.asarray([decode_vector(r["vector_b64"]) for r in recs], dtype=np.float64)
        texts = [r["text"] for r in recs]
        row: dict[str, Any] = {"iteration": int(it), "taverns": len(recs)}
        row |= spread(group["drift_from_start"], "drift_start")
        row |= spread(group["drift_from_reference"], "drift_reference")
        row["centroid_shift_start"] = (
            centroid_shift(vectors, start_matrix) if len(recs) and start_matrix else np.nan
        )
        row["centroid_shift_reference"] = (
            centroid_shift(vectors, ref_matrix) if len(recs) and len(ref_matrix) else np.nan
        )
        row["dispersion"] = embedding_dispersion(vectors)
        row["corpus_distinct_1"] = corpus_distinct_n(texts, 1)
        row["corpus_distinct_2"] = corpus_distinct_n(texts, 2)
        row["text_distinct_2"] = mean_distinct_n(texts, 2)
        shares = [r["scores"].get("copy_share") for r in recs]
        shares = [float(v) for v in shares if v is not None]
        row["copy_rate"] = float(np.mean(shares)) if shares else np.nan
        if with_self_bleu:
            row["self_bleu"] = self_bleu(texts)
        rows.append(row | baseline)
    return pd.DataFrame(rows)


def run_embeddings(
    run: LoopRun, *, reference_vectors: Mapping[str, Any] | None = None
) -> tuple[pd.DataFrame, np.ndarray]:
    """Every description of a run with its embedding, for a projection such as UMAP
    (:func:`helpers.plots.plot_umap`): the human reference of each of the run's taverns, and
    each generated version that was stored. Rejected or empty versions never entered the store
    and are left out.

    Returns ``(points, vectors)``: ``points`` has one row per description (``tavern_id``,
    ``iteration``, -1 for a human reference; ``source``; ``in_store``, False for a reference
    that ``human_fraction`` kept out of the store; ``text``), ``vectors`` the matching rows.
    """
    from helpers.ledger import decode_vector

    texts = reference_texts(run)
    refs = (
        dict(reference_vectors)
        if reference_vectors is not None
        else reference_embeddings(run, texts)
    )
    stored_humans = set(run.params.get("human_taverns", []))
    rows: list[dict[str, Any]] = []
    vectors: list[np.ndarray] = []
    for tid in run.params["tavern_ids"]:
        rows.append({"tavern_id": tid, "iteration": -1, "source": "human",
                     "in_store": tid in stored_humans, "text": texts[tid]})  # fmt: skip
        vectors.append(np.asarray(refs[tid], dtype=np.float32))
    for rec in sorted(run.records(), key=lambda r: (r["tavern_id"], int(r["iteration"]))):
        if rec.get("stored") and rec.get("vector_b64"):
            rows.append({"tavern_id": rec["tavern_id"], "iteration": int(rec["iteration"]),
                         "source": "generated", "in_store": True, "text": rec["text"]})  # fmt: skip
            vectors.append(decode_vector(rec["vector_b64"]))
    return pd.DataFrame(rows), np.asarray(vectors, dtype=np.float32).reshape(len(rows), -1)


# ---------------------------------------------------------------------------------------------
# Retrieval as the store changes (spiral of silence), per iteration (needs Milvus)


def searchable_counts(
    records: Sequence[Mapping[str, Any]], policy: str, n_human: int, upto: int
) -> tuple[int, int]:
    """``(human rows, generated rows)`` a search sees after iteration ``upto`` (-1: before the
    loop), by the same rule as :func:`helpers.feedback_loop.view_filter`: ``replace`` sees the
    generated rows of iteration ``upto`` only, the other policies every stored one up to it."""
    if upto < 0:
        return n_human, 0
    stored = [r for r in records if r.get("stored")]
    if policy == "replace":
        generated = sum(int(r["iteration"]) == upto for r in stored)
    else:
        generated = sum(int(r["iteration"]) <= upto for r in stored)
    return n_human, generated


def score_hits(
    hits: Sequence[Mapping[str, Any]],
    relevant: Iterable[str],
    k: int,
    *,
    human_stored: Iterable[str] = (),
    corpus_generated_share: float = float("nan"),
) -> dict[str, Any]:
    """The retrieval numbers of one query against one state of the store.

    ``hits``: the ranked rows of the store (each with ``tavern_id``, ``source`` and
    ``similarity``), ideally all of them, so that ranks beyond ``k`` are known. Two kinds of
    rank:

    * rows (texts): ``top1_score`` (similarity of the best row), ``topk_mean_score`` (mean
      similarity of the top ``k`` rows), ``generated_share`` (share of the top ``k`` rows that
      are generated), ``over_representation`` = ``generated_share / corpus_generated_share``
      (1: generated texts are retrieved in proportion to their number; above 1: the retriever
      favours them; NaN when the store holds none), ``human_ref_in_topk`` (1.0 when the human
      reference of a relevant tavern is among the top ``k`` rows, 0.0 when not, NaN when none is
      in the store: ``human_stored`` lists the taverns whose reference is), ``human_rank``
      (row rank of the best relevant human reference; NaN if not among ``hits``);
    * taverns (several texts of one inn count once, at their best rank, as in
      :func:`score_rankings`): ``first_relevant_rank``, ``recall@k``, ``hit@k`` and ``rr``.
    """
    rel = set(relevant)
    if not rel:
        raise ValueError("a query needs at least one relevant tavern")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}.")
    top = list(hits[:k])
    ranked = dedupe_ranking(h["tavern_id"] for h in hits)
    first = first_relevant_rank(ranked, rel)
    humans_in_store = rel.intersection(human_stored)
    human_rank = next(
        (i for i, h in enumerate(hits, 1) if h["source"] == "human" and h["tavern_id"] in rel),
        None,
    )
    share = sum(h["source"] == "generated" for h in top) / len(top) if top else float("nan")
    ok_corpus = corpus_generated_share > 0 and math.isfinite(corpus_generated_share)
    return {
        "top1_score": float(hits[0]["similarity"]) if hits else float("nan"),
        "topk_mean_score": float(np.mean([h["similarity"] for h in top])) if top else np.nan,
        "top1_source": hits[0]["source"] if hits else None,
        "first_relevant_rank": float(first) if first is not None else float("nan"),
        f"recall@{k}": recall_at_k(ranked, rel, k),
        f"hit@{k}": hit_at_k(ranked, rel, k),
        "rr": reciprocal_rank(ranked, rel),
        "generated_share": share,
        "corpus_generated_share": corpus_generated_share,
        "over_representation": share / corpus_generated_share if ok_corpus else float("nan"),
        "human_ref_in_topk": (
            float(human_rank is not None and human_rank <= k) if humans_in_store else np.nan
        ),
        "human_rank": float(human_rank) if human_rank is not None else float("nan"),
    }


def retrieval_by_iteration(
    run: LoopRun,
    queries: pd.DataFrame | None = None,
    k: int = 5,
    *,
    milvus: Milvus | None = None,
    iterations: Iterable[int] | None = None,
) -> pd.DataFrame:
    """Every benchmark query against the store as it was searchable before the loop (-1) and
    after each finished iteration: one row per (query, iteration), columns of
    :func:`score_hits` plus ``query_id``, ``query``, ``difficulty``, ``iteration``,
    ``searchable_rows`` and ``k``.

    ``queries`` default: ``data/queries.csv``; the relevant sets are cut to the run's taverns
    and queries left without one are dropped (:func:`restrict_queries`), so recall counts only
    taverns the run can return. Each iteration is one batched Milvus request
    (:meth:`~helpers.feedback_loop.LoopRun.search_many`) that ranks the *whole* searchable
    store (a few hundred rows at most here), so the rank of a relevant tavern or of a human
    text is known even far below ``k``; the queries are embedded once. ``milvus``: the Milvus
    the run stored into (default: the run's own handle). ``iterations``: a subset (default
    -1 and every finished iteration).
    """
    from helpers.embeddings import encode_queries

    if queries is None:
        from helpers.data import load_queries

        queries = load_queries(settings=run.settings)
    queries = restrict_queries(queries, run.params["tavern_ids"])
    if not len(queries):
        raise ValueError(f"No query has a relevant tavern among run {run.run_id}'s taverns.")
    records = run.records()
    done = finished_iterations(records, len(run.params["tavern_ids"]))
    todo = [-1, *done] if iterations is None else sorted(set(iterations))
    unknown = [j for j in todo if j != -1 and j not in done]
    if unknown:
        raise ValueError(f"Iterations {unknown} are not finished in run {run.run_id}: {done}.")
    human_stored = list(run.params.get("human_taverns", []))
    vectors = encode_queries(queries["query"].str.strip().tolist())
    rows = []
    for it in todo:
        n_human, n_generated = searchable_counts(
            records, run.params["policy"], len(human_stored), it
        )
        total = n_human + n_generated
        corpus_share = n_generated / total if total else float("nan")
        hit_lists: list[list[dict[str, Any]]] = [[] for _ in range(len(queries))]
        if total:  # an empty store (human_fraction 0, before the loop) answers nothing
            hit_lists = run.search_many(
                queries["query"].tolist(),
                after_iteration=it,
                limit=total,
                milvus=milvus,
                query_vectors=vectors,
                output_fields=("tavern_id", "source", "iteration"),
            )
        short = min((len(h) for h in hit_lists), default=total)
        if short < total:  # a filtered HNSW search can come back short; ranks may then be NaN
            warnings.warn(
                f"Iteration {it}: a search ranked {short} of the {total} searchable rows; ranks "
                "below that are unknown (NaN).",
                stacklevel=2,
            )
        for q, hits in zip(queries.itertuples(), hit_lists, strict=True):
            row: dict[str, Any] = {
                "query_id": q.query_id,
                "query": q.query,
                "difficulty": q.difficulty,
                "iteration": it,
                "searchable_rows": total,
                "k": k,
            }
            row |= score_hits(
                hits, q.relevant, k, human_stored=human_stored,
                corpus_generated_share=corpus_share,
            )  # fmt: skip
            rows.append(row)
    return pd.DataFrame(rows)


def retrieval_summary(per_query: pd.DataFrame) -> pd.DataFrame:
    """Means over queries, one row per iteration, from :func:`retrieval_by_iteration`:
    ``top1_score``, ``topk_mean_score``, ``recall@k``, ``hit@k``, ``MRR`` (mean ``rr``),
    ``first_relevant_rank`` and ``human_rank`` (means over queries where defined),
    ``generated_share``, ``corpus_generated_share``, ``over_representation`` (mean share
    / corpus share), ``human_ref_in_topk`` (share of the queries whose relevant human text is
    in the store and in the top k), ``top1_generated`` (share of queries answered first by a
    generated text) and ``queries``."""
    if not len(per_query):
        return pd.DataFrame()
    k = int(per_query["k"].iloc[0])
    cols = ["top1_score", "topk_mean_score", f"recall@{k}", f"hit@{k}", "rr",
            "first_relevant_rank", "human_rank", "generated_share", "corpus_generated_share",
            "human_ref_in_topk"]  # fmt: skip
    grouped = per_query.groupby("iteration", sort=True)
    out = grouped[cols].mean().rename(columns={"rr": "MRR"})
    out["over_representation"] = out["generated_share"] / out["corpus_generated_share"].where(
        out["corpus_generated_share"] > 0
    )
    out["top1_generated"] = grouped["top1_source"].apply(lambda s: float((s == "generated").mean()))
    out["queries"] = grouped.size()
    return out.reset_index()
