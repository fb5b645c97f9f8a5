"""``python -m streamlib lm-eval ARGS``: lm-eval's own command line with the ``streamlib`` backend registered and the
workbook's offline tasks (:mod:`streamlib.metrics.harness_tasks`) on its task path. lm-eval 0.4 has no entry point
through which a package adds a backend, so this registers it and hands ``ARGS`` over unchanged::

    python -m streamlib lm-eval --model streamlib \\
        --model_args model=smollm2-135m,policy=streamingllm:4+252 --tasks streamlib_passkey,streamlib_kjv_prose

Any task lm-eval knows runs too (those that need the Hub need a network). A ``--include_path`` of one's own replaces
the workbook's tasks' folder (lm-eval takes one)."""

from __future__ import annotations

import sys

from ..loading.data import data_dir


def _model_name(argv: list[str]) -> str | None:
    """``model=`` of ``--model_args`` (the harness's ``key=value,...`` string), if given."""
    for i, arg in enumerate(argv):
        if arg == "--model_args" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--model_args="):
            value = arg.partition("=")[2]
        else:
            continue
        for pair in value.split(","):
            key, _, name = pair.partition("=")
            if key.strip() == "model":
                return name.strip()
    return None


def run_lm_eval(argv: list[str]) -> None:
    try:
        from lm_eval.__main__ import cli_evaluate
    except ImportError:
        print("lm-eval: lm-evaluation-harness is not installed; pip install -e .[eval] (make env installs it)",
              file=sys.stderr)
        raise SystemExit(2) from None
    from ..loading.models import load_tokenizer
    from ..metrics import harness  # noqa: F401  (registers the backend under the name "streamlib")
    from ..metrics.harness_tasks import write_task_dir

    if not any(a == "--include_path" or a.startswith("--include_path=") for a in argv):
        name = _model_name(argv)
        tokenizer = load_tokenizer(name) if name else None  # the pass-key prompts are sized in its tokens
        argv = [*argv, "--include_path", str(write_task_dir(data_dir() / "lm_eval_tasks", tokenizer))]
    sys.argv = ["lm-eval", *argv]
    cli_evaluate()
