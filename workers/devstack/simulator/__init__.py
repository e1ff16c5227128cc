"""A local HTTP stand-in for LLM providers, for tests, the demo and benchmarks.

It speaks the OpenAI (chat completions, embeddings, models) and Anthropic
Messages wire formats, with configurable latency and seeded failure injection,
and reports exact, deterministic token usage, so the fleet's retries, fallback
and cost accounting can be exercised without a network or a bill. Requests are
validated as the real services validate them; answers include tool calls,
structured output (optionally malformed, at a seeded rate), and streams in each
format's server-sent events, with images counted by each provider's rule.
Per-model quotas (requests and tokens per minute) are enforced as providers
enforce them: a 429 with Retry-After and the provider's rate-limit headers.
"""

from ._app import create_app
from ._config import SimulatorConfig
from ._server import SimulatorThread, run_simulator
from ._text import count_prompt_tokens, make_reply

__all__ = [
    "SimulatorConfig",
    "SimulatorThread",
    "count_prompt_tokens",
    "create_app",
    "make_reply",
    "run_simulator",
]
