"""The loop's entry points: :func:`run_loop` (a new run, or an existing one continued) and
:func:`resume` (after a crash). Both hold an exclusive lock on the run folder for as long as
they run, so two processes never append to one ledger.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import fcntl
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from helpers.data import load_taverns, tavern_records
from helpers.evaluation import Evaluator, Ratings, load_ratings, make_judge
from helpers.generation_cache import context_window
from helpers.generators import Generator, make_generator
from helpers.ledger import RunLedger, runs_root
from helpers.loop.engine import FeedbackLoop, TimingHook
from helpers.loop.params import (
    LoopError,
    LoopParams,
    LoopParamsError,
    RunManifest,
    check_tavern_ids,
    collection_name,
    default_max_tokens,
    human_subset,
)
from helpers.loop.prompt import check_prompt_fits
from helpers.loop.results import LoopRun
from helpers.loop.store import Milvus, backend_of, client_of, now
from helpers.milvus_server import start_milvus
from helpers.settings import Settings, get_settings, show_path

log = logging.getLogger(__name__)

Announce = Callable[[str], object]
RecordHook = Callable[[dict[str, Any]], object]


@contextlib.contextmanager
def run_folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the run folder (created if missing) until the block ends.

    A second process (or a second call in this one) that asks for the same run gets a
    :class:`LoopError` at once instead of appending to the same ledger. The lock dies with the
    process, so a killed run leaves nothing to clean up. A folder left empty (the run failed
    its checks before writing anything) is removed again.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LoopError(
                f"Run folder {folder} is in use by another process (a loop running or resuming "
                "this run). Wait for it to finish or stop it, then resume the run."
            ) from None
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                if not any(folder.iterdir()):
                    folder.rmdir()
    finally:
        os.close(fd)  # releases the lock


def _resolve_taverns(params: LoopParams, settings: Settings) -> list[dict[str, str]]:
    """The run's taverns from taverns.csv, with ids the loop can store (checked up front)."""
    records = tavern_records(load_taverns(settings=settings))
    by_id = {t["tavern_id"]: t for t in records}
    if params.taverns:
        unknown = [t for t in params.taverns if t not in by_id]
        if unknown:
            hints = [
                f"{t!r}"
                + (
                    f" (did you mean {close[0]!r}?)"
                    if (close := difflib.get_close_matches(t, list(by_id), n=1))
                    else ""
                )
                for t in unknown
            ]
            raise LoopParamsError(
                f"unknown tavern id(s) {', '.join(hints)}; ids are the tavern_id column of "
                f"{settings.data_dir / 'taverns.csv'}."
            )
        chosen = [by_id[t] for t in params.taverns]
    elif params.n_taverns is not None and params.n_taverns > len(records):
        raise LoopParamsError(
            f"n_taverns={params.n_taverns} but taverns.csv has {len(records)} taverns."
        )
    else:
        chosen = records[: params.n_taverns] if params.n_taverns else records
    check_tavern_ids([t["tavern_id"] for t in chosen], str(settings.data_dir / "taverns.csv"))
    return chosen


def _make_generator(
    settings: Settings, kind: str, model: str | None, announce: Announce | None
) -> Generator:
    options: dict[str, Any] = {}
    if kind == "claude" and model:
        options["claude_options"] = {"model": model}
    return make_generator(settings.replace(generator=kind), announce=announce, **options)


def _make_evaluator(params: LoopParams, settings: Settings, ratings: Ratings) -> Evaluator:
    return Evaluator(judge=make_judge(settings, params.judge), ratings=ratings)


@dataclasses.dataclass(frozen=True)
class _Hooks:
    """How a run reports: progress bar, messages, and the record and timing callbacks."""

    progress: bool = True
    announce: Announce | None = None
    on_record: RecordHook | None = None
    on_timing: TimingHook | None = None


def run_loop(
    params: LoopParams | None = None,
    settings: Settings | None = None,
    *,
    milvus: Milvus | None = None,
    generator: Generator | None = None,
    evaluator: Evaluator | None = None,
    progress: bool = True,
    announce: Announce | None = None,
    on_record: RecordHook | None = None,
    on_timing: TimingHook | None = None,
    fresh: bool = False,
    **overrides: Any,
) -> LoopRun:
    """Run a feedback loop and return its :class:`LoopRun`.

    ``params`` and/or keyword overrides (``run_loop(iterations=3, policy="replace")``).
    ``milvus``: a handle from :func:`helpers.milvus_server.start_milvus` (or a MilvusClient);
    without one, the configured backend is started and stopped again. ``generator``: any
    :class:`~helpers.generators.Generator` (default: :func:`make_generator` for
    ``params.generator``). ``evaluator``: default :class:`~helpers.evaluation.Evaluator` (with
    the judge and ratings the params ask for); a subclass may override ``evaluate`` (it must
    return a dict holding a ``score`` in [0, 1]). ``on_record(record)`` is called after each
    generation is ledgered and stored (live displays, tests); ``on_timing(dict)`` receives
    per-phase seconds (:class:`~helpers.loop.engine.FeedbackLoop`). ``announce``: where
    messages go (default: this module's logger). ``progress``: a tqdm bar.

    A run id that already exists with the same parameters is continued (a finished run: nothing
    happens), so re-running a notebook cell is safe; with other parameters it is an error, unless
    ``fresh=True``, which deletes that run's files and collection first.
    """
    settings = settings or get_settings()
    params = params or LoopParams()
    if overrides:
        known = LoopParams.field_names()
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise LoopParamsError(
                f"run_loop got unknown parameter(s) {unknown}; loop parameters are "
                f"{sorted(known)} (plus settings, milvus, generator, evaluator, progress, "
                "announce, on_record, on_timing, fresh)."
            )
        params = dataclasses.replace(params, **overrides)
    params = params.checked()
    hooks = _Hooks(progress, announce, on_record, on_timing)
    ledger = RunLedger(runs_root(settings.run_dir) / params.run_id)
    with run_folder_lock(ledger.folder):
        if ledger.exists:
            old = ledger.read_params()
            if fresh:
                _delete_run(ledger, old, settings, milvus)
            elif LoopParams.from_saved(old) != params:
                diff = sorted(
                    k for k, v in params.as_dict().items()
                    if LoopParams.from_saved(old).as_dict().get(k) != v
                )  # fmt: skip
                raise LoopError(
                    f"Run {params.run_id!r} already exists in {ledger.folder} with other "
                    f"parameters ({', '.join(diff)} differ). Use another run_id, "
                    f"resume({params.run_id!r}) to continue it, or fresh=True to delete it and "
                    "start again."
                )
            else:
                return _resume_locked(ledger, settings, milvus, generator, evaluator, hooks)
        taverns = _resolve_taverns(params, settings)
        if generator is None:
            generator = _make_generator(settings, params.generator, None, announce)
        max_tokens = params.max_tokens or default_max_tokens(generator)
        check_prompt_fits(params.k, params.context_chars, max_tokens, context_window(generator))
        tavern_ids = tuple(t["tavern_id"] for t in taverns)
        manifest = RunManifest(
            params=params,
            tavern_ids=tavern_ids,
            human_taverns=tuple(human_subset(tavern_ids, params.human_fraction, params.seed)),
            collection=collection_name(params.run_id),
            generator_kind=generator.name,
            model=generator.model,
            max_tokens_resolved=max_tokens,
            backend=backend_of(milvus, settings.milvus_backend),
            created_at=now(),
            data_file=str(settings.data_dir / "taverns.csv"),
            generator_settings=dict(getattr(generator, "text_settings", None) or {}),
        )
        ratings = (
            load_ratings(settings.data_dir / "feedback").for_run(params.run_id)
            if params.use_ratings
            else Ratings()
        )
        ledger.write_params(manifest.to_json())
        ledger.write_json(ledger.ratings_path, ratings.to_records())
        return _execute(
            manifest, ledger, settings, taverns, ratings, milvus=milvus, generator=generator,
            evaluator=evaluator, hooks=hooks,
        )  # fmt: skip


def resume(
    run_id: str,
    settings: Settings | None = None,
    *,
    milvus: Milvus | None = None,
    generator: Generator | None = None,
    evaluator: Evaluator | None = None,
    progress: bool = True,
    announce: Announce | None = None,
    on_record: RecordHook | None = None,
    on_timing: TimingHook | None = None,
    backend: str | None = None,
) -> LoopRun:
    """Continue run ``run_id`` from its ledger (after a killed kernel, a stopped server, ...).

    Nothing ledgered is generated again; ledgered rows missing from the store are re-inserted;
    the result equals an uninterrupted run. A finished run is left as it is. Without ``milvus``
    the run's own backend (params.json) is started, or ``backend`` if given: resuming on another
    backend rebuilds the store there from the ledger.
    """
    settings = settings or get_settings()
    ledger = RunLedger(runs_root(settings.run_dir) / run_id)
    ledger.read_params()  # a clear error for an unknown run, before any folder is made
    hooks = _Hooks(progress, announce, on_record, on_timing)
    with run_folder_lock(ledger.folder):
        return _resume_locked(
            ledger, settings, milvus, generator, evaluator, hooks, backend=backend
        )


def _resume_locked(
    ledger: RunLedger,
    settings: Settings,
    milvus: Milvus | None,
    generator: Generator | None,
    evaluator: Evaluator | None,
    hooks: _Hooks,
    *,
    backend: str | None = None,
) -> LoopRun:
    manifest = RunManifest.from_json(ledger.read_params(), str(ledger.params_path))
    params = manifest.params
    cut = ledger.repair()
    if cut:
        (hooks.announce or log.warning)(
            f"ledger: dropped a torn last line ({cut} bytes) left by the crash"
        )
    taverns = _resolve_taverns(params, settings)
    if tuple(t["tavern_id"] for t in taverns) != manifest.tavern_ids:
        raise LoopError(
            f"The taverns of run {params.run_id} changed in taverns.csv; resume needs the same "
            "data."
        )
    if generator is None:
        generator = _make_generator(
            settings, manifest.generator_kind, manifest.model, hooks.announce
        )
    if generator.model != manifest.model:
        raise LoopError(
            f"Run {params.run_id} was generated with {manifest.model!r}, not "
            f"{generator.model!r}; resume it with the same model, or start a new run."
        )
    # None: a generator whose texts no setting of ours decides (Claude), or one that generates
    # nothing (a recomputation's FrozenGenerator)
    now_settings = getattr(generator, "text_settings", None)
    if (
        manifest.generator_settings
        and now_settings is not None
        and dict(now_settings) != manifest.generator_settings
    ):
        raise LoopError(
            f"Run {params.run_id} was generated with {manifest.generator_settings}, this generator "
            f"has {now_settings}: its texts would differ from an uninterrupted run. Resume with "
            "the same settings (e.g. GFL_LOCAL_THREADS), or start a new run."
        )
    ratings = Ratings.from_records(ledger.read_json(ledger.ratings_path, default=[]) or [])
    return _execute(
        manifest, ledger, settings, taverns, ratings, milvus=milvus, generator=generator,
        evaluator=evaluator, hooks=hooks, backend=backend,
    )  # fmt: skip


def _execute(
    manifest: RunManifest,
    ledger: RunLedger,
    settings: Settings,
    taverns: list[dict[str, str]],
    ratings: Ratings,
    *,
    milvus: Milvus | None,
    generator: Generator,
    evaluator: Evaluator | None,
    hooks: _Hooks,
    backend: str | None = None,
) -> LoopRun:
    """Open Milvus (unless given), prepare the store, run what is left, write the metrics."""
    params = manifest.params
    own = milvus is None
    handle = (
        start_milvus(settings, backend=backend or manifest.backend or settings.milvus_backend)
        if milvus is None
        else milvus
    )
    say = hooks.announce or log.info
    try:
        loop = FeedbackLoop(
            manifest,
            taverns,
            ledger,
            milvus=handle,
            generator=generator,
            evaluator=evaluator or _make_evaluator(params, settings, ratings),
            progress=hooks.progress,
            announce=hooks.announce,
            on_record=hooks.on_record,
            on_timing=hooks.on_timing,
        )
        counts = loop.prepare()
        if counts["records"]:
            say(
                f"resuming run {params.run_id}: {counts['records']} generations in the ledger, "
                f"{counts['restored']} re-stored from it"
            )
        say(f"run folder: {show_path(Path(ledger.folder))}")
        loop.run()
        loop.write_metrics()
    finally:
        if own:
            handle.stop()
    return LoopRun(
        params.run_id, ledger.folder, ledger.read_params(), settings, None if own else milvus
    )


def _delete_run(
    ledger: RunLedger, old: Mapping[str, Any], settings: Settings, milvus: Milvus | None
) -> None:
    """Drop the run's collection and delete its files (the locked folder itself stays)."""
    handle = (
        milvus
        if milvus is not None
        else start_milvus(settings, backend=old.get("backend") or settings.milvus_backend)
    )
    try:
        client = client_of(handle)
        if client.has_collection(old["collection"]):
            client.drop_collection(old["collection"])
    finally:
        if milvus is None:
            handle.stop()
    for path in ledger.folder.iterdir():
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
