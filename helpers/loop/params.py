"""The loop's parameters (:class:`LoopParams`) and their validation, the run manifest
(:class:`RunManifest`, what params.json holds besides the parameters) and the deterministic
names derived from them: run id, collection name, row ids, generation seeds, human subset.

Pure: no Milvus, no model. Every check raises :class:`LoopParamsError` naming the parameter and
the allowed values, before anything is generated or stored.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from helpers.common import stable_id
from helpers.settings import GENERATORS

POLICIES = ("accumulate", "replace", "replace-keep-human", "gated", "no-feedback")
QUERY_MODES = ("self", "facts")
RETRIEVERS = ("dense", "bm25", "hybrid")  # helpers.search modes; bm25/hybrid need Milvus 2.5+
SOURCES = ("all", "human", "generated", "run")
JUDGE_MODES = ("off", "auto", "claude")
HUMAN_ITERATION = -1  # the iteration number of the human reference rows: before the loop
ITERATIONS_RANGE = (1, 1000)
CONTEXT_CHARS_RANGE = (50, 3000)
DEFAULT_K = 3
MAX_K = 20
DEFAULT_CONTEXT_CHARS = 600  # three contexts of 600 chars stay far below SmolLM2's 4096 tokens
# The local model's length cap in the loop when max_tokens is not given: the prompt diet's
# choice (docs/benchmarks.md section 9), 1.2x faster than its description cap (230) with fact
# coverage, similarity to the reference and distinct-2 within the seed-to-seed spread.
LOCAL_LOOP_MAX_TOKENS = 150
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
SEED_MODULUS = 2**32 - 1  # llama.cpp treats 2**32-1 as "random"

# What each policy's view shows after iteration ``upto`` (see :func:`view_rule`).
GENERATED_NONE, GENERATED_LATEST, GENERATED_ALL = "none", "latest", "all"


@dataclass(frozen=True)
class ViewRule:
    """What a search sees after iteration ``upto``: human rows or not, and which generated rows
    (``none``, ``latest``: those of iteration ``upto`` only, ``all``: every one up to it)."""

    humans: bool
    generated: str


def view_rule(policy: str, upto: int) -> ViewRule:
    """The one rule behind every policy's searchable store after iteration ``upto`` (-1: before
    the loop). Used by the store's filter, the per-iteration metrics and the run analysis.

    * ``accumulate`` and ``gated``: the human rows and every generated row up to ``upto``
      (Gerstgrasser et al. 2024's *accumulate*: real data kept, synthetic data added);
    * ``replace``: the human rows before the loop only; afterwards only the generated rows of
      iteration ``upto`` (Gerstgrasser's *replace*: each generation sees only the previous one);
    * ``replace-keep-human``: the kit's earlier ``replace``: the newest generated version of
      every tavern, *plus* the human rows throughout (neither of Gerstgrasser's arms);
    * ``no-feedback``: the human rows only, always: the control, in which nothing generated is
      ever read back.
    """
    check_choice("policy", policy, POLICIES)
    if upto < 0 or policy == "no-feedback":
        return ViewRule(True, GENERATED_NONE)
    if policy == "replace":
        return ViewRule(False, GENERATED_LATEST)
    if policy == "replace-keep-human":
        return ViewRule(True, GENERATED_LATEST)
    return ViewRule(True, GENERATED_ALL)


# VARCHAR limits of the loop's lineage fields, in UTF-8 bytes (the C++ server counts bytes)
LOOP_TEXT_LIMITS = {
    "tavern_id": 64,
    "run_id": 64,
    "source": 16,
    "generator": 32,
    "model": 128,
    "created_at": 40,
}


class LoopError(RuntimeError):
    """The loop cannot go on as asked; the message says why and what to do."""


class LoopParamsError(LoopError, ValueError):
    """A loop parameter is out of range or unknown."""


# ---------------------------------------------------------------------------------------------
# Parameters


@dataclass(frozen=True)
class LoopParams:
    """Everything that decides what a run produces. Two runs with equal params (and the same
    data, generator and model) produce the same texts.

    ``taverns`` (ids) wins over ``n_taverns`` (the first n of ``taverns.csv``); neither means all.
    ``sources``: what retrieval may return: ``all``, ``human`` (reference rows only),
    ``generated`` (generated rows only), ``run`` (generated rows of this run: the same as
    ``generated`` while every run has its own collection). ``human_fraction``: the share of the
    run's taverns whose human reference is stored (a subset fixed by the seed). ``max_tokens``
    None: :func:`default_max_tokens` (150 for the local model). ``judge``: ``off``, ``auto`` (Claude when a key is set) or
    ``claude``. ``use_ratings``: merge human ratings from ``data/feedback/*.csv`` into scores.
    ``run_id`` empty: ``<policy>-s<seed>-<UTC time>``.

    ``policy``: which stored rows later iterations may retrieve (:func:`view_rule`) and, for
    ``gated``, which versions are written back (:mod:`helpers.loop.engine`). ``query_mode``:
    what a tavern's retrieval searches with: ``self``, its own newest stored version (its
    name, location and visitor before it has one), or ``facts``, always its name, location and
    visitor (so the query does not follow the tavern's own drift). ``exclude_own``: retrieval
    never returns the tavern's own generated versions (its human reference stays eligible).
    Under ``no-feedback`` the query is always ``facts``: nothing generated is read back.
    ``retriever``: how the contexts are searched (:mod:`helpers.search` modes): ``dense``
    (all-MiniLM-L6-v2 vectors, exact re-rank), ``bm25`` (Milvus full-text search on name +
    description, with the query's *text*: the newest version or the facts) or ``hybrid`` (both,
    fused by RRF); bm25 and hybrid need a backend with full-text search (milvus-lite 3.2+,
    Milvus 2.5+), and the run's collection then gets the BM25 fields.
    """

    iterations: int = 3
    policy: str = "accumulate"
    k: int = DEFAULT_K
    n_taverns: int | None = None
    taverns: tuple[str, ...] = ()
    sources: str = "all"
    human_fraction: float = 1.0
    generator: str = "auto"
    temperature: float = 0.8
    seed: int = 42
    max_tokens: int | None = None
    context_chars: int = DEFAULT_CONTEXT_CHARS
    judge: str = "off"
    use_ratings: bool = True
    query_mode: str = "self"
    exclude_own: bool = False
    retriever: str = "dense"
    run_id: str = ""

    def checked(self) -> LoopParams:
        """These params validated (a :class:`LoopParamsError` names the first bad one and the
        allowed values), with ``taverns`` as a tuple and a run id filled in."""
        check_int("iterations", self.iterations, *ITERATIONS_RANGE)
        check_int("k", self.k, 1, MAX_K)
        check_choice("policy", self.policy, POLICIES)
        check_choice("sources", self.sources, SOURCES)
        check_choice("generator", self.generator, GENERATORS)
        check_choice("judge", self.judge, JUDGE_MODES)
        check_choice("query_mode", self.query_mode, QUERY_MODES)
        check_choice("retriever", self.retriever, RETRIEVERS)
        for name in ("exclude_own", "use_ratings"):
            if not isinstance(getattr(self, name), bool):
                raise LoopParamsError(f"{name} must be True or False, got {getattr(self, name)!r}.")
        if self.n_taverns is not None:
            check_int("n_taverns", self.n_taverns, 1, 100_000)
        check_int("seed", self.seed, 0, SEED_MODULUS - 1)
        if self.max_tokens is not None:
            check_int("max_tokens", self.max_tokens, 1, 8192)
        check_int("context_chars", self.context_chars, *CONTEXT_CHARS_RANGE)
        check_float("human_fraction", self.human_fraction, 0.0, 1.0)
        check_float("temperature", self.temperature, 0.0, 2.0)
        taverns = (self.taverns,) if isinstance(self.taverns, str) else tuple(self.taverns)
        if len(set(taverns)) != len(taverns):
            raise LoopParamsError(f"taverns lists an id twice: {list(taverns)}.")
        run_id = self.run_id or default_run_id(self.policy, self.seed)
        if not _RUN_ID.match(run_id):
            raise LoopParamsError(
                f"run_id {run_id!r}: use 1-64 letters, digits, '-' or '_', starting with a letter "
                "or digit (it names a folder and a Milvus collection)."
            )
        return dataclasses.replace(self, taverns=taverns, run_id=run_id)

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["taverns"] = list(self.taverns)
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> LoopParams:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise LoopParamsError(f"unknown loop parameter(s) {unknown}; known: {sorted(names)}.")
        clean = dict(values)
        if "taverns" in clean:
            clean["taverns"] = tuple(clean["taverns"] or ())
        return cls(**clean)

    @classmethod
    def field_names(cls) -> frozenset[str]:
        return frozenset(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_saved(cls, saved: Mapping[str, Any]) -> LoopParams:
        """The params of a params.json (which also holds the manifest's keys), checked; a
        parameter added to the kit after the run was made takes its default."""
        names = cls.field_names()
        values = {k: v for k, v in saved.items() if k in names}
        if "query_mode" not in saved and values.get("policy") == "replace":
            # saved before the faithful ``replace`` existed: its ``replace`` kept the humans
            values["policy"] = "replace-keep-human"
        return cls.from_dict(values).checked()


def check_int(name: str, value: Any, low: int, high: int) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | np.integer)
        or not low <= value <= high
    ):
        raise LoopParamsError(f"{name} must be a whole number from {low} to {high}, got {value!r}.")


def check_float(name: str, value: Any, low: float, high: float) -> None:
    ok = isinstance(value, int | float | np.number) and not isinstance(value, bool)
    if not ok or not math.isfinite(float(value)) or not low <= float(value) <= high:
        raise LoopParamsError(f"{name} must be a number from {low:g} to {high:g}, got {value!r}.")


def check_choice(name: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise LoopParamsError(f"{name} must be one of {', '.join(allowed)}; got {value!r}.")


def default_run_id(policy: str, seed: int) -> str:
    """``accumulate-s42-20260102-150405``: readable, sortable, new each second."""
    return f"{policy}-s{seed}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"


def collection_name(run_id: str) -> str:
    """The run's Milvus collection: ``loop_<run id with _ for ->_<6 hex of its hash>``.

    The hash keeps ``a-b`` and ``a_b`` apart; Milvus allows only letters, digits and ``_``.
    """
    safe = re.sub(r"[^A-Za-z0-9_]", "_", run_id)[:48]
    return f"loop_{safe}_{stable_id('collection', run_id) % 16**6:06x}"


def row_id(run_id: str, iteration: int, tavern_id: str) -> int:
    """The primary key of a tavern's version in a run (``iteration`` -1: its human reference)."""
    return stable_id(run_id, iteration, tavern_id)


def generation_seed(seed: int, iteration: int, tavern_id: str) -> int:
    """The seed of one generation, derived from the run seed: independent of the order the
    taverns are processed in and of any crash, so a resumed run makes the same texts."""
    return stable_id("generation", seed, iteration, tavern_id) % SEED_MODULUS


def human_subset(tavern_ids: Sequence[str], fraction: float, seed: int) -> list[str]:
    """The taverns whose human reference stays in the store: ``round(fraction * n)`` of them
    (half rounded up), chosen by a seeded hash of each id, returned in the input order.

    A hash per id rather than a shuffle: a tavern's chance of being kept does not depend on
    which other taverns are in the run.
    """
    check_float("human_fraction", fraction, 0.0, 1.0)
    n_keep = math.floor(fraction * len(tavern_ids) + 0.5)
    ranked = sorted(tavern_ids, key=lambda t: stable_id("human-subset", seed, t))
    keep = set(ranked[:n_keep])
    return [t for t in tavern_ids if t in keep]


# ---------------------------------------------------------------------------------------------
# The collection


# ---------------------------------------------------------------------------------------------
# The run manifest


@dataclass(frozen=True)
class RunManifest:
    """What a run fixed when it started, besides its parameters: written once to params.json
    (flat, the parameters' keys beside these) and read back by resume and :class:`LoopRun`.

    ``human_taverns``: the taverns whose human reference is stored (:func:`human_subset`);
    ``max_tokens_resolved``: ``params.max_tokens`` or the generator's default;
    ``generator_settings``: the generator's ``text_settings`` (the local model's threads).
    """

    params: LoopParams
    tavern_ids: tuple[str, ...]
    human_taverns: tuple[str, ...]
    collection: str
    generator_kind: str
    model: str
    max_tokens_resolved: int
    backend: str
    created_at: str
    data_file: str
    # what else decides a text (the local model's threads); {} in runs made before it was kept
    generator_settings: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = self.params.as_dict()
        for f in dataclasses.fields(self):
            if f.name != "params":
                value = getattr(self, f.name)
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_json(cls, saved: Mapping[str, Any], where: str = "params.json") -> RunManifest:
        fields = [f for f in dataclasses.fields(cls) if f.name != "params"]
        optional = {f.name for f in fields if f.default_factory is not dataclasses.MISSING}
        names = [f.name for f in fields if f.name not in optional or f.name in saved]
        missing = [n for n in names if n not in saved]
        if missing:
            raise LoopError(
                f"{where} lacks {missing}: it was not written by this kit's loop. Start a new run."
            )
        values: dict[str, Any] = {n: saved[n] for n in names}
        values["tavern_ids"] = tuple(values["tavern_ids"])
        values["human_taverns"] = tuple(values["human_taverns"])
        return cls(params=LoopParams.from_saved(saved), **values)


def check_tavern_ids(tavern_ids: Sequence[str], where: str) -> None:
    """Refuse, before anything is ledgered, a tavern id the loop's collection cannot store: it
    would be ledgered and then fail its insert on every resume."""
    limit = LOOP_TEXT_LIMITS["tavern_id"]
    for tid in tavern_ids:
        size = len(str(tid).encode("utf-8"))
        if size > limit:
            raise LoopParamsError(
                f"tavern_id {tid!r} in {where} is {size} bytes; the loop stores at most {limit}. "
                "Shorten it there (ids are short slugs such as prancing-pony)."
            )


def default_max_tokens(generator: Any) -> int:
    """The loop's length cap when ``LoopParams.max_tokens`` is None: :data:`LOCAL_LOOP_MAX_TOKENS`
    for the local model, the generator's own description cap otherwise (Claude)."""
    if generator.name == "local":
        return LOCAL_LOOP_MAX_TOKENS
    return int(generator.description_max_tokens)
