"""The vLLM engine: a clear error when vllm is missing, and the same greedy tokens as the HF engine
for the same weights (before and after a weight sync). The equivalence test runs only where vllm is
installed (`pytest -m vllm`)."""
import sys

import pytest
import torch

from posttrain.models import load_model_and_tokenizer
from posttrain.rollout import HFEngine, SamplingParams


def test_missing_vllm_names_the_install(monkeypatch):
    from posttrain.rollout import vllm as vllm_engine

    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'posttrain\[vllm\]'"):
        vllm_engine.VLLMEngine("unused-folder")


def test_rl_trainer_with_vllm_engine_fails_before_training_when_missing(monkeypatch, tmp_path):
    from posttrain.trainers.common import DataConfig, ModelConfig, TrainConfig
    from posttrain.trainers.rl import RLConfig, RLOptions, RLTrainer

    monkeypatch.setitem(sys.modules, "vllm", None)
    cfg = RLConfig(model=ModelConfig(name="tiny-llama:d=32,l=2,h=2"), data=DataConfig(path="task:addition:digits=1", train_rows=8, eval_rows=0),
                   train=TrainConfig(out=str(tmp_path)), rl=RLOptions(engine="vllm", kl_coef=0.0))
    with pytest.raises(ImportError, match="vLLM rollout engine needs"):
        RLTrainer(cfg)


@pytest.mark.vllm
def test_hf_and_vllm_engines_give_the_same_greedy_tokens(tmp_path):
    pytest.importorskip("vllm")
    from posttrain.rollout.vllm import VLLMEngine

    model, tok = load_model_and_tokenizer("tiny-llama:d=64,l=2,h=4", seed=0)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    prompts = [tok("12+34", add_special_tokens=False)["input_ids"], tok("7+5=", add_special_tokens=False)["input_ids"]]
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=12)
    vllm_engine = VLLMEngine(str(tmp_path / "m"), seed=0)
    hf_engine = HFEngine(model, tok)

    def same():
        hf = [o[0] for o in hf_engine.generate(prompts, params)]
        vl = [o[0] for o in vllm_engine.generate(prompts, params)]
        assert [c.token_ids for c in hf] == [c.token_ids for c in vl]
        for a, b in zip(hf, vl):
            assert a.logprobs == pytest.approx(b.logprobs, abs=1e-3)

    same()
    with torch.no_grad():  # a policy update: vLLM must follow after update_weights
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    vllm_engine.update_weights(model)
    same()
