"""The loop's engine: :class:`FeedbackLoop` runs the iterations of one run and holds its state.

One iteration has three phases (see :meth:`FeedbackLoop.run_iteration`):

1. **requests**: for every tavern still to do, retrieve its contexts and build its prompt. Retrieval
   in iteration ``i`` sees only rows of iterations ``< i``, so building every request before
   writing anything gives the same contexts as interleaving;
2. **generation**: :meth:`FeedbackLoop._generate_iteration` turns the requests into generations,
   in order (one place to batch them);
3. **write-back**, in the requests' order: embed, score, decide, ledger (fsync'ed) and only then
   insert, so the store never holds a row the ledger does not know.

The state (every record, every stored row's vector) is rebuilt from the ledger on resume.

**The gate** (``policy="gated"``): a new version is written back only when its gate score is
not below the tavern's current version's. The gate score
(:func:`helpers.evaluation.gate_score`) reads only what a loop without ground truth has: the
text, the tavern's own fields (fact coverage of its name, location and famous visitor), the
text's length, its repetition (distinct-2), how much it copies its prompt's context, and the
LLM judge's rating when a judge is on (the judge sees the facts and the text, never the human
description). It never reads the human reference description or its embedding, at any human
share, so ``gated`` is not judged by the metric it is selected on (``reference_similarity``
and the drift from the reference stay outcome measures only).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from hashlib import sha256
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from helpers.common import fit_utf8
from helpers.evaluation import Evaluator, gate_score
from helpers.generators import GenerateManyError, Generation, GenerationRequest, Generator
from helpers.ledger import RunLedger, decode_vector, encode_vector
from helpers.loop.params import HUMAN_ITERATION, LoopError, RunManifest, row_id
from helpers.loop.requests import Retriever, TavernRequest
from helpers.loop.store import (
    Milvus,
    client_of,
    embed_one,
    json_number,
    now,
    open_loop_collection,
    present_ids,
    row_from_record,
)
from helpers.loop.versions import current_versions
from helpers.run_analysis import iteration_metrics, summary_line
from helpers.schema import DESCRIPTION_MAX, build_hnsw_index, prepare_rows

log = logging.getLogger(__name__)

Record = dict[str, Any]
TimingHook = Callable[[dict[str, Any]], object]


@dataclass
class LoopState:
    """What the loop knows, rebuilt from the ledger on resume."""

    records: dict[tuple[int, str], Record] = field(default_factory=dict)
    vectors: dict[int, np.ndarray] = field(default_factory=dict)  # every stored row's vector

    def current(self, before: int) -> dict[str, Mapping[str, Any]]:
        """Each tavern's newest stored version from an iteration before ``before``."""
        return current_versions(list(self.records.values()), before - 1)


class FeedbackLoop:
    """One run, new or resumed. Use :func:`helpers.loop.api.run_loop` and ``resume``; this class
    holds the state they share.

    ``on_record(record)``: called after each generation is ledgered and stored. ``on_timing``: a
    measurement hook (``bench/loop_breakdown.py``) that receives one dict of
    ``time.perf_counter`` seconds per phase: ``{"phase": "prepare", ...}`` once,
    ``{"phase": "step", ...}`` per generation (retrieve, prompt, generate, embed, evaluate,
    ledger, insert, ``t0`` its start and ``t1`` = ``t0`` + its own wall time) and
    ``{"phase": "metrics", ...}`` per iteration. It changes nothing else.
    """

    def __init__(
        self,
        manifest: RunManifest,
        taverns: Sequence[Mapping[str, str]],
        ledger: RunLedger,
        *,
        milvus: Milvus,
        generator: Generator,
        evaluator: Evaluator,
        progress: bool = True,
        announce: Callable[[str], object] | None = None,
        on_record: Callable[[Record], object] | None = None,
        on_timing: TimingHook | None = None,
    ) -> None:
        self.manifest = manifest
        self.params = manifest.params
        self.run_id = manifest.params.run_id
        self.collection = manifest.collection
        self.milvus = milvus
        self.generator = generator
        self.evaluator = evaluator
        self.progress = progress
        self.announce = announce or log.info
        self.on_record = on_record
        self.on_timing = on_timing
        self.ledger = ledger
        self.taverns = [dict(t) for t in taverns]
        self.by_id = {t["tavern_id"]: t for t in self.taverns}
        self.state = LoopState()
        self.reference_vectors: dict[str, np.ndarray] = {}
        self.retriever = Retriever(manifest.params, milvus, manifest.collection, self.state)
        self.full_text = manifest.params.retriever != "dense"  # rows then carry search_text

    @property
    def client(self) -> Any:
        return client_of(self.milvus)

    # -- set-up ----------------------------------------------------------------------------------

    def prepare(self) -> dict[str, int]:
        """Collection, human rows, ledgered rows and index in place; state rebuilt. Returns
        counts for the announcement (rows re-stored from the ledger, ...)."""
        marks = [time.perf_counter()]
        client = self.client
        records = self.ledger.records()
        created = open_loop_collection(
            client, self.collection, drop_existing=not records, retriever=self.params.retriever
        )
        marks.append(time.perf_counter())
        for tav in self.taverns:
            self.reference_vectors[tav["tavern_id"]] = embed_one(tav["description"])
        marks.append(time.perf_counter())
        human_rows = [
            human_row(
                self.run_id, self.by_id[t], self.reference_vectors[t],
                self.evaluator.offline_scores(
                    self.by_id[t]["description"], self.by_id[t],
                    text_vector=self.reference_vectors[t],
                    reference_vector=self.reference_vectors[t],
                ),
                self.manifest.created_at,
            )
            for t in self.manifest.human_taverns
        ]  # fmt: skip
        if human_rows:
            client.upsert(self.collection, prepare_rows(human_rows, full_text=self.full_text))
        for row in human_rows:
            self.state.vectors[row["id"]] = np.asarray(row["vector_embedding"], dtype=np.float32)
        marks.append(time.perf_counter())
        # Index and load before reading back: the C++ server (and a restarted milvus-lite)
        # answer no query on a collection that is not loaded.
        build_hnsw_index(client, self.collection)
        marks.append(time.perf_counter())
        restored = restore_state(
            self.state, records, client, self.collection, self.ledger.ledger_path,
            full_text=self.full_text,
        )  # fmt: skip
        marks.append(time.perf_counter())
        if self.on_timing is not None:
            names = ("collection_s", "embed_references_s", "human_rows_s", "flush_index_s")
            names += ("restore_s",)
            seconds = {n: b - a for n, a, b in zip(names, marks[:-1], marks[1:], strict=True)}
            self.on_timing({"phase": "prepare", **seconds, "t0": marks[0], "t1": marks[-1]})
        return {"created": int(created), "records": len(records), "restored": restored}

    # -- one iteration ---------------------------------------------------------------------------

    def _generate_iteration(self, requests: Sequence[TavernRequest]) -> list[Generation]:
        """One generation per request, in the requests' order (each with its own seed), through
        the generator's ``generate_many``: Claude sends them concurrently, the local model one
        after another. Each request is charged the batch's mean time."""
        batch = [
            GenerationRequest(
                prompt=request.prompt,
                max_tokens=self.manifest.max_tokens_resolved,
                temperature=self.params.temperature,
                seed=request.seed,
            )
            for request in requests
        ]
        t0 = time.perf_counter()
        try:
            out = self.generator.generate_many(batch)
        finally:
            seconds = (time.perf_counter() - t0) / max(len(requests), 1)
            for request in requests:
                request.timings["generate_s"] = seconds
                request.elapsed_s += seconds
        return out

    def run_iteration(self, iteration: int, todo: Sequence[Mapping[str, str]], bar: Any) -> None:
        """Requests, generations, then write-back in order (see the module docstring)."""
        requests = self.retriever.build_requests(iteration, todo)
        try:
            generations: Sequence[Generation | None] = self._generate_iteration(requests)
            failure = None
        except GenerateManyError as exc:  # keep (ledger, insert) what did arrive, in order
            generations, failure = exc.generations, exc
        for request, gen in zip(requests, generations, strict=True):
            if gen is None:
                continue  # failed: generated again on resume (the taverns of an iteration are
                # independent, so the ledger may hold them in any order)
            bar.set_postfix_str(
                f"iteration {iteration}, {request.tavern['tavern_id']}", refresh=False
            )
            self._finish(request, gen)
            bar.update(1)
        if failure is not None:
            raise failure.errors[min(failure.errors)] from failure

    def _finish(self, request: TavernRequest, gen: Generation) -> Record:
        """Embed, score, decide, ledger and insert one generation."""
        t_start = time.perf_counter()
        tavern, iteration, timings = request.tavern, request.iteration, request.timings
        prompt_s = timings.pop("prompt_s", 0.0)
        text = fit_utf8(gen.text.strip(), DESCRIPTION_MAX)
        t0 = time.perf_counter()
        vector = embed_one(text) if text else None
        timings["embed_s"] = time.perf_counter() - t0
        scores = self._score(request, text, vector)
        current = self.state.current(iteration).get(tavern["tavern_id"])
        stored, reason = decide(self.params.policy, current, text, scores)
        record = ledger_record(
            self.run_id, request, gen, text, vector, scores, stored, reason,
            temperature=self.params.temperature, max_tokens=self.manifest.max_tokens_resolved,
            retriever=self.params.retriever,
        )  # fmt: skip
        write_timings = self._write(record, vector)
        if self.on_timing is not None:
            own = request.elapsed_s + time.perf_counter() - t_start
            self.on_timing(
                {
                    "phase": "step", "iteration": iteration, "tavern_id": tavern["tavern_id"],
                    **timings, "prompt_s": prompt_s, **write_timings,
                    "output_tokens": gen.output_tokens, "t0": request.t0, "t1": request.t0 + own,
                }
            )  # fmt: skip
        return record

    def _score(
        self, request: TavernRequest, text: str, vector: np.ndarray | None
    ) -> dict[str, Any]:
        """The evaluator's scores, reusing the embedding made for the insert."""
        t0 = time.perf_counter()
        tavern = request.tavern
        if text:
            scores = self.evaluator.evaluate(
                text,
                {**tavern, "reference": tavern["description"]},
                text_vector=vector,
                reference_vector=self.reference_vectors[tavern["tavern_id"]],
                context_texts=[c["description"] for c in request.contexts],
                run_id=self.run_id,
                iteration=request.iteration,
            )
        else:
            scores = {"score": 0.0, "auto_score": 0.0}
        request.timings["evaluate_s"] = time.perf_counter() - t0
        return scores

    def _write(self, record: Record, vector: np.ndarray | None) -> dict[str, float]:
        """Ledger first (flushed and fsync'ed), then the insert: after a crash the store never
        holds a row the ledger does not know, and a ledgered row missing from the store is
        re-inserted on resume. Returns ``ledger_s`` and ``insert_s``."""
        t0 = time.perf_counter()
        self.ledger.append(record)
        t1 = time.perf_counter()
        if record["stored"] and vector is not None:
            self.client.upsert(
                self.collection, prepare_rows([row_from_record(record)], full_text=self.full_text)
            )
            self.state.vectors[record["row_id"]] = vector
        t2 = time.perf_counter()
        self.state.records[(record["iteration"], record["tavern_id"])] = record
        if self.on_record is not None:
            self.on_record(record)
        return {"ledger_s": t1 - t0, "insert_s": t2 - t1}

    # -- the run ---------------------------------------------------------------------------------

    def run(self) -> None:
        done = len(self.state.records)
        total = self.params.iterations * len(self.taverns)
        bar = tqdm(
            total=total,
            initial=done,
            desc=f"loop {self.run_id}",
            unit="text",
            disable=not self.progress,
        )
        say = bar.write if self.progress else self.announce
        try:
            for iteration in range(self.params.iterations):
                todo = [
                    t for t in self.taverns if (iteration, t["tavern_id"]) not in self.state.records
                ]
                if todo:
                    self.run_iteration(iteration, todo, bar)
                t0 = time.perf_counter()
                rows = self.write_metrics()
                if self.on_timing is not None:
                    t1 = time.perf_counter()
                    self.on_timing(
                        {"phase": "metrics", "iteration": iteration, "metrics_s": t1 - t0,
                         "t0": t0, "t1": t1}
                    )  # fmt: skip
                if todo:
                    say(summary_line(rows[iteration]))
        finally:
            bar.close()

    def write_metrics(self) -> list[dict[str, Any]]:
        """metrics.csv rewritten from the ledger (finished iterations only)."""
        rows = iteration_metrics(
            list(self.state.records.values()),
            policy=self.params.policy,
            n_taverns=len(self.taverns),
            n_human=len(self.manifest.human_taverns),
        )
        self.ledger.write_metrics(rows)
        return rows


# ---------------------------------------------------------------------------------------------
# The steps of one generation, as functions of their inputs


def human_row(
    run_id: str, tavern: Mapping[str, str], vector: np.ndarray, scores: Mapping[str, Any],
    created_at: str,
) -> dict[str, Any]:  # fmt: skip
    """The stored row of a tavern's human reference (iteration -1) with its offline scores."""
    return {
        "id": row_id(run_id, HUMAN_ITERATION, tavern["tavern_id"]),
        "name": tavern["name"],
        "description": tavern["description"],
        "location": tavern["location"],
        "famous_visitor": tavern["famous_visitor"],
        "vector_embedding": vector.tolist(),
        "tavern_id": tavern["tavern_id"],
        "run_id": run_id,
        "iteration": HUMAN_ITERATION,
        "source": "human",
        "generator": "human",
        "model": "",
        "context_ids": [],
        "parent_id": 0,
        "scores": {k: json_number(v) for k, v in scores.items()},
        "created_at": created_at,
    }


def restore_state(
    state: LoopState,
    records: list[Record],
    client: Any,
    collection: str,
    where: Any,
    *,
    full_text: bool = False,
) -> int:
    """Rebuild the state from the ledger and re-insert ledgered rows missing from the store
    (a crash between ledger and insert). Returns how many were re-inserted."""
    stored_ids = []
    for rec in records:
        key = (rec["iteration"], rec["tavern_id"])
        if key in state.records:
            raise LoopError(
                f"{where} has two records for iteration {key[0]} of "
                f"{key[1]}; the ledger was edited. Restore it or start a new run."
            )
        state.records[key] = rec
        if rec["stored"]:
            state.vectors[rec["row_id"]] = decode_vector(rec["vector_b64"])
            stored_ids.append(rec["row_id"])
    present = present_ids(client, collection, stored_ids)
    missing = [r for r in records if r["stored"] and r["row_id"] not in present]
    if missing:
        rows = [row_from_record(r) for r in missing]
        client.upsert(collection, prepare_rows(rows, full_text=full_text))
    return len(missing)


def ledger_record(
    run_id: str,
    request: TavernRequest,
    gen: Generation,
    text: str,
    vector: np.ndarray | None,
    scores: dict[str, Any],
    stored: bool,
    reason: str,
    *,
    temperature: float,
    max_tokens: int,
    retriever: str = "dense",
) -> Record:
    """The ledger record of one generation (the stored row is made from it: ``row_from_record``).
    Each context keeps its age and cosine ``similarity``; with a ``bm25``/``hybrid``
    ``retriever`` also the retriever's own ``score`` it was ranked by."""
    tavern, contexts = request.tavern, request.contexts
    tid = tavern["tavern_id"]
    return {
        "run_id": run_id,
        "iteration": request.iteration,
        "tavern_id": tid,
        "name": tavern["name"],
        "location": tavern["location"],
        "famous_visitor": tavern["famous_visitor"],
        "row_id": row_id(run_id, request.iteration, tid),
        "parent_id": request.parent_id,
        "context_ids": [c["id"] for c in contexts],
        "context": [
            {k: c[k] for k in ("id", "tavern_id", "name", "source", "iteration")}
            | {
                "age": request.iteration - c["iteration"],
                "similarity": round(c["similarity"], 6),
            }
            | ({"score": c["score"]} if "score" in c else {})
            for c in contexts
        ],
        "retriever": retriever,
        "prompt": request.prompt,
        "prompt_sha256": sha256(request.prompt.encode("utf-8")).hexdigest(),
        "seed": request.seed,
        "temperature": temperature,
        "max_tokens": max_tokens,
        "generator": gen.generator,
        "model": gen.model,
        "text": text,
        "input_tokens": gen.input_tokens,
        "output_tokens": gen.output_tokens,
        "stop_reason": gen.stop_reason,
        "scores": scores,
        "stored": stored,
        "reason": reason,
        "vector_b64": encode_vector(vector) if vector is not None else "",
        "timings": {k: round(v, 4) for k, v in request.timings.items()},
        "created_at": now(),
    }


def decide(
    policy: str, current: Mapping[str, Any] | None, text: str, scores: Mapping[str, Any]
) -> tuple[bool, str]:
    """Whether to write the new version back, and why (kept in the ledger). ``current``:
    the tavern's current version (None: it has none). ``gated`` compares gate scores (see the module docstring), never the human reference."""
    if not text:
        return False, "empty text"
    if policy != "gated":
        return True, policy
    if current is None:
        return True, "gated: first version"
    new, old = gate_of(scores), gate_of(current["scores"])
    if new >= old:
        return True, f"gated: {new:.4f} >= current {old:.4f}"
    return (
        False,
        f"gated: {new:.4f} < current {old:.4f} (iteration {int(current['iteration'])})",
    )


def gate_of(scores: Mapping[str, Any]) -> float:
    """A version's gate score: the evaluator's ``gate_score``, else computed from the
    oracle-free inputs in its scores (a ledger written before the gate had its own score)."""
    if scores.get("gate_score") is not None:
        return float(scores["gate_score"])
    try:
        return gate_score(scores)
    except KeyError as exc:
        raise LoopError(
            f"The evaluator's scores lack {exc}: gated needs a gate_score (or coverage, "
            "length_score, distinct_2 and copy_share). Subclass helpers.evaluation.Evaluator."
        ) from None
