"""KV-cache policies. Each is a small frozen dataclass; the cache-based ones make a transformers ``Cache``."""

import re

import pandas as pd

from .base import PolicyBase
from .burst import BurstEviction, streaming_matches
from .dense import Dense
from .h2o import H2O
from .recompute import Recompute
from .streaming_llm import StreamingLLM
from .tova import TOVA
from .window import Window

Policy = Dense | Window | StreamingLLM | Recompute | TOVA | H2O | BurstEviction

__all__ = ["Dense", "Window", "StreamingLLM", "Recompute", "TOVA", "H2O", "BurstEviction", "Policy", "PolicyBase", "from_params", "parse_policy",
           "policy_from_row", "policy_label",
           "streaming_matches"]

POLICY_FORMS = ("dense", "window:W", "streamingllm:S+W", "streamingllm:S+W:noshift", "recompute:W", "tova:B",
                "h2o:H+R", "burst:S/C:R", "burst:S/C:R:noshift",
                "any bounded form then :int8/:int4/:int2 [:rN] [:qsinks]")


def from_params(params: dict) -> Policy:
    """Rebuild a policy from ``policy.params()`` (as stored in result records and notebook parameters)."""
    kind = params.get("policy")
    # records read back through pandas hold integers as floats (252.0): take integral floats as integers
    params = {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in params.items()}
    try:
        return _from_params(kind, params)
    except KeyError as err:
        name = err.args[0]
        minimum = {"window": 1, "budget": 1}.get(name, 0)
        raise ValueError(f"policy {kind!r} needs the parameter {name} (an integer >= {minimum}); "
                         f"got only {sorted(params)}") from None


def _quant_fields(params: dict, sinks: bool = True) -> dict:
    """The quantization fields a record holds (absent or empty in records of full-precision runs)."""
    out = {k: int(params[k]) for k in ("bits", "residual") if params.get(k) is not None}
    if sinks and params.get("quantize_sinks") is not None:
        out["quantize_sinks"] = bool(params["quantize_sinks"])
    return out


def _from_params(kind, params: dict) -> Policy:
    if kind == "dense":
        return Dense()
    if kind == "window":
        return Window(params["window"], **_quant_fields(params, sinks=False))
    if kind == "streamingllm":
        return StreamingLLM(params["n_sink"], params["window"], bool(params.get("pos_shift", True)),
                            **_quant_fields(params))
    if kind == "recompute":
        return Recompute(params["window"])
    if kind == "tova":
        return TOVA(params["budget"], **_quant_fields(params, sinks=False))
    if kind == "h2o":
        return H2O(params["n_heavy"], params["n_recent"], **_quant_fields(params, sinks=False))
    if kind == "burst":
        return BurstEviction(params["n_sink"], params["capacity"], float(params["discard_ratio"]),
                             bool(params.get("pos_shift", True)), **_quant_fields(params))
    raise ValueError("policy must be one of 'dense', 'window', 'streamingllm', 'recompute', 'tova', 'h2o', 'burst'; "
                     f"got {kind!r}")


def policy_from_row(row: dict) -> Policy:
    """The policy a record row (or a row of :func:`streamlib.records.metrics_wide`) describes: its parameters, with
    the NaN a table gives a policy's missing fields read as absent."""
    params = {k: (None if v is pd.NA or (isinstance(v, float) and v != v) else v) for k, v in row.items()}
    if params.get("pos_shift") is None:
        params["pos_shift"] = True
    return from_params(params)


def policy_label(row: dict) -> str:
    """The display label of the policy a record row describes."""
    try:
        return policy_from_row(row).label()
    except (ValueError, KeyError, TypeError):
        return str(row.get("policy"))


def _quant_parts(args: list[str], sinks: bool) -> tuple[list[str], dict]:
    """Split the quantization parts off a policy string's parts: ``int8``/``int4``/``int2`` (bits), ``r64``
    (residual), ``qsinks`` (quantize the sinks too)."""
    rest, fields = [], {}
    for part in args:
        if re.fullmatch(r"int\d+", part):
            fields["bits"] = int(part[3:])
        elif re.fullmatch(r"r\d+", part) and "bits" in fields:
            fields["residual"] = int(part[1:])
        elif part == "qsinks" and sinks and "bits" in fields:
            fields["quantize_sinks"] = True
        else:
            rest.append(part)
    return rest, fields


def parse_policy(spec: str) -> Policy:
    """A policy from a short string, as the command line takes it: ``dense``, ``window:256``,
    ``streamingllm:4+252``, ``streamingllm:4+252:noshift``, ``recompute:256``, ``tova:256``, ``h2o:128+128``, or
    ``burst:4/256:0.7`` (4 sinks in 256 slots, 70 % of the rest dropped at once; ``:noshift`` keeps positions).
    The bounded caches take a quantized form after these parts: ``streamingllm:4+1020:int4`` (``int8``, ``int4``,
    ``int2``), then optionally ``r64`` (a residual of 64 tokens) and ``qsinks`` (the sinks quantized too)."""
    forms = ", ".join(POLICY_FORMS)
    if not isinstance(spec, str):
        raise ValueError(f"policy must be a string of the form {forms}; got {spec!r}")
    parts = spec.strip().lower().split(":")
    kind, args = parts[0], parts[1:]
    try:
        args, quant = _quant_parts(args, sinks=kind in ("streamingllm", "burst"))
        if quant and kind in ("dense", "recompute"):
            raise ValueError(f"{kind} takes no quantization (the bounded caches do: window, streamingllm, burst, "
                             "tova, h2o)")
        if kind == "dense" and not args:
            return Dense()
        if kind in ("window", "tova") and len(args) == 1:
            return {"window": Window, "tova": TOVA}[kind](int(args[0]), **quant)
        if kind == "recompute" and len(args) == 1:
            return Recompute(int(args[0]))
        if kind == "h2o" and len(args) == 1 and args[0].count("+") == 1:
            return H2O(*(int(x) for x in args[0].split("+")), **quant)
        if kind == "streamingllm" and len(args) in (1, 2) and args[0].count("+") == 1:
            if len(args) == 2 and args[1] not in ("shift", "noshift"):
                raise ValueError(f"the third part must be 'shift', 'noshift' or a bit width such as 'int4', got "
                                 f"{args[1]!r}")
            n_sink, window = (int(x) for x in args[0].split("+"))
            return StreamingLLM(n_sink, window, pos_shift=len(args) == 1 or args[1] == "shift", **quant)
        if kind == "burst" and len(args) in (2, 3) and args[0].count("/") == 1:
            if len(args) == 3 and args[2] not in ("shift", "noshift"):
                raise ValueError(f"the fourth part must be 'shift', 'noshift' or a bit width such as 'int4', got "
                                 f"{args[2]!r}")
            n_sink, capacity = (int(x) for x in args[0].split("/"))
            return BurstEviction(n_sink, capacity, float(args[1]), pos_shift=len(args) == 2 or args[2] == "shift",
                                 **quant)
    except ValueError as err:
        raise ValueError(f"policy {spec!r}: {err}. Accepted forms: {forms}") from None
    raise ValueError(f"policy must be one of the forms {forms}; got {spec!r}")
