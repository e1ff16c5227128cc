"""A provider's failure, named: HTTP status and body mapped to the ``schemas.errors``
tree, ``Retry-After`` read, secrets masked. Providers raise what this module decides;
the pipeline decides what to do about it."""

from __future__ import annotations

import email.utils
import re
import time

from schemas import (
    ContextLengthError,
    ModelNotFoundError,
    ProviderAuthError,
    ProviderBadRequestError,
    ProviderError,
    ProviderOverloadedError,
    ProviderServerError,
    RateLimitError,
)

__all__ = ["body_text", "error_for_status", "parse_retry_after", "redact"]

#: (A fleet key's own limit, ``key-<12 hex>``, names the key's public id: not masked.)
_KEY_LIKE = re.compile(r"\b(sk|pk|key)-(?![0-9a-f]{12}\b)[A-Za-z0-9_\-]{6,}")


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """``text`` with every known secret and anything shaped like an API key masked."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _KEY_LIKE.sub(lambda m: m.group(1) + "-***", text)


_CONTEXT_HINTS = ("context_length", "context length", "prompt is too long", "too many tokens")


_TAGS = re.compile(r"<[^>]*>")


def body_text(content: bytes) -> str:
    """An error body as a short line of text: an HTML page (a proxy's, a load balancer's)
    without its tags, white space folded."""
    text = content.decode("utf-8", "replace")
    if "<" in text and ">" in text:
        text = _TAGS.sub(" ", text)
    return " ".join(text.split())[:300]


def error_for_status(status: int, message: str, code: str | None = None) -> type[ProviderError]:
    """The error class for an HTTP status first, and within a status the provider's own
    message and code: a proxy's HTML 429 page is a rate limit, not a server error."""
    text = f"{code or ''} {message}".lower()
    if status == 429:
        return RateLimitError
    if status in (503, 529):
        return ProviderOverloadedError
    if status >= 500 or status in (408, 409):
        return ProviderServerError
    if status in (401, 403):
        return ProviderAuthError
    if status == 404 or "model_not_found" in text:
        return ModelNotFoundError
    if status == 413 or any(hint in text for hint in _CONTEXT_HINTS):
        return ContextLengthError
    return ProviderBadRequestError


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """A Retry-After header in seconds: delta-seconds or an HTTP date. None when absent
    or unreadable; never negative."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
