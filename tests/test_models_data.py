"""Model and data loading, offline; the embedded micro model against its model card."""

import json

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from streamlib.loading.data import (DataUnavailableError, corpus_text, kjv_books, kjv_text, load_stream, text_file,
                                    tokenize_stream, wikitext2_text)
from streamlib.loading.models import MICRO_DIR, WeightsUnavailableError, load_model, load_tokenizer, pythia_config
from streamlib.metrics.quality import windowed_perplexity


@pytest.fixture(scope="module")
def micro():
    return load_model("micro", device="cpu"), load_tokenizer("micro")


def test_hub_id_offline_gives_the_download_command(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("STREAMLIB_DATA", str(tmp_path))
    with pytest.raises(WeightsUnavailableError, match="python -m streamlib download --model EleutherAI/pythia-70m"):
        load_model("EleutherAI/pythia-70m")


def test_random_pythia_160m_has_the_real_shapes():
    model = load_model("random:pythia-160m", device="cpu")
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.vocab_size) == (768, 12, 12, 50304)
    assert cfg.rope_parameters["partial_rotary_factor"] == 0.25 and cfg.use_parallel_residual
    assert sum(p.numel() for p in model.parameters()) == 162_322_944  # EleutherAI/pythia-160m's count
    assert next(model.parameters()).dtype == torch.float32  # fp32 on CPU by default
    assert model.config._attn_implementation == "sdpa"


def test_random_model_options():
    model = load_model("random:pythia-70m-deduped", device="cpu", dtype=torch.bfloat16, attn_implementation="eager")
    assert next(model.parameters()).dtype == torch.bfloat16
    assert model.config._attn_implementation == "eager"
    with pytest.raises(ValueError, match="architecture must be one of"):
        pythia_config("pythia-13b")
    with pytest.raises(ValueError, match="attn_implementation"):
        load_model("random:pythia-70m", attn_implementation="flash")


def test_not_gpt_neox_is_refused(tmp_path):
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50, n_positions=64)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="gpt_neox"):
        load_model(str(tmp_path), device="cpu")


def test_micro_model_loads_and_generates(micro):
    model, tok = micro
    assert model.config.model_type == "gpt_neox" and len(tok) == 4096
    ids = tok("In the beginning", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 8
    assert isinstance(tok.decode(out[0]), str)


def test_micro_heldout_ppl_matches_model_card(micro):
    model, tok = micro
    card = json.loads((MICRO_DIR / "card.json").read_text())
    heldout = tokenize_stream(tok, kjv_text("heldout"))
    assert heldout.shape[1] == card["heldout_tokens"]
    ppl = windowed_perplexity(model, heldout, card["train_seq_len"])
    assert ppl == pytest.approx(card["heldout_ppl_at_train_len"], rel=1e-3)


def test_kjv_splits():
    books = kjv_books()
    assert len(books) == 66 and books[0][0] == "Genesis" and books[-1][0] == "Revelation"
    train, heldout = kjv_text("train"), kjv_text("heldout")
    assert heldout.startswith("The Epistle of Paul the Apostle to the Hebrews")
    assert "1:1 In the beginning God created" in train and "In the beginning God created" not in heldout
    assert len(kjv_text("all")) == len(train) + len("\n\n") + len(heldout)
    with pytest.raises(ValueError, match="split"):
        kjv_text("validation")


def test_local_text_file(tmp_path, micro):
    _, tok = micro
    path = tmp_path / "book.txt"
    path.write_text("And God said, Let there be light: and there was light.\n" * 20, encoding="utf-8")
    assert text_file(path).startswith("And God said")
    ids = load_stream(str(path), tok)
    assert ids.dtype == torch.long and ids.shape[0] == 1 and ids.shape[1] > 100
    assert load_stream(str(path), tok, max_tokens=50).shape == (1, 50)
    with pytest.raises(FileNotFoundError):
        text_file(tmp_path / "missing.txt")


def test_embedded_corpus_stream(micro):
    _, tok = micro
    ids = load_stream("kjv-heldout", tok, max_tokens=1000)
    assert ids.shape == (1, 1000)
    assert tok.decode(ids[0, :12]).startswith("The Epistle")


def test_bad_corpus_and_max_tokens(micro):
    _, tok = micro
    with pytest.raises(ValueError, match="corpus must be one of"):
        corpus_text("wikitext-103")
    with pytest.raises(ValueError, match="max_tokens"):
        tokenize_stream(tok, "text", max_tokens=1)


def test_hub_dataset_offline_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("STREAMLIB_DATA", str(tmp_path))
    with pytest.raises(DataUnavailableError, match="python -m streamlib download"):
        wikitext2_text()
