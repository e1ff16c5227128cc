"""A local HTTP stand-in for LLM providers, for tests, the demo and benchmarks.

It speaks the OpenAI (chat completions, embeddings, models) and Anthropic
Messages wire formats, with configurable latency and seeded failure injection,
and reports exact, deterministic token usage, so the fleet's retries, fallback
and cost accounting can be exercised without a network or a bill.
"""

from ._app import create_app
from ._config import SimulatorConfig
from ._server import SimulatorThread, run_simulator
from ._text import count_prompt_tokens

__all__ = [
    "SimulatorConfig",
    "SimulatorThread",
    "count_prompt_tokens",
    "create_app",
    "run_simulator",
]
