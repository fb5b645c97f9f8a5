"""KV-cache policies, one per file. Each is a small frozen dataclass that registers itself by its ``name``
(:mod:`streamlib.policies.registry`); this package imports every module of its folder, so a policy added as a new
file here is known everywhere (the command line, the records, the report, the figures, the tests) without editing any
other file. ``docs/adding_a_policy.md`` walks through one."""

import importlib
import pkgutil

from .base import PolicyBase, Style
from .registry import (baseline, forms, from_params, parse_policy, policy_class, policy_from_row, policy_label,
                       registered)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

# every registered policy class by its class name: from streamlib.policies import StreamingLLM, TOVA, ...
globals().update({cls.__name__: cls for cls in registered()})
from .burst import streaming_matches  # noqa: E402  (burst eviction's StreamingLLM matches)

__all__ = sorted({cls.__name__ for cls in registered()}) + [
    "PolicyBase", "Style", "baseline", "forms", "from_params", "parse_policy", "policy_class", "policy_from_row",
    "policy_label", "registered", "streaming_matches"]
