"""Rollout workers on a local Ray cluster (2 CPUs): the pool speaks the engine protocol, gives the
in-process engine's rollouts for the same per-prompt seeds, carries weight versions, reports a worker's
own error and a dead worker's cause, and replaces a dead worker when restarts are allowed."""
import json
import time

import pytest
import torch

ray = pytest.importorskip("ray")

from posttrain.cli import main  # noqa: E402
from posttrain.data import encode_prompt  # noqa: E402
from posttrain.models import load_model_and_tokenizer  # noqa: E402
from posttrain.rollout import HFEngine, PolicyWeights, SamplingParams  # noqa: E402
from posttrain.rollout.ray_pool import RayRolloutPool, RolloutWorkerError  # noqa: E402

MODEL = "tiny-llama:d=32,l=2,h=2"


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


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
