"""Streaming generation: the TokenStream that a never-ending conversation runs on, sampling, policy strings, and
``python -m streamlib generate`` end to end on the embedded model."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from streamlib.caches.generation import TokenStream, next_token, prefill, stream_generate
from streamlib.metrics.timing import measure_generation_trace
from streamlib.policies import Dense, Recompute, StreamingLLM, Window, parse_policy

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("policy", [StreamingLLM(2, 14), StreamingLLM(2, 14, pos_shift=False), Dense()])
def test_turns_in_one_stream_equal_one_long_prompt(peaky_model, policy):
    """Feeding turn after turn (generated tokens in between) gives exactly the logits of feeding the whole
    transcript at once: nothing is recomputed and nothing is lost between turns."""
    g = torch.Generator().manual_seed(21)
    turns = [torch.randint(0, 97, (1, n), generator=g) for n in (9, 30, 5, 17)]
    stream = TokenStream(peaky_model, policy)
    transcript = []
    for turn in turns:
        stream.feed(turn)
        transcript.append(turn)
        transcript += list(stream.generate(6))
    # the last generated token is pending: the transcript's logits are those before it was chosen
    whole = torch.cat(transcript[:-1], dim=1)
    reference = prefill(peaky_model, whole, policy.make_cache(peaky_model), chunk_size=1)
    torch.testing.assert_close(stream.logits, reference, atol=1e-4, rtol=0)
    assert stream.position == whole.shape[1] + 1


def test_stream_generate_is_a_token_stream(peaky_model):
    prompt = torch.randint(0, 97, (1, 12), generator=torch.Generator().manual_seed(2))
    policy = StreamingLLM(2, 10)
    stream = TokenStream(peaky_model, policy)
    stream.feed(prompt)
    by_steps = torch.cat(list(stream.generate(40)), dim=1)
    assert torch.equal(by_steps, stream_generate(peaky_model, prompt, policy, 40))


def test_sampling_is_seeded_and_top_p_narrows_to_the_argmax():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.9]])
    assert next_token(logits).item() == 1
    assert next_token(logits, do_sample=True, top_p=1e-6).item() == 1  # the nucleus holds only the top token
    draws = [next_token(logits, do_sample=True, temperature=1.0, generator=torch.Generator().manual_seed(s)).item()
             for s in range(40)]
    assert set(draws) >= {1, 3}  # sampling does sample
    again = [next_token(logits, do_sample=True, temperature=1.0, generator=torch.Generator().manual_seed(s)).item()
             for s in range(40)]
    assert draws == again
    nucleus = {next_token(logits, do_sample=True, top_p=0.8, generator=torch.Generator().manual_seed(s)).item()
               for s in range(60)}
    assert nucleus == {1, 3}  # 0 and 2 hold the last 20 % of the mass


def test_sampling_errors_name_the_parameter(peaky_model):
    prompt = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="temperature"):
        stream_generate(peaky_model, prompt, Dense(), 3, do_sample=True, temperature=0)
    with pytest.raises(ValueError, match="top_p"):
        stream_generate(peaky_model, prompt, Dense(), 3, top_p=1.5)
    with pytest.raises(ValueError, match="max_new_tokens"):
        stream_generate(peaky_model, prompt, Dense(), 0)
    with pytest.raises(ValueError, match="input_ids"):
        TokenStream(peaky_model, Dense()).step()


def test_generation_trace_records_every_step(peaky_model):
    prompt = torch.randint(0, 97, (1, 8), generator=torch.Generator().manual_seed(4))
    trace = measure_generation_trace(peaky_model, prompt, StreamingLLM(2, 14), 50)
    steps = trace.curve
    assert len(steps) == 50 and steps.position.tolist() == list(range(9, 59))
    assert torch.equal(torch.tensor([steps.token.tolist()]), stream_generate(peaky_model, prompt, StreamingLLM(2, 14), 50))
    assert steps.kv_bytes.nunique() == 1  # preallocated: flat from the first step
    dense = measure_generation_trace(peaky_model, prompt, Dense(), 50).curve
    assert dense.kv_bytes.is_monotonic_increasing and dense.kv_bytes.iloc[-1] > dense.kv_bytes.iloc[0]


@torch.inference_mode()
def test_recompute_generates_from_a_fresh_window_each_step(peaky_model):
    """Recompute goes through the same stream as the caches: each token from one forward over the last 8 tokens."""
    prompt = torch.randint(0, 97, (1, 20), generator=torch.Generator().manual_seed(5))
    ids = prompt.clone()
    for _ in range(12):  # the definition, written out
        logits = peaky_model(input_ids=ids[:, -8:], use_cache=False).logits[:, -1]
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(stream_generate(peaky_model, prompt, Recompute(8), 12), ids[:, 20:])
    trace = measure_generation_trace(peaky_model, prompt, Recompute(8), 12).curve
    assert trace.token.tolist() == ids[0, 20:].tolist() and trace.kv_bytes.nunique() == 1


def test_parse_policy_forms_and_errors():
    assert parse_policy("dense") == Dense()
    assert parse_policy("window:256") == Window(256)
    assert parse_policy("streamingllm:4+252") == StreamingLLM(4, 252, True)
    assert parse_policy("StreamingLLM:4+252:noshift") == StreamingLLM(4, 252, False)
    assert parse_policy("recompute:64") == Recompute(64)
    for bad in ("streamingllm:4-252", "window", "h2o:4", "streamingllm:4+252:sideways", "window:0", "dense:3"):
        with pytest.raises(ValueError, match=re.escape("streamingllm:{n_sink}+{window}[:noshift]")):
            parse_policy(bad)


def _cli(*args, stdin=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "streamlib", "generate", "--model", "micro", *args], input=stdin,
                          capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})


def test_generate_command_streams_text_offline():
    proc = _cli("--policy", "streamingllm:4+124", "--max-new-tokens", "300", "--prompt", "And God said")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("And God said") and len(proc.stdout) > 600
    last = proc.stderr.strip().splitlines()[-1]
    assert re.search(r"300 tokens in [\d.]+ s \([\d.]+ tok/s\)", last)
    from streamlib.loading.models import load_tokenizer

    n_prompt = len(load_tokenizer("micro")("And God said").input_ids)
    # 4 layers x 256 channels x fp32: 129 slots of keys and values, and 4 stored sink keys
    kv = (4 + 124 + 1) * 4 * 256 * 2 * 4 + 4 * 4 * 256 * 4
    assert f"KV cache {kv / 2**20:.3f} MiB" in last and f"stream position {n_prompt + 300} " in last


def test_generate_command_compiled_writes_the_same_text():
    args = ("--policy", "streamingllm:4+60", "--max-new-tokens", "150", "--temperature", "0", "--prompt", "And God said")
    eager, compiled = _cli(*args), _cli(*args, "--compile")
    assert eager.returncode == 0 and compiled.returncode == 0, compiled.stderr
    assert compiled.stdout == eager.stdout and len(eager.stdout) > 300
    refused = _cli("--policy", "dense", "--compile", "--prompt", "x")
    assert refused.returncode == 2 and "--compile: compiled decoding covers window and streamingllm" in refused.stderr


def test_generate_command_rejects_a_bad_policy():
    proc = _cli("--policy", "streamingllm:4", "--prompt", "x")
    assert proc.returncode == 2
    assert "--policy" in proc.stderr and "streamingllm:{n_sink}+{window}[:noshift]" in proc.stderr


def _kv_per_turn(stderr: str) -> dict[int, str]:
    return {int(m.group(1)): m.group(2) for m in re.finditer(r"\[turn (\d+)\].*KV cache ([\d.]+) MiB", stderr)}


def test_interactive_memory_is_flat_over_fifty_turns():
    turns = "".join(f"Turn {i}: and the LORD spake unto Moses, saying\n" for i in range(1, 51))
    proc = _cli("--policy", "streamingllm:4+124", "--max-new-tokens", "12", "--interactive", stdin=turns)
    assert proc.returncode == 0, proc.stderr
    kv = _kv_per_turn(proc.stderr)
    assert sorted(kv) == list(range(1, 51))
    assert kv[5] == kv[50]
    positions = [int(p) for p in re.findall(r"\[turn \d+\].*stream position (\d+)", proc.stderr)]
    assert positions[49] > 8 * (4 + 124)  # far past the cache: evictions happened all along
    # the same conversation with a dense cache grows with every turn: the check above can fail
    dense = _kv_per_turn(_cli("--policy", "dense", "--max-new-tokens", "12", "--interactive", stdin=turns).stderr)
    assert float(dense[50]) > 5 * float(dense[5])


def test_interactive_stats_are_per_turn_and_exclude_waiting_for_input():
    """Two piped turns with a 3 s pause between them: each turn's line counts that turn's tokens over that turn's
    time; the closing line adds them up, and only its wall time includes the pause."""
    import os
    import time

    proc = subprocess.Popen([sys.executable, "-m", "streamlib", "generate", "--model", "micro", "--policy",
                             "streamingllm:4+60", "--max-new-tokens", "20", "--interactive"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    proc.stdin.write("And God said\n")
    proc.stdin.flush()
    seen = []
    while not (seen and seen[-1].startswith("[turn 1]")):  # the first reply is out: now the user takes 3 s to type
        seen.append(proc.stderr.readline())
        assert seen[-1], "".join(seen)
    time.sleep(3.0)
    proc.stdin.write("Let there be light\n")
    proc.stdin.close()
    stderr = "".join(seen) + proc.stderr.read()
    assert proc.wait(timeout=120) == 0, stderr
    turns = [(int(n), float(s)) for n, s in re.findall(r"\[turn \d+\] (\d+) tokens in ([\d.]+) s", stderr)]
    assert len(turns) == 2 and all(1 <= n <= 20 for n, _ in turns)
    assert turns[1][1] < 2.5  # the second turn's time does not hold the 3 s spent waiting for it
    total = re.search(r"\[all 2 turns\] (\d+) tokens in ([\d.]+) s .* ([\d.]+) s wall", stderr)
    assert int(total.group(1)) == turns[0][0] + turns[1][0]
    assert float(total.group(2)) == pytest.approx(turns[0][1] + turns[1][1], abs=0.02)
    assert float(total.group(3)) >= 3.0
