import time

import pytest
import torch

from posttrain.models import ModelLoadError, load_model_and_tokenizer


@pytest.mark.parametrize("name", ["tiny-llama:d=32,l=2,h=2", "tiny-qwen2:d=32,l=2,h=2"])
def test_tiny_models_build_and_roundtrip(tmp_path, name):
    model, tok = load_model_and_tokenizer(name, seed=3)
    assert model.config.model_type == name.split(":")[0].removeprefix("tiny-")
    ids = tok("12+34", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == "12+34" and len(ids) == 5
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again, tok2 = load_model_and_tokenizer(str(tmp_path))
    x = torch.tensor([ids])
    assert torch.allclose(model(x).logits, again(x).logits, atol=1e-6)
    assert tok2.chat_template == tok.chat_template


def test_same_seed_same_weights_different_seed_differs():
    a, _ = load_model_and_tokenizer("tiny-llama:d=32,l=2,h=2", seed=1)
    b, _ = load_model_and_tokenizer("tiny-llama:d=32,l=2,h=2", seed=1)
    c, _ = load_model_and_tokenizer("tiny-llama:d=32,l=2,h=2", seed=2)
    pa, pb, pc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_offline_hub_name_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "https://127.0.0.1:9")  # nothing listens there
    t0 = time.perf_counter()
    with pytest.raises(ModelLoadError, match="not reachable.*local model folder"):
        load_model_and_tokenizer("Qwen/Qwen2.5-0.5B-Instruct")
    assert time.perf_counter() - t0 < 5


def test_bad_names_explain(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model_and_tokenizer(str(tmp_path))
    with pytest.raises(ModelLoadError, match="unknown key 'z'"):
        load_model_and_tokenizer("tiny-llama:z=3")
    with pytest.raises(ModelLoadError, match="not one of: llama, qwen2"):
        load_model_and_tokenizer("tiny-gpt2")


@pytest.mark.slow
def test_smollm2_loads_offline_by_short_name():
    model, tok = load_model_and_tokenizer("smollm2-135m-instruct")
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    from posttrain.data import encode_prompt

    ids = encode_prompt(tok, [{"role": "user", "content": "What is 2+2?"}])
    out = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)
    assert "4" in tok.decode(out[0, len(ids):])
