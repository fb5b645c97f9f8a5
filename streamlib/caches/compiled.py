"""A compiled, shape-static decode step for the bounded caches (StreamingLLM and Window, on hybrid models too, and
Dense preallocated): the whole step, cache write and sink rotation included, as one ``torch.compile`` graph (inductor
on CPU, CUDA graphs on CUDA). Why and how it stays static: ``docs/design.md``."""

from __future__ import annotations

import types
import weakref

import torch

from ..core import arch
from ..core.arch import family_of
from .ring import StaticState
from .sink_window import SinkWindowCache

# The one answer to "can this policy's decode step be compiled": each policy's compiled_form.
NOT_COMPILABLE = ("compile=True covers StreamingLLM, Window, and Dense when the stream's length is known "
                  "(stream_generate, the timing functions): their caches keep one shape. {label} does not ({why}): "
                  "use compile=False")


def _check_model(model) -> None:
    family_of(model, "compile=True")
    devices = {p.device for p in model.parameters()}
    if len(devices) > 1:
        raise ValueError("model: compile=True needs the model on one device; its parameters are on "
                         f"{sorted(map(str, devices))}")


def _decode_step(model, cache: SinkWindowCache, input_ids: torch.Tensor) -> torch.Tensor:
    """Next-token logits (batch, vocab) for ``input_ids`` (batch, 1) fed into ``cache``. A hybrid model's layers take
    the mask and the rotary embedding of their type (Gemma 3: sliding layers their ring's mask and the local
    rotary), as the model's own forward gives them."""
    stack = arch.backbone(model)
    state = cache.step  # the StaticState of compiled_step
    hidden = arch.embed(model, input_ids)
    position_ids = state.frame_position().expand(input_ids.shape[0], 1)
    cache_argument = {arch.cache_keyword(model): cache}
    if cache.layer_types is None:
        position_embeddings = stack.rotary_emb(hidden, position_ids)
        mask = state.attention_mask(hidden.dtype)
        per_layer = [(mask, position_embeddings)] * len(stack.layers)
    else:
        kinds = {kind: (state.attention_mask(hidden.dtype, layer.spec), stack.rotary_emb(hidden, position_ids, kind))
                 for kind, layer in zip(cache.layer_types, cache.layers)}
        per_layer = [kinds[kind] for kind in cache.layer_types]
    for layer, (mask, position_embeddings) in zip(stack.layers, per_layer):
        hidden = layer(hidden, attention_mask=mask, position_ids=position_ids, position_embeddings=position_embeddings,
                       use_cache=True, **cache_argument)
    logits = model.lm_head(arch.final_norm(model, hidden[:, -1]))
    state.advance()
    return logits


class CompiledDecoder:
    """Decode steps for one model under ``torch.compile``, shared by every cache of the same geometry.

    ``step(input_ids, cache)`` feeds one token per row into a :class:`SinkWindowCache` that holds its sinks and
    returns the next-token logits. Get one with :func:`compiled_decoder` (one per model, kept by this module, so a new
    cache does not compile again).

    Backends: on CPU inductor with a C++ wrapper around the kernels (it saved about 0.1 ms of a 0.9 ms micro-model
    step on 2 cores; freezing and autotuned GEMMs saved nothing measurable); on CUDA, CUDA graphs. Both skip dynamo's
    guards on the model's modules, another tenth of a micro step: each decoder belongs to one model, whose structure
    does not change, and the guards on the cache's geometry and tensors stay. The weights stay inputs of the graph,
    so training the model further does not leave a stale graph behind.
    """

    def __init__(self, model):
        _check_model(model)
        self._model = weakref.ref(model)  # the decoder is kept by the model's weak key: it must not keep the model
        self.device = next(model.parameters()).device
        self.uses_cuda_graphs = self.device.type == "cuda"
        self._steps: dict[tuple, object] = {}  # one compiled step per cache geometry

    def _compiled_step(self, cache: SinkWindowCache):
        geometry = tuple(dict.fromkeys((layer.spec, tuple(layer.keys.shape), layer.keys.dtype,
                                        layer.store.quant if layer.store is not None else None)
                                       for layer in cache.layers))
        if geometry not in self._steps:
            options = {}
            skip_module_guards = getattr(torch.compiler, "skip_guard_on_all_nn_modules_unsafe", None)
            if skip_module_guards is not None:  # torch >= 2.8; older ones keep every guard and run a bit slower
                options["guard_filter_fn"] = skip_module_guards
            if self.uses_cuda_graphs:
                options["triton.cudagraphs"] = True  # what mode="reduce-overhead" sets
            else:
                options["cpp_wrapper"] = True
            # dynamo keeps compiled graphs per code object, and with the module guards filtered out it would run
            # one model's graph for another of the same shapes but other structure: a copy of the step's code for
            # each model and geometry keeps their graphs apart
            step = types.FunctionType(_decode_step.__code__.replace(), _decode_step.__globals__, "_decode_step")
            self._steps[geometry] = torch.compile(step, options=options, fullgraph=True, dynamic=False)
        return self._steps[geometry]

    @property
    def model(self):
        return self._model()

    @staticmethod
    def can_step(cache) -> bool:
        """Whether the next step can be a compiled one: a cache of fixed shape (StreamingLLM, Window) whose buffers
        exist (a prompt was fed) and hold the sinks."""
        return cache.fixed_shape and cache.ready_for_compiled_step()

    def step(self, input_ids: torch.Tensor, cache: SinkWindowCache) -> torch.Tensor:
        """Feed ``input_ids`` (batch, 1) into ``cache``; returns the next-token logits (batch, vocab)."""
        if not self.can_step(cache):
            raise ValueError("cache: a compiled step needs a StreamingLLM or Window cache that holds at least its sink "
                             "tokens and one token; feed the prompt first")
        cache.maybe_rebase()
        cache.before_compiled_step()
        state = cache.static_state
        if state is None:
            state = cache.static_state = StaticState(cache, self.device)
            self._mark_static(state)
        state.sync()
        with cache.compiled_step(state):
            logits = self._compiled_step(cache)(self.model, cache, input_ids)
        state.mirror_step()
        cache.after_compiled_step()
        if self.uses_cuda_graphs:
            logits = logits.clone()  # a CUDA graph writes its output buffer again at the next replay
        return logits

    @staticmethod
    def _mark_static(state: StaticState) -> None:
        # CUDA graphs replay fixed addresses: tell dynamo these buffers never move, so it captures them in place
        for t in state.tensors():
            torch._dynamo.mark_static_address(t)


# One decoder per model, for as long as the model lives (its compiled graphs with it); the model itself carries
# nothing of streamlib's.
_decoders: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compiled_decoder(model, fresh: bool = False) -> CompiledDecoder:
    """The :class:`CompiledDecoder` of ``model``: made on first use and kept for as long as the model lives."""
    decoder = _decoders.get(model)
    if decoder is None or fresh:
        decoder = _decoders[model] = CompiledDecoder(model)
    return decoder


def compile_count() -> int:
    """Graphs dynamo has compiled in this process (a re-compilation adds one)."""
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])
