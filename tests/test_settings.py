"""Settings: defaults, every environment variable, bad values, and secrets that never show.

``Settings.from_env(environ=...)`` is fed explicit dictionaries, so these tests do not depend on
(or change) the environment pytest runs in.
"""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest

from helpers.settings import (
    BACKENDS,
    DEFAULT_CLAUDE_MODEL,
    GENERATORS,
    REPO_ROOT,
    Secret,
    Settings,
    SettingsError,
    get_settings,
)

API_KEY = "sk-ant-api03-THIS-IS-A-TEST-KEY-7f3a9c"
MILVUS_TOKEN = "root:Milvus-test-token-51d2"


def test_defaults_with_an_empty_environment() -> None:
    s = Settings.from_env(environ={})
    assert s.milvus_backend == "lite"
    assert s.milvus_uri == ""
    assert not s.milvus_token and isinstance(s.milvus_token, Secret)
    assert s.data_dir == (REPO_ROOT / "data").resolve()
    assert s.run_dir == (REPO_ROOT / "runs").resolve()
    assert s.seed == 42
    assert s.generator == "auto"
    assert s.claude_model == DEFAULT_CLAUDE_MODEL
    assert not s.anthropic_api_key and not s.has_anthropic_key
    assert s.anthropic_base_url == ""
    assert s.server_start_timeout == 60.0
    # The dataclass defaults and the environment defaults agree.
    assert Settings.from_env(environ={}) == Settings()


def test_every_variable_is_read(tmp_path: Path) -> None:
    env = {
        "GFL_MILVUS_BACKEND": "remote",
        "GFL_MILVUS_URI": "https://in01-abc.zillizcloud.com:19541",
        "GFL_MILVUS_TOKEN": MILVUS_TOKEN,
        "GFL_DATA_DIR": str(tmp_path / "d"),
        "GFL_RUN_DIR": str(tmp_path / "r"),
        "GFL_SEED": "7",
        "GFL_GENERATOR": "local",
        "GFL_CLAUDE_MODEL": "claude-test-model",
        "ANTHROPIC_API_KEY": API_KEY,
        "ANTHROPIC_BASE_URL": "http://127.0.0.1:8765",
        "GFL_SERVER_START_TIMEOUT": "15",
    }
    s = Settings.from_env(environ=env)
    assert s.milvus_backend == "remote"
    assert s.milvus_uri == "https://in01-abc.zillizcloud.com:19541"
    assert s.milvus_token.reveal() == MILVUS_TOKEN
    assert s.data_dir == tmp_path / "d"
    assert s.run_dir == tmp_path / "r"
    assert s.seed == 7
    assert s.generator == "local"
    assert s.claude_model == "claude-test-model"
    assert s.anthropic_api_key.reveal() == API_KEY and s.has_anthropic_key
    assert s.anthropic_base_url == "http://127.0.0.1:8765"
    assert s.server_start_timeout == 15.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_backend_is_accepted_case_and_space_insensitive(backend: str) -> None:
    env = {"GFL_MILVUS_BACKEND": f"  {backend.upper()} ", "GFL_MILVUS_URI": "http://h:19530"}
    assert Settings.from_env(environ=env).milvus_backend == backend


@pytest.mark.parametrize("generator", GENERATORS)
def test_each_generator_is_accepted(generator: str) -> None:
    assert Settings.from_env(environ={"GFL_GENERATOR": generator}).generator == generator


def test_blank_values_fall_back_to_defaults() -> None:
    env = {name: "   " for name in ("GFL_MILVUS_BACKEND", "GFL_SEED", "GFL_GENERATOR",
                                     "GFL_CLAUDE_MODEL", "GFL_RUN_DIR")}  # fmt: skip
    s = Settings.from_env(environ=env)
    assert (s.milvus_backend, s.seed, s.generator) == ("lite", 42, "auto")
    assert s.claude_model == DEFAULT_CLAUDE_MODEL
    assert s.run_dir == (REPO_ROOT / "runs").resolve()


def test_relative_and_home_paths_are_made_absolute(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    s = Settings.from_env(environ={"GFL_DATA_DIR": "mydata", "GFL_RUN_DIR": "~/runs"})
    assert s.data_dir == tmp_path / "mydata"
    assert s.run_dir == tmp_path / "home" / "runs"
    assert s.data_dir.is_absolute() and s.run_dir.is_absolute()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GFL_MILVUS_BACKEND", "sqlite"),
        ("GFL_MILVUS_BACKEND", "milvus-lite"),
        ("GFL_GENERATOR", "openai"),
        ("GFL_SEED", "forty-two"),
        ("GFL_SEED", "4.2"),
        ("GFL_SEED", "-1"),  # numpy's default_rng refuses negative seeds
        ("GFL_SERVER_START_TIMEOUT", "soon"),
        ("GFL_SERVER_START_TIMEOUT", "0"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as err:
        Settings.from_env(environ={name: value})
    assert name in str(err.value)
    assert value.strip().lower() in str(err.value).lower()


def test_bad_backend_message_lists_the_choices() -> None:
    with pytest.raises(SettingsError, match="GFL_MILVUS_BACKEND") as err:
        Settings.from_env(environ={"GFL_MILVUS_BACKEND": "cloud"})
    for backend in BACKENDS:
        assert backend in str(err.value)


def test_remote_without_uri_is_an_error() -> None:
    with pytest.raises(SettingsError) as err:
        Settings.from_env(environ={"GFL_MILVUS_BACKEND": "remote"})
    assert "GFL_MILVUS_URI" in str(err.value)
    assert "GFL_MILVUS_BACKEND=remote" in str(err.value)
    # Blank counts as missing.
    with pytest.raises(SettingsError, match="GFL_MILVUS_URI"):
        Settings.from_env(environ={"GFL_MILVUS_BACKEND": "remote", "GFL_MILVUS_URI": "  "})


def test_replace_checks_choices_and_converts_types(tmp_path: Path) -> None:
    s = Settings.from_env(environ={})
    t = s.replace(run_dir=str(tmp_path / "x"), anthropic_api_key=API_KEY)
    assert t.run_dir == tmp_path / "x" and isinstance(t.run_dir, Path)
    assert isinstance(t.anthropic_api_key, Secret) and t.anthropic_api_key.reveal() == API_KEY
    assert s.run_dir != t.run_dir  # frozen: the original is untouched
    with pytest.raises(SettingsError, match="milvus_backend"):
        s.replace(milvus_backend="mongo")
    with pytest.raises(SettingsError, match="generator"):
        s.replace(generator="gpt")


def test_get_settings_applies_overrides_on_top_of_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("GFL_SEED", "11")
    monkeypatch.setenv("GFL_GENERATOR", "local")
    monkeypatch.delenv("GFL_MILVUS_BACKEND", raising=False)
    s = get_settings(seed=None, generator=None)  # None means "not given" (papermill defaults)
    assert (s.seed, s.generator) == (11, "local")
    s = get_settings(seed=3, generator="claude")
    assert (s.seed, s.generator) == (3, "claude")


def _secret_settings() -> Settings:
    return Settings.from_env(
        environ={
            "GFL_MILVUS_BACKEND": "remote",
            "GFL_MILVUS_URI": "https://example.zillizcloud.com",
            "GFL_MILVUS_TOKEN": MILVUS_TOKEN,
            "ANTHROPIC_API_KEY": API_KEY,
        }
    )


def test_secrets_never_appear_in_repr_str_or_describe() -> None:
    s = _secret_settings()
    shown = [
        repr(s),
        str(s),
        f"{s}",
        json.dumps(s.describe()),
        repr(s.describe()),
        repr(dataclasses.asdict(s)),
        repr([s.anthropic_api_key, s.milvus_token]),
    ]
    for text in shown:
        assert API_KEY not in text
        assert MILVUS_TOKEN not in text
        assert "Test-token" not in text and "TEST-KEY" not in text
    described = s.describe()
    assert described["anthropic_api_key"] == "(set)"
    assert described["milvus_token"] == "(set)"
    assert Settings.from_env(environ={}).describe()["anthropic_api_key"] == "(not set)"
    # The values are still there for the code that needs them.
    assert s.anthropic_api_key.reveal() == API_KEY
    assert s.milvus_token.reveal() == MILVUS_TOKEN


def test_a_secret_shows_only_stars_through_every_formatting_path() -> None:
    """Issue 10: a ``str`` subclass printed the real key through str(), f-strings, %s and
    json.dumps. The only way out is the explicit reveal()."""
    secret = Secret(API_KEY)
    assert not isinstance(secret, str)
    shown = [
        str(secret),
        repr(secret),
        f"{secret}",
        f"{secret!s}",
        f"{secret!r}",
        f"{secret:>60}",
        "%s" % secret,  # noqa: UP031 (the path under test)
        "%r" % secret,  # noqa: UP031
        "{}".format(secret),  # noqa: UP032
        format(secret),
        str([secret]),
        str({"key": secret}),
        repr((secret,)),
    ]
    for text in shown:
        assert API_KEY not in text and "TEST-KEY" not in text
        assert "***" in text
    # Paths that would copy the value out refuse instead.
    with pytest.raises(TypeError):
        json.dumps(secret)
    with pytest.raises(TypeError):
        json.dumps({"api_key": secret})
    with pytest.raises(TypeError):
        _ = "key=" + secret  # type: ignore[operator]
    with pytest.raises(TypeError):
        "".join([secret])  # type: ignore[list-item]
    import pickle

    with pytest.raises(TypeError, match="never stored"):
        pickle.dumps(secret)
    with pytest.raises(AttributeError):
        secret._value = "changed"  # type: ignore[misc]
    # What code may do with it: test it, compare it, reveal it on purpose.
    assert secret and not Secret("") and str(Secret("")) == ""
    assert secret == Secret(API_KEY) and secret != Secret("other") and secret != API_KEY
    assert Secret(secret).reveal() == API_KEY == secret.reveal()
    with pytest.raises(TypeError):
        Secret(12345)  # type: ignore[arg-type]


def test_a_secret_in_a_log_record_shows_only_stars(caplog) -> None:
    import logging

    with caplog.at_level(logging.INFO):
        logging.getLogger("gfl.test").info(
            "calling with %s and %r", Secret(API_KEY), Secret(API_KEY)
        )
    assert API_KEY not in caplog.text and "***" in caplog.text


def test_settings_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    """Issue 16: a bad setting ends the main job (and any CLI using settings_or_exit) with the
    message alone and status 2, not a traceback."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "GFL_MILVUS_BACKEND": "bogus", "PYTHONPATH": str(REPO_ROOT)}
    env["GFL_RUN_DIR"] = str(tmp_path)
    for args in (
        ["-m", "helpers.main_job", "--only", "01"],
        ["-m", "helpers.feedback_loop", "--iterations", "1"],
        ["-c", "from helpers.settings import settings_or_exit; settings_or_exit()"],
    ):
        done = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                              cwd=REPO_ROOT, timeout=120)  # fmt: skip
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert lines == [lines[0]] and "GFL_MILVUS_BACKEND='bogus'" in lines[0], done.stderr
        assert "Traceback" not in done.stderr
    assert not list(tmp_path.iterdir())  # nothing was created before the check


def test_the_main_jobs_shared_backend_is_read_and_checked() -> None:
    env = {"GFL_MILVUS_BACKEND": "remote", "GFL_MILVUS_URI": "http://127.0.0.1:19530",
           "GFL_MILVUS_SHARED_BACKEND": "milvus"}  # fmt: skip
    assert Settings.from_env(environ=env).milvus_shared_backend == "milvus"
    for bad in ({**env, "GFL_MILVUS_SHARED_BACKEND": "lite"},
                {"GFL_MILVUS_SHARED_BACKEND": "milvus"}):  # fmt: skip
        with pytest.raises(SettingsError, match="GFL_MILVUS_SHARED_BACKEND"):
            Settings.from_env(environ=bad)


def test_describe_lists_every_setting() -> None:
    described = Settings.from_env(environ={}).describe()
    assert set(described) == {f.name for f in dataclasses.fields(Settings)}
    assert described["seed"] == 42 and described["milvus_backend"] == "lite"
    json.dumps(described)  # printable as JSON: no Path objects or other strangers


_ENV_NAMES = {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"}


def _environment_reads(path: Path) -> list[str]:
    """Every use of os.environ / os.getenv (attribute, bare name or ``from os import``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in _ENV_NAMES:
            hits.append(f"{path.name}:{node.lineno} .{node.attr}")
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            hits += [f"{path.name}:{node.lineno} import {a.name}" for a in node.names
                     if a.name in _ENV_NAMES or a.name == "*"]  # fmt: skip
    return hits


def test_only_settings_reads_the_environment() -> None:
    helpers = REPO_ROOT / "helpers"
    files = sorted(helpers.rglob("*.py"))
    assert len(files) >= 5
    # The detector works: it finds the one place that is allowed to read the environment.
    assert _environment_reads(helpers / "settings.py")
    offenders = {
        str(f.relative_to(REPO_ROOT)): hits
        for f in files
        if f.name != "settings.py" and (hits := _environment_reads(f))
    }
    assert not offenders, f"only helpers/settings.py may read the environment: {offenders}"
