"""What a notebook reads from a run: :class:`LoopRun` (metrics, texts, lineage, ratings, and
searches of the store as it was after any iteration), :func:`load_run`, :func:`list_runs` and
:func:`compare_metrics`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pymilvus import MilvusClient

from helpers.embeddings import encode_queries
from helpers.evaluation import Ratings, combine, load_ratings
from helpers.ledger import RunLedger, runs_root
from helpers.loop.params import HUMAN_ITERATION, LoopError, LoopParams, check_int
from helpers.loop.prompt import clip
from helpers.loop.store import SEARCH_EF, Milvus, client_of, load_with_retry, view_filter
from helpers.loop.versions import finished_iterations, last_finished_iteration
from helpers.milvus_server import MilvusHandle
from helpers.schema import VECTOR_FIELD, search_params
from helpers.settings import Settings, get_settings


class RunSearches:
    """The searches of a :class:`LoopRun`: the run's store as it was searchable after any
    iteration (the policy's view, :func:`~helpers.loop.store.view_filter`), and its lineage
    read forwards. Needs the Milvus the run stored into."""

    run_id: str
    params: dict[str, Any]
    milvus: Milvus | None

    @property
    def collection(self) -> str:
        return self.params["collection"]

    @property
    def policy(self) -> str:
        """The run's policy as this kit names it (a ``replace`` run saved before the faithful
        ``replace`` existed is ``replace-keep-human``: :meth:`LoopParams.from_saved`)."""
        return LoopParams.from_saved(self.params).policy

    def last_iteration(self) -> int:
        raise NotImplementedError  # LoopRun's

    def _client(self, milvus: Milvus | None) -> MilvusClient:
        """The client, with the run's collection loaded (a restarted milvus-lite forgets that
        a collection was loaded)."""
        milvus = milvus if milvus is not None else self.milvus
        if milvus is None:
            raise LoopError(
                "This needs the Milvus the run stored into: pass milvus=start_milvus(settings) "
                "(the same backend and run_dir as the run) to run_loop/load_run, or here."
            )
        client = client_of(milvus)
        if not client.has_collection(self.collection):
            raise LoopError(
                f"Collection {self.collection!r} of run {self.run_id} is not in this Milvus "
                f"({milvus.uri if isinstance(milvus, MilvusHandle) else 'the given client'}); the run used the "
                f"{self.params.get('backend')!r} backend. Start that one with the run's run_dir, "
                f"or resume({self.run_id!r}) here to rebuild the store from the ledger."
            )
        if str(client.get_load_state(self.collection).get("state", "")) != "Loaded":
            load_with_retry(client, self.collection)
        return client

    def search(
        self,
        query: str,
        *,
        after_iteration: int | None = None,
        limit: int = 3,
        milvus: Milvus | None = None,
    ) -> list[dict[str, Any]]:
        """The top hits for ``query`` in the store as it was searchable after
        ``after_iteration`` (default: the last finished one; -1: before the loop).

        Each hit: id, similarity, name, tavern_id, source, iteration, description.
        """
        if not isinstance(query, str) or not query.strip():
            raise LoopError("The query is empty; type what you are looking for.")
        return self.search_many(
            [query], after_iteration=after_iteration, limit=limit, milvus=milvus
        )[0]

    def search_many(
        self,
        queries: Sequence[str],
        *,
        after_iteration: int | None = None,
        limit: int = 3,
        milvus: Milvus | None = None,
        query_vectors: np.ndarray | None = None,
        output_fields: Sequence[str] = ("name", "tavern_id", "source", "iteration", "description"),
    ) -> list[list[dict[str, Any]]]:
        """:meth:`search` for many queries in one Milvus request: one hit list per query.

        Why a batch: the retrieval-by-iteration metrics ask ~40 queries of every iteration's
        store; one request per iteration instead of one per query. ``query_vectors`` (shape
        ``(len(queries), 384)``) skips the embedding, so a caller that searches several
        iterations embeds its queries once. ``limit`` may exceed 512 (the usual ``ef``): ``ef``
        grows with it, which HNSW requires. The queries are embedded as one batch, which can
        move a similarity in its 7th decimal compared with :meth:`search`.
        """
        texts = [queries] if isinstance(queries, str) else list(queries)
        for i, query in enumerate(texts):
            if not isinstance(query, str) or not query.strip():
                raise LoopError(f"Query {i} is empty ({query!r}); type what you are looking for.")
        if not texts:
            return []
        check_int("limit", limit, 1, 16_384)
        client = self._client(milvus)
        if query_vectors is None:
            query_vectors = encode_queries([q.strip() for q in texts])
        vectors = np.asarray(query_vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(texts):
            raise LoopError(
                f"query_vectors has shape {vectors.shape}; give one row per query "
                f"({len(texts)} rows)."
            )
        upto = self.last_iteration() if after_iteration is None else int(after_iteration)
        expr = view_filter(self.policy, "all", self.run_id, upto)
        results = client.search(
            self.collection,
            data=[v.tolist() for v in vectors],
            anns_field=VECTOR_FIELD,
            search_params=search_params(max(SEARCH_EF, limit)),
            limit=limit,
            filter=expr or "id < 0",
            output_fields=list(output_fields),
            consistency_level="Strong",
        )
        return [
            [{"id": h["id"], "similarity": float(h["distance"]), **h["entity"]} for h in hits]
            for hits in results
        ]

    def answers(
        self, query: str, *, limit: int = 1, milvus: Milvus | None = None, width: int = 90
    ) -> Any:
        """How the answer to ``query`` changes: the top ``limit`` hits before the loop (-1) and
        after every finished iteration, as one table."""
        rows = []
        for upto in range(HUMAN_ITERATION, self.last_iteration() + 1):
            for rank, hit in enumerate(
                self.search(query, after_iteration=upto, limit=limit, milvus=milvus), 1
            ):
                rows.append(
                    {
                        "after_iteration": upto,
                        "rank": rank,
                        "similarity": round(hit["similarity"], 3),
                        "name": hit["name"],
                        "source": hit["source"],
                        "version_of_iteration": hit["iteration"],
                        "description": clip(hit["description"], width),
                    }
                )
        return pd.DataFrame(rows)

    def stored_rows(
        self,
        *,
        fields: Sequence[str] = ("tavern_id", "iteration", "source", "context_ids", "parent_id"),
        milvus: Milvus | None = None,
    ) -> list[dict[str, Any]]:
        """Every row of the run's collection (Strong consistency), without vectors."""
        client = self._client(milvus)
        rows = client.query(
            self.collection,
            filter="id >= 0",
            output_fields=["id", *fields],
            consistency_level="Strong",
        )
        return [dict(r) for r in rows]

    def used_by(self, row: int, *, milvus: Milvus | None = None) -> list[dict[str, Any]]:
        """The stored versions that had row ``row`` in their context: lineage read forwards,
        by Milvus itself (``array_contains`` on the ``context_ids`` array)."""
        client = self._client(milvus)
        rows = client.query(
            self.collection,
            filter=f"array_contains(context_ids, {int(row)})",
            output_fields=["id", "tavern_id", "iteration", "name"],
            consistency_level="Strong",
        )
        return sorted((dict(r) for r in rows), key=lambda r: (r["iteration"], r["tavern_id"]))


@dataclass
class LoopRun(RunSearches):
    """A run's folder and (when given) the Milvus it stored into: everything a notebook shows.

    ``milvus`` is needed only for :meth:`search`, :meth:`answers` and :meth:`stored_rows`.
    """

    run_id: str
    folder: Path
    params: dict[str, Any]
    settings: Settings
    milvus: Milvus | None = None

    @property
    def ledger(self) -> RunLedger:
        return RunLedger(self.folder)

    def records(self) -> list[dict[str, Any]]:
        """The ledger: one dict per generation, in the order they were made."""
        return self.ledger.records()

    @property
    def finished(self) -> bool:
        done = finished_iterations(self.records(), len(self.params["tavern_ids"]))
        return len(done) >= self.params["iterations"]

    def last_iteration(self) -> int:
        """The last finished iteration (-1 when none is)."""
        return last_finished_iteration(self.records(), len(self.params["tavern_ids"]))

    def metrics(self) -> Any:
        """metrics.csv as a DataFrame, one row per finished iteration."""
        return self.ledger.read_metrics()

    def texts(self) -> Any:
        """Every generation as a table: iteration, tavern, row id, stored, score, text, ..."""
        rows = []
        for rec in self.records():
            rows.append(
                {
                    "iteration": rec["iteration"],
                    "tavern_id": rec["tavern_id"],
                    "name": rec["name"],
                    "row_id": rec["row_id"],
                    "stored": rec["stored"],
                    **{
                        k: rec["scores"].get(k)
                        for k in (
                            "score",
                            "coverage",
                            "reference_similarity",
                            "distinct_2",
                            "copy_share",
                        )
                    },
                    "text": rec["text"],
                }
            )
        return pd.DataFrame(rows)

    def rated(self, ratings: Ratings | None = None) -> Any:
        """Every generation with the human ratings given *after* the run merged in.

        ``ratings`` default: ``data/feedback/*.csv`` as they are now. Columns: iteration,
        tavern_id, score (as the run computed it), human_rating (mean 1-5 or NaN), n_ratings,
        score_with_ratings (the run's score merged with the rating, :func:`combine`).
        """
        if ratings is None:
            ratings = load_ratings(self.settings.data_dir / "feedback")
        rows = []
        for rec in self.records():
            found = ratings.for_text(self.run_id, rec["tavern_id"], rec["iteration"])
            scores = dict(rec["scores"])
            mean = sum(r.rating for r in found) / len(found) if found else None
            if mean is not None:
                scores["human_score"] = (mean - 1.0) / 4.0
            rows.append(
                {
                    "iteration": rec["iteration"],
                    "tavern_id": rec["tavern_id"],
                    "stored": rec["stored"],
                    "score": scores.get("score"),
                    "human_rating": mean,
                    "n_ratings": len(found),
                    "score_with_ratings": round(combine(scores), 6),
                }
            )
        return pd.DataFrame(rows)

    def lineage(self, tavern_id: str, *, width: int = 80) -> Any:
        """One row per version of ``tavern_id``: its score, whether it was stored, the version it
        started from (``parent_id``), and the texts it was made from (name, source, iteration)."""
        if tavern_id not in self.params["tavern_ids"]:
            raise LoopError(
                f"{tavern_id!r} is not in run {self.run_id}; its taverns are "
                f"{', '.join(self.params['tavern_ids'])}."
            )
        rows = []
        for rec in self.records():
            if rec["tavern_id"] != tavern_id:
                continue
            made_from = "; ".join(
                f"{c['name']} ({c['source']}"
                + (f", it {c['iteration']}" if c["source"] == "generated" else "")
                + f", sim {c['similarity']:.2f})"
                for c in rec["context"]
            )
            rows.append(
                {
                    "iteration": rec["iteration"],
                    "row_id": rec["row_id"],
                    "parent_id": rec["parent_id"] or None,
                    "stored": rec["stored"],
                    "score": rec["scores"].get("score"),
                    "made_from": made_from or "(no context: the article's prompt)",
                    "context_ids": rec["context_ids"],
                    "text": clip(rec["text"], width),
                }
            )
        parents = pd.array([r.pop("parent_id") for r in rows], dtype="Int64")
        frame = pd.DataFrame(rows)
        # built as nullable integers directly: a None would make the column float64, and 64-bit
        # ids do not survive a trip through float
        frame.insert(2, "parent_id", parents)
        return frame

    def summary(self) -> str:
        m = self.metrics()
        state = "finished" if self.finished else f"{len(self.records())} generations so far"
        line = f"run {self.run_id} ({self.params['policy']}, {state}) in {self.folder}"
        if len(m):
            last = m.iloc[-1]
            line += f"; last iteration {int(last['iteration'])}: score {last['score']:.3f}"
        return line


def compare_metrics(runs: Sequence[LoopRun]) -> Any:
    """The metrics of several runs in one table (``run_id``, ``policy``, ``human_fraction``
    and ``sources`` in front), for plotting one line per run."""
    frames = []
    for run in runs:
        frame = run.metrics().copy()
        for pos, key in enumerate(("run_id", "policy", "human_fraction", "sources")):
            frame.insert(pos, key, run.policy if key == "policy" else run.params[key])
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def load_run(
    run_id: str, settings: Settings | None = None, *, milvus: Milvus | None = None
) -> LoopRun:
    """Open an existing run (finished or not) to read its metrics, lineage and answers."""
    settings = settings or get_settings()
    ledger = RunLedger(runs_root(settings.run_dir) / run_id)
    return LoopRun(run_id, ledger.folder, ledger.read_params(), settings, milvus)


def list_runs(settings: Settings | None = None) -> list[str]:
    """The run ids under ``<run_dir>/loops``, oldest folder first."""
    settings = settings or get_settings()
    root = runs_root(settings.run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if (p / "params.json").is_file()]
    return [p.name for p in sorted(found, key=lambda p: p.stat().st_mtime)]
