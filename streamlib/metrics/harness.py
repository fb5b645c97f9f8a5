"""EleutherAI's lm-evaluation-harness (lm-eval 0.4) evaluating any task under a streamlib policy.

``StreamlibLM`` is the harness's own Hugging Face backend (``hf``, :class:`lm_eval.models.huggingface.HFLM`) with one
thing changed: every forward goes through a fresh cache of the policy. The harness keeps everything else (how
contexts and continuations are tokenised, the prefix token of an empty context, the rolling windows of a perplexity
task, stop sequences, batching), so under Dense its numbers are the ``hf`` backend's on the same model
(``tests/test_harness.py`` checks it on a perplexity task and a multiple-choice task) and any difference under another
policy is the cache's.

- ``loglikelihood`` / ``loglikelihood_rolling``: the whole input streams through the policy's cache in chunks (the
  exact chunked path of :func:`~streamlib.caches.generation.forward_chunks`, equal to one token at a time); rows of
  a batch are padded on the right, after their own tokens, so padding never reaches a real token's logits.
- ``generate_until``: each prompt is read and answered by a :class:`~streamlib.caches.generation.TokenStream`,
  stopping at the task's stop sequences or ``max_gen_toks``.
- ``max_length``: under Dense the model's own (as ``hf``: a longer context is cut from the left); under any other
  policy unbounded, so a document or prompt streams through the cache whole, however long, which is what a
  streaming cache is for. Pass ``max_length=`` to cut as ``hf`` does.

Importing this module registers the backend under the name ``streamlib``::

    python -m streamlib lm-eval --model streamlib --model_args model=smollm2-135m,policy=streamingllm:4+252 \\
        --tasks streamlib_passkey --limit 20
    # or, in Python:
    import lm_eval, streamlib.metrics.harness  # noqa: F401 (registers)
    lm_eval.simple_evaluate(model="streamlib", model_args="model=smollm2-135m,policy=dense", tasks=[...])
"""

from __future__ import annotations

import functools
import logging
import os

import lm_eval
import pandas as pd
import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from ..caches.generation import TokenStream, forward_chunks
from ..loading.models import load_model, load_tokenizer
from ..policies import parse_policy
from .measurement import Measurement

# A document's own fields that say where it sits, kept beside its score (the pass-key task's)
PLACE = ("context_tokens", "depth", "tokens_back", "seed")
# No prompt is cut under a streaming policy: longer than any stream a CPU or GPU reads in a task.
UNBOUNDED = 1 << 30
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@register_model("streamlib")
class StreamlibLM(HFLM):
    """The ``hf`` backend with every forward through a fresh cache of ``policy``.

    ``model``: a streamlib model name (``smollm2-135m``, ``gemma3-270m``, a Hub id, a directory, ``random:ARCH``) or
    a loaded model (then ``tokenizer`` is required). ``policy``: a spec string (``streamingllm:4+252``;
    ``python -m streamlib generate --help`` lists the forms) or a policy object. ``dtype``: ``float32``,
    ``float16``, ``bfloat16`` or None (the device's default). ``chunk_size``: tokens per forward (default: the
    cache's own). ``tokenizer``: a tokenizer or a directory to load one from (default: the model's)."""

    def __init__(self, model="smollm2-135m", policy="dense", *, tokenizer=None, device: str | None = None,
                 dtype: str | torch.dtype | None = None, chunk_size: int | None = None,
                 max_length: int | None = None, batch_size: int | str = 1, **kwargs):
        self.policy = parse_policy(policy) if isinstance(policy, str) else policy
        if batch_size == "auto" or str(batch_size).startswith("auto"):
            raise ValueError("batch_size: give a number (the harness's 'auto' sizes a batch by max_length, which is "
                             "unbounded under a streaming policy); got 'auto'")
        if isinstance(dtype, str) and dtype != "auto":
            if dtype not in _DTYPES:
                raise ValueError(f"dtype must be one of {sorted(_DTYPES)} or None; got {dtype!r}")
            dtype = _DTYPES[dtype]
        if device is not None and str(device).startswith("cuda") and not torch.cuda.is_available():
            # lm-eval's command line asks for cuda:0 unless told otherwise; as its hf backend does, fall back
            device = None  # the machine's default (streamlib.loading.models.default_device)
        if isinstance(model, str):
            tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model)
            model = load_model(model, dtype=None if dtype == "auto" else dtype, device=device)
        elif tokenizer is None:
            raise ValueError("tokenizer: a loaded model needs its tokenizer")
        if isinstance(tokenizer, str):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        if max_length is None and not self.policy.is_baseline:
            max_length = UNBOUNDED
        kwargs.pop("pretrained", None)
        kwargs.pop("max_batch_size", None)
        super().__init__(pretrained=model, tokenizer=tokenizer, max_length=max_length, batch_size=batch_size, **kwargs)
        self.chunk_size = chunk_size

    def _model_call(self, inps: torch.Tensor, attn_mask=None, labels=None) -> torch.Tensor:
        """Logits of every position of ``inps`` (batch, T), read through a fresh cache of the policy."""
        if attn_mask is not None or labels is not None:
            raise ValueError("model: streamlib evaluates decoder-only (causal) models; got an encoder-decoder call")
        cache = self.policy.make_cache(self.model)
        with torch.inference_mode():
            return torch.cat([logits for _, logits in forward_chunks(self.model, inps, cache, self.chunk_size)], 1)

    def _model_generate(self, context: torch.Tensor, max_length: int, stop: list[str], **generation_kwargs):
        """``context`` (batch, T, left-padded where rows differ) followed by each row's answer, generated through a
        fresh cache of the policy per row (its padding dropped: a pad token must not take a sink's place), up to
        ``max_length`` in all or a stop sequence."""
        mask = generation_kwargs.pop("attention_mask", None)
        sampling = {"do_sample": bool(generation_kwargs.get("do_sample") or False),
                    "temperature": float(generation_kwargs.get("temperature") or 1.0),
                    "top_p": float(generation_kwargs.get("top_p") or 1.0)}
        new_tokens = max_length - context.shape[1]
        rows = []
        for i in range(context.shape[0]):
            ids = context[i : i + 1] if mask is None else context[i : i + 1, mask[i].bool()]
            stream = TokenStream(self.model, self.policy, chunk_size=self.chunk_size, **sampling)
            stream.feed(ids)
            answer: list[int] = []
            for token in stream.generate(new_tokens, self.eot_token_id):
                answer.append(int(token[0, 0]))
                if stop and any(s in self.tok_decode(answer) for s in stop):
                    break
            rows.append(answer + [self.eot_token_id] * (new_tokens - len(answer)))
        return torch.cat([context, torch.tensor(rows, dtype=context.dtype, device=context.device)], dim=1)


@functools.cache
def own_tasks_only():
    """A task manager that indexes none of lm-eval's own tasks: the configs handed to :func:`measure_harness` are
    whole, and indexing the harness's thousands of task files takes 7-12 s on 2 cores at each call."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_defaults=False)


def measure_harness(model, tokenizer, policy, tasks: list[dict], limit: int | None = None) -> Measurement:
    """lm-eval's ``simple_evaluate`` of ``tasks`` (task configs, e.g. from
    :func:`~streamlib.metrics.harness_tasks.task_configs`) under ``policy``: the harness's aggregate per task and
    metric as the records' rows (``task:metric``), and a curve row per document with its score on the task's first
    metric and the fields that say where it sits (for the pass key: tokens back, depth). The backend's notices
    (a loaded model passed in, metrics' default aggregations) are kept out of a notebook's output."""
    quiet = logging.getLogger("lm_eval")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    # lm-eval reads a launcher's ranks from the environment and returns results on local rank 0 alone; a process of
    # a streamlib run shared by several (streamlib.experiments.processes) evaluates its measurement by itself
    ranks = {k: os.environ.pop(k) for k in ("LOCAL_RANK", "RANK", "WORLD_SIZE") if k in os.environ}
    try:
        lm = StreamlibLM(model, policy, tokenizer=tokenizer)
        out = lm_eval.simple_evaluate(model=lm, tasks=tasks, limit=limit, log_samples=True, bootstrap_iters=0,
                                      verbosity="ERROR", task_manager=own_tasks_only())
    finally:
        quiet.setLevel(level)
        os.environ.update(ranks)
    rows, docs = [], []
    for task, results in out["results"].items():
        rows += [(f"{task}:{name.split(',')[0]}", float(value), "") for name, value in results.items()
                 if isinstance(value, (int, float)) and not isinstance(value, bool) and "stderr" not in name
                 and name != "sample_len"]
    first = {config["task"]: config["metric_list"][0]["metric"] for config in tasks}
    for task, samples in out["samples"].items():
        for sample in samples:
            place = {k: sample["doc"][k] for k in PLACE if k in sample["doc"]}
            docs.append({"task": task, "doc_id": sample["doc_id"], "metric": first[task],
                         "score": float(sample[first[task]]), **place})
    return Measurement(rows=rows, curve=pd.DataFrame(docs))
