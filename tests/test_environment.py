"""The environment files agree with each other and with what is installed."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^([A-Za-z0-9_.\-\[\]]+)==([^\s;#]+)$")


def _pins(lines: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = PIN.match(line)
        assert match, f"not an exact pin: {line!r}"
        name = re.sub(r"\[.*\]", "", match.group(1)).lower().replace("_", "-")
        out[name] = match.group(2)
    return out


def requirements() -> dict[str, str]:
    return _pins((ROOT / "requirements.txt").read_text().splitlines())


def test_every_requirement_is_pinned_and_torch_is_the_cpu_pin() -> None:
    pins = requirements()
    assert len(pins) > 100  # the full lock, transitive dependencies included
    assert pins["torch"] == "2.13.0", "an unpinned torch pulls a multi-GB CUDA build (errata #1)"
    direct = _pins((ROOT / "requirements.in").read_text().splitlines())
    for name, version in direct.items():
        assert pins.get(name) == version, (
            f"requirements.in pins {name}=={version}, the lock has {pins.get(name)}"
        )


def test_environment_yml_lists_the_same_pins_as_requirements() -> None:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert _pins(pip_section) == requirements()


def test_installed_versions_match_the_lock() -> None:
    mismatched = {}
    for name, version in requirements().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            mismatched[name] = (version, "missing")
            continue
        if installed.split("+")[0] != version:
            mismatched[name] = (version, installed)
    assert not mismatched, f"the venv differs from requirements.txt (run ./kit.sh): {mismatched}"
    nodeps = _pins((ROOT / "requirements-nodeps.txt").read_text().splitlines())
    for name, version in nodeps.items():
        assert metadata.version(name) == version


def test_the_kit_kernel_runs_this_venv_python() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "jupyter", "kernelspec", "list", "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    specs = json.loads(out.stdout)["kernelspecs"]
    assert "gfl-kit" in specs, "run ./kit.sh to register the kit's kernel"
    argv0 = specs["gfl-kit"]["spec"]["argv"][0]
    assert Path(argv0).resolve() == Path(sys.executable).resolve()


def test_kit_does_not_reinstall_a_current_venv() -> None:
    if not (ROOT / ".venv" / ".kit-stamp").exists():
        import pytest

        pytest.skip("not running from the kit's own .venv")
    out = subprocess.run(
        ["bash", str(ROOT / "kit.sh"), "venv"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "installing" not in out.stderr, out.stderr


def test_the_install_compiled_umaps_numba_code() -> None:
    """`./kit.sh venv` imports umap once, so pynndescent's numba functions are compiled into
    the venv (about 20 s) during the install, not during the first main job's notebook 07."""
    if not (ROOT / ".venv" / ".kit-stamp").exists():
        import pytest

        pytest.skip("not running from the kit's own .venv")
    import pynndescent

    # written before the stamp, which kit.sh writes last: by the install, not by a test since
    stamped = (ROOT / ".venv" / ".kit-stamp").stat().st_mtime
    cache = Path(pynndescent.__file__).parent / "__pycache__"
    by_install = [f for f in cache.glob("*.nbi") if f.stat().st_mtime <= stamped]
    assert len(by_install) >= 10, f"the install left no numba cache in {cache}"


def test_kit_rejects_an_unknown_command() -> None:
    out = subprocess.run(
        ["bash", str(ROOT / "kit.sh"), "frobnicate"], capture_output=True, text=True
    )
    assert out.returncode == 2 and "unknown command" in out.stderr
