"""Text generators: Claude through the official SDK, or SmolLM2 offline through llama.cpp.

Every notebook and the feedback loop talk to one small interface, :class:`Generator`::

    gen = make_generator(settings)                     # logs one line: which generator and why
    g = generate_description(gen, "The Prancing Pony", "Bree", "Aragorn")
    g.text, g.input_tokens, g.output_tokens, g.latency_s
    gens = gen.generate_many([GenerationRequest(prompt, max_tokens=230, temperature=0.0, seed=42)])
    gen.usage.summary()                                # what the run cost so far

Modules: :mod:`~helpers.generators.base` (Generation, GenerationRequest, the interface, errors,
TokenLedger, trimming, the article's prompt), :mod:`~helpers.generators.claude`
(:class:`ClaudeGenerator`, concurrent ``generate_many``), :mod:`~helpers.generators.local`
(:class:`LocalGenerator`, SmolLM2 via xllamacpp), :mod:`~helpers.generators.choose`
(:func:`make_generator`). This package re-exports their public names.

Two things differ from the article (2024), on purpose:

* Temperature: the pinned SDK's API version has no ``temperature`` for Claude (see
  :mod:`helpers.generators.claude`); the local model honours temperature and seed.
* Length. The article asks for up to 1000 tokens, but its Milvus schema stores the description
  in a ``VARCHAR(3000)``: a 1000-token answer (about 4,000 characters) would not fit. Descriptions
  are capped at :data:`CLAUDE_DESCRIPTION_MAX_TOKENS` / :data:`LOCAL_DESCRIPTION_MAX_TOKENS` and a
  cut answer is trimmed back to its last full sentence.
"""

from helpers.generators.base import (
    ARTICLE_PROMPT,
    CLAUDE_DESCRIPTION_MAX_TOKENS,
    GENERATOR_KINDS,
    LOCAL_DESCRIPTION_MAX_TOKENS,
    PRICES_PER_MTOK,
    AuthenticationFailedError,
    ConnectionFailedError,
    GenerateManyError,
    Generation,
    GenerationError,
    GenerationRequest,
    Generator,
    LocalModelError,
    MalformedResponseError,
    MissingAPIKeyError,
    OverloadedError,
    RateLimitedError,
    RequestRejectedError,
    RequestTimeoutError,
    SequentialGenerateMany,
    ServerError,
    TokenLedger,
    article_prompt,
    estimate_cost,
    generate_description,
    generate_sequentially,
    scrub,
    trim_to_last_sentence,
)
from helpers.generators.choose import make_generator
from helpers.generators.claude import (
    ANTHROPIC_DEFAULT_BASE_URL,
    CLAUDE_CONCURRENCY,
    CLAUDE_MAX_RETRIES,
    CLAUDE_TIMEOUT_S,
    ClaudeGenerator,
    Throttle,
)
from helpers.generators.local import (
    SMOLLM2_FILE,
    SMOLLM2_PACKAGE,
    LocalGenerator,
    loaded_local_models,
    model_name_from_path,
    smollm2_gguf_path,
)

__all__ = [
    "ANTHROPIC_DEFAULT_BASE_URL",
    "ARTICLE_PROMPT",
    "CLAUDE_CONCURRENCY",
    "CLAUDE_DESCRIPTION_MAX_TOKENS",
    "CLAUDE_MAX_RETRIES",
    "CLAUDE_TIMEOUT_S",
    "GENERATOR_KINDS",
    "LOCAL_DESCRIPTION_MAX_TOKENS",
    "PRICES_PER_MTOK",
    "SMOLLM2_FILE",
    "SMOLLM2_PACKAGE",
    "AuthenticationFailedError",
    "ClaudeGenerator",
    "ConnectionFailedError",
    "GenerateManyError",
    "Generation",
    "GenerationError",
    "GenerationRequest",
    "Generator",
    "LocalGenerator",
    "LocalModelError",
    "MalformedResponseError",
    "MissingAPIKeyError",
    "OverloadedError",
    "RateLimitedError",
    "RequestRejectedError",
    "RequestTimeoutError",
    "SequentialGenerateMany",
    "ServerError",
    "Throttle",
    "TokenLedger",
    "article_prompt",
    "estimate_cost",
    "generate_description",
    "generate_sequentially",
    "loaded_local_models",
    "make_generator",
    "model_name_from_path",
    "scrub",
    "smollm2_gguf_path",
    "trim_to_last_sentence",
]
