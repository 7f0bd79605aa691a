"""Notebook 05's retrieval table on the human reference descriptions, for data version 1 and 2.

Why: data version 2 (issue 17) re-judged the benchmark queries, moved two of them to a
"needs world knowledge" set and edited some reference descriptions. Every retrieval number of
the kit rests on those files, so this script shows how far the numbers moved, and why: the same
search (real all-MiniLM-L6-v2 embeddings, a milvus-lite collection with the HNSW index that
notebook 05 builds, the top 10 ranked with ``helpers.search.rank_taverns``) is scored with
``helpers.metrics`` on the old files (read from git) and on the new ones.

Metrics: hit@k (success@k: a relevant tavern in the top k), recall@k, MRR, as notebook 05
reports them, plus nDCG@10 with the graded judgements (grade 2 = the answer, 1 = partly
relevant; version 1 had binary judgements, so every relevant tavern counts as 1 there).
``helpers.metrics`` has no nDCG, so :func:`ndcg_at_k` lives here.

Usage (a minute or two; embeddings and milvus-lite run in process)::

    PYTHONPATH=$PWD .venv/bin/python scripts/retrieval_before_after.py \\
        [--old-ref COMMIT] [--out docs/results/retrieval_before_after.csv] [--per-query FILE]
"""

from __future__ import annotations

import argparse
import math
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from helpers import metrics, schema
from helpers.data import DATA_VERSION, QUERIES_FILE, TAVERNS_FILE, load_queries, load_taverns
from helpers.embeddings import encode_documents
from helpers.milvus_server import start_milvus
from helpers.search import rank_taverns
from helpers.settings import get_settings

REPO = Path(__file__).resolve().parents[1]
# The commit that last changed data/taverns.csv and data/queries.csv in data version 1.
OLD_REF = "df738d74e3fc7e8d270b98df4d9370173e7588a6"
KS = (1, 3, 10)
NDCG_K = 10
EF = 64  # notebook 05's search width
COLLECTION = "before_after_human"


def ndcg_at_k(ranked_ids: Sequence[str], grades: Mapping[str, int], k: int) -> float:
    """Normalised discounted cumulative gain of the top ``k`` (linear gain = grade, discount
    log2(rank + 1)): 1.0 when the taverns come in the best possible order, 0.0 when none is in
    the top k. Taverns not in ``grades`` have gain 0."""
    if not grades:
        raise ValueError("a query needs at least one judged tavern")
    dcg = sum(grades.get(t, 0) / math.log2(i + 2) for i, t in enumerate(ranked_ids[:k]))
    ideal = sorted(grades.values(), reverse=True)[:k]
    return dcg / sum(g / math.log2(i + 2) for i, g in enumerate(ideal))


def old_data(ref: str, folder: Path) -> Path:
    """The data files of ``ref`` (git), written to ``folder``."""
    for name in (TAVERNS_FILE, QUERIES_FILE):
        text = subprocess.run(
            ["git", "show", f"{ref}:data/{name}"], cwd=REPO, check=True, capture_output=True
        ).stdout
        (folder / name).write_bytes(text)
    return folder


def score(client, data_dir: Path) -> pd.DataFrame:
    """Per-query scores of the human reference descriptions of ``data_dir``."""
    taverns = load_taverns(data_dir / TAVERNS_FILE)
    queries = load_queries(data_dir / QUERIES_FILE, taverns=taverns, include_world_knowledge=True)
    rows = schema.tavern_rows(
        taverns, encode_documents(taverns["description"].tolist()), source="human"
    )
    schema.fill_collection(client, COLLECTION, rows)
    name_to_tavern = dict(zip(taverns["name"], taverns["tavern_id"], strict=True))
    rankings = rank_taverns(
        client, queries, name_to_tavern, collection=COLLECTION, limit=max(KS), ef=EF
    )
    per_query = metrics.score_rankings(rankings, queries, ks=KS)
    per_query[f"ndcg@{NDCG_K}"] = [
        ndcg_at_k(metrics.dedupe_ranking(rankings[q.query_id]), q.grades, NDCG_K)
        for q in queries.itertuples()
    ]
    per_query["world_knowledge"] = queries["world_knowledge"].to_numpy()
    return per_query


def summarise(per_query: pd.DataFrame, version: str) -> pd.DataFrame:
    """Means over query sets: all, retrieval (without world knowledge), world knowledge, and
    each difficulty within the retrieval set."""
    retrieval = per_query[~per_query["world_knowledge"]]
    sets = {"all": per_query, "retrieval": retrieval}
    if per_query["world_knowledge"].any():
        sets["world_knowledge"] = per_query[per_query["world_knowledge"]]
    for difficulty, group in retrieval.groupby("difficulty"):
        sets[f"retrieval/{difficulty}"] = group
    rows = []
    for label, group in sets.items():
        means = metrics.summarize_scores(group.drop(columns="world_knowledge"))
        rows.append(
            {"data_version": version, "query_set": label, "queries": len(group)} | means.to_dict()
        )
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old-ref", default=OLD_REF, help="git commit with data version 1")
    parser.add_argument(
        "--out", type=Path, default=REPO / "docs" / "results" / "retrieval_before_after.csv"
    )
    parser.add_argument("--per-query", type=Path, help="also write every query's scores here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "old").mkdir()
        settings = get_settings(milvus_backend="lite", run_dir=tmp_path / "run")
        milvus = start_milvus(settings, fresh=True)
        try:
            old = score(milvus.client, old_data(args.old_ref, tmp_path / "old"))
            new = score(milvus.client, REPO / "data")
        finally:
            milvus.stop()
    if args.per_query:
        both = pd.concat([old.assign(data_version="1"), new.assign(data_version=DATA_VERSION)])
        both.round(3).to_csv(args.per_query, index=False)
    table = pd.concat([summarise(old, "1"), summarise(new, DATA_VERSION)], ignore_index=True)
    table = table.round(3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    print(table.to_string(index=False))
    print(f"written: {args.out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
