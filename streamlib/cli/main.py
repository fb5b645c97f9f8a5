"""Command line: ``python -m streamlib run|generate|download|profiles|lm-eval``."""

from __future__ import annotations

import argparse
import json

from .usage import fail


def main(argv: list[str] | None = None) -> None:
    import sys

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["lm-eval"]:  # lm-eval's own options, handed over unparsed
        from .harness import run_lm_eval

        return run_lm_eval(argv[1:])
    ap = argparse.ArgumentParser(prog="python -m streamlib", description="StreamingLLM workbook on Pythia")
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute the notebook chain with papermill into a run directory")
    run.add_argument("--profile", default="auto", help="smoke | cpu | paper | a YAML path | auto (pick by machine)")
    run.add_argument("--run-dir", default=None, help="default: runs/<profile>-<timestamp>")
    run.add_argument("--only", default=None, help="comma-separated notebook prefixes, e.g. 01,02")
    run.add_argument("--force", action="store_true", help="re-measure configurations already recorded")
    run.add_argument("--dry-run", action="store_true",
                     help="the profile's whole chain offline on CPU in minutes: random weights of a small Pythia "
                          "shape, embedded text, scaled-down token counts (checks the chain; not a result)")
    gen = sub.add_parser("generate", help="stream generated text to stdout under a cache policy",
                         description="Stream generated text to stdout under a cache policy. A last line on stderr "
                                     "gives tokens/s, KV-cache bytes and the positions reached.")
    from .generate import add_arguments

    add_arguments(gen)
    dl = sub.add_parser("download", help="fetch a model and datasets into the project's cache (needs the Hub)")
    dl.add_argument("--model", default="EleutherAI/pythia-2.8b")
    dl.add_argument("--data", nargs="*", default=["wikitext2", "pg19-first-book", "pg19"])
    sub.add_parser("profiles", help="list the profiles and the one this machine would pick")
    sub.add_parser("lm-eval", help="lm-evaluation-harness with the streamlib backend and the workbook's offline tasks: "
                                   "lm-eval's own options follow (--model streamlib --model_args "
                                   "model=smollm2-135m,policy=streamingllm:4+252 --tasks streamlib_passkey)")
    args = ap.parse_args(argv)

    if args.command == "run":
        from ..experiments.config import ConfigError
        from .run import run_chain

        try:
            run_chain(args.profile, args.run_dir, args.only.split(",") if args.only else None, args.force,
                      dry_run=args.dry_run)
        except ConfigError as err:  # raised before any notebook starts
            fail(run, err)
    elif args.command == "generate":
        from .generate import run_generate

        raise SystemExit(run_generate(args, gen))
    elif args.command == "download":
        from ..loading.data import corpus_text
        from ..loading.models import download

        print("model:", download(args.model))
        for corpus in args.data:
            print(corpus, len(corpus_text(corpus)), "characters")
    else:
        from ..experiments.config import PROFILES_DIR
        from .run import choose_profile

        for path in sorted(PROFILES_DIR.glob("*.yaml")):
            print(path.stem, "-", path.read_text().splitlines()[0].lstrip("# "))
        print("auto would pick:", json.dumps(choose_profile()))

