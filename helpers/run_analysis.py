"""A feedback-loop run, iteration by iteration: the loop's own ``metrics.csv`` rows
(:func:`iteration_metrics`), drift and homogenisation of the current versions
(:func:`drift_table`), and retrieval as the loop changes the store (the "spiral of silence":
:func:`retrieval_by_iteration`, summarised by :func:`retrieval_summary`). The metrics themselves
are in :mod:`helpers.measures`.

Drift and homogenisation (what the model-collapse papers measure, on our scale; see
``docs/experiments.md``): :func:`~helpers.measures.cosine_distances`,
:func:`~helpers.measures.centroid_shift`, :func:`~helpers.measures.embedding_dispersion`,
:func:`~helpers.measures.corpus_distinct_n`, :func:`~helpers.measures.copy_rate`,
:func:`~helpers.measures.self_bleu`.

Notebook use::

    from helpers.metrics import drift_table, retrieval_by_iteration, retrieval_summary
    drift = drift_table(run)                         # one row per iteration; no Milvus needed
    per_query = retrieval_by_iteration(run, k=5)     # one row per (query, iteration); needs Milvus
    retrieval_summary(per_query)                     # means over queries, per iteration
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from helpers.data import load_queries, load_taverns
from helpers.embeddings import encode_documents, encode_queries
from helpers.evaluation import dispersion
from helpers.ledger import decode_vector
from helpers.loop.params import GENERATED_ALL, GENERATED_LATEST, view_rule
from helpers.loop.versions import current_versions, finished_iterations
from helpers.measures import (
    centroid_shift,
    corpus_distinct_n,
    cosine_distances,
    dedupe_ranking,
    embedding_dispersion,
    first_relevant_rank,
    hit_at_k,
    mean_distinct_n,
    recall_at_k,
    reciprocal_rank,
    restrict_queries,
    self_bleu,
    spread,
)

if TYPE_CHECKING:  # annotations only: the results module imports this one
    from helpers.loop.results import LoopRun
    from helpers.loop.store import Milvus


# ---------------------------------------------------------------------------------------------
# The loop's metrics.csv: one row per finished iteration

METRIC_MEANS = (
    "score",
    "auto_score",
    "coverage",
    "reference_similarity",
    "length_score",
    "words",
    "distinct_1",
    "distinct_2",
    "copy_share",
    "longest_copy",
    "judge_score",
    "human_rating",
)


def _mean(values: Iterable[Any]) -> float:
    vals = [float(v) for v in values if v is not None]
    return round(sum(vals) / len(vals), 6) if vals else float("nan")


def iteration_metrics(
    records: Sequence[Mapping[str, Any]], *, policy: str, n_taverns: int, n_human: int
) -> list[dict[str, Any]]:
    """One row per *finished* iteration (every tavern has a record), computed from the ledger.

    Columns: iteration; generations, stored, rejected; the mean of each score in
    :data:`METRIC_MEANS` over the iteration's texts; ``context_generated_share`` (share of the
    retrieved contexts that were generated texts); ``context_age`` (mean age of the retrieved
    contexts in iterations: the iteration minus the context row's iteration, a human row's being
    -1); ``dispersion`` (mean pairwise cosine distance of the iteration's texts);
    ``current_score`` and ``current_gate_score`` (mean score and gate score of every tavern's
    current version after the iteration; the gate score never falls under ``gated``);
    ``searchable_rows`` (rows a search sees after it); timing sums (``generate_s``, ``step_s``)
    and tokens.
    """
    by_it: dict[int, list[Mapping[str, Any]]] = {}
    for rec in records:
        by_it.setdefault(int(rec["iteration"]), []).append(rec)
    rows: list[dict[str, Any]] = []
    for iteration in finished_iterations(records, n_taverns):
        recs = by_it[iteration]
        stored = [r for r in recs if r["stored"]]
        current = current_versions(records, iteration)
        contexts = [c for r in recs for c in r.get("context", [])]
        vectors = [decode_vector(r["vector_b64"]) for r in recs if r.get("vector_b64")]
        row: dict[str, Any] = {
            "iteration": iteration,
            "generations": len(recs),
            "stored": len(stored),
            "rejected": len(recs) - len(stored),
        }
        for name in METRIC_MEANS:
            row[name] = _mean(r["scores"].get(name) for r in recs)
        row["context_generated_share"] = (
            round(sum(c["source"] == "generated" for c in contexts) / len(contexts), 6)
            if contexts
            else float("nan")
        )
        row["dispersion"] = round(dispersion(vectors), 6) if len(vectors) > 1 else float("nan")
        # a context row's age: iterations since it was written (ledgers before the age was
        # recorded have no "iteration" in their context rows: no age for them)
        ages = [iteration - int(c["iteration"]) for c in contexts if "iteration" in c]
        row["context_age"] = round(sum(ages) / len(ages), 6) if ages else float("nan")
        row["current_score"] = _mean(float(r["scores"]["score"]) for r in current.values())
        row["current_gate_score"] = _mean(r["scores"].get("gate_score") for r in current.values())
        row["searchable_rows"] = sum(searchable_counts(records, policy, n_human, iteration))
        row["input_tokens"] = sum(int(r.get("input_tokens", 0)) for r in recs)
        row["output_tokens"] = sum(int(r.get("output_tokens", 0)) for r in recs)
        row["generate_s"] = round(sum(r["timings"]["generate_s"] for r in recs), 3)
        row["step_s"] = round(sum(sum(r["timings"].values()) for r in recs), 3)
        rows.append(row)
    return rows


def summary_line(row: Mapping[str, Any]) -> str:
    """One line per iteration for the console."""
    return (
        f"iteration {row['iteration']}: {row['stored']}/{row['generations']} written, "
        f"score {row['score']:.3f}, coverage {row['coverage']:.2f}, "
        f"similarity to reference {row['reference_similarity']:.3f}, "
        f"distinct-2 {row['distinct_2']:.3f}, copied {row['copy_share']:.0%}, "
        f"generated context {row['context_generated_share']:.0%}, {row['step_s']:.0f} s"
    )


# ---------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------
# Drift of a run, per iteration (from the ledger: no Milvus needed)


def reference_texts(run: LoopRun) -> dict[str, str]:
    """The human reference description of each tavern of the run, from the taverns file the
    run was made from (``params["data_file"]``; the settings' data folder if it moved)."""
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
    loop), by the policy's :func:`~helpers.loop.params.view_rule` (the rule
    :func:`helpers.loop.store.view_filter` applies)."""
    rule = view_rule(policy, upto)
    stored = [int(r["iteration"]) for r in records if r.get("stored")]
    if rule.generated == GENERATED_ALL:
        generated = sum(it <= upto for it in stored)
    elif rule.generated == GENERATED_LATEST:
        generated = sum(it == upto for it in stored)
    else:
        generated = 0
    return (n_human if rule.humans else 0), generated


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
    (:meth:`~helpers.loop.results.LoopRun.search_many`) that ranks the *whole* searchable
    store (a few hundred rows at most here), so the rank of a relevant tavern or of a human
    text is known even far below ``k``; the queries are embedded once. ``milvus``: the Milvus
    the run stored into (default: the run's own handle). ``iterations``: a subset (default
    -1 and every finished iteration).
    """
    if queries is None:
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
        n_human, n_generated = searchable_counts(records, run.policy, len(human_stored), it)
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
                hits, q.relevant, k, human_stored=human_stored if n_human else (),
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
