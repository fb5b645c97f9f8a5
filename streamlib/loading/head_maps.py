"""The retrieval-score maps shipped beside the packaged models' cards (``assets/<model>/head_map.json``, made by
``scripts/head_map.py``): which kv heads retrieve, for HeadSplit to keep whole."""

from __future__ import annotations

import json
from pathlib import Path

import torch

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def head_map(model: str) -> torch.Tensor | None:
    """The shipped retrieval scores of ``model`` (layers x kv heads), or None when it has no map."""
    path = ASSETS / model / "head_map.json"
    if not path.is_file():
        return None
    return torch.tensor(json.loads(path.read_text())["scores"])
