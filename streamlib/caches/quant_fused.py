"""The rebuild of a quantized layer's slots compiled for hot shapes (:mod:`streamlib.caches.quant_store` has the
store and the eager rebuild it replaces): the unpacking, dequantization and rotation as one expression that inductor
fuses into a pass over the codes, compiled per shape once a process has rebuilt that shape :data:`FUSED_AFTER` times.
Measured with ``bench/bench_quant.py`` (README, performance)."""

from __future__ import annotations

import functools
import warnings

import torch

# Eager rebuilds of one shape before it is compiled (0: at once; None: never). About 140 decode steps of a 30-layer
# model: compiling (about 5 s) is earned back in a few thousand steps, and a short evaluation stays eager.
FUSED_AFTER: int | None = 4096


def dequantized_slots(codes, value_scale, value_zero, key_scale, key_zero, entry, cos, sin, recent_keys,
                      recent_values, sink_values, recent_source, sink_source, keys_out, values_out, bits: int,
                      k_dim: int, group: int, key_group: int, half: int, rotary: int, per_channel: bool,
                      fp_sinks: bool):
    """Every slot's value and rotated key, from the codes, and the full-precision tokens over them, as one expression
    for inductor to fuse (the eager :meth:`~streamlib.caches.quant_store.QuantizedStore.dequantize` and
    :meth:`~streamlib.caches.quant_store.QuantizedStore.copy_full_precision` compute the same). ``entry``: each slot's
    key-scale entry (keys per channel); ``cos``, ``sin``: each slot's rotation, one angle per rotary pair
    (:attr:`SlotPlan.pairs <streamlib.caches.quant_slots.SlotPlan.pairs>`; the whole head's tables, with each angle
    twice and ones and zeros past the rotary channels, made the pass read half again as much at 4+1020);
    ``recent_source``, ``sink_source``: where each slot's token sits in the current block's and the full-precision
    sinks' store, -1 for none (:attr:`SlotPlan.sources_per_slot`; copied over in eager calls of their own, they cost
    47 us a layer). The sinks' keys are the layer's own (``sink_keys``)."""
    if bits == 8:
        unpacked = codes
    else:  # the planes of pack(), by shifts broadcast over a new axis instead of a concatenation
        shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=codes.device)
        unpacked = ((codes[..., None, :] >> shifts[:, None]) & (2**bits - 1)).flatten(-2)
    unpacked = unpacked.to(keys_out.dtype)
    key_codes, value_codes = unpacked[..., :k_dim], unpacked[..., k_dim:]
    values = (value_codes.unflatten(-1, (-1, group)) * value_scale[..., None] + value_zero[..., None]).flatten(-2)
    recent = (recent_source >= 0)[:, None]
    recent_source = recent_source.clamp(min=0)
    values = torch.where(recent, recent_values[:, :, recent_source], values)
    if fp_sinks:
        values = torch.where((sink_source >= 0)[:, None], sink_values[:, :, sink_source.clamp(min=0)], values)
    values_out.copy_(values)
    if per_channel:
        keys = key_codes * key_scale[entry].permute(1, 2, 0, 3) + key_zero[entry].permute(1, 2, 0, 3)
    else:
        keys = (key_codes.unflatten(-1, (-1, key_group)) * key_scale[..., None] + key_zero[..., None]).flatten(-2)
    first, second = keys[..., :half], keys[..., half:rotary]
    keys = torch.cat([first * cos - second * sin, second * cos + first * sin, keys[..., rotary:]], dim=-1)
    keys_out.copy_(torch.where(recent, recent_keys[:, :, recent_source], keys))


class FusedRebuilds:
    """The compiled :func:`dequantized_slots`, one per shape, made once a shape is hot (:data:`FUSED_AFTER`); shared
    by every cache in the process, as the eager rebuilds they replace are counted over all of them.

    A shape's function is traced once (``make_fx``) and its graph compiled by inductor directly: through
    ``torch.compile`` each call first checked dynamo's guards on the call's dozen tensors, 26 us of a 60 us call at
    4+252 and 50 us of 170 at 4+1020 (one thread), about 1 ms a decode step of a 30-layer model. Nothing is checked
    per call instead, so the geometry a graph is kept under names everything the trace fixed: the shapes of the codes
    and scales and the static arguments (every other tensor's shape follows from them, and the store and the plan
    make all of them contiguous, the scales in :data:`~streamlib.caches.quant.SCALE_DTYPE`)."""

    def __init__(self):
        self.calls: dict = {}
        self.compiled: dict = {}
        self.failed = False

    def hot(self, geometry) -> bool:
        """Whether ``geometry`` is compiled or is to be at this call (counting the call); never while
        :data:`FUSED_AFTER` is None, a shape compiled before included."""
        if FUSED_AFTER is None or self.failed:
            return False
        if geometry in self.compiled:
            return True
        self.calls[geometry] = self.calls.get(geometry, 0) + 1
        return self.calls[geometry] > FUSED_AFTER

    def run(self, geometry, *args, **static) -> bool:
        """Rebuild through the compiled function (compiling it at a shape's first hot call); False (and eager from
        then on) where it cannot be compiled here."""
        if not self.hot(geometry):
            return False
        try:
            if geometry not in self.compiled:
                from torch._inductor import compile as inductor_compile
                from torch.fx.experimental.proxy_tensor import make_fx

                graph = make_fx(functools.partial(dequantized_slots, **static))(*args)
                self.compiled[geometry] = inductor_compile(graph, list(args))
            self.compiled[geometry](*args)
        except Exception as err:  # no C++ compiler, an inductor that does not take this shape: eager stays right
            warnings.warn(f"quantized caches stay eager: compiling their rebuild failed ({type(err).__name__}: "
                          f"{str(err)[:200]})", RuntimeWarning, stacklevel=3)
            self.failed = True
            self.compiled.pop(geometry, None)
            return False
        return True


FUSED = FusedRebuilds()


def static_arguments(store, layer) -> dict:
    """The arguments of :func:`dequantized_slots` that fix its graph, for ``layer``'s ``store``."""
    q, rotary = store.quant, layer.rotations.info.rotary_ndims
    return dict(bits=q.bits, k_dim=store.recent_keys.shape[-1], group=store.group, key_group=store.key_group,
                half=rotary // 2, rotary=rotary, per_channel=q.key_axis == "channel", fp_sinks=q.fp_sinks > 0)


def rebuild(store, layer, plan) -> bool:
    """Rebuild ``layer``'s slots from ``store`` (a QuantizedStore) through the compiled :func:`dequantized_slots`,
    the full-precision tokens included, where it applies and the shape is hot: float32 on a CPU, slots shared by the
    rows, and not the one call that rotates freshly quantized sinks. False where the eager rebuild is to run."""
    keys = layer.keys
    if (keys.device.type != "cpu" or keys.dtype != torch.float32 or not plan.shared or store.sinks_requantized
            or FUSED_AFTER is None):
        return False
    static = static_arguments(store, layer)
    per_channel = static["per_channel"]
    geometry = (tuple(store.codes.shape), tuple(store.key_scale.shape), store.key_scale.dtype,
                tuple(store.recent_keys.shape), tuple(store.sink_values.shape), *static.values())
    cos, sin = plan.pairs
    entry = plan.entry if per_channel else cos.new_zeros(0, dtype=torch.long)
    # the scales as stored (half precision): the graph widens them exactly, as an eager product with float32 codes
    return FUSED.run(geometry, store.codes, store.value_scale, store.value_zero, store.key_scale, store.key_zero,
                     entry, cos, sin, store.recent_keys, store.recent_values, store.sink_values,
                     *plan.sources_per_slot, keys, layer.values, **static)
