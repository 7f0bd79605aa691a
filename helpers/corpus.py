"""A real-text corpus that ships offline: first paragraphs of the docstrings of installed packages.

Notebook 03 needs at least 10,000 embeddings of *real* text (random vectors have no cluster
structure, so an index behaves differently on them). Every machine that runs the kit already
has such a corpus on disk: the docstrings of numpy, pandas, torch... . We read them with
:mod:`ast` (nothing is imported or executed), keep the first paragraph, de-duplicate, filter
to 5-200 words, de-duplicate (ignoring case), sort, and sample with a seed. With the pinned packages of ``requirements.txt``
the same seed gives the same corpus on any machine.

* :func:`docstring_corpus` — the texts;
* :func:`embed_corpus` — their all-MiniLM-L6-v2 embeddings (float32, unit rows), cached as ``.npy``;
* :func:`split_queries` — held-out query vectors that are *other* docstrings, not stored ones.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.metadata
import importlib.util
import logging
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# Harvest order. Fixed, so the pool never depends on the order the filesystem lists things in.
# All are pinned in requirements.txt (directly or as dependencies). The cheap, varied ones come
# first: the harvest stops after the package that makes the pool big enough.
DOCSTRING_PACKAGES: tuple[str, ...] = (
    "numpy",
    "pandas",
    "matplotlib",
    "sklearn",
    "networkx",
    "torch",
    "transformers",
    "sympy",
    "scipy",
    "IPython",
    "tornado",
    "jinja2",
    "requests",
)

# Folders whose docstrings are mostly "Test that ..." or copies of other projects.
SKIP_DIRS = frozenset({"tests", "test", "testing", "_vendor", "vendored", "_vendored", "externals"})

MIN_WORDS = 5
MAX_WORDS = 200
# The pool is at least this many times the requested corpus, so the sample is a real sample.
POOL_FACTOR = 2

EMBED_MODEL_NAME = "all-MiniLM-L6-v2"
EMBED_DIM = 384
EMBED_BATCH_SIZE = 16  # fastest on 2 CPU cores, 128 is ~20% slower (docs/benchmarks.md)

_DOC_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
# First paragraphs that are a section header or a doctest, not prose.
_NOT_PROSE = ("---", "===", ">>>", "~~~", "***")


class CorpusError(RuntimeError):
    """The corpus cannot be built as asked (too few docstrings, missing packages...)."""


def first_paragraph(docstring: str) -> str:
    """The first paragraph of a cleaned docstring, on one line with single spaces."""
    paragraph = docstring.strip().split("\n\n", 1)[0]
    return " ".join(paragraph.split())


def keep_text(text: str, min_words: int = MIN_WORDS, max_words: int = MAX_WORDS) -> bool:
    """Is this paragraph prose we want: ``min_words``-``max_words`` words, starting with a
    letter, digit, backtick or quote, and not a section underline or a doctest?"""
    if not text:
        return False
    n_words = len(text.split())
    if not min_words <= n_words <= max_words:
        return False
    if not (text[0].isalnum() or text[0] in "`'\"*:"):
        return False
    return not any(marker in text for marker in _NOT_PROSE)


def package_root(package: str) -> Path | None:
    """The folder of an installed package, found without importing it (None when absent)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def package_version(package: str) -> str:
    """The installed distribution version of an import name (``sklearn`` -> scikit-learn's)."""
    dists = importlib.metadata.packages_distributions().get(package, [package])
    for dist in dists:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


def _python_files(root: Path) -> list[Path]:
    files = [
        path
        for path in root.rglob("*.py")
        if not SKIP_DIRS.intersection(path.relative_to(root).parts[:-1])
    ]
    # Sort by the path inside the package, so the install location does not matter.
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def docstrings_in_source(source: str) -> list[str]:
    """First paragraphs of the module, class and function docstrings of one source file, in
    :func:`ast.walk` order, unfiltered. A file that does not parse gives an empty list."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SyntaxWarning: invalid escape sequence, ...
            tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    out = []
    for node in ast.walk(tree):
        if isinstance(node, _DOC_NODES):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                out.append(first_paragraph(doc))
    return out


@functools.cache
def harvest_package(package: str) -> tuple[str, ...]:
    """Kept first paragraphs of one installed package's docstrings, de-duplicated, in a fixed
    order (sorted file paths, then :func:`ast.walk` order). Empty if the package is absent.
    Cached per process: torch alone takes about 12 s to parse."""
    root = package_root(package)
    if root is None:
        log.warning("package %s is not installed; the docstring corpus will differ", package)
        return ()
    seen: dict[str, None] = {}
    for path in _python_files(root):
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        for text in docstrings_in_source(source):
            if keep_text(text):
                seen.setdefault(text, None)
    return tuple(seen)


def docstring_pool(
    min_size: int, packages: Sequence[str] = DOCSTRING_PACKAGES
) -> tuple[list[str], list[str]]:
    """Harvest ``packages`` in order until at least ``min_size`` distinct texts are found.

    Returns ``(sorted pool, packages used)``. Stopping only after whole packages keeps the pool
    deterministic. Raises :class:`CorpusError` if all packages together are not enough.
    """
    pool: set[str] = set()
    used: list[str] = []
    for package in packages:
        texts = harvest_package(package)
        if texts:
            used.append(package)
            pool.update(texts)
        if len({text.lower() for text in pool}) >= min_size:
            break
    # The model is uncased: "Return X." and "return x." embed to the same vector, and exact
    # ties make "brute force gives recall 1.0" untrue. Keep one text per lower-cased form.
    by_key: dict[str, str] = {}
    for text in sorted(pool):
        by_key.setdefault(text.lower(), text)
    unique = sorted(by_key.values())
    if len(unique) < min_size:
        raise CorpusError(
            f"only {len(unique)} distinct docstrings in {', '.join(packages)}; "
            f"{min_size} needed. Ask for fewer texts or install the pinned requirements."
        )
    return unique, used


def corpus_sources(
    min_texts: int = 10_000, packages: Sequence[str] = DOCSTRING_PACKAGES
) -> dict[str, str]:
    """Which packages (and versions) :func:`docstring_corpus` draws ``min_texts`` texts from."""
    _, used = docstring_pool(min_texts * POOL_FACTOR, packages)
    return {package: package_version(package) for package in used}


def docstring_corpus(
    min_texts: int = 10_000,
    seed: int | None = None,
    packages: Sequence[str] = DOCSTRING_PACKAGES,
) -> list[str]:
    """``min_texts`` distinct docstring paragraphs (5-200 words) sampled with ``seed``.

    The pool is harvested from ``packages`` in their fixed order until it holds at least
    ``POOL_FACTOR * min_texts`` texts, de-duplicated ignoring case (the model is uncased),
    sorted, and sampled without replacement with
    ``numpy.random.default_rng(seed)``: the same seed and ``min_texts`` give the same list on
    any machine with the same pinned packages. ``seed=None`` takes the kit's seed from settings.
    Nothing is imported: files are parsed with :mod:`ast`.
    """
    if min_texts < 1:
        raise ValueError(f"min_texts must be positive, got {min_texts}")
    if seed is None:
        from helpers.settings import get_settings

        seed = get_settings().seed
    pool, _ = docstring_pool(min_texts * POOL_FACTOR, packages)
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(pool), size=min_texts, replace=False)
    return [pool[i] for i in picked]


def texts_key(texts: Sequence[str], model_name: str = EMBED_MODEL_NAME) -> str:
    """A short hash naming one list of texts embedded by one model (the cache key)."""
    digest = hashlib.sha256(model_name.encode("utf-8"))
    for text in texts:
        digest.update(b"\x00")
        digest.update(text.encode("utf-8"))
    return digest.hexdigest()[:16]


def load_embedding_model(device: str = "cpu"):
    """The kit's all-MiniLM-L6-v2 (``helpers.embeddings``), as a SentenceTransformer."""
    from helpers.embeddings import get_embedding_function

    return get_embedding_function().model


def embed_corpus(
    texts: Sequence[str],
    cache_dir: Path | str | None,
    *,
    model=None,
    batch_size: int = EMBED_BATCH_SIZE,
    show_progress: bool = True,
) -> np.ndarray:
    """Embed ``texts`` with all-MiniLM-L6-v2: float32, unit-length rows, shape ``(n, 384)``.

    The result is cached as ``<cache_dir>/docstrings-<hash>.npy``, the hash taken over the model
    name and the texts, so a changed corpus never reads a stale file. Use
    ``settings.run_dir / "cache"``. ``cache_dir=None`` disables the cache. ``model`` may be a
    loaded SentenceTransformer, to avoid loading it again (about 6 s).
    """
    texts = list(texts)
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"docstrings-{texts_key(texts)}.npy"
        if cache_file.exists():
            vectors = np.load(cache_file)
            if vectors.shape == (len(texts), EMBED_DIM):
                log.info("embeddings read from cache %s", cache_file)
                return vectors
            log.warning("ignoring cache %s with shape %s", cache_file, vectors.shape)

    if model is None:
        model = load_embedding_model()
    start = time.perf_counter()
    vectors = model.encode(
        texts,
        batch_size=batch_size,
        convert_to_numpy=True,
        normalize_embeddings=True,
        show_progress_bar=show_progress,
    )
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    elapsed = time.perf_counter() - start
    log.info(
        "embedded %d texts in %.1f s (%.0f/s)", len(texts), elapsed, len(texts) / max(elapsed, 1e-9)
    )

    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp.npy")
        np.save(tmp, vectors)
        tmp.replace(cache_file)  # atomic: an interrupted run never leaves half a file
    return vectors


def split_queries(vectors: np.ndarray, n_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split embedded docstrings into ``(corpus_vectors, query_vectors)``.

    ``n_queries`` rows chosen with ``seed`` become held-out queries: they are *other*
    docstrings, never stored in the collection, so no query finds itself at distance 0.
    The corpus keeps the remaining rows in their original order.
    """
    n = len(vectors)
    if not 0 < n_queries < n:
        raise ValueError(f"n_queries must be between 1 and {n - 1}, got {n_queries}")
    rng = np.random.default_rng(seed)
    is_query = np.zeros(n, dtype=bool)
    is_query[rng.choice(n, size=n_queries, replace=False)] = True
    return vectors[~is_query], vectors[is_query]
