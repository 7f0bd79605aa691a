"""Fixtures for tests that drive the real ``anthropic`` SDK against :mod:`tests.fake_anthropic`.

Load them in a test module with ``pytest_plugins = ["tests.fixtures_anthropic"]``.

* ``fake_anthropic``: the fake Messages API (one server per session, reset before each test:
  empty script, default answer, no recorded requests).
* ``claude``: a factory for :class:`helpers.generators.ClaudeGenerator` pointed at it, with a
  fake key (:data:`tests.fake_anthropic.FAKE_KEY`), a test model name, few retries and a short timeout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from helpers.generators import ClaudeGenerator
from tests.fake_anthropic import FAKE_KEY, TEST_MODEL, FakeAnthropic


@pytest.fixture(scope="session")
def _fake_anthropic_server() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as server:
        yield server


@pytest.fixture
def fake_anthropic(_fake_anthropic_server: FakeAnthropic) -> FakeAnthropic:
    _fake_anthropic_server.reset()
    return _fake_anthropic_server


@pytest.fixture
def claude(fake_anthropic: FakeAnthropic) -> Callable[..., ClaudeGenerator]:
    def make(**options: Any) -> ClaudeGenerator:
        options.setdefault("api_key", FAKE_KEY)
        options.setdefault("model", TEST_MODEL)
        options.setdefault("base_url", fake_anthropic.base_url)
        options.setdefault("max_retries", 2)
        options.setdefault("timeout", 5.0)
        return ClaudeGenerator(**options)

    return make
