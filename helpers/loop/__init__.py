"""The generative feedback loop the article announces and never shows: retrieve, generate,
evaluate, write back, and again.

One iteration, for every tavern of the run:

1. **Retrieve** the ``k`` stored descriptions closest to the tavern: with ``query_mode="self"``
   (the default) to its current version (the newest one it has in the store) or, before it has
   one, to "name, location, visitor"; with ``query_mode="facts"`` always to the latter.
   ``exclude_own=True`` keeps the tavern's own generated versions out of its context (with
   ``self``, the first context is otherwise its own previous version, similarity 1).
2. **Generate** with the article's prompt, the retrieved texts in front of it inside
   ``<context>`` tags, marked as quoted data the model must not take instructions from. With
   nothing retrieved (an empty store), the plain article prompt.
3. **Evaluate** the text (:mod:`helpers.evaluation`).
4. **Write back**: ledger the generation (:mod:`helpers.ledger`), then upsert it into the run's
   collection with its lineage, so the next iteration retrieves from the updated store.

The package, by responsibility: :mod:`~helpers.loop.params` (parameters, validation, the run
manifest, deterministic ids), :mod:`~helpers.loop.store` (schema, policy views, retrieval with an
exact re-rank), :mod:`~helpers.loop.prompt`, :mod:`~helpers.loop.engine` (:class:`FeedbackLoop`),
:mod:`~helpers.loop.results` (:class:`LoopRun`), :mod:`~helpers.loop.api` (``run_loop``,
``resume``) and :mod:`~helpers.loop.cli`. :mod:`helpers.feedback_loop` re-exports the public
names, so notebooks import from there.

Notebook use::

    from helpers.feedback_loop import run_loop, resume, load_run, compare_metrics
    milvus = start_milvus(settings)
    run = run_loop(iterations=3, policy="accumulate", n_taverns=6, run_id="nb06", milvus=milvus)
    run.metrics()                       # one row per iteration (metrics.csv)
    run.lineage("prancing-pony")        # each version: score, and the texts it was made from
    run.answers("A cozy place frequented by famous hobbits")   # top hit before/after each iteration
    run.search(query, after_iteration=1)   # the store as it was searchable after iteration 1
    run.search_many(queries, after_iteration=1, limit=5)   # many queries, one Milvus request
    run.used_by(row_id)                 # the versions that had this row in their context
    run.texts(); run.rated()            # every generation; with human ratings merged
    compare_metrics([run_a, run_b])     # several runs in one table
    resume("nb06", settings, milvus=milvus)   # after a crash; a finished run: nothing happens

Re-running ``run_loop`` with the same ``run_id`` and parameters continues (or leaves alone) that
run, so a notebook cell can be run again safely.

Command line: ``python -m helpers.feedback_loop --help``.

* **One lock per run folder**: ``run_loop`` and ``resume`` hold an exclusive ``flock`` on the
  run folder while they run; a second process asking for the same run gets a clear error.

Design decisions (each one tested in ``tests/test_feedback_loop.py``):

* **One collection per run** (``loop_<run id>_<hash>``), so runs never mix. It holds the six
  fields of the article plus lineage: ``tavern_id``, ``run_id``, ``iteration`` (``-1`` for the
  human reference rows), ``source`` (``human``/``generated``), ``generator``, ``model``,
  ``context_ids`` (``ARRAY<INT64>``, which milvus-lite 3.2.2 and the C++ 2.3.5 server both
  store and filter with ``array_contains``), ``parent_id`` (the
  version the retrieval started from, 0 for none), ``scores`` (JSON) and ``created_at``.
* **Deterministic ids**: ``stable_id(run_id, iteration, tavern_id)``; writing twice is an upsert
  of the same row, a no-op.
* **Policies are views, not deletions.** Every generated version stays in the collection, and
  what is *searchable* after iteration ``j`` is a filter (:func:`helpers.loop.params.view_rule`):
  ``accumulate`` and ``gated`` see the human rows and generated rows with ``iteration <= j``;
  ``replace`` (Gerstgrasser et al. 2024) the human rows before the loop only, then only
  ``iteration == j``; ``replace-keep-human`` (the kit's earlier ``replace``) ``iteration == j``
  plus the human rows; ``no-feedback``, the control, the human rows only. So lineage ids always
  point at stored rows, and the notebook can ask "what did the store answer after iteration 2?"
  after the run. ``gated`` writes a version only when its gate score (which never reads the
  human reference: :mod:`helpers.loop.engine`) is not below the tavern's current version's; a
  rejected version is in the ledger (``stored: false``) but never in the store. Each context
  row's age (iteration minus its iteration; human rows count as -1) is ledgered, and
  ``metrics.csv`` has its mean per iteration (``context_age``).
* **Deterministic retrieval, so resume equals an uninterrupted run.** Retrieval in iteration
  ``i`` filters on ``iteration < i`` (through the policy view of ``i - 1``), so rows written
  earlier in the same iteration, or re-inserted by a resume, are invisible to it; the order of
  writes inside an iteration does not matter. Milvus returns ``k + 5`` candidates (HNSW with
  ``ef = 512``: exact up to 512 rows per segment, and near-exact well beyond), which are
  re-ranked by an exactly computed cosine (``math.fsum``) with ties broken by id, so float noise
  between brute-force and indexed segments cannot swap two texts. The same parameters give the
  same texts and ids on milvus-lite, the lite server and the C++ 2.3.5 server (checked).
  Each text is embedded on its own (a batch pads texts and changes the last bits of a vector),
  and each generation has its own seed derived from (run seed, iteration, tavern).
* **Searches and queries use** ``consistency_level="Strong"``: the C++ server's default may not
  yet show rows written a moment ago (docs/measured-facts.md).

Messages (the summary line of every iteration, "resuming run ...") go to the ``helpers.loop``
logger at INFO, which :func:`helpers.console.console_logger` makes visible in a notebook or a
terminal without any set-up.
"""

from helpers.console import console_logger

console_logger(__name__)
