"""The chain's parameters: a :class:`Config` from a profile's YAML and the notebook's parameters, checked before
anything runs, and the dry-run rewriting of a profile."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..core.checks import check_bool, check_choice, check_choices, check_int, check_ints
from ..loading import models as M
from ..loading.data import repo_root
from ..loading.head_maps import MAP_FILES
from ..policies import H2O, BurstEviction, StreamingLLM, parse_policy, registered
from .processes import Share
from .profiles import check_names, read_profile

PROFILES_DIR = repo_root() / "profiles"
TOKEN_COUNTS = ("ppl_tokens", "speed_prompt_tokens", "speed_new_tokens", "flops_tokens", "sweep_tokens",
                "long_stream_tokens", "trace_tokens", "trace_every", "max_dense_tokens", "recompute_window",
                "sweep_sink_cache", "generation_prompt_tokens", "generation_new_tokens", "recompute_tokens",
                "burst_tokens", "burst_new_tokens", "retrieval_cache", "quant_tokens")
TASK_POLICIES = ["window", "tova", "h2o", "burst"]  # 06's optional policies: Window (pass key, StreamEval, recall),
# TOVA and H2O (pass key), burst eviction (StreamEval)

# A dry run: the profile's chain, every notebook and code path, offline on CPU in a few minutes.
DRY_RUN_MODEL = "random:pythia-14m"  # random weights of the smallest Pythia shape
DRY_RUN_TOKENIZER = "micro"  # the embedded tokenizer (4096 ids, all valid for Pythia's 50304-token vocabulary)
DRY_RUN_CORPORA = ["kjv-heldout", "kjv-train"]  # embedded text in place of the profile's datasets
DRY_RUN_CACHE_DIVISOR = 4  # cache sizes and windows shrink by this
DRY_RUN_CAPS = {"ppl_tokens": 512, "sweep_tokens": 1024, "long_stream_tokens": 2048, "trace_tokens": 256,
                "trace_every": 32, "max_dense_tokens": 2048, "streameval_tokens": 1024, "streameval_scored_tokens": 256,
                "recompute_tokens": 256, "speed_prompt_tokens": 256, "speed_new_tokens": 16,
                "speed_repeats": 1, "flops_tokens": 128, "generation_prompt_tokens": 32,
                "generation_new_tokens": 192, "burst_tokens": 512, "burst_new_tokens": 64, "quant_tokens": 512}


class ConfigError(ValueError):
    """A profile or parameter the chain cannot run with; the message names the parameter and what it allows."""


@dataclass
class Config:
    """Every parameter of the chain, with the smoke profile's values as defaults."""

    profile: str = "smoke"
    run_dir: str = "runs/smoke"
    model: str = "micro"
    tokenizer: str | None = None  # None: the model's own
    device: str = "auto"  # auto | cpu | cuda
    device_map: str | None = None  # "auto": the layers spread over the visible GPUs (accelerate), for 6.9b and 12b
    dtype: str = "auto"  # auto | float32 | float16 | bfloat16
    datasets: list = field(default_factory=lambda: ["kjv-heldout"])
    bos: bool | None = None  # streams start with BOS: None as the tokenizer does (Gemma, Llama 2/3 add it), or set
    ppl_tokens: int = 2048
    n_sink: int = 4
    window: int = 252
    pos_shift: bool = True
    h2o_heavy_shares: list = field(default_factory=lambda: [0.5, 0.25])  # 03 and 06: H2O at each cache size once per
    # share of its budget given to heavy hitters (the rest to recent tokens); the first is the split timed and streamed
    speed_prompt_tokens: int = 512
    speed_new_tokens: int = 64
    speed_batch_sizes: list = field(default_factory=lambda: [1, 4])
    speed_repeats: int = 3
    flops_tokens: int = 256
    sweep_cache_sizes: list = field(default_factory=lambda: [64, 128, 256, 512])
    sweep_sinks: list = field(default_factory=lambda: [0, 1, 2, 4, 8])
    sweep_sink_cache: int = 128
    sweep_recompute: bool = True
    sweep_scored_cache_sizes: list = field(default_factory=list)  # TOVA and H2O (two splits) at these cache sizes
    sweep_more_policies: list = field(default_factory=list)  # 03: more policies on the trade-off curve, by spec string
    # (e.g. "knorm:64+64": a policy of one's own, its file in streamlib/policies/)
    sweep_tokens: int = 2048
    long_stream_corpus: str = "kjv-heldout"
    long_stream_tokens: int = 8192
    trace_tokens: int = 2048
    trace_every: int = 64
    max_dense_tokens: int = 8192
    recompute_window: int = 256
    recompute_tokens: int = 1024  # Recompute pays a forward over its window per token: it streams this many in 04
    generation_prompt: str | None = None  # None: the first generation_prompt_tokens of long_stream_corpus
    generation_prompt_tokens: int = 64
    generation_new_tokens: int = 2048
    generation_temperature: float = 0.0  # 0: greedy
    generation_top_p: float = 1.0
    generation_seed: int = 0
    compare_compiled: bool = True  # 02 times compiled decoding beside eager (the first step compiles: minutes on a CPU)
    chat_turns: int = 0  # a conversation through the chat template in 05 (models with one, e.g. SmolLM2); 0: none
    chat_new_tokens: int = 48  # the longest reply of a turn
    # burst eviction (the lab's press): [capacity, discard_ratio] pairs with n_sink sinks; the first is the lab's
    # configuration (0.7, 4, 256), then the lab's tuning table
    burst_configs: list = field(default_factory=lambda: [[256, 0.7], [1024, 0.3], [512, 0.5], [128, 0.8]])
    burst_tokens: int = 4096  # the stream 03 compares burst eviction and StreamingLLM on (long enough for bursts)
    burst_new_tokens: int = 256  # tokens generated for its speed metrics (TPOT and memory vary between bursts)
    retrieval_cache: int = 128  # 06: the KV budget (tokens) of every bounded policy in the pass-key trials
    retrieval_context_tokens: list = field(default_factory=lambda: [512])  # prompt lengths
    retrieval_depths: list = field(default_factory=lambda: [0.0, 0.33, 0.67, 1.0])  # where the key sits, 0 to 1
    retrieval_seeds: int = 2  # trials per length and depth (a seed fixes the key)
    retrieval_scored_seeds: int = 1  # the same for TOVA and H2O, which read the prompt token by token
    retrieval_new_tokens: int = 8  # the answer's length
    task_policies: list = field(default_factory=lambda: list(TASK_POLICIES))  # 06: beside Dense and StreamingLLM
    streameval_tokens: int = 2048  # 06: the StreamEval stream (past the trained length shows what Dense does there)
    streameval_lines_back: list = field(default_factory=lambda: [1, 2, 4, 8, 16, 32])  # how far back questions ask
    streameval_every: int = 3  # a question after every this many fact lines
    streameval_scored_tokens: int = 512  # TOVA and H2O, token by token, read this much of the stream (0: skip them)
    recall_turns: int = 0  # 06: a scripted chat of this many turns (models with a chat template); 0: none
    recall_turns_back: list = field(default_factory=lambda: [1, 3, 6, 12])  # turns from a fact to its question
    recall_more_policies: bool = False  # burst eviction, TOVA and H2O join the recall chat (minutes more)
    head_split_shares: list = field(default_factory=list)  # 06: HeadSplit keeping these shares of the kv heads whole,
    # beside StreamingLLM at equal KV bytes, on pass keys beyond the window; [] none
    head_split_tokens: int = 1024  # 06: their prompts' length
    head_split_depths: list = field(default_factory=lambda: [0.1, 0.3, 0.5, 0.7])  # where the key sits (all beyond
    # the window at 1,024 tokens and a budget of 128)
    head_split_seeds: int = 5  # trials per depth
    head_split_scored_seeds: int = 0  # TOVA and H2O on the first of those seeds (token by token: slow); 0 none
    head_map_method: str = "retrieval"  # 06: HeadSplit's map: "retrieval" scores (Wu et al.) or DuoAttention's "gates"
    harness_seeds: int = 0  # 06: the pass key through lm-evaluation-harness, this many keys per depth (0: no section)
    quant_bits: list = field(default_factory=list)  # 03: quantized KV caches at these bit widths (8, 4, 2); [] none
    quant_budget: int = 256  # 03: the full-precision cache the equal-memory series matches (4+252 = 8-bit 4+508 ...)
    quant_tokens: int = 4096  # 03: the stream the bit widths are compared on (longer than the largest cache)
    long_stream_policies: list = field(default_factory=lambda: ["window", "streamingllm", "burst"])  # 04: the
    # bounded policies that stream the whole long text; the others stop at max_dense_tokens
    notebooks: list | None = None  # the notebooks the chain runs (name prefixes, e.g. ["00", "04", "07"]); None: all
    export_figures: bool = False
    figures_dir: str = "figures"  # where export_figures writes, relative to the repository (a second model: a subfolder)
    dry_run: bool = False
    force: bool = False

    @classmethod
    def load(cls, profile: str = "smoke", **overrides) -> "Config":
        """A profile's YAML, then ``overrides`` (notebook parameters; ``None`` means "keep the profile's"); with
        ``dry_run=True`` the dry-run substitutions last (see :func:`dry_run_values`). Raises :class:`ConfigError`
        (a ``ValueError``) naming the profile and the parameter."""
        path = Path(profile) if str(profile).endswith((".yaml", ".yml")) else PROFILES_DIR / f"{profile}.yaml"
        if not path.is_file():
            names = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
            raise ConfigError(f"profile must be one of {names} or a YAML path; got {profile!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            values = read_profile(path, known, PROFILES_DIR)
            given = {k: v for k, v in overrides.items() if v is not None}
            check_names(given, known, "parameters")
            values.update(given)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        try:
            cls(**values).validate()  # the profile as written, before a dry run shrinks it
            cfg = cls(**dry_run_values(values)) if values.get("dry_run") else cls(**values)
            cfg.validate()
        except (TypeError, ValueError) as err:
            raise ConfigError(f"profile {str(profile)!r}: {err}") from None
        return cfg

    def validate(self) -> None:
        for name in TOKEN_COUNTS:
            check_int(name, getattr(self, name), 2)
        check_int("speed_repeats", self.speed_repeats, 1)
        check_int("chat_turns", self.chat_turns, 0)
        check_int("chat_new_tokens", self.chat_new_tokens, 1)
        check_int("retrieval_seeds", self.retrieval_seeds, 1)
        check_int("retrieval_scored_seeds", self.retrieval_scored_seeds, 1, self.retrieval_seeds)
        check_int("retrieval_new_tokens", self.retrieval_new_tokens, 1)
        check_int("streameval_tokens", self.streameval_tokens, 64)
        for name in ("streameval_lines_back", "recall_turns_back"):
            if not isinstance(getattr(self, name), list) or not getattr(self, name):
                raise ValueError(f"{name} must be a non-empty list of integers >= 1; got {getattr(self, name)!r}")
        check_ints("streameval_lines_back", self.streameval_lines_back, 1)
        check_int("streameval_every", self.streameval_every, 1)
        check_int("streameval_scored_tokens", self.streameval_scored_tokens, 0)
        check_int("recall_turns", self.recall_turns, 0)
        check_ints("recall_turns_back", self.recall_turns_back, 1)
        check_bool("recall_more_policies", self.recall_more_policies)
        check_choices("task_policies", self.task_policies, TASK_POLICIES)
        if not isinstance(self.head_split_shares, list) or any(
                isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 < s <= 1 for s in self.head_split_shares):
            raise ValueError(f"head_split_shares must be a list of numbers in (0, 1]; got {self.head_split_shares!r}")
        check_int("head_split_tokens", self.head_split_tokens, 64)
        check_int("head_split_seeds", self.head_split_seeds, 1)
        check_int("head_split_scored_seeds", self.head_split_scored_seeds, 0, self.head_split_seeds)
        check_choice("head_map_method", self.head_map_method, sorted(MAP_FILES))
        check_int("harness_seeds", self.harness_seeds, 0)
        for depth in self.head_split_depths:
            if isinstance(depth, bool) or not isinstance(depth, (int, float)) or not 0 <= depth <= 1:
                raise ValueError(f"head_split_depths must hold numbers in [0, 1]; got {depth!r}")
        kinds = [cls.name for cls in registered() if cls.streams_long]  # a constant cost per token
        if not isinstance(self.long_stream_policies, list) or any(k not in kinds for k in self.long_stream_policies):
            raise ValueError(f"long_stream_policies must be a list drawn from {list(kinds)}; "
                             f"got {self.long_stream_policies!r}")
        if self.notebooks is not None and (not isinstance(self.notebooks, list) or not self.notebooks
                                           or not all(isinstance(n, str) and n for n in self.notebooks)):
            raise ValueError(f"notebooks must be None (all) or a non-empty list of notebook name prefixes such as "
                             f"['00', '04', '07']; got {self.notebooks!r}")
        check_ints("retrieval_context_tokens", self.retrieval_context_tokens, 64)
        for depth in self.retrieval_depths:
            if isinstance(depth, bool) or not isinstance(depth, (int, float)) or not 0 <= depth <= 1:
                raise ValueError(f"retrieval_depths must hold numbers in [0, 1]; got {depth!r}")
        if self.retrieval_cache <= self.n_sink + 1:
            raise ValueError(f"retrieval_cache must be an integer > n_sink + 1 = {self.n_sink + 1}; "
                             f"got {self.retrieval_cache}")
        for entry in self.burst_configs:
            if not (isinstance(entry, (list, tuple)) and len(entry) == 2):
                raise ValueError(f"burst_configs must hold [capacity, discard_ratio] pairs; got {entry!r}")
            try:
                BurstEviction(self.n_sink, entry[0], entry[1])
            except ValueError as err:
                raise ValueError(f"burst_configs entry {entry!r}: {err}") from None
        StreamingLLM(self.n_sink, self.window, self.pos_shift)  # raises with the parameter's name
        check_ints("sweep_cache_sizes", self.sweep_cache_sizes, 9)
        check_ints("sweep_scored_cache_sizes", self.sweep_scored_cache_sizes, 4)
        if (not isinstance(self.h2o_heavy_shares, list) or not self.h2o_heavy_shares
                or any(isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 < s < 1
                       for s in self.h2o_heavy_shares)):
            raise ValueError(f"h2o_heavy_shares must be a non-empty list of numbers in (0, 1); got "
                             f"{self.h2o_heavy_shares!r}")
        if not isinstance(self.sweep_more_policies, list):
            raise ValueError(f"sweep_more_policies must be a list of policy spec strings such as 'knorm:64+64'; got "
                             f"{self.sweep_more_policies!r}")
        for spec in self.sweep_more_policies:
            try:
                if parse_policy(spec).budget is None:
                    raise ValueError("an unbounded policy has no place on a memory axis")
            except ValueError as err:
                raise ValueError(f"sweep_more_policies entry {spec!r}: {err}") from None
        check_ints("sweep_sinks", self.sweep_sinks, 0, self.sweep_sink_cache - 1)
        check_ints("speed_batch_sizes", self.speed_batch_sizes, 1)
        if not isinstance(self.quant_bits, list) or any(b not in (8, 4, 2) for b in self.quant_bits):
            raise ValueError(f"quant_bits must be a list drawn from [8, 4, 2] (empty: no quantized caches); "
                             f"got {self.quant_bits!r}")
        check_int("quant_budget", self.quant_budget, self.n_sink + 2)
        for name in ("compare_compiled", "sweep_recompute", "pos_shift", "export_figures"):
            check_bool(name, getattr(self, name))
        if self.bos is not None:
            check_bool("bos", self.bos)
        if not isinstance(self.figures_dir, str) or not self.figures_dir or Path(self.figures_dir).is_absolute() \
                or ".." in Path(self.figures_dir).parts:
            raise ValueError(f"figures_dir must be a folder inside the repository, e.g. 'figures' or "
                             f"'figures/gemma3-270m'; got {self.figures_dir!r}")
        if self.device_map not in (None, "auto"):
            raise ValueError(f"device_map must be None or 'auto'; got {self.device_map!r}")
        check_choice("device", self.device, ["auto", "cpu", "cuda"])
        check_choice("dtype", self.dtype, ["auto", "float32", "float16", "bfloat16"])
        if not (isinstance(self.generation_temperature, (int, float)) and self.generation_temperature >= 0):
            raise ValueError(f"generation_temperature must be >= 0 (0: greedy); got {self.generation_temperature!r}")
        if not (isinstance(self.generation_top_p, (int, float)) and 0 < self.generation_top_p <= 1):
            raise ValueError(f"generation_top_p must be in (0, 1]; got {self.generation_top_p!r}")

    # -- derived ----------------------------------------------------------------------------------------------
    @property
    def run_path(self) -> Path:
        p = Path(self.run_dir)
        return p if p.is_absolute() else repo_root() / p

    def torch_device(self) -> torch.device:
        """``device`` as torch's; of several processes sharing the run, each on its own GPU of its machine."""
        device = M.default_device() if self.device == "auto" else torch.device(self.device)
        if device.type == "cuda" and device.index is None and Share.from_env().count > 1:
            device = torch.device("cuda", Share.from_env().local % torch.cuda.device_count())
        return device

    def layer_map(self) -> str | None:
        """``device_map`` as the model is loaded: of several processes sharing the run, none (each process holds the
        whole model on its own GPU, so ``paper-12b`` on 80 GB GPUs runs a copy per GPU)."""
        return None if Share.from_env().count > 1 else self.device_map

    def torch_dtype(self) -> torch.dtype:
        if self.dtype == "auto":
            return M.default_dtype(self.torch_device())
        return getattr(torch, self.dtype)

    def burst_policies(self) -> list[BurstEviction]:
        """The lab's press first, then its tuning table: burst eviction with ``n_sink`` sinks."""
        return [BurstEviction(self.n_sink, capacity, float(ratio)) for capacity, ratio in self.burst_configs]

    def quant_policies(self) -> dict[str, list[StreamingLLM]]:
        """The bit-width comparison of notebook 03, StreamingLLM with ``n_sink`` sinks: ``same tokens`` (a cache of
        ``quant_budget`` tokens at 16 bits and at each of ``quant_bits``), ``equal bytes`` (at ``b`` bits the cache
        that fits the 16-bit one's codes: ``16 / b`` times the tokens) and ``sinks quantized`` (the same-token caches
        with their sinks quantized too). Empty without ``quant_bits``."""
        if not self.quant_bits:
            return {}
        budget, s = self.quant_budget, self.n_sink
        return {"same tokens": [StreamingLLM(s, budget - s)] + [StreamingLLM(s, budget - s, bits=b)
                                                                for b in self.quant_bits],
                "equal bytes": [StreamingLLM(s, budget - s)] + [StreamingLLM(s, budget * 16 // b - s, bits=b)
                                                                for b in self.quant_bits],
                "sinks quantized": [StreamingLLM(s, budget - s, bits=b, quantize_sinks=True) for b in self.quant_bits]
                if s else []}

    def h2o_policies(self, budget: int) -> list:
        """H2O at ``budget`` tokens, once per ``h2o_heavy_shares`` (heavy hitters ``round(share * budget)``, at least
        one of each kind)."""
        splits = [min(budget - 1, max(1, round(share * budget))) for share in self.h2o_heavy_shares]
        return [H2O(heavy, budget - heavy) for heavy in dict.fromkeys(splits)]

    def streaming_policy(self) -> StreamingLLM:
        return StreamingLLM(self.n_sink, self.window, self.pos_shift)

    def tokenizer_name(self) -> str:
        return self.tokenizer or self.model

    def trained_length(self) -> int:
        """The sequence length the model was trained at: the micro model's card (it was trained at 512 under a
        config that allows 2048), else the config's ``max_position_embeddings`` (2048 for Pythia, 8192 for
        SmolLM2)."""
        if self.model in M.MICRO_NAMES:
            return json.loads((M.MICRO_DIR / "card.json").read_text())["train_seq_len"]
        return M.load_config(self.model).max_position_embeddings

    def save(self) -> None:
        self.run_path.mkdir(parents=True, exist_ok=True)
        (self.run_path / "config.json").write_text(json.dumps(dataclasses.asdict(self), indent=1))


def dry_run_values(values: dict) -> dict:
    """A profile's values turned into its dry run: random weights of a small Pythia shape on CPU, the embedded text
    in place of each dataset, cache sizes divided by 4 and token counts capped, every parameter still set. Figures
    are not exported to ``figures/``: a dry run measures nothing worth keeping."""
    v = dict(values)
    div = DRY_RUN_CACHE_DIVISOR
    v.update(model=DRY_RUN_MODEL, tokenizer=DRY_RUN_TOKENIZER, device="cpu", device_map=None, export_figures=False)
    if v.get("dtype") not in (None, "auto", "float32"):
        v["dtype"] = "bfloat16"  # the profile's half precision, in the half type CPUs compute well
    v["datasets"] = [DRY_RUN_CORPORA[i % len(DRY_RUN_CORPORA)] for i in range(len(v.get("datasets", [1])))]
    v["long_stream_corpus"] = DRY_RUN_CORPORA[-1]
    v["generation_prompt"] = None
    n_sink, window = v.get("n_sink", 4), v.get("window", 252)
    v["window"] = max(8, (n_sink + window) // div - n_sink)
    v["sweep_cache_sizes"] = sorted({max(16, c // div) for c in v.get("sweep_cache_sizes", [64])})
    v["sweep_scored_cache_sizes"] = sorted({max(16, c // div) for c in v.get("sweep_scored_cache_sizes", [])})
    v["sweep_sink_cache"] = max(16, v.get("sweep_sink_cache", 64) // div)
    v["sweep_sinks"] = [s for s in v.get("sweep_sinks", []) if s < v["sweep_sink_cache"]]
    v["recompute_window"] = max(16, v.get("recompute_window", 256) // div)
    v["quant_budget"] = max(16, v.get("quant_budget", 256) // div)
    v["retrieval_cache"] = max(16, v.get("retrieval_cache", 128) // div)
    v["retrieval_context_tokens"] = sorted({min(256, n) for n in v.get("retrieval_context_tokens", [512])})
    v["retrieval_seeds"] = v["retrieval_scored_seeds"] = 1
    v["recall_turns"] = 0  # the embedded tokenizer has no chat template
    v["head_split_tokens"] = min(256, v.get("head_split_tokens", 1024))
    v["head_split_seeds"] = 1
    v["head_split_scored_seeds"] = min(1, v.get("head_split_scored_seeds", 0))
    v["harness_seeds"] = min(1, v.get("harness_seeds", 0))
    v["burst_configs"] = [[max(16, capacity // div), ratio] for capacity, ratio in v.get("burst_configs", [[256, 0.7]])]
    for name, cap in DRY_RUN_CAPS.items():
        v[name] = min(v.get(name, cap), cap)
    # the sweep's stream a quarter past its largest cache (token-mode policies pay a step per token)
    v["sweep_tokens"] = min(v["sweep_tokens"], max(512, max(v["sweep_cache_sizes"], default=0) * 5 // 4))
    return v
