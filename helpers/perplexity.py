"""Perplexity of texts under the frozen local SmolLM2 (Shumailov et al.'s tails).

``PPL(x) = exp(-(1/N) sum_i log p(x_i | prefix, x_<i))`` over the N tokens of the text.

How, with xllamacpp: its llama.cpp server returns, for every *generated* token, the log
probability the model gave it before sampling (``n_probs`` with ``post_sampling_probs`` off),
but it has no prompt log-probabilities (no ``echo``) and no tokenizer endpoint. So the text is
made the only possible output: the text is tokenized here with the model's own BPE vocabulary
and merges (read from the GGUF file, fed to the ``tokenizers`` library with the ``smollm``
pre-tokenizer: single digits, then GPT-2 byte-level), and a grammar of token ids
(``root ::= <[id1]> <[id2]> ...``) forces exactly those tokens. The grammar only masks the
sampler; the returned log probability of each forced token is the model's unconstrained one.
The tokens are checked to decode back to the text, and the server's own text must match it.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

DEFAULT_PREFIX = "A description of a tavern in Middle-earth:\n"

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
            11: "<q", 12: "<d"}  # fmt: skip
_STRING, _ARRAY = 8, 9


class PerplexityError(RuntimeError):
    """The text could not be scored; the message says why."""


def _read(fh: BinaryIO, fmt: str) -> Any:
    return struct.unpack(fmt, fh.read(struct.calcsize(fmt)))[0]


def _value(fh: BinaryIO, kind: int) -> Any:
    if kind == _STRING:
        return fh.read(_read(fh, "<Q")).decode("utf-8")
    if kind == _ARRAY:
        inner, n = _read(fh, "<I"), _read(fh, "<Q")
        return [_value(fh, inner) for _ in range(n)]
    return _read(fh, _SCALARS[kind])


def gguf_metadata(path: Path | str, keys: Sequence[str]) -> dict[str, Any]:
    """The requested key/value pairs of a GGUF file's header (format version 2 or 3: magic,
    version, tensor count, key/value count, then typed key/value pairs)."""
    wanted, out = set(keys), {}
    with open(path, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise PerplexityError(f"{path} is not a GGUF file.")
        if _read(fh, "<I") not in (2, 3):
            raise PerplexityError(f"{path}: unsupported GGUF version.")
        _read(fh, "<Q")
        for _ in range(_read(fh, "<Q")):
            key = _value(fh, _STRING)
            value = _value(fh, _read(fh, "<I"))
            if key in wanted:
                out[key] = value
                if len(out) == len(wanted):
                    break
    return out


@functools.lru_cache(maxsize=2)
def gguf_tokenizer(path: str) -> Any:
    """A ``tokenizers.Tokenizer`` equal to the GGUF model's (byte-level BPE, ``smollm``
    pre-tokenizer). Refuses other tokenizer kinds rather than tokenizing wrongly."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    meta = gguf_metadata(path, ["tokenizer.ggml.model", "tokenizer.ggml.pre",
                                "tokenizer.ggml.tokens", "tokenizer.ggml.merges"])  # fmt: skip
    if meta.get("tokenizer.ggml.model") != "gpt2" or meta.get("tokenizer.ggml.pre") != "smollm":
        raise PerplexityError(
            f"{Path(path).name}: tokenizer {meta.get('tokenizer.ggml.model')}/"
            f"{meta.get('tokenizer.ggml.pre')} is not supported (only gpt2/smollm)."
        )
    vocab = {tok: i for i, tok in enumerate(meta["tokenizer.ggml.tokens"])}
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )  # fmt: skip
    tok.decoder = decoders.ByteLevel()
    return tok


def token_logprobs(
    text: str, *, prefix: str = DEFAULT_PREFIX, generator: Any = None, server: Any = None
) -> list[float]:
    """Log probability of each token of ``text`` after ``prefix`` under the local model
    (``generator``: a :class:`helpers.generators.LocalGenerator`; default a new one; ``server``:
    one of its workers' llama.cpp servers, default its first)."""
    if not text.strip():
        raise PerplexityError("An empty text has no perplexity.")
    if generator is None:
        from helpers.generators import LocalGenerator

        generator = LocalGenerator()
    tokenizer = gguf_tokenizer(str(generator.model_path))
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    if tokenizer.decode(ids) != text:
        raise PerplexityError("The text does not survive tokenization; it cannot be scored.")
    request = {
        "prompt": prefix,
        "n_predict": len(ids),
        "temperature": 0.0,
        "grammar": "root ::= " + " ".join(f"<[{i}]>" for i in ids),
        "n_probs": 1,
        "post_sampling_probs": False,
        "cache_prompt": False,
        "seed": 0,
    }
    result = (server or generator._server).handle_completions(request)
    try:
        choice = result["choices"][0]
        content = choice["logprobs"]["content"]
    except (KeyError, IndexError, TypeError) as exc:
        raise PerplexityError(
            f"llama.cpp gave no token log probabilities: {result!r:.300}"
        ) from exc
    if choice.get("text") != text or [c["id"] for c in content] != ids:
        raise PerplexityError("llama.cpp did not follow the forced tokens; no perplexity.")
    return [float(c["logprob"]) for c in content]


def perplexity(
    text: str, *, prefix: str = DEFAULT_PREFIX, generator: Any = None, server: Any = None
) -> float:
    """``exp(-mean log p)`` of the text's tokens after ``prefix`` (module docstring)."""
    logprobs = token_logprobs(text, prefix=prefix, generator=generator, server=server)
    return math.exp(-sum(logprobs) / len(logprobs))
