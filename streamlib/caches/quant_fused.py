"""The rebuild of a quantized layer's slots compiled for hot shapes (:mod:`streamlib.caches.quant_store` has the
store and the eager rebuild it replaces): the unpacking, dequantization and rotation as one expression that inductor
fuses into a pass over the codes, compiled per shape once a process has rebuilt that shape :data:`FUSED_AFTER` times.
Measured with ``bench/bench_quant.py`` (README, performance)."""

from __future__ import annotations

import types
import warnings

import torch

# Eager rebuilds of one shape before it is compiled (0: at once; None: never). About 140 decode steps of a 30-layer
# model: compiling (about 5 s) is earned back in a few thousand steps, and a short evaluation stays eager.
FUSED_AFTER: int | None = 4096


def dequantized_slots(codes, value_scale, value_zero, key_scale, key_zero, entry, cos, sin, keys_out, values_out,
                      bits: int, k_dim: int, group: int, key_group: int, half: int, rotary: int, per_channel: bool):
    """Every slot's value and rotated key, from the codes, as one expression for inductor to fuse (the eager
    :meth:`~streamlib.caches.quant_store.QuantizedStore.dequantize` computes the same). ``entry``: each slot's
    key-scale entry (keys per channel); ``cos``, ``sin``: each slot's rotation over the whole head, ``sin`` signed
    (:class:`~streamlib.caches.quant_slots.SlotPlan`)."""
    if bits == 8:
        unpacked = codes
    else:  # the planes of pack(), by shifts broadcast over a new axis instead of a concatenation
        shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=codes.device)
        unpacked = ((codes[..., None, :] >> shifts[:, None]) & (2**bits - 1)).flatten(-2)
    unpacked = unpacked.to(keys_out.dtype)
    key_codes, value_codes = unpacked[..., :k_dim], unpacked[..., k_dim:]
    values = value_codes.unflatten(-1, (-1, group)) * value_scale[..., None] + value_zero[..., None]
    values_out.copy_(values.flatten(-2))
    if per_channel:
        keys = key_codes * key_scale[entry].permute(1, 2, 0, 3) + key_zero[entry].permute(1, 2, 0, 3)
    else:
        keys = (key_codes.unflatten(-1, (-1, key_group)) * key_scale[..., None] + key_zero[..., None]).flatten(-2)
    partners = torch.cat([keys[..., half:rotary], keys[..., :half], keys[..., rotary:]], dim=-1)
    keys_out.copy_(keys * cos + partners * sin)


class FusedRebuilds:
    """The compiled :func:`dequantized_slots`, one per shape, made once a shape is hot (:data:`FUSED_AFTER`); shared
    by every cache in the process, as the eager rebuilds they replace are counted over all of them."""

    def __init__(self):
        self.calls: dict = {}
        self.compiled: dict = {}
        self.failed = False

    def get(self, geometry):
        """The compiled rebuild of ``geometry``, or None while it stays eager."""
        if geometry in self.compiled:
            return self.compiled[geometry]
        if FUSED_AFTER is None or self.failed:
            return None
        self.calls[geometry] = self.calls.get(geometry, 0) + 1
        if self.calls[geometry] <= FUSED_AFTER:
            return None
        # a fresh code object per shape: dynamo keeps a few graphs per code object and then falls back to eager
        code = dequantized_slots.__code__.replace()
        fn = types.FunctionType(code, dequantized_slots.__globals__, "dequantized_slots")
        self.compiled[geometry] = torch.compile(fn, fullgraph=True, dynamic=False)
        return self.compiled[geometry]

    def run(self, geometry, *args, **static) -> bool:
        """Rebuild through the compiled function; False (and eager from then on) where it cannot be compiled here."""
        fn = self.get(geometry)
        if fn is None:
            return False
        try:
            fn(*args, **static)
        except Exception as err:  # no C++ compiler, an inductor that does not take this shape: eager stays right
            warnings.warn(f"quantized caches stay eager: compiling their rebuild failed ({type(err).__name__}: "
                          f"{str(err)[:200]})", RuntimeWarning, stacklevel=3)
            self.failed = True
            self.compiled.pop(geometry, None)
            return False
        return True


FUSED = FusedRebuilds()


def rebuild(store, layer, plan) -> bool:
    """Rebuild ``layer``'s slots from ``store`` (a QuantizedStore) through the compiled :func:`dequantized_slots`
    where it applies and the shape is hot: float32 on a CPU, slots shared by the rows, and not the one call that
    rotates freshly quantized sinks. False where the eager rebuild is to run."""
    keys = layer.keys
    if (keys.device.type != "cpu" or keys.dtype != torch.float32 or not plan.shared or store.sinks_requantized
            or FUSED_AFTER is None):
        return False
    q = store.quant
    per_channel = q.key_axis == "channel"
    static = dict(bits=q.bits, k_dim=keys.shape[-1], group=store.group, key_group=store.key_group, half=plan.half,
                  rotary=plan.rotary, per_channel=per_channel)
    geometry = (tuple(store.codes.shape), tuple(store.key_scale.shape), *static.values())
    scales = [t.float() for t in (store.value_scale, store.value_zero, store.key_scale, store.key_zero)]
    entry = plan.entry if per_channel else plan.cos.new_zeros(0, dtype=torch.long)
    return FUSED.run(geometry, store.codes, *scales, entry, plan.cos, plan.sin, keys, layer.values, **static)
