"""Finding the fleet's Redis: REDIS_URL, else the embedded stack's published URLs.

A running embedded stack (``llmfleet up`` or ``llmfleet demo``) writes its URLs to
``stack.json`` in the data directory; an agent on the same machine joins it there.
"""

from __future__ import annotations

import json
from pathlib import Path

from schemas import ConfigError, Settings

__all__ = ["STACK_FILE", "find_redis_url"]

#: The file under LLMFLEET_DATA_DIR where the embedded stack publishes its URLs.
STACK_FILE = "stack.json"


def find_redis_url(settings: Settings) -> str:
    if settings.redis_url:
        return settings.redis_url
    path: Path = settings.resolved_data_dir / STACK_FILE
    try:
        url = json.loads(path.read_text("utf-8")).get("redis_url")
    except (OSError, ValueError):
        url = None
    if not url:
        raise ConfigError(
            f"REDIS_URL is not set and no embedded fleet is running under {path.parent}: "
            "start one with `llmfleet up`, or set REDIS_URL", key="REDIS_URL")
    return str(url)
