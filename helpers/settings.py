"""The one place that reads the environment.

Every other module takes a :class:`Settings` (or calls :func:`get_settings`), so a notebook,
a test and the command line all see the same configuration, and a secret is read in exactly
one place where we can make sure it is never printed.
"""

from __future__ import annotations

import dataclasses
import hmac
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

BACKENDS = ("lite", "lite-server", "milvus", "remote")
# Backends whose server the main job can start once and share with every notebook by URI.
SHAREABLE_BACKENDS = ("lite-server", "milvus")
GENERATORS = ("auto", "claude", "local")

# The article's claude-3-opus-20240229 is retired; this is a current model and can be
# overridden with GFL_CLAUDE_MODEL without touching code.
DEFAULT_CLAUDE_MODEL = "claude-sonnet-5-5"


class SettingsError(ValueError):
    """A setting has a value we cannot use; the message names the variable and the fix."""


class Secret:
    """A secret value that cannot leak by accident.

    Not a ``str``: ``str()``, ``repr()``, f-strings, ``%s`` and ``format`` all show ``***``,
    ``json.dumps`` and string concatenation refuse it, and pickling is refused (a secret is never
    stored). The only way to the value is the explicit :meth:`reveal`.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str | Secret = "") -> None:
        raw = value.reveal() if isinstance(value, Secret) else value
        if not isinstance(raw, str):
            raise TypeError(f"a Secret holds a str, not {type(raw).__name__}")
        object.__setattr__(self, "_value", raw)

    def reveal(self) -> str:
        """The real value, for the one call that needs it (a client constructor)."""
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    def __str__(self) -> str:
        return "***" if self._value else ""

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("a Secret cannot be changed")

    def __copy__(self) -> Secret:
        return self  # immutable: dataclasses.asdict and copy.deepcopy share it

    def __deepcopy__(self, memo: dict) -> Secret:
        return self

    def __reduce__(self) -> tuple:
        raise TypeError("a Secret is not pickled: secrets are never stored")


def _env(name: str, default: str, environ: dict[str, str]) -> str:
    value = environ.get(name, "")
    return value.strip() if value.strip() else default


def _choice(name: str, default: str, allowed: tuple[str, ...], environ: dict[str, str]) -> str:
    value = _env(name, default, environ).lower()
    if value not in allowed:
        raise SettingsError(
            f"{name}={value!r} is not valid; use one of: {', '.join(allowed)} (default {default!r})."
        )
    return value


def _int(name: str, default: int, environ: dict[str, str], minimum: int = 0) -> int:
    raw = _env(name, str(default), environ)
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(
            f"{name}={raw!r} is not an integer; unset it or give a whole number."
        ) from None
    if value < minimum:  # numpy's default_rng rejects a negative seed; a timeout must be > 0
        raise SettingsError(f"{name}={raw!r} is too small; give a whole number >= {minimum}.")
    return value


@dataclass(frozen=True)
class Settings:
    """Configuration of the kit. Build it with :meth:`from_env`; override fields with
    :meth:`replace` in tests and notebooks (papermill parameters end up here)."""

    milvus_backend: str = "lite"
    milvus_uri: str = ""
    # Set by the main job for its notebooks: the local backend it started once and shares by
    # GFL_MILVUS_URI (notebooks then connect instead of starting and stopping their own).
    milvus_shared_backend: str = ""
    milvus_token: Secret = field(default_factory=lambda: Secret(""), repr=False)
    data_dir: Path = REPO_ROOT / "data"
    run_dir: Path = REPO_ROOT / "runs"
    seed: int = 42
    generator: str = "auto"
    claude_model: str = DEFAULT_CLAUDE_MODEL
    anthropic_api_key: Secret = field(default_factory=lambda: Secret(""), repr=False)
    anthropic_base_url: str = ""
    server_start_timeout: float = 60.0
    claude_concurrency: int = 8  # Claude requests in flight at once in generate_many
    # llama.cpp threads of each offline model instance. Part of what fixes a text: a loop-sized
    # prompt gives another text with 2 threads than with 1 (docs/benchmarks.md section 9).
    local_threads: int = 1
    # Offline model instances generate_many runs side by side (each text alone in its context,
    # so the texts do not depend on it): 2 x 1 thread made 1.29x the texts per second of one
    # 2-thread instance on two cores (docs/benchmarks.md section 9).
    local_workers: int = 2

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if environ is None else environ)
        backend = _choice("GFL_MILVUS_BACKEND", "lite", BACKENDS, env)
        uri = _env("GFL_MILVUS_URI", "", env)
        if backend == "remote" and not uri:
            raise SettingsError(
                "GFL_MILVUS_BACKEND=remote needs GFL_MILVUS_URI, for example "
                "http://my-milvus:19530 or https://<cluster>.zillizcloud.com "
                "(and GFL_MILVUS_TOKEN for Zilliz Cloud or an authenticated cluster)."
            )
        shared = _env("GFL_MILVUS_SHARED_BACKEND", "", env).lower()
        if shared and (shared not in SHAREABLE_BACKENDS or not uri):
            raise SettingsError(
                f"GFL_MILVUS_SHARED_BACKEND={shared!r} is set by the main job for its notebooks: "
                f"it must be one of {', '.join(SHAREABLE_BACKENDS)} with GFL_MILVUS_URI set; "
                "unset it to let each notebook start its own server."
            )
        return cls(
            milvus_backend=backend,
            milvus_uri=uri,
            milvus_shared_backend=shared,
            milvus_token=Secret(_env("GFL_MILVUS_TOKEN", "", env)),
            data_dir=Path(_env("GFL_DATA_DIR", str(REPO_ROOT / "data"), env))
            .expanduser()
            .resolve(),
            run_dir=Path(_env("GFL_RUN_DIR", str(REPO_ROOT / "runs"), env)).expanduser().resolve(),
            seed=_int("GFL_SEED", 42, env),
            generator=_choice("GFL_GENERATOR", "auto", GENERATORS, env),
            claude_model=_env("GFL_CLAUDE_MODEL", DEFAULT_CLAUDE_MODEL, env),
            anthropic_api_key=Secret(_env("ANTHROPIC_API_KEY", "", env)),
            anthropic_base_url=_env("ANTHROPIC_BASE_URL", "", env),
            server_start_timeout=float(_int("GFL_SERVER_START_TIMEOUT", 60, env, minimum=1)),
            claude_concurrency=_int("GFL_CLAUDE_CONCURRENCY", 8, env, minimum=1),
            local_threads=_int("GFL_LOCAL_THREADS", 1, env, minimum=1),
            local_workers=_int("GFL_LOCAL_WORKERS", 2, env, minimum=1),
        )

    def replace(self, **changes: object) -> Settings:
        """A copy with some fields changed; paths given as strings become Paths."""
        for key in ("data_dir", "run_dir"):
            if key in changes and not isinstance(changes[key], Path):
                changes[key] = Path(str(changes[key])).expanduser().resolve()
        for key in ("milvus_token", "anthropic_api_key"):
            if key in changes and not isinstance(changes[key], Secret):
                changes[key] = Secret(changes[key] or "")  # type: ignore[arg-type]
        if "milvus_backend" in changes and changes["milvus_backend"] not in BACKENDS:
            raise SettingsError(
                f"milvus_backend={changes['milvus_backend']!r}; use one of: {', '.join(BACKENDS)}."
            )
        if "generator" in changes and changes["generator"] not in GENERATORS:
            raise SettingsError(
                f"generator={changes['generator']!r}; use one of: {', '.join(GENERATORS)}."
            )
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @property
    def has_anthropic_key(self) -> bool:
        return bool(self.anthropic_api_key)

    def describe(self) -> dict[str, object]:
        """What a notebook may print: every setting, secrets shown only as set / not set."""
        out: dict[str, object] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Secret):
                out[f.name] = "(set)" if value else "(not set)"
            elif isinstance(value, Path):
                out[f.name] = show_path(value)
            else:
                out[f.name] = value
        return out


def show_path(path: Path) -> str:
    """Paths inside the repository are shown relative to it, so outputs read the same anywhere
    (and a committed notebook shows no machine's folder names)."""
    try:
        return str(path.relative_to(REPO_ROOT)) + "/"
    except ValueError:
        return str(path)


def get_settings(**overrides: object) -> Settings:
    """Settings from the environment, with notebook/papermill overrides applied on top."""
    settings = Settings.from_env()
    clean = {k: v for k, v in overrides.items() if v is not None}
    return settings.replace(**clean) if clean else settings


def settings_or_exit(**overrides: object) -> Settings:
    """:func:`get_settings` for a command-line entry point: a bad setting prints its one-line
    message (which names the variable and the fix) to stderr and exits with status 2, the
    usage-error status of argparse, instead of a traceback."""
    try:
        return get_settings(**overrides)
    except SettingsError as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(2) from None


def child_environment(**extra: str) -> dict[str, str]:
    """This process's environment plus ``extra``, for a child process that needs more."""
    env = dict(os.environ)
    env.update(extra)
    return env


@contextmanager
def exported(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the child processes started inside the block (the main
    job's notebook kernels), and restore the previous values afterwards."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
