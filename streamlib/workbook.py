"""The steps of the notebook chain. Each notebook builds a :class:`Config` from its parameters and calls one step;
every number goes into the run's results file (``streamlib.results``), every curve into ``<run_dir>/curves``."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
import yaml

from . import models as M
from .data import corpus_text, load_stream, repo_root, tokenize_stream
from .generation import prefill
from .policies import Dense, Recompute, StreamingLLM, Window
from .quality import perplexity
from .results import ResultsStore, comparison_table, load_results, to_latex, to_markdown  # noqa: F401 (notebooks use to_markdown)
from .speed import (calflops_forward, flops_per_token, kv_cache_bytes, peak_memory, stream_flops, stream_trace,
                    time_generation)

PROFILES_DIR = repo_root() / "profiles"
NOTEBOOKS = ["00_download", "01_baseline", "02_streaming", "03_sweep", "04_long_stream", "05_report"]


@dataclass
class Config:
    """Every parameter of the chain, with the smoke profile's values as defaults."""

    profile: str = "smoke"
    run_dir: str = "runs/smoke"
    model: str = "micro"
    device: str = "auto"  # auto | cpu | cuda
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
    sweep_tokens: int = 2048
    long_stream_corpus: str = "kjv-heldout"
    long_stream_tokens: int = 8192
    trace_tokens: int = 2048
    trace_every: int = 64
    max_dense_tokens: int = 8192
    recompute_window: int = 256
    export_figures: bool = False
    force: bool = False

    @classmethod
    def load(cls, profile: str = "smoke", **overrides) -> "Config":
        """A profile's YAML, then ``overrides`` (notebook parameters; ``None`` means "keep the profile's")."""
        path = Path(profile) if str(profile).endswith((".yaml", ".yml")) else PROFILES_DIR / f"{profile}.yaml"
        if not path.is_file():
            names = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
            raise ValueError(f"profile must be one of {names} or a YAML path; got {profile!r}")
        values = yaml.safe_load(path.read_text()) or {}
        values.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown parameters {unknown}; known: {sorted(known)}")
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        for name in ("ppl_tokens", "speed_prompt_tokens", "speed_new_tokens", "speed_repeats", "flops_tokens",
                     "sweep_tokens", "long_stream_tokens", "trace_tokens", "trace_every", "max_dense_tokens",
                     "recompute_window", "sweep_sink_cache"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 2:
                raise ValueError(f"{name} must be an integer >= 2; got {v!r}")
        StreamingLLM(self.n_sink, self.window, self.pos_shift)  # raises with the parameter's name
        for c in self.sweep_cache_sizes:
            if isinstance(c, bool) or not isinstance(c, int) or c < 9:
                raise ValueError(f"sweep_cache_sizes must hold integers >= 9; got {c!r}")
        for s in self.sweep_sinks:
            if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < self.sweep_sink_cache:
                raise ValueError(f"sweep_sinks must hold integers in [0, sweep_sink_cache); got {s!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be one of 'auto', 'cpu', 'cuda'; got {self.device!r}")
        if self.dtype not in ("auto", "float32", "float16", "bfloat16"):
            raise ValueError(f"dtype must be one of 'auto', 'float32', 'float16', 'bfloat16'; got {self.dtype!r}")

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

    def save(self) -> None:
        self.run_path.mkdir(parents=True, exist_ok=True)
        (self.run_path / "config.json").write_text(json.dumps(dataclasses.asdict(self), indent=1))


# ---------------------------------------------------------------------------------------------------- helpers --

class Session:
    """A loaded model, its tokenizer and the run's results store."""

    def __init__(self, cfg: Config, attn_implementation: str = "sdpa"):
        self.cfg = cfg
        cfg.save()
        self.model = M.load_model(cfg.model, device=cfg.torch_device(), dtype=cfg.torch_dtype(),
                                  attn_implementation=attn_implementation)
        self.tokenizer = M.load_tokenizer(cfg.model)
        info = M.describe(self.model)
        self.store = ResultsStore(cfg.run_path, {k: info[k] for k in ("model", "dtype", "device", "gpu")})
        self._streams: dict[tuple[str, int], torch.Tensor] = {}

    def stream(self, corpus: str, n_tokens: int) -> torch.Tensor:
        key = (corpus, n_tokens)
        if key not in self._streams:
            self._streams[key] = load_stream(corpus, self.tokenizer, max_tokens=n_tokens)
        return self._streams[key]

    def fields(self, group: str, policy, **more) -> dict:
        return {"group": group, "policy": policy.params(), "model": self.cfg.model, "dtype": str(self.cfg.torch_dtype()),
                "device": self.cfg.torch_device().type, **more}

    def measure(self, fields: dict, fn) -> str:
        status = self.store.measure(fields, fn, force=self.cfg.force)
        print(f"{fields['group']:>10} {fields['policy'].get('policy', ''):>12} {json.dumps({k: v for k, v in fields.items() if k not in ('group', 'policy', 'model', 'dtype', 'device')})}: {status}")
        return status


def save_curve(cfg: Config, name: str, df: pd.DataFrame) -> Path:
    path = cfg.run_path / "curves" / f"{name}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    return path


def load_curve(cfg: Config, name: str) -> pd.DataFrame | None:
    path = cfg.run_path / "curves" / f"{name}.csv"
    return pd.read_csv(path) if path.exists() else None


def _policy_row(policy) -> dict:
    p = policy.params()
    return {"label": policy.label(), "policy": p["policy"], "pos_shift": p.get("pos_shift", True)}


# ------------------------------------------------------------------------------------------------------ steps --

def download(cfg: Config) -> dict:
    """00: fetch the model and datasets when they are on the Hub and missing; check that everything loads."""
    from .data import hub_reachable

    online = hub_reachable()
    report = {"model": cfg.model, "hub_reachable": online, "cached": M.is_cached(cfg.model)}
    if not report["cached"] and online and not cfg.model.startswith("random:"):
        M.download(cfg.model)
        report["downloaded"] = True
    tok = M.load_tokenizer(cfg.model)
    report["datasets"] = {}
    for corpus in dict.fromkeys(list(cfg.datasets) + [cfg.long_stream_corpus]):
        text = corpus_text(corpus)  # downloads into data/ when online, reads the cache when not
        report["datasets"][corpus] = {"characters": len(text)}
        if tok is not None:
            report["datasets"][corpus]["tokens_kept"] = int(tokenize_stream(tok, text, max_tokens=max(cfg.ppl_tokens, cfg.long_stream_tokens)).shape[1])
    return report


def _ppl_rows(session: Session, policy, corpus: str, n_tokens: int, curve_name: str | None = None):
    ids = session.stream(corpus, n_tokens)

    def run():
        holder = {}
        mem = peak_memory(lambda: holder.setdefault("r", perplexity(session.model, ids, policy, progress=True)),
                          session.model.device)
        result = holder["r"]
        if curve_name:
            save_curve(session.cfg, curve_name, pd.DataFrame({
                **{k: [v] * result.n_tokens for k, v in _policy_row(policy).items()},
                "position": range(1, result.n_tokens + 1), "nll": result.nll.numpy()}))
        rows = [("ppl", result.ppl, ""), ("mean_nll", result.mean_nll, "nats")]
        rows += [(f"ppl_{k}_mem", v, "bytes") for k, v in mem.items()]
        return rows

    more = {"curve": curve_name} if curve_name else {}  # a curve is its own measurement: never skipped for a bare ppl
    return session.measure(session.fields("ppl", policy, dataset=corpus, n_tokens=int(ids.shape[1]), **more), run)


def _kv_after_prompt(model, policy, prompt) -> list:
    """KV-cache bytes once the prompt is in the cache (Recompute keeps none between tokens)."""
    if isinstance(policy, Recompute):
        return []
    cache = policy.make_cache(model)
    prefill(model, prompt, cache)
    return [("kv_bytes_after_prompt", kv_cache_bytes(cache), "bytes")]


def _speed_rows(session: Session, policy):
    cfg = session.cfg
    vocab = session.model.config.vocab_size
    for batch in cfg.speed_batch_sizes:
        prompt = torch.randint(0, vocab, (batch, cfg.speed_prompt_tokens), generator=torch.Generator().manual_seed(0))

        def run(prompt=prompt):
            holder = {}
            mem = peak_memory(lambda: holder.setdefault(
                "r", time_generation(session.model, policy, prompt, cfg.speed_new_tokens, repeats=cfg.speed_repeats)),
                session.model.device)
            rows = [(m, mean, unit) for m, (mean, _, unit) in holder["r"].summary().items()]
            rows += [(m + "_std", std, unit) for m, (_, std, unit) in holder["r"].summary().items() if std]
            rows += [(f"gen_{k}_mem", v, "bytes") for k, v in mem.items()]
            return rows + _kv_after_prompt(session.model, policy, prompt)

        session.measure(session.fields("speed", policy, batch_size=batch, prompt_tokens=cfg.speed_prompt_tokens,
                                       new_tokens=cfg.speed_new_tokens), run)


def _flops_rows(session: Session, policy):
    cfg = session.cfg
    mcfg = session.model.config

    def run():
        rows = [("flops_per_token_at_prompt_end", flops_per_token(
            mcfg, cfg.speed_prompt_tokens + 1 if policy.budget is None else min(cfg.speed_prompt_tokens, policy.budget) + 1), "FLOP"),
            ("flops_stream_per_token", stream_flops(mcfg, cfg.long_stream_tokens, policy) / cfg.long_stream_tokens, "FLOP")]
        if isinstance(policy, Dense):
            eager = M.load_model(cfg.model, device=cfg.torch_device(), dtype=cfg.torch_dtype(), attn_implementation="eager")
            ids = torch.randint(0, mcfg.vocab_size, (1, cfg.flops_tokens))
            rows.append(("calflops_forward", calflops_forward(eager, ids.to(eager.device)), "FLOP"))
            del eager
        return rows

    session.measure(session.fields("flops", policy, tokens=cfg.long_stream_tokens), run)


def _attention_curve(session: Session):
    from .attention import first_token_attention, uniform_share

    cfg = session.cfg
    eager = M.load_model(cfg.model, device=cfg.torch_device(), dtype=cfg.torch_dtype(), attn_implementation="eager")
    length = min(512, cfg.ppl_tokens)
    ids = session.stream(cfg.datasets[0], cfg.ppl_tokens)[:, :length]
    share = first_token_attention(eager, ids, n_first=4)
    rows = [{"layer": layer, "token": tok, "weight": float(share[layer, tok])}
            for layer in range(share.shape[0]) for tok in range(share.shape[1])]
    df = pd.DataFrame(rows)
    df["uniform"] = uniform_share(length)
    save_curve(cfg, "attention_first_tokens", df)
    del eager
    return df


def baseline(cfg: Config) -> pd.DataFrame:
    """01: dense attention: perplexity per dataset, memory, FLOPs, TTFT / TPOT / throughput, attention on the first
    tokens."""
    session = Session(cfg)
    policy = Dense()
    for corpus in cfg.datasets:
        _ppl_rows(session, policy, corpus, cfg.ppl_tokens)
    _speed_rows(session, policy)
    _flops_rows(session, policy)
    _attention_curve(session)
    return load_results(cfg.run_path)


def streaming(cfg: Config) -> pd.DataFrame:
    """02: the same measurements under StreamingLLM(n_sink, window, pos_shift); returns the comparison table."""
    session = Session(cfg)
    policy = cfg.streaming_policy()
    for corpus in cfg.datasets:
        _ppl_rows(session, policy, corpus, cfg.ppl_tokens)
    _speed_rows(session, policy)
    _flops_rows(session, policy)
    return report_table(cfg)


def report_table(cfg: Config) -> pd.DataFrame:
    df = load_results(cfg.run_path)
    policy = cfg.streaming_policy().params()
    tables = []
    for corpus in cfg.datasets:
        t = comparison_table(df[df["dataset"] == corpus], {"policy": "dense"},
                             {k: policy[k] for k in ("policy", "n_sink", "window", "pos_shift")}, ["ppl"])
        t["metric"] = f"ppl ({corpus})"
        tables.append(t)
    batch = cfg.speed_batch_sizes[0]
    speed = df[(df["batch_size"] == batch)] if "batch_size" in df else df.iloc[0:0]
    tables.append(comparison_table(speed, {"policy": "dense"},
                                   {k: policy[k] for k in ("policy", "n_sink", "window", "pos_shift")},
                                   ["ttft", "tpot_mean", "decode_throughput", "kv_bytes_after_prompt"]
                                   + [m for m in ("gen_peak_allocated_mem", "gen_peak_rss_mem") if m in set(speed["metric"])]))
    tables.append(comparison_table(df, {"policy": "dense"},
                                   {k: policy[k] for k in ("policy", "n_sink", "window", "pos_shift")},
                                   ["flops_stream_per_token"]))
    table = pd.concat(tables, ignore_index=True)
    out = cfg.run_path / "tables"
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.md").write_text(to_markdown(table) + "\n")
    (out / "comparison.tex").write_text(to_latex(table) + "\n")
    return table


def sweep_policies(cfg: Config) -> list:
    policies = []
    for c in cfg.sweep_cache_sizes:
        policies += [Window(c), StreamingLLM(min(4, c - 1), c - min(4, c - 1), True),
                     StreamingLLM(min(4, c - 1), c - min(4, c - 1), False)]
        if cfg.sweep_recompute:
            policies.append(Recompute(c))
    policies += [StreamingLLM(s, cfg.sweep_sink_cache - s, True) for s in cfg.sweep_sinks]
    return list(dict.fromkeys(policies))


def sweep(cfg: Config) -> pd.DataFrame:
    """03: perplexity, KV bytes and decode latency over cache sizes x sink counts x policies."""
    session = Session(cfg)
    corpus = cfg.datasets[0]
    vocab = session.model.config.vocab_size
    prompt = torch.randint(0, vocab, (1, cfg.speed_prompt_tokens), generator=torch.Generator().manual_seed(0))
    for policy in sweep_policies(cfg):
        _ppl_rows(session, policy, corpus, cfg.sweep_tokens)

        def run(policy=policy):
            r = time_generation(session.model, policy, prompt, min(cfg.speed_new_tokens, 32), repeats=1)
            return [("tpot_mean", r.summary()["tpot_mean"][0], "s")] + _kv_after_prompt(session.model, policy, prompt)

        session.measure(session.fields("sweep_speed", policy, prompt_tokens=cfg.speed_prompt_tokens), run)
    return load_results(cfg.run_path)


def long_stream(cfg: Config) -> None:
    """04: one long text far past the trained length: NLL per position (all policies), then memory and per-token
    latency per position (token by token)."""
    session = Session(cfg)
    ids = session.stream(cfg.long_stream_corpus, cfg.long_stream_tokens)
    policies = [Dense(), Window(cfg.window + cfg.n_sink), Recompute(cfg.recompute_window), cfg.streaming_policy()]
    curves = []
    for policy in policies:
        stream_ids = ids[:, : cfg.max_dense_tokens] if isinstance(policy, Dense) else ids
        if isinstance(policy, Recompute):
            stream_ids = ids[:, : cfg.trace_tokens]  # O(window^2) per token: a shorter stretch is enough
        name = f"nll_{_slug(policy)}"
        _ppl_rows(session, policy, cfg.long_stream_corpus, int(stream_ids.shape[1]), curve_name=name)
        curve = load_curve(cfg, name)
        if curve is not None:
            curves.append(curve)
    trace_ids = ids[:, : cfg.trace_tokens]
    for policy in policies:
        name = f"trace_{_slug(policy)}"

        def run(policy=policy, name=name):
            rows = stream_trace(session.model, trace_ids, policy, every=cfg.trace_every, max_dense_tokens=cfg.max_dense_tokens)
            df = pd.DataFrame(rows)
            for k, v in _policy_row(policy).items():
                df[k] = v
            save_curve(cfg, name, df)
            return [("trace_final_kv_bytes", rows[-1]["kv_bytes"], "bytes"),
                    ("trace_final_step_s", rows[-1]["step_s"], "s"),
                    ("trace_first_step_s", rows[0]["step_s"], "s")]

        session.measure(session.fields("trace", policy, dataset=cfg.long_stream_corpus,
                                       n_tokens=int(trace_ids.shape[1]), every=cfg.trace_every), run)
    traces = [load_curve(cfg, f"trace_{_slug(p)}") for p in policies]
    if any(t is not None for t in traces):
        save_curve(cfg, "traces", pd.concat([t for t in traces if t is not None], ignore_index=True))
    if curves:
        save_curve(cfg, "nll_long_stream", pd.concat(curves, ignore_index=True))


def _slug(policy) -> str:
    return policy.label().replace(" ", "_").replace(",", "").replace("+", "p")


def published_results() -> pd.DataFrame:
    return pd.read_csv(Path(__file__).parent / "reference" / "published_results.csv")


def trained_length(cfg: Config) -> int:
    """The sequence length the model was trained at: the micro model's card, else Pythia's 2048."""
    if cfg.model in M.MICRO_NAMES:
        return json.loads((M.MICRO_DIR / "card.json").read_text())["train_seq_len"]
    return 2048


def _kv_bytes_per_token(model_config, dtype: torch.dtype) -> int:
    return 2 * model_config.num_hidden_layers * model_config.hidden_size * torch.finfo(dtype).bits // 8


def _sweep_frame(cfg: Config, df: pd.DataFrame, per_token_kv: int) -> pd.DataFrame:
    ok = df[df["status"] == "ok"]
    rows = []
    for policy in sweep_policies(cfg):
        p = policy.params()
        sel = ok
        for k in ("policy", "n_sink", "window", "pos_shift"):
            if k in p:
                sel = sel[sel[k] == p[k]]
        ppl = sel[(sel["group"] == "ppl") & (sel["metric"] == "ppl") & (sel["n_tokens"] == cfg.sweep_tokens)]
        tpot = sel[(sel["group"] == "sweep_speed") & (sel["metric"] == "tpot_mean")]
        kv = sel[(sel["group"] == "sweep_speed") & (sel["metric"] == "kv_bytes_after_prompt")]
        kv_bytes = kv["value"].iloc[-1] if not kv.empty else per_token_kv * policy.budget  # Recompute: transient KV
        rows.append({**_policy_row(policy), "n_sink": p.get("n_sink", 0), "cache_size": policy.budget,
                     "ppl": ppl["value"].iloc[-1] if not ppl.empty else float("nan"),
                     "tpot_ms": tpot["value"].iloc[-1] * 1e3 if not tpot.empty else float("nan"),
                     "kv_mib": kv_bytes / 2**20})
    out = pd.DataFrame(rows)
    names = {"dense": "Dense", "window": "Window", "recompute": "Recompute"}
    out["kind_label"] = [names.get(r.policy, "StreamingLLM" + ("" if r.pos_shift else ", no shift"))
                         for r in out.itertuples()]
    return out


def report(cfg: Config) -> dict:
    """05: the figures and tables of the report, from the run's records and curves. Returns {name: [paths]}."""
    from . import plots

    plots.apply_style()
    df = load_results(cfg.run_path)
    fig_dirs = [cfg.run_path / "figures"] + ([repo_root() / "figures"] if cfg.export_figures else [])
    written: dict[str, list] = {}
    nll = load_curve(cfg, "nll_long_stream")
    if nll is not None:
        written["fig1_nll_vs_position"] = plots.save_figure(
            plots.fig_nll_vs_position(nll, trained_length(cfg)), "fig1_nll_vs_position", *fig_dirs)
    traces = load_curve(cfg, "traces")
    if traces is not None:
        written["fig2_memory_vs_position"] = plots.save_figure(
            plots.fig_trace(traces, "kv_bytes", "KV cache (MiB)", "KV-cache memory along the stream", 1 / 2**20),
            "fig2_memory_vs_position", *fig_dirs)
        written["fig3_latency_vs_position"] = plots.save_figure(
            plots.fig_trace(traces, "step_s", "time per token (ms)", "Per-token latency along the stream", 1e3),
            "fig3_latency_vs_position", *fig_dirs)
    ok = df[df["status"] == "ok"]
    per_token_kv = _kv_bytes_per_token(M.load_config(cfg.model), cfg.torch_dtype())
    sweep_df = _sweep_frame(cfg, df, per_token_kv)
    if sweep_df["ppl"].notna().any():
        cache_rows = sweep_df[sweep_df["cache_size"].isin(cfg.sweep_cache_sizes)
                              & ~((sweep_df["policy"] == "streamingllm") & (sweep_df["n_sink"] != min(4, min(cfg.sweep_cache_sizes) - 1)))]
        written["fig4_tradeoff"] = plots.save_figure(plots.fig_tradeoff(cache_rows), "fig4_tradeoff", *fig_dirs)
        sinks = sweep_df[(sweep_df["cache_size"] == cfg.sweep_sink_cache) & (sweep_df["policy"] == "streamingllm")
                         & sweep_df["pos_shift"] & sweep_df["n_sink"].isin(cfg.sweep_sinks)].sort_values("n_sink")
        pub = published_results()
        pub = pub[(pub["table"] == "table2")]
        written["fig5_ppl_vs_sinks"] = plots.save_figure(plots.fig_sinks(sinks, pub), "fig5_ppl_vs_sinks", *fig_dirs)
        save_curve(cfg, "sweep", sweep_df)
    speed = ok[ok["group"] == "speed"].copy()
    if not speed.empty:
        speed[["n_sink", "window"]] = speed[["n_sink", "window"]].fillna(-1)  # Dense has neither
        speed["pos_shift"] = speed["pos_shift"].fillna(True).astype(bool)
        rows = []
        for (kind, n_sink, window, shift, batch), g in speed.groupby(["policy", "n_sink", "window", "pos_shift", "batch_size"]):
            policy = Dense() if kind == "dense" else StreamingLLM(int(n_sink), int(window), bool(shift))
            metric = dict(zip(g["metric"], g["value"]))
            rows.append({**_policy_row(policy), "batch_size": int(batch), "ttft_ms": metric.get("ttft", float("nan")) * 1e3,
                         "tpot_ms": metric.get("tpot_mean", float("nan")) * 1e3,
                         "throughput": metric.get("decode_throughput", float("nan"))})
        speed_df = pd.DataFrame(rows)
        written["fig6_speed"] = plots.save_figure(plots.fig_speed(speed_df), "fig6_speed", *fig_dirs)
    attention = load_curve(cfg, "attention_first_tokens")
    if attention is not None:
        written["fig7_attention_sinks"] = plots.save_figure(
            plots.fig_attention(attention, float(attention["uniform"].iloc[0])), "fig7_attention_sinks", *fig_dirs)
    table = report_table(cfg)
    lines = [f"# streamlib run `{cfg.run_path.name}` (profile {cfg.profile}, model {cfg.model})", "",
             "## Baseline vs StreamingLLM", "", to_markdown(table), "", "## Figures", ""]
    lines += [f"- {name}: `figures/{name}.pdf`, `.png`" for name in written]
    pub = published_results()
    lines += ["", "## Published numbers (for shape, not digits: protocols differ)", "",
              to_markdown(pub[["source", "table", "model", "dataset", "n_sink", "window", "ppl", "note"]].fillna(""))]
    (cfg.run_path / "report.md").write_text("\n".join(lines) + "\n")
    return written
