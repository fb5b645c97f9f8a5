"""Memory beyond the window under each shipped head map of a model: the pass key with the key further back than the
streaming window, under HeadSplit keeping a share of the kv heads whole as ranked by the retrieval scores
(``head_map.json``) and by DuoAttention's trained gates (``head_gates.json``), beside Dense and StreamingLLM with the
same sinks and window; each accuracy with its Wilson interval and the KV held at the end of the prompt. Seeds from 0
on, apart from the maps' own (1000 on).

    .venv/bin/python scripts/compare_head_maps.py --model smollm2-135m --shares 0.1 0.25 0.5 --seeds 3
"""

from __future__ import annotations

import argparse
import time

from streamlib.core.stats import wilson_interval
from streamlib.loading.data import stream_bos
from streamlib.loading.head_maps import MAP_FILES, head_map
from streamlib.loading.models import load_model, load_tokenizer
from streamlib.metrics.head_scores import top_heads
from streamlib.metrics.retrieval import measure_retrieval, passkey_grid
from streamlib.policies import Dense, HeadSplit, StreamingLLM


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tokens", type=int, default=1024, help="prompt length")
    ap.add_argument("--depths", type=float, nargs="+", default=[0.1, 0.3, 0.5, 0.7], help="where the key sits")
    ap.add_argument("--seeds", type=int, default=3, help="keys per depth")
    ap.add_argument("--shares", type=float, nargs="+", default=[0.1, 0.25, 0.5], help="kv heads kept whole")
    ap.add_argument("--n-sink", type=int, default=4)
    ap.add_argument("--window", type=int, default=124)
    ap.add_argument("--new-tokens", type=int, default=8)
    args = ap.parse_args()
    model, tokenizer = load_model(args.model), load_tokenizer(args.model)
    trials = passkey_grid(tokenizer, [args.tokens], args.depths, args.seeds, bos=stream_bos(tokenizer, None))
    runs = [("", None, Dense()), ("", None, StreamingLLM(args.n_sink, args.window))]
    for method in MAP_FILES:
        scores = head_map(args.model, method)
        if scores is None:
            print(f"no {method} map for {args.model}: skipped")
            continue
        runs += [(method, share, HeadSplit.of(top_heads(scores, share, model.config), args.n_sink, args.window))
                 for share in args.shares]
    print(f"{args.model}: pass key in {trials[0].prompt_ids.shape[1]}-token prompts, keys "
          f"{min(t.distance for t in trials)}-{max(t.distance for t in trials)} tokens back, {len(trials)} trials each\n")
    print("| policy | map | kv heads whole | KV at the prompt (MiB) | correct | accuracy [95 % Wilson] | seconds |")
    print("|---|---|---:|---:|---:|---|---:|")
    done = {}  # two maps that pick the same heads give the same policy: measured once
    for method, share, policy in runs:
        start = time.perf_counter()
        if policy not in done:
            done[policy] = measure_retrieval(model, tokenizer, policy, trials, args.new_tokens).curve
        curve = done[policy]
        ok = int(curve.correct.sum())
        ci = wilson_interval(ok, len(curve))
        mib = policy.kv_bytes_held(model.config, trials[0].prompt_ids.shape[1], model.dtype) / 2**20
        print(f"| {policy.label()} | {method or '-'} | {'' if share is None else f'{share:.0%}'} | {mib:.2f} | "
              f"{ok}/{len(curve)} | {ci.value:.2f} [{ci.low:.2f}, {ci.high:.2f}] | {time.perf_counter() - start:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
