"""With ANTHROPIC_API_KEY set, the same notebooks use Claude, with no code change.

The real anthropic SDK in the notebook's kernel talks to the fake Messages API of
tests/fake_anthropic.py (through ANTHROPIC_BASE_URL), so the whole path from settings to
executed notebook is real except the remote service.
"""

from __future__ import annotations

import pytest

from tests.fake_anthropic import FAKE_KEY, ok
from tests.notebook_runner import all_text, execute

pytest_plugins = ["tests.fixtures_anthropic"]
pytestmark = pytest.mark.slow

ANSWER = (
    "The Prancing Pony is a busy old inn in Bree. Its landlord keeps a good fire and a full cellar."
)


def test_04_uses_claude_when_a_key_is_set_and_never_shows_the_key(
    tmp_path, fake_anthropic, monkeypatch
) -> None:
    fake_anthropic.set_default(ok(ANSWER, input_tokens=40, output_tokens=25))
    monkeypatch.setenv("ANTHROPIC_API_KEY", FAKE_KEY)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake_anthropic.base_url)
    monkeypatch.setenv("GFL_GENERATOR", "auto")

    nb = execute("04_generate_and_insert.ipynb", tmp_path, N_TAVERNS=2)
    text = all_text(nb)

    assert "generator: claude" in text and "ANTHROPIC_API_KEY is set" in text
    assert "rows upserted: 2" in text
    requests = fake_anthropic.message_requests
    assert len(requests) == 3  # the single example, then the two taverns
    assert all(
        r.json["messages"][0]["content"].startswith("Write a vivid description") for r in requests
    )
    assert "tavern named The Prancing Pony" in requests[0].json["messages"][0]["content"]

    # The key went to the API (the SDK sends it as a header) and nowhere else.
    assert any(FAKE_KEY in " ".join(r.headers.values()) for r in requests)
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.suffix in {".ipynb", ".json", ".jsonl", ".csv", ".log", ".txt"}:
            assert FAKE_KEY not in path.read_text(errors="replace"), (
                f"the API key leaked into {path}"
            )
