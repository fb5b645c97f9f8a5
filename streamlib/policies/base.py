"""What every cache policy shares: its name and spec string, its record fields, label and plot style, its budget,
the model check, the compiled form of its cache, and the FLOPs and KV bytes of a stream under it. A subclass that
declares a ``name`` registers itself (:mod:`streamlib.policies.registry`)."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import asdict, dataclass
from typing import ClassVar

import torch

from ..caches.compiled import NOT_COMPILABLE
from ..caches.handover import can_hand_over
from ..caches.quant import KVQuantSpec, held_bytes, quant_label
from ..core.arch import SLIDING, family_of, layer_types, shapes_of
from ..core.costs import bounded_stream_flops, held_kv_bytes
from .registry import register


def check_model(model, policy_name: str, hand_over: str | None = None) -> None:
    """The caches are written for the families of :mod:`streamlib.core.arch`; anything else is refused clearly. A
    policy whose cache runs attention through the hand-over says why (``hand_over``): the model's attention must then
    be sdpa or eager."""
    family_of(model, f"policy {policy_name}")
    if hand_over and not can_hand_over(model):
        raise ValueError(f"model: {policy_name} {hand_over}, which needs attn_implementation 'sdpa' or 'eager'; got "
                         f"{model.config._attn_implementation!r}")


@dataclass(frozen=True)
class Style:
    """How a policy's lines look in every figure: a colour of the Okabe-Ito palette, a marker and a line style (so
    figures read in greyscale); ``hollow`` markers for a quantized cache."""

    colour: str
    marker: str
    linestyle: str | tuple = "-"
    hollow: bool = False

    def kwargs(self) -> dict:
        out = {"color": self.colour, "marker": self.marker, "linestyle": self.linestyle}
        return out | ({"mfc": "none"} if self.hollow else {})


# fields that records written before them lack: they keep their defaults when a policy is read back
OPTIONAL_IN_RECORDS = ("pos_shift", "bits", "residual", "quantize_sinks")
# a quantized cache keeps its policy's colour and marker, hollow, with a line per bit width
BITS_LINESTYLE = {8: "--", 4: ":", 2: (0, (1, 3))}


class PolicyBase:
    """Mixin for the policy dataclasses. A policy declares, in its own file, in its class statement:

    - ``name`` (its registry key and the first part of its spec string) and ``form`` (the rest of its spec string,
      its fields in braces: ``"{n_sink}+{window}"``; ``flags`` names a boolean field written as a part of its own
      when false, ``{"pos_shift": "noshift"}``), so that ``parse_policy(str(p)) == p`` with nothing else written;
    - ``title`` (its kind in legends), ``style`` (:class:`Style`) and ``order`` (where its kind sits in tables and
      legends); and in its body ``label()`` (one configuration), its fields (the record's columns), ``budget``,
      ``examples(budget)`` and ``make_cache(model)`` (a score-based policy: ``score``, :mod:`.scored`).

    ``token_mode``: whether a prompt longer than the cache is read one full decode step per token (Recompute, TOVA,
    H2O), which is what sizes the token counts a run can afford for it. ``quantizable``: whether it takes ``bits``,
    ``residual`` (and ``quantize_sinks`` when it ``takes_sinks``) and the spec string's ``:int4:r64:qsinks``."""

    name: ClassVar[str] = "policy"
    title: ClassVar[str] = "Policy"
    form: ClassVar[str] = ""
    flags: ClassVar[dict] = {}
    style: ClassVar[Style] = Style("#56B4E9", "*", "-")
    order: ClassVar[int] = 50
    is_baseline: ClassVar[bool] = False  # the policy every other is compared with (Dense)
    token_mode: ClassVar[bool] = False
    takes_sinks: ClassVar[bool] = False  # whether with_sinks can keep a prompt prefix as its sinks
    streams_long: ClassVar[bool] = False  # constant cost per token: may read a whole long stream (04)
    quantizable: ClassVar[bool] = False
    why_not_compiled: ClassVar[str] = "its cache changes shape as it evicts"
    key_axis: ClassVar[str] = "channel"  # how a quantized cache groups keys: per channel over a block (tokens leave
    # in order)
    # where its definition is written, for the naive reference (streamlib.naive): "view" (``visible``), "rule" (a
    # score-based policy's ``score``), "forward" (a fresh forward over a window per token)
    definition: ClassVar[str] = "view"

    def __init_subclass__(cls, name=None, title=None, form=None, flags=None, style=None, order=None, **kwargs):
        super().__init_subclass__(**kwargs)
        declared = dict(title=title, form=form, flags=flags, style=style, order=order)
        for key, value in declared.items():
            if value is not None:
                setattr(cls, key, value)
        if name is not None:
            cls.name = name
            register(cls)

    # -- the spec string, the record, the label ---------------------------------------------------------------
    @classmethod
    def spec_form(cls) -> str:
        """How the command line writes it: ``streamingllm:{n_sink}+{window}[:noshift]``."""
        flags = "".join(f"[:{word}]" for word in cls.flags.values())
        return ":".join(part for part in (cls.name, cls.form) if part) + flags

    def spec_parts(self) -> list[str]:
        """The parts of the spec string after the name (``["4+252", "noshift"]``), from ``form`` and ``flags``."""
        written = {float: repr, tuple: lambda v: ",".join(map(str, v))}
        values = {f.name: written.get(type(v := getattr(self, f.name)), lambda v: v)(v) for f in dataclasses.fields(self)}
        parts = self.form.format(**values).split(":") if self.form else []
        return parts + [word for field, word in self.flags.items() if not getattr(self, field)]

    @classmethod
    def from_parts(cls, parts: list[str], **quant) -> "PolicyBase":
        """The policy whose ``spec_parts()`` are ``parts`` (``quant``: bits, residual, quantize_sinks)."""
        words = {word: field for field, word in cls.flags.items()}
        values = {words[p]: False for p in parts if p in words}
        text = ":".join(p for p in parts if p not in words and not (words and p == "shift"))  # "shift": the default
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        pieces = re.split(r"\{(\w+)\}", cls.form)
        kinds = {"float": r"\d+(?:\.\d*)?", "str": r"[^:]+", "int": r"\d+", "tuple": r"\d+(?:,\d+)*"}
        pattern = "".join(re.escape(piece) if k % 2 == 0 else f"(?P<{piece}>{kinds[types[piece]]})"
                          for k, piece in enumerate(pieces))
        match = re.fullmatch(pattern, text)
        if match is None:
            raise ValueError(f"expected {cls.spec_form()}; got {':'.join([cls.name, *parts])!r}")
        convert = {"float": float, "str": str, "tuple": lambda v: tuple(int(x) for x in v.split(","))}
        values.update({k: convert.get(types[k], int)(v) for k, v in match.groupdict().items()})
        return cls(**values, **quant)

    def spec(self) -> str:
        """The policy as one string: ``streamingllm:4+1020:int4``; :func:`~streamlib.policies.parse_policy` reads it
        back."""
        parts = [self.name, *self.spec_parts()]
        bits = getattr(self, "bits", 16)
        if bits != 16:
            parts.append(f"int{bits}")
            if self.residual != 32:
                parts.append(f"r{self.residual}")
            if getattr(self, "quantize_sinks", False):
                parts.append("qsinks")
        return ":".join(parts)

    def __str__(self) -> str:
        return self.spec()

    @classmethod
    def parse(cls, args: list[str]) -> "PolicyBase":
        """The policy of a spec string's parts after the name: the quantization parts first, then its own."""
        rest, quant = [], {}
        for part in args:
            if re.fullmatch(r"int\d+", part):
                quant["bits"] = int(part[3:])
            elif re.fullmatch(r"r\d+", part) and "bits" in quant:
                quant["residual"] = int(part[1:])
            elif part == "qsinks" and cls.takes_sinks and "bits" in quant:
                quant["quantize_sinks"] = True
            else:
                rest.append(part)
        if quant and not cls.quantizable:
            raise ValueError(f"{cls.name} takes no quantization (the bounded caches do)")
        return cls.from_parts(rest, **quant)

    def params(self) -> dict:
        """The record's fields: the name, the spec string, and every field of the policy."""
        return {"policy": self.name, "spec": self.spec(), **asdict(self)}

    @classmethod
    def from_fields(cls, params: dict, accepts: tuple[str, ...] | None = None) -> "PolicyBase":
        """The policy from a record's fields (records written before spec strings): every field it ``accepts`` (its
        constructor's, by default its dataclass fields) must be there, except those older records may lack (position
        shift and the quantization fields), which keep their defaults."""
        names = accepts or tuple(f.name for f in dataclasses.fields(cls))
        missing = [n for n in names if params.get(n) is None and n not in OPTIONAL_IN_RECORDS]
        if missing:
            given = sorted(k for k, v in params.items() if v is not None)
            raise ValueError(f"policy {cls.name!r} needs the parameter {missing[0]} (an integer >= 0); got only {given}")
        return cls(**{n: params[n] for n in names if params.get(n) is not None})

    def label(self) -> str:
        return self.title

    def quant_label(self) -> str:
        """What the label adds for a quantized cache: ``" int4"``, ``" int4 R64"``, ``", sinks int4"``."""
        return quant_label(getattr(self, "bits", 16), getattr(self, "residual", 32),
                           getattr(self, "quantize_sinks", False), getattr(self, "n_sink", 0))

    def kind(self) -> str:
        """The policy's kind in a legend: its title, and what sets this configuration's line apart (no shift)."""
        return self.title

    def family(self) -> str:
        """The curve a configuration belongs to on a sweep (its kind, and its bit width)."""
        bits = getattr(self, "bits", 16)
        return self.kind() + (f", int{bits}" if bits != 16 else "")

    def plot_style(self) -> Style:
        """The line style of this configuration: its kind's, hollow with its own line for a quantized cache."""
        bits = getattr(self, "bits", 16)
        return self.style if bits == 16 else dataclasses.replace(self.style, linestyle=BITS_LINESTYLE[bits],
                                                                 hollow=True)

    # -- what it is, for the tests ------------------------------------------------------------------------------
    @classmethod
    def examples(cls, budget: int) -> list["PolicyBase"]:
        """Configurations that keep about ``budget`` tokens: what the registry's tests run every policy at (against
        the naive reference, through the figures and the records)."""
        raise NotImplementedError(f"{cls.__name__} declares no examples(budget): the registry's tests need them")

    def visible(self, t: int, layer: int = 0, kv_head: int = 0) -> list[int]:
        """The policy's definition, written naively: the earlier stream positions the query at ``t`` sees in full
        layer ``layer`` and kv head ``kv_head`` (a hybrid model's sliding layers keep their trained window whatever
        the policy). The tests hold the cache to it; score-based policies, whose view depends on the data, define a
        rule instead."""
        raise NotImplementedError(f"{type(self).__name__} defines no visible(t)")

    # -- what it costs --------------------------------------------------------------------------------------
    @property
    def budget(self) -> int | None:
        """Tokens kept between steps, or None when unbounded."""
        return None

    def kv_quant(self) -> KVQuantSpec | None:
        """The quantization of the policy's cache (its ``bits``, ``residual``, ``quantize_sinks`` fields), or None at
        16 bits (:mod:`streamlib.caches.quant`)."""
        bits = getattr(self, "bits", 16)
        if bits == 16:
            return None
        return KVQuantSpec(bits, self.residual, self.key_axis, getattr(self, "n_sink", 0),
                           getattr(self, "quantize_sinks", False))

    def compiled_form(self, max_length: int | None = None) -> "PolicyBase":
        """The policy whose cache a compiled decode step runs on for a stream of at most ``max_length`` tokens (None:
        not known); a ValueError naming ``compile`` when there is none."""
        raise ValueError(NOT_COMPILABLE.format(label=self.label(), why=self.why_not_compiled))

    def with_sinks(self, n_sink: int) -> "PolicyBase":
        """The same KV budget with the stream's first ``n_sink`` tokens kept as its sinks: a prompt's system header
        and instructions (llama.cpp's ``--keep``). StreamingLLM and burst eviction, whose sinks that prefix becomes."""
        raise ValueError(f"n_sink: {self.label()} keeps no sinks; keeping a prompt applies to StreamingLLM, Window "
                         "and burst eviction")

    def stream_flops(self, config, n_tokens: int) -> int:
        """Analytic FLOPs to stream ``n_tokens`` one at a time: each token attends what is kept and itself."""
        return bounded_stream_flops(config, n_tokens, self.budget)

    def kv_bytes_held(self, config, n_tokens: int, dtype) -> int:
        """Analytic bytes of keys and values held after ``n_tokens`` tokens: the full layers at most ``budget``
        tokens, a hybrid model's sliding layers their trained window (:func:`~streamlib.core.costs.held_kv_bytes`). A
        quantized cache's full layers: :func:`~streamlib.caches.quant.held_bytes` for the first ``n_sink`` and the most
        recent of its tokens (exact for StreamingLLM and Window; for the others, which keep other tokens, the count
        is exact and the split between blocks an estimate)."""
        quant = self.kv_quant()
        if quant is None:
            return held_kv_bytes(config, n_tokens, dtype, self.budget)
        sh = shapes_of(config)
        types = layer_types(config)
        full_layers = len(types) - types.count(SLIDING)
        sliding = held_kv_bytes(config, n_tokens, dtype, 0)  # the sliding layers alone: their window, full precision
        kept = min(n_tokens, self.budget)
        sinks = min(getattr(self, "n_sink", 0), kept)
        held = torch.cat([torch.arange(sinks), torch.arange(n_tokens - (kept - sinks), n_tokens)])
        element = torch.finfo(dtype).bits // 8
        per_head = held_bytes(quant, held, n_tokens, sh.head_dim, sh.head_dim, element)
        return sliding + full_layers * sh.kv_heads * per_head
