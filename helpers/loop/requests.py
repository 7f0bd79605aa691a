"""Before anything is generated in an iteration: each tavern's retrieval (query, policy view,
exact re-rank) and prompt, as one :class:`TavernRequest` per tavern. Nothing is written
here, so building every request of an iteration first gives the same contexts as interleaving
(retrieval in iteration ``i`` sees only rows of iterations ``< i``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from helpers.loop.params import LoopParams, generation_seed
from helpers.loop.prompt import build_prompt, intro_query
from helpers.loop.store import Milvus, client_of, embed_one, search_contexts, view_filter


@dataclass
class TavernRequest:
    """One generation to make: the tavern, its contexts and prompt, and what it took so far."""

    tavern: Mapping[str, str]
    iteration: int
    contexts: list[dict[str, Any]]
    parent_id: int
    prompt: str
    seed: int
    timings: dict[str, float] = field(default_factory=dict)  # ledgered
    t0: float = 0.0  # perf_counter at the start of its retrieval
    elapsed_s: float = 0.0  # its own wall time so far (for the timing hook)


class VersionState(Protocol):
    """What retrieval reads of the loop's state (:class:`helpers.loop.engine.LoopState`)."""

    vectors: dict[int, np.ndarray]

    def current(self, before: int) -> dict[str, Mapping[str, Any]]: ...


@dataclass
class Retriever:
    """Builds the generation requests of one run: ``params`` decide the query
    (``query_mode``, ``exclude_own``, ``no-feedback``), the view and ``k``."""

    params: LoopParams
    milvus: Milvus
    collection: str
    state: VersionState
    _facts_queries: dict[str, np.ndarray] = field(default_factory=dict)

    def retrieve(
        self,
        tavern: Mapping[str, str],
        iteration: int,
        current: Mapping[str, Mapping[str, Any]],
    ) -> tuple[list[dict[str, Any]], int]:
        """The ``k`` contexts for ``tavern`` in ``iteration`` and the parent id (the version whose
        vector was the query; 0 for the facts query). ``current``: every tavern's version
        before the iteration (:meth:`~helpers.loop.engine.LoopState.current`). Only rows of earlier iterations are
        visible (see :mod:`helpers.loop`); ``query_mode`` and ``exclude_own`` as in
        :class:`~helpers.loop.params.LoopParams`."""
        tid = tavern["tavern_id"]
        version = current.get(tid)
        from_self = (
            version is not None
            and self.params.query_mode == "self"
            and self.params.policy != "no-feedback"
        )
        parent = int(version["row_id"]) if from_self and version is not None else 0
        query = self.state.vectors[parent] if from_self else self._facts_query(tavern)
        expr = view_filter(
            self.params.policy,
            self.params.sources,
            self.params.run_id,
            iteration - 1,
            exclude_tavern=tid if self.params.exclude_own else None,
        )
        if expr is None:
            return [], parent
        text = str(version["text"]) if from_self and version is not None else intro_query(tavern)
        contexts = search_contexts(
            client_of(self.milvus), self.collection, query, expr, self.params.k,
            self.state.vectors, retriever=self.params.retriever, query_text=text,
        )  # fmt: skip
        return contexts, parent

    def _facts_query(self, tavern: Mapping[str, str]) -> np.ndarray:
        """The embedding of the tavern's name, location and visitor (made once per run)."""
        tid = tavern["tavern_id"]
        if tid not in self._facts_queries:
            self._facts_queries[tid] = embed_one(intro_query(tavern), query=True)
        return self._facts_queries[tid]

    def build_requests(
        self, iteration: int, todo: Sequence[Mapping[str, str]]
    ) -> list[TavernRequest]:
        """Retrieve and build the prompt of every tavern in ``todo`` (nothing is written)."""
        current = self.state.current(iteration)
        requests: list[TavernRequest] = []
        for tavern in todo:
            t0 = time.perf_counter()
            contexts, parent = self.retrieve(tavern, iteration, current)
            t1 = time.perf_counter()
            prompt = build_prompt(tavern, contexts, context_chars=self.params.context_chars)
            t2 = time.perf_counter()
            requests.append(
                TavernRequest(
                    tavern=tavern,
                    iteration=iteration,
                    contexts=contexts,
                    parent_id=parent,
                    prompt=prompt,
                    seed=generation_seed(self.params.seed, iteration, tavern["tavern_id"]),
                    timings={"retrieve_s": t1 - t0},
                    t0=t0,
                    elapsed_s=t2 - t0,
                )
            )
            requests[-1].timings["prompt_s"] = t2 - t1
        return requests
