"""The lm-evaluation-harness backend (``streamlib.metrics.harness``) checked against the harness itself: under Dense
it gives the ``hf`` backend's numbers on the same model, under StreamingLLM the workbook's own per-token NLL and
generation; the command line hands lm-eval's options over and finds the offline tasks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")  # make env installs it (pip install -e .[eval])

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402

from streamlib.caches.generation import stream_generate  # noqa: E402
from streamlib.loading.models import load_model, load_tokenizer  # noqa: E402
from streamlib.metrics.harness import StreamlibLM, own_tasks_only  # noqa: E402
from streamlib.metrics.harness_tasks import CHOICE, PASSKEY, PERPLEXITY, prose_documents, task_configs  # noqa: E402
from streamlib.metrics.quality import token_nll  # noqa: E402
from streamlib.policies import StreamingLLM  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2-135m", device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("smollm2-135m")


def _per_sample(results: dict, task: str) -> list[list[float]]:
    """Each document's responses (log-likelihoods), in document order."""
    def first(r):  # a response is nested in lists; a multiple-choice one is (log-likelihood, is greedy)
        return first(r[0]) if isinstance(r, (list, tuple)) else float(r)

    samples = sorted(results["samples"][task], key=lambda s: s["doc_id"])
    return [[first(r) for r in s["resps"]] for s in samples]


def test_dense_equals_the_harness_hf_backend(smollm2, tokenizer, tmp_path):
    """A perplexity task (whole documents, loglikelihood_rolling) and a multiple-choice task (loglikelihood of each
    choice): every document's numbers and the aggregates equal the hf backend's to 1e-4 relative."""
    tasks = task_configs(tmp_path, n_docs=2, doc_chars=800, n_questions=4)
    runs = {}
    for name, lm in (("hf", HFLM(pretrained=smollm2, tokenizer=tokenizer, batch_size=1)),
                     ("streamlib", StreamlibLM(smollm2, "dense", tokenizer=tokenizer))):
        runs[name] = lm_eval.simple_evaluate(model=lm, tasks=tasks, log_samples=True, bootstrap_iters=0,
                                             task_manager=own_tasks_only())
    for task in (PERPLEXITY, CHOICE):
        got, want = _per_sample(runs["streamlib"], task), _per_sample(runs["hf"], task)
        assert len(got) == len(want) > 0
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-4, atol=0)
    for metric in ("word_perplexity,none", "bits_per_byte,none"):
        assert runs["streamlib"]["results"][PERPLEXITY][metric] == pytest.approx(
            runs["hf"]["results"][PERPLEXITY][metric], rel=1e-4)
    assert runs["streamlib"]["results"][CHOICE]["acc,none"] == runs["hf"]["results"][CHOICE]["acc,none"]


def test_rolling_loglikelihood_under_streamingllm_is_the_workbook_nll(smollm2, tokenizer):
    """A document of about 250 tokens through StreamingLLM 4+60 (evicting from token 65 on): the harness's
    loglikelihood_rolling equals minus the sum of ``quality.token_nll`` over the same tokens after the prefix token,
    in batches of one and of two (right padding reaches no real token), and differs from Dense's."""
    docs = prose_documents(2, 1000)
    lm = StreamlibLM(smollm2, "streamingllm:4+60", tokenizer=tokenizer, batch_size=2)
    requests = [Instance("loglikelihood_rolling", {}, (d,), i) for i, d in enumerate(docs)]
    got = lm.loglikelihood_rolling(requests, disable_tqdm=True)
    dense = StreamlibLM(smollm2, "dense", tokenizer=tokenizer).loglikelihood_rolling(requests, disable_tqdm=True)
    for doc, ll, dense_ll in zip(docs, got, dense):
        ids = torch.tensor([[lm.prefix_token_id] + lm.tok_encode(doc)])
        assert ids.shape[1] > 200
        want = -float(token_nll(smollm2, ids, StreamingLLM(4, 60)).double().sum())
        assert ll == pytest.approx(want, rel=1e-5)
        assert abs(ll - dense_ll) > 0.5  # the cache evicted: the check above can fail


def test_generate_until_is_the_workbook_stream_cut_at_the_stop_sequence(smollm2, tokenizer):
    """Greedy answers under StreamingLLM 4+60 to a 300-token prompt equal streamlib's own ``stream_generate`` text,
    cut where the task's stop sequence first appears."""
    prompt = prose_documents(1, 1400)[0][:1200]
    lm = StreamlibLM(smollm2, "streamingllm:4+60", tokenizer=tokenizer)
    ids = torch.tensor([lm.tok_encode(prompt)])
    assert ids.shape[1] > 64
    new = stream_generate(smollm2, ids, StreamingLLM(4, 60), 24)
    text = tokenizer.decode(new[0], skip_special_tokens=True)
    # a character the answer first reaches after a few others
    stop = next(c for i, c in enumerate(text) if i >= 4 and not c.isspace() and c not in text[:i])
    (got,) = lm.generate_until([Instance("generate_until", {}, (prompt, {"until": [stop], "max_gen_toks": 24}), 0)],
                               disable_tqdm=True)
    assert got == text.split(stop)[0] and len(got) >= 4


def test_bad_arguments_name_the_parameter(smollm2, tokenizer):
    with pytest.raises(ValueError, match="policy"):
        StreamlibLM(smollm2, "streamingllm:4", tokenizer=tokenizer)
    with pytest.raises(ValueError, match="batch_size"):
        StreamlibLM(smollm2, "dense", tokenizer=tokenizer, batch_size="auto")
    with pytest.raises(ValueError, match="tokenizer"):
        StreamlibLM(smollm2, "dense")
    with pytest.raises(ValueError, match="dtype"):
        StreamlibLM("smollm2-135m", "dense", dtype="float8")


def test_lm_eval_command_runs_the_offline_tasks(tmp_path):
    """``python -m streamlib lm-eval`` with lm-eval's own options: the pass-key and next-verse tasks run offline
    under StreamingLLM and their results come back in lm-eval's results file."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "streamlib", "lm-eval", "--model", "streamlib", "--model_args",
         "model=smollm2-135m,policy=streamingllm:4+124,dtype=float32", "--tasks", f"{PASSKEY},{CHOICE}",
         "--limit", "2", "--output_path", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = out.rglob("results_*.json")
    results = json.loads(path.read_text())["results"]
    assert 0 <= results[PASSKEY]["exact_match,number"] <= 1 and 0 <= results[CHOICE]["acc,none"] <= 1
    assert json.loads(path.read_text())["config"]["model_args"]["policy"] == "streamingllm:4+124"
