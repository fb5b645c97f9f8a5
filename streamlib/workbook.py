"""What the notebooks cannot do without: the run's configuration (profiles, parameters, dry runs) and a
:class:`Run` that records measurements, keeps curves and saves figures and tables. The measuring itself is done in
the notebooks, with the package's primitives (``quality.measure_perplexity``, ``speed.measure_generation``, ...).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
import yaml

from . import models as M
from .data import repo_root
from .plots import family_label
from .policies import StreamingLLM
from .report import CAPTIONS, write_report  # noqa: F401 - the notebooks call them as wb.write_report, wb.CAPTIONS
from .results import (Measurement, ResultsStore, comparison_table, config_key, in_display_units, load_results,
                      metrics_wide, policy_from_row, read_rows, to_latex, to_markdown)

PROFILES_DIR = repo_root() / "profiles"
NOTEBOOKS = ["00_download", "01_baseline", "02_streaming", "03_sweep", "04_long_stream", "05_generation",
             "06_report"]
TOKEN_COUNTS = ("ppl_tokens", "speed_prompt_tokens", "speed_new_tokens", "flops_tokens", "sweep_tokens",
                "long_stream_tokens", "trace_tokens", "trace_every", "max_dense_tokens", "recompute_window",
                "sweep_sink_cache", "generation_prompt_tokens", "generation_new_tokens", "recompute_tokens")

# A dry run: the profile's chain, every notebook and code path, offline on CPU in a few minutes.
DRY_RUN_MODEL = "random:pythia-14m"  # random weights of the smallest Pythia shape
DRY_RUN_TOKENIZER = "micro"  # the embedded tokenizer (4096 ids, all valid for Pythia's 50304-token vocabulary)
DRY_RUN_CORPORA = ["kjv-heldout", "kjv-train"]  # embedded text in place of the profile's datasets
DRY_RUN_CACHE_DIVISOR = 4  # cache sizes and windows shrink by this
DRY_RUN_CAPS = {"ppl_tokens": 512, "sweep_tokens": 1024, "long_stream_tokens": 2048, "trace_tokens": 512,
                "trace_every": 32, "max_dense_tokens": 2048, "recompute_tokens": 256, "speed_prompt_tokens": 256, "speed_new_tokens": 16,
                "speed_repeats": 1, "flops_tokens": 128, "generation_prompt_tokens": 32,
                "generation_new_tokens": 384}


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
    ppl_tokens: int = 2048
    n_sink: int = 4
    window: int = 252
    pos_shift: bool = True
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
    export_figures: bool = False
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
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"profile {str(path)!r} is not valid YAML: {err}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"profile {str(path)!r} must be a mapping of parameter: value; got {type(values).__name__}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown parameters {unknown}; known: {sorted(known)}")
        try:
            if values.get("dry_run"):
                values = dry_run_values(values)
            cfg = cls(**values)
            cfg.validate()
        except (TypeError, ValueError) as err:
            raise ConfigError(f"profile {str(profile)!r}: {err}") from None
        return cfg

    def validate(self) -> None:
        for name in TOKEN_COUNTS + ("speed_repeats",):
            v = getattr(self, name)
            minimum = 1 if name == "speed_repeats" else 2
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}; got {v!r}")
        StreamingLLM(self.n_sink, self.window, self.pos_shift)  # raises with the parameter's name
        for c in self.sweep_cache_sizes:
            if isinstance(c, bool) or not isinstance(c, int) or c < 9:
                raise ValueError(f"sweep_cache_sizes must hold integers >= 9; got {c!r}")
        for c in self.sweep_scored_cache_sizes:
            if isinstance(c, bool) or not isinstance(c, int) or c < 4:
                raise ValueError(f"sweep_scored_cache_sizes must hold integers >= 4; got {c!r}")
        for s in self.sweep_sinks:
            if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < self.sweep_sink_cache:
                raise ValueError(f"sweep_sinks must hold integers in [0, sweep_sink_cache); got {s!r}")
        for name in ("compare_compiled", "sweep_recompute", "pos_shift", "export_figures"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false; got {getattr(self, name)!r}")
        for name in ("chat_turns", "chat_new_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "chat_turns" else 1):
                raise ValueError(f"{name} must be an integer >= {0 if name == 'chat_turns' else 1}; got {v!r}")
        for b in self.speed_batch_sizes:
            if isinstance(b, bool) or not isinstance(b, int) or b < 1:
                raise ValueError(f"speed_batch_sizes must hold integers >= 1; got {b!r}")
        if self.device_map not in (None, "auto"):
            raise ValueError(f"device_map must be None or 'auto'; got {self.device_map!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be one of 'auto', 'cpu', 'cuda'; got {self.device!r}")
        if self.dtype not in ("auto", "float32", "float16", "bfloat16"):
            raise ValueError(f"dtype must be one of 'auto', 'float32', 'float16', 'bfloat16'; got {self.dtype!r}")
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
        return M.default_device() if self.device == "auto" else torch.device(self.device)

    def torch_dtype(self) -> torch.dtype:
        if self.dtype == "auto":
            return M.default_dtype(self.torch_device())
        return getattr(torch, self.dtype)

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
    for name, cap in DRY_RUN_CAPS.items():
        v[name] = min(v.get(name, cap), cap)
    return v


# ------------------------------------------------------------------------------------------------------ a run --


class Run:
    """One run directory: its records (``results.jsonl``), curves (``curves/``), figures and tables.

    ``run.measure(group, policy, compute, **fields)`` runs ``compute()`` once per configuration and records what it
    returns; a configuration already recorded is read back instead (unless ``cfg.force``), so a notebook re-runs
    in seconds and a killed run resumes where it stopped.
    """

    def __init__(self, cfg: Config):
        self.cfg = cfg
        cfg.save()
        device = cfg.torch_device()
        gpu = torch.cuda.get_device_name(device) if device.type == "cuda" and torch.cuda.is_available() else ""
        self.context = {"model": cfg.model, "dtype": str(cfg.torch_dtype()).replace("torch.", ""),
                        "device": device.type, "gpu": gpu, "dry_run": cfg.dry_run}
        self.store = ResultsStore(cfg.run_path, self.context)
        self.path = cfg.run_path

    # -- measuring --------------------------------------------------------------------------------------------
    def fields(self, group: str, policy, **more) -> dict:
        return {"group": group, "policy": policy.params(), "model": self.cfg.model,
                "dtype": self.context["dtype"], "device": self.context["device"],
                **{k: int(v) if isinstance(v, torch.Tensor) else v for k, v in more.items()}}

    def measure(self, group: str, policy, compute, **fields) -> Measurement:
        """``compute()`` returns a :class:`~streamlib.results.Measurement`; its rows go to the records and its
        curve to ``curves/<group>-<key>.csv`` with the policy's columns. Failures become ``failed`` records."""
        full = self.fields(group, policy, **fields)
        key = config_key(**full)
        if not self.cfg.force and key in self.store.done_keys():
            result = self._read_back(group, key)
        else:
            holder: dict = {}
            status = self.store.measure(full, lambda: holder.setdefault("m", compute()).rows, force=True)
            if status == "ok":
                result = holder["m"]
                if result.curve is not None:  # returned as it is read back: with the policy's columns
                    result.curve = self._save_curve(group, key, policy, fields, result.curve)
            else:
                error = next((r.get("error", "") for r in reversed(read_rows(self.store.path)) if r.get("key") == key), "")
                result = Measurement(status="failed", error=error)
                print(f"FAILED {group} {policy.label()}: {error}", file=sys.stderr)
        print(f"{group:>10} | {policy.label():<28} | {_describe(fields):<40} | {result.status}")
        return result

    def _read_back(self, group: str, key: str) -> Measurement:
        rows = {}
        for r in read_rows(self.store.path):
            if r.get("key") == key and r.get("status") == "ok":
                rows[r["metric"]] = (r["metric"], r["value"], r.get("unit", ""))
        path = self.path / "curves" / f"{group}-{key}.csv"
        curve = pd.read_csv(path) if path.exists() else None
        return Measurement(rows=list(rows.values()), curve=curve, status="skipped")

    def _save_curve(self, group, key, policy, fields, curve: pd.DataFrame) -> pd.DataFrame:
        p = policy.params()
        columns = {"key": key, "label": policy.label(), "policy": p["policy"], "n_sink": p.get("n_sink"),
                   "window": p.get("window"), "pos_shift": p.get("pos_shift", True),
                   **{k: v for k, v in fields.items() if not isinstance(v, (list, dict))}}
        out = curve.copy()
        for name, value in reversed(list(columns.items())):
            if name not in out:
                out.insert(0, name, value)
        path = self.path / "curves" / f"{group}-{key}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        out.to_csv(path, index=False)
        return out

    # -- reading back -----------------------------------------------------------------------------------------
    def records(self) -> pd.DataFrame:
        return load_results(self.path)

    def metrics(self, group: str) -> pd.DataFrame:
        """One row per measurement of ``group``, one column per metric (see ``results.metrics_wide``)."""
        return metrics_wide(self.records(), group)

    def curves(self, group: str) -> pd.DataFrame:
        """Every curve recorded for ``group``, concatenated (empty when there is none)."""
        keys = {r.get("key") for r in read_rows(self.store.path) if r.get("status") == "ok"}
        frames = [pd.read_csv(p) for p in sorted((self.path / "curves").glob(f"{group}-*.csv"))
                  if p.stem.rsplit("-", 1)[1] in keys]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    # -- writing figures and tables ---------------------------------------------------------------------------
    def figure(self, fig, name: str) -> None:
        """Save ``fig`` as ``figures/<name>.pdf`` and ``.png`` in the run; the report's figures (``fig*``) go to the
        repository's ``figures/`` too when ``export_figures``. A dry run's figures say so across the top. In a
        notebook the figure then shows inline, below the cell."""
        from . import plots

        if self.cfg.dry_run:
            plots.mark_dry_run(fig)
        export = self.cfg.export_figures and name.startswith("fig")
        dirs = [self.path / "figures"] + ([repo_root() / "figures"] if export else [])
        plots.save_figure(fig, name, *dirs, close=not _in_notebook())

    def table(self, table: pd.DataFrame, name: str) -> pd.DataFrame:
        """Write ``tables/<name>.md`` and ``.tex``; returns the table for display."""
        out = self.path / "tables"
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.md").write_text(to_markdown(table) + "\n")
        (out / f"{name}.tex").write_text(to_latex(table) + "\n")
        return table


def _describe(fields: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in fields.items())[:40]


def _in_notebook() -> bool:
    return "ipykernel" in sys.modules


def published_results() -> pd.DataFrame:
    """The published numbers (paper tables, attention_sinks benchmarks, the lab report) shipped with the package."""
    return pd.read_csv(Path(__file__).parent / "reference" / "published_results.csv",
                       dtype={"eval_tokens": "Int64", "n_sink": "Int64", "window": "Int64"})


# ------------------------------------------------------------------------------------ tables from the records --


def comparison(run: Run) -> pd.DataFrame:
    """The lab report's table, baseline (Dense) vs the run's StreamingLLM: perplexity per dataset, TTFT, TPOT,
    throughput, KV bytes and peak memory at the first batch size, FLOPs per token over the long stream. In the units
    people read: ms, MiB or GiB, GFLOP. Each row pairs measurements of the same setting (``measured on``), the run's
    own setting first (``results.comparison_table``)."""
    cfg, df = run.cfg, run.records()
    streaming = cfg.streaming_policy().params()
    tables = []
    for corpus in cfg.datasets:
        t = comparison_table(df[(df["group"] == "ppl") & (df["dataset"] == corpus)], {"policy": "dense"}, streaming,
                             ["ppl"], prefer={"n_tokens": cfg.ppl_tokens})
        t["metric"] = f"ppl ({corpus})"
        tables.append(t)
    speed = df[(df["group"] == "speed") & (df["batch_size"] == cfg.speed_batch_sizes[0])] if "batch_size" in df else df[:0]
    memory = [m for m in ("gen_peak_allocated_mem", "gen_peak_rss_mem") if m in set(speed["metric"])]
    tables.append(comparison_table(speed, {"policy": "dense"}, streaming,
                                   ["ttft", "tpot_mean", "decode_throughput", "kv_bytes_after_prompt"] + memory,
                                   prefer={"prompt_tokens": cfg.speed_prompt_tokens, "new_tokens": cfg.speed_new_tokens}))
    tables.append(comparison_table(df[df["group"] == "flops"], {"policy": "dense"}, streaming,
                                   ["flops_stream_per_token"], prefer={"tokens": cfg.long_stream_tokens}))
    table = in_display_units(pd.concat(tables, ignore_index=True))
    names = {"ttft": "TTFT", "tpot_mean": "TPOT (mean)", "decode_throughput": "decode throughput",
             "kv_bytes_after_prompt": "KV cache after the prompt", "gen_peak_allocated_mem": "peak GPU memory",
             "gen_peak_rss_mem": "peak RSS", "flops_stream_per_token": "FLOPs per token (long stream)"}
    table["metric"] = [names.get(m, m) for m in table["metric"]]
    return table.rename(columns={"streamingllm": cfg.streaming_policy().label()})


def latest_of_each(wide: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """The latest measurement for each value of ``by`` (a re-run with other settings leaves older records behind)."""
    if wide.empty:
        return wide
    return wide.sort_values("timestamp", kind="stable").drop_duplicates(by, keep="last")


def _same_setting(wide: pd.DataFrame, **setting) -> pd.DataFrame:
    """The rows measured with these field values: one table compares policies on one prompt and token count."""
    for name, value in setting.items():
        wide = wide[wide[name] == value] if name in wide else wide.iloc[0:0]
    return wide


def speed_table(run: Run) -> pd.DataFrame:
    """TTFT, TPOT (ms), decode throughput (tok/s), peak memory and KV cache (MiB) per policy and batch size, all on
    the run's prompt and generation lengths."""
    cfg = run.cfg
    wide = _same_setting(run.metrics("speed"), prompt_tokens=cfg.speed_prompt_tokens, new_tokens=cfg.speed_new_tokens)
    wide = latest_of_each(wide, ["label", "batch_size"])
    if wide.empty:
        return wide
    mem = "gen_peak_allocated_mem" if "gen_peak_allocated_mem" in wide else "gen_peak_rss_mem"
    out = wide[["label", "policy", "pos_shift", "batch_size"]].copy()
    out["pos_shift"] = out["pos_shift"].fillna(True).astype(bool)
    out["ttft_ms"] = wide["ttft"] * 1e3
    out["tpot_ms"] = wide["tpot_mean"] * 1e3
    out["throughput"] = wide["decode_throughput"]
    out["peak_mem_mib"] = wide[mem] / 2**20
    out["kv_mib"] = wide["kv_bytes_after_prompt"] / 2**20
    return out.sort_values(["batch_size", "label"]).reset_index(drop=True)


def decode_modes_table(run: Run) -> pd.DataFrame:
    """Eager against compiled decoding (notebook 02): TTFT and TPOT (ms) per policy, batch 1, on the run's prompt and
    generation lengths."""
    cfg = run.cfg
    wide = _same_setting(run.metrics("decode_modes"), prompt_tokens=cfg.speed_prompt_tokens,
                         new_tokens=cfg.speed_new_tokens)
    wide = latest_of_each(wide, ["label", "compiled"])
    if wide.empty:
        return wide
    out = wide[["label", "compiled"]].copy()
    out["compiled"] = out["compiled"].astype(bool)
    out["ttft_ms"] = wide["ttft"] * 1e3
    out["tpot_ms"] = wide["tpot_mean"] * 1e3
    return out.sort_values(["label", "compiled"]).reset_index(drop=True)


SWEEP_SINKS = 4  # the sink count of the cache-size sweep (the paper's choice)


def sweep_table(run: Run) -> pd.DataFrame:
    """One row per swept policy: perplexity on the sweep stream, KV bytes after the prompt (MiB), TPOT (ms) and the
    cache size in tokens; ``sweep`` says whether the row belongs to the cache-size sweep, the sink sweep or both."""
    cfg = run.cfg
    ppl = latest_of_each(_same_setting(run.metrics("ppl"), n_tokens=cfg.sweep_tokens, dataset=cfg.datasets[0]),
                         ["label"])
    speed = latest_of_each(_same_setting(run.metrics("sweep_speed"), prompt_tokens=cfg.speed_prompt_tokens), ["label"])
    if ppl.empty or speed.empty:
        return pd.DataFrame()
    cols = ["policy", "n_sink", "window", "pos_shift"]
    speed = speed[["label", "tpot_mean", "kv_bytes_after_prompt"]]
    out = ppl[["label"] + cols + ["ppl"]].merge(speed, on="label", how="inner")
    policies = [policy_from_row(r) for r in ppl.set_index("label").loc[out["label"]].reset_index().to_dict("records")]
    out["pos_shift"] = out["pos_shift"].fillna(True).astype(bool)
    out["n_sink"] = out["n_sink"].fillna(0).astype(int)
    out["cache_size"] = [p.budget for p in policies]
    out["kv_mib"] = out["kv_bytes_after_prompt"] / 2**20
    out["tpot_ms"] = out["tpot_mean"] * 1e3
    out.insert(1, "family", [family_label(p) for p in policies])
    in_cache = out["cache_size"].isin(cfg.sweep_cache_sizes) & ((out["policy"] != "streamingllm")
                                                                 | (out["n_sink"] == SWEEP_SINKS))
    in_sinks = (out["policy"] == "streamingllm") & out["pos_shift"] & (out["cache_size"] == cfg.sweep_sink_cache)
    out["sweep"] = ["cache+sinks" if a and b else "cache" if a else "sinks" if b else "" for a, b in zip(in_cache, in_sinks)]
    return out[out["sweep"] != ""].drop(columns=["tpot_mean", "kv_bytes_after_prompt"]).reset_index(drop=True)
