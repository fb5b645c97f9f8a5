"""Write notebooks/*.ipynb from the cell sources below, so the six notebooks stay uniform and output-free.

    .venv/bin/python scripts/make_notebooks.py

Each notebook: a ``parameters``-tagged cell first (papermill injects its values after it), a short explanation,
then calls into ``streamlib.workbook``. ``None`` for a parameter means "the profile's value".
"""

from pathlib import Path

import nbformat as nbf

ROOT = Path(__file__).resolve().parents[1]

COMMON = '''profile = "smoke"  # smoke | cpu | paper | path to a YAML profile
run_dir = "runs/notebooks"  # where records, curves and figures go
force = False  # re-measure configurations already recorded'''

SETUP = '''from IPython.display import Markdown, display
from streamlib import workbook as wb

cfg = wb.Config.load(profile, run_dir=run_dir, force=force{extra})
print(cfg)'''

NOTEBOOKS = {
    "00_download": (
        "",
        "# 00 · Download\nFetches the profile's model and datasets into `data/` when they come from the Hugging Face "
        "Hub and are missing, then checks that each loads. With the embedded micro model (the `smoke` profile) there "
        "is nothing to download; offline, the cached copies are used.",
        ["report = wb.download(cfg)\nreport"],
    ),
    "01_baseline": (
        "",
        "# 01 · Baseline: dense attention\nPerplexity on each dataset (streamed, with the per-token NLL kept), peak "
        "memory, FLOPs (analytic and calflops), TTFT / TPOT / decode throughput, and how much attention the first "
        "tokens receive. Every number is appended to the run's `results.jsonl`.",
        ["df = wb.baseline(cfg)\ndf[df.status == 'ok'][['group', 'metric', 'value', 'unit', 'dataset', 'batch_size']]"],
    ),
    "02_streaming": (
        'n_sink = None  # attention sinks kept (profile value if None)\nwindow = None  # recent tokens kept\n'
        'pos_shift = None  # positions within the cache (True, the paper) or original positions (False)',
        "# 02 · StreamingLLM\nThe baseline's measurements under StreamingLLM with `n_sink` sinks and a window of "
        "`window` recent tokens, then the lab report's comparison table (also written as Markdown and LaTeX to "
        "`tables/`).",
        ["table = wb.streaming(cfg)\ndisplay(Markdown(wb.to_markdown(table)))"],
    ),
    "03_sweep": (
        "sweep_cache_sizes = None  # cache sizes (tokens) for Window, StreamingLLM (both position modes), Recompute\n"
        "sweep_sinks = None  # sink counts at a fixed cache size\nsweep_sink_cache = None  # that cache size",
        "# 03 · Sweep\nCache sizes × sink counts × policies: perplexity, KV-cache bytes and decode latency for each, "
        "for the trade-off curves of the report.",
        ["df = wb.sweep(cfg)\ndf[(df.status == 'ok') & (df.metric == 'ppl')][['policy', 'n_sink', 'window', 'pos_shift', 'n_tokens', 'value']]"],
    ),
    "04_long_stream": (
        "long_stream_tokens = None  # tokens of the long text to stream\ntrace_tokens = None  # tokens fed one "
        "by one for the memory and latency traces",
        "# 04 · A long stream\nOne long text far past the model's trained length: NLL per position for Dense (up to "
        "`max_dense_tokens`), Window, Recompute and StreamingLLM; then memory and per-token latency along the stream, "
        "token by token.",
        ["wb.long_stream(cfg)\nwb.load_curve(cfg, 'traces').groupby('label').tail(1)"],
    ),
    "05_report": (
        "export_figures = None  # also write the figures to the repository's figures/",
        "# 05 · Report\nThe figures (PDF + PNG) and tables of the lab report, from this run's records and curves, with "
        "the published numbers beside ours.",
        ["written = wb.report(cfg)\nfor name, paths in written.items():\n    print(name, [str(p) for p in paths])",
         "display(Markdown((cfg.run_path / 'report.md').read_text()))"],
    ),
}


def build(name: str, params: str, intro: str, cells: list[str]) -> nbf.NotebookNode:
    nb = nbf.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    first = nbf.v4.new_code_cell(COMMON + ("\n" + params if params else ""))
    first.metadata["tags"] = ["parameters"]
    names = [line.split("=")[0].strip() for line in params.splitlines() if "=" in line]
    extra = "".join(f", {n}={n}" for n in names)
    nb.cells = [first, nbf.v4.new_markdown_cell(intro), nbf.v4.new_code_cell(SETUP.format(extra=extra))]
    nb.cells += [nbf.v4.new_code_cell(c) for c in cells]
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{name[:2]}-{i}"
    return nb


def main() -> None:
    out = ROOT / "notebooks"
    out.mkdir(exist_ok=True)
    for name, (params, intro, cells) in NOTEBOOKS.items():
        nbf.write(build(name, params, intro, cells), out / f"{name}.ipynb")
        print("wrote", out / f"{name}.ipynb")


if __name__ == "__main__":
    main()
