"""Rollout workers on a local Ray cluster (2 CPUs): the pool speaks the engine protocol, gives the
in-process engine's rollouts for the same per-prompt seeds, carries weight versions, reports a worker's
own error and a dead worker's cause, and replaces a dead worker when restarts are allowed. Every
weight-sync transport (object store, shared memory, LoRA adapter only, a gloo broadcast) leaves the workers with
bit-identical weights, the adapter one moves only the adapter's bytes, and per-worker busy time
(inside generate / inside weight loading) is counted."""
import json
import time

import pytest
import torch

ray = pytest.importorskip("ray")

from posttrain.cli import main  # noqa: E402
from posttrain.data import encode_prompt  # noqa: E402
from posttrain.models import load_model_and_tokenizer  # noqa: E402
from posttrain.rollout import HFEngine, PolicyWeights, SamplingParams  # noqa: E402
from posttrain.config import ConfigError  # noqa: E402
from posttrain.rollout.ray_pool import RayRolloutPool, RolloutWorkerError, resolve_transport  # noqa: E402
from posttrain.rollout.vllm import _plain_model  # noqa: E402

MODEL = "tiny-llama:d=32,l=2,h=2"


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return load_model_and_tokenizer(MODEL, seed=0)


def _prompts(tok, n=5):
    return [encode_prompt(tok, f"{a}+{a + 2}=") for a in range(n)]


def _ids(outs):
    return [[c.token_ids for c in group] for group in outs]


def test_two_workers_give_the_local_engines_rollouts_and_versions(cluster, tiny):
    model, tok = tiny
    pool = RayRolloutPool(model, tok, workers=2, cpus_per_worker=1)
    try:
        local = HFEngine(model, tok)
        params = SamplingParams(n=3, temperature=1.0, max_new_tokens=6, seeds=tuple(range(40, 45)))
        remote = pool.generate(_prompts(tok), params)
        assert _ids(remote) == _ids(local.generate(_prompts(tok), params))
        assert [len(g) for g in remote] == [3] * 5
        for group, mine in zip(remote, local.generate(_prompts(tok), params)):
            for a, b in zip(group, mine):
                assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)
        assert {c.policy_version for g in remote for c in g} == {0}
        # new weights, version 7: both workers load them; greedy tokens equal a local engine with them
        changed = load_model_and_tokenizer(MODEL, seed=1)[0]
        pool.update_weights(PolicyWeights(changed), 7)
        greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=6)
        after = pool.generate(_prompts(tok), greedy)
        mine = HFEngine(changed, tok).generate(_prompts(tok), greedy)
        assert _ids(after) == _ids(mine)
        lps = lambda outs: [lp for g in outs for c in g for lp in c.logprobs]  # noqa: E731
        assert lps(after) == pytest.approx(lps(mine), abs=1e-5)  # the new weights' logprobs ...
        assert max(abs(a - b) for a, b in zip(lps(after), lps(local.generate(_prompts(tok), greedy)))) > 1e-3  # ... not the old ones
        assert {c.policy_version for g in after for c in g} == {7}
    finally:
        pool.shutdown()


def test_a_workers_own_error_comes_back_named(cluster, tiny):
    model, tok = tiny
    pool = RayRolloutPool(model, tok, workers=2, cpus_per_worker=1)
    try:
        with pytest.raises(RolloutWorkerError, match=r"rollout worker 1 of 2: ValueError: empty prompt \(no tokens\) at index 0"):
            pool.generate([_prompts(tok)[0], []], SamplingParams(n=1, temperature=0.0, max_new_tokens=4))
    finally:
        pool.shutdown()


def test_a_killed_worker_is_reported_with_its_cause_or_replaced(cluster, tiny):
    model, tok = tiny
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=6, seeds=tuple(range(5)))
    pool = RayRolloutPool(model, tok, workers=2, cpus_per_worker=1, timeout_s=60)
    try:
        expected = pool.generate(_prompts(tok), params)
        pool.actors[1].exit_now.remote()
        t0 = time.perf_counter()
        with pytest.raises(RolloutWorkerError, match=r"rollout worker 1 of 2 died during generate: .*not restarted") as err:
            pool.generate(_prompts(tok), params)
        assert time.perf_counter() - t0 < 60
        assert "died" in str(err.value).lower()
    finally:
        pool.shutdown()
    pool = RayRolloutPool(model, tok, workers=2, cpus_per_worker=1, timeout_s=60, max_restarts=1)
    try:
        pool.update_weights(PolicyWeights(model), 3)
        pool.actors[0].exit_now.remote()
        again = pool.generate(_prompts(tok), params)  # worker 0 replaced, brought to version 3, its share retried
        assert _ids(again) == _ids(expected) and pool.restarts == 1
        assert {c.policy_version for g in again for c in g} == {3}
    finally:
        pool.shutdown()


def _lora(seed=0, rank=4):
    from posttrain.configs import ModelConfig
    from posttrain.runtime.worker import apply_lora

    model = apply_lora(load_model_and_tokenizer(MODEL, seed=0)[0], ModelConfig(lora_rank=rank))
    with torch.no_grad():  # LoRA B starts at zero: give the adapter an effect
        g = torch.Generator().manual_seed(seed)
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def _lps(outs):
    return [lp for g in outs for c in g for lp in c.logprobs]


def _assert_worker_weights(pool, want: dict):
    for w, actor in enumerate(pool.actors):
        got = ray.get(actor.weights.remote())
        assert set(got) == set(want)
        bad = [k for k in want if not torch.equal(got[k], want[k])]
        assert not bad, f"worker {w}: {bad[:3]} differ"


@pytest.mark.parametrize("transport", ["object_store", "shared_memory", "adapter", "collective"])
def test_every_transport_gives_bit_identical_weights_and_counts_time_and_bytes(cluster, tiny, transport):
    """After a sync every worker holds exactly the weights the trainer would merge and send (the HF
    checkpoint names, LoRA merged), samples the in-process engine's greedy tokens, and a replacement
    worker is brought to them by replaying the sync. worker_stats: seconds inside generate / sync,
    the bytes each worker received (the adapter transport: only the LoRA tensors). A worker's error
    or a timeout during a sync names the worker."""
    model, tok = tiny
    lora = transport == "adapter"
    start = _lora(seed=1) if lora else model
    pool = RayRolloutPool(start, tok, workers=2, cpus_per_worker=1, transport=transport, timeout_s=60, max_restarts=1)
    try:
        assert pool.transport == transport
        zero = pool.worker_stats()
        assert zero["busy_s"] == [0.0, 0.0] and zero["sync_bytes"] == [0, 0] and zero["uptime_s"] > 0
        policy = _lora(seed=2) if lora else load_model_and_tokenizer(MODEL, seed=1)[0]
        greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=6)
        before = pool.generate(_prompts(tok), greedy)
        pool.update_weights(PolicyWeights(policy), 5)
        want = {k: v.detach() for k, v in _plain_model(policy).state_dict().items()}
        _assert_worker_weights(pool, want)
        mine = HFEngine(policy, tok).generate(_prompts(tok), greedy)  # (the LoRA one runs peft's unmerged forward)
        after = pool.generate(_prompts(tok), greedy)
        assert _ids(after) == _ids(mine)
        assert _lps(after) == pytest.approx(_lps(mine), abs=1e-5)  # the new weights' logprobs ...
        assert max(abs(a - b) for a, b in zip(_lps(after), _lps(before))) > 1e-3  # ... not the old ones
        assert {c.policy_version for g in after for c in g} == {5}
        full = sum(v.numel() * v.element_size() for v in want.values())
        adapter = sum(p.numel() * p.element_size() for n, p in policy.named_parameters() if "lora_" in n)
        stats = pool.worker_stats()
        assert pool.last_sync_bytes == (adapter if lora else full)
        assert stats["sync_bytes"] == [pool.last_sync_bytes] * 2
        if lora:
            assert adapter < full / 5  # the adapter, not the model
        assert all(s > 0 for s in stats["sync_s"]) and all(g > 0 for g in stats["generate_s"])
        assert stats["busy_s"] == [g + s for g, s in zip(stats["generate_s"], stats["sync_s"])]
        assert all(b < stats["uptime_s"] for b in stats["busy_s"])
        pool.generate(_prompts(tok), greedy)
        again = pool.worker_stats()
        assert all(b > a for a, b in zip(stats["generate_s"], again["generate_s"])) and again["sync_s"] == stats["sync_s"]
        # a second sync overwrites the first exactly (the adapter merge starts from the untouched base)
        policy2 = _lora(seed=3) if lora else load_model_and_tokenizer(MODEL, seed=2)[0]
        pool.update_weights(PolicyWeights(policy2), 6)
        want2 = {k: v.detach() for k, v in _plain_model(policy2).state_dict().items()}
        _assert_worker_weights(pool, want2)
        if transport != "object_store":  # (object store replacements: test_a_killed_worker_is_reported_with_its_cause_or_replaced)
            pool.actors[0].exit_now.remote()  # a replacement replays the last sync: version 6, the same weights
            replaced = pool.generate(_prompts(tok), greedy)
            assert pool.restarts == 1 and {c.policy_version for g in replaced for c in g} == {6}
            _assert_worker_weights(pool, want2)
        # a worker's error during a sync, and a sync past the timeout, name the worker
        if lora:  # another rank: every worker rejects it, naming itself
            bad, match = PolicyWeights(_lora(rank=2)), r"rollout worker [01] of 2: ValueError: adapter sync: .*lora_A.* has shape \(2, 32\)"
        else:
            bad, match = [("model.embed_tokens.weight", model.model.embed_tokens.weight)], r"rollout worker [01] of 2: ValueError: update_weights: missing"
        with pytest.raises(RolloutWorkerError, match=match):
            pool.update_weights(bad, 7)
        pool.actors[1].sleep_now.remote(6)  # worker 1 busy past the timeout
        pool.timeout_s = 1.5
        t0 = time.perf_counter()
        with pytest.raises(RolloutWorkerError, match=r"rollout worker\(s\) 1 of 2: update_weights did not answer within rollout.timeout_s=1.5s"):
            pool.update_weights(PolicyWeights(policy2), 8)
        assert time.perf_counter() - t0 < 5
    finally:
        pool.shutdown()


def test_transport_choice():
    """auto: adapter for a LoRA policy (only its LoRA tensors trainable), else object_store; an
    adapter transport that cannot sync the policy exactly is refused before any worker starts."""
    plain = load_model_and_tokenizer(MODEL, seed=0)[0]
    assert resolve_transport("auto", plain) == "object_store" and resolve_transport("shared_memory", plain) == "shared_memory"
    assert resolve_transport("auto", _lora()) == "adapter"
    with pytest.raises(ConfigError, match="no LoRA adapter"):
        resolve_transport("adapter", plain)
    lora = _lora()
    lora.base_model.model.model.norm.weight.requires_grad_(True)  # a trained tensor outside the adapter
    assert resolve_transport("auto", lora) == "object_store"
    with pytest.raises(ConfigError, match=r"outside the adapter .*model\.norm"):
        resolve_transport("adapter", lora)
    with pytest.raises(ConfigError, match="rollout.transport must be one of"):
        resolve_transport("nccl", plain)


def test_rl_with_ray_rollout_workers_equals_the_in_process_run(cluster, tmp_path):
    """posttrain rl --rollout.backend ray --rollout.workers 2: the same updates as the local engine
    (per-prompt seeds), weights synced to the workers after every step."""
    args = ["rl", "--model", MODEL, "--data", "task:addition:digits=1", "--data.train_rows", "32", "--data.eval_rows", "0",
            "--train.progress", "false", "--lr", "1e-3", "--max-steps", "2", "--rl.prompts_per_step", "4",
            "--rl.samples_per_prompt", "4", "--rl.max_new_tokens", "6", "--rl.overlong_buffer", "5", "--rl.stop", "1,7",
            "--rl.temperature", "1.5", "--rl.seed_per_prompt", "true"]
    assert main([*args, "--out", str(tmp_path / "local")]) == 0
    assert main([*args, "--out", str(tmp_path / "ray"), "--rollout.backend", "ray", "--rollout.workers", "2",
                 "--rollout.cpus_per_worker", "0.5"]) == 0
    from safetensors.torch import load_file

    a = load_file(tmp_path / "local" / "checkpoints" / "step-0000002" / "model.safetensors")
    b = load_file(tmp_path / "ray" / "checkpoints" / "step-0000002" / "model.safetensors")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    metrics = [json.loads(line) for line in (tmp_path / "ray" / "metrics.jsonl").read_text().splitlines()]
    assert any(m.get("advantage_abs_mean", 0) > 0 for m in metrics)  # the updates were not zero
    local = [json.loads(line) for line in (tmp_path / "local" / "metrics.jsonl").read_text().splitlines()]
    # idle time: synchronous workers keep the trainer waiting; an in-process engine is the trainer's own work
    assert all(m["time/wait_rollout_s"] > 1e-3 and m["time/worker_idle_s"] >= 0 for m in metrics if "loss" in m)
    assert all(m["time/wait_rollout_s"] < 1e-3 and "time/worker_idle_s" not in m for m in local if "loss" in m)


def test_asynchronous_rollouts_are_at_most_k_versions_old(cluster, tmp_path):
    """--rl.max_staleness 2: the next 2 steps' rollouts generate on the worker while the trainer
    updates; each batch's completions carry the version that sampled them, never more than 2 behind
    the policy they train, and decoupled PPO's importance weights are logged."""
    out = tmp_path / "async"
    assert main(["rl", "--model", MODEL, "--data", "task:addition:digits=1", "--data.train_rows", "32", "--data.eval_rows", "0",
                 "--train.progress", "false", "--lr", "1e-3", "--max-steps", "5", "--rl.prompts_per_step", "2",
                 "--rl.samples_per_prompt", "4", "--rl.max_new_tokens", "6", "--rl.temperature", "1.5",
                 "--rollout.backend", "ray", "--rollout.workers", "1", "--rl.max_staleness", "2", "--out", str(out)]) == 0
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"reward_mean"' in line]
    # step 1 is synchronous; steps 2 and 3 were both submitted at step 1 (version 0); step 4 at step 2 (version 1) ...
    assert [m["offpolicy/staleness"] for m in metrics] == [0, 1, 2, 2, 2]
    assert all(m["offpolicy/staleness_max"] <= 2 for m in metrics)
    assert all("offpolicy/is_mean" in m and m["offpolicy/is_max"] >= m["offpolicy/is_mean"] > 0 for m in metrics)
    assert main(["rl", "--model", MODEL, "--data", "task:addition", "--max-steps", "1", "--rl.max_staleness", "1",
                 "--out", str(tmp_path / "local")]) == 2  # local engine: refused with a message (it shares the live module)


def test_readme_ray_commands_run(cluster, tmp_path, monkeypatch):
    """The README's Ray recipe as a user types it (shrunk to 2 steps; the cluster address is this
    test's local cluster)."""
    import shlex
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = text.split("<!-- ray-examples", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    cmds = [shlex.split(line.split("#", 1)[0]) for line in block.splitlines() if line.strip().startswith("posttrain")]
    assert len(cmds) == 2 and all("--rollout.backend" in c for c in cmds)
    monkeypatch.chdir(tmp_path)
    shrink = ["--max-steps", "2", "--data.train_rows", "16", "--data.eval_rows", "0", "--rl.prompts_per_step", "2",
              "--rl.samples_per_prompt", "2", "--rl.max_new_tokens", "4", "--train.progress", "false", "--rollout.cpus_per_worker", "0.25"]
    for words in cmds:
        words = [w if w != "HEAD_IP:6379" else ray.get_runtime_context().gcs_address for w in words[1:]]
        words = ["tiny-llama:d=32,l=1,h=2" if w == "tiny-llama" else w for w in words]
        assert main([*words, *shrink]) == 0, words
        out = tmp_path / words[words.index("--out") + 1]
        assert (out / "checkpoints" / "step-0000002").is_dir()
