"""The head maps shipped beside the packaged models' cards, made by ``scripts/head_map.py``: which kv heads retrieve,
for HeadSplit to keep whole: retrieval scores (``assets/<model>/head_map.json``) or DuoAttention's trained gates
(``head_gates.json``)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

ASSETS = Path(__file__).resolve().parents[1] / "assets"
MAP_FILES = {"retrieval": "head_map.json", "gates": "head_gates.json"}


def head_map(model: str, method: str = "retrieval") -> torch.Tensor | None:
    """The shipped map of ``model`` made by ``method`` (``retrieval`` or ``gates``; layers x kv heads, higher: keep
    whole), or None when it has none."""
    if method not in MAP_FILES:
        raise ValueError(f"method must be one of {sorted(MAP_FILES)}; got {method!r}")
    path = ASSETS / model / MAP_FILES[method]
    if not path.is_file():
        return None
    return torch.tensor(json.loads(path.read_text())["scores"])
