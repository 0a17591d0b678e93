"""An asynchronous RL run (``--rl.max_staleness`` K, Ray rollout workers) resumes exactly: the
checkpoint keeps the rollouts already generated ahead (on older weights), so the resumed run trains on
the very samples, behaviour logprobs and policy versions the uninterrupted run did."""
import json

import pytest

pytest.importorskip("ray")

from posttrain.cli import main  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

ARGS = ["rl", "--model", "tiny-llama:d=32,l=2,h=2", "--data", "task:addition:digits=1", "--data.train_rows", "32",
        "--data.eval_rows", "0", "--train.progress", "false", "--lr", "1e-3", "--max-steps", "4",
        "--rl.prompts_per_step", "2", "--rl.samples_per_prompt", "4", "--rl.max_new_tokens", "6",
        "--rl.overlong_buffer", "5", "--rl.stop", "1,7",  # length-shaped rewards: the updates are not zero
        "--rl.temperature", "1.5", "--rollout.backend", "ray", "--rollout.workers", "1",
        "--rollout.cpus_per_worker", "0.5", "--rl.max_staleness", "2", "--train.save_every", "2"]


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"reward_mean"' in line]


def test_an_async_run_resumes_on_the_rollouts_it_generated_ahead(cluster, tmp_path, monkeypatch):
    from safetensors.torch import load_file


    from posttrain.checkpoint import load_state

    assert main([*ARGS, "--out", str(tmp_path / "whole")]) == 0
    monkeypatch.setenv("POSTTRAIN_TEST_FAIL_RANK", "0")
    monkeypatch.setenv("POSTTRAIN_TEST_FAIL_AT", "step-3")  # dies after saving step 2, with steps 3 and 4 generated ahead
    with pytest.raises(RuntimeError, match="injected failure"):
        main([*ARGS, "--out", str(tmp_path / "cut")])
    monkeypatch.delenv("POSTTRAIN_TEST_FAIL_AT")
    saved = load_state(tmp_path / "cut" / "checkpoints" / "step-0000002")
    assert [(step, len(idx)) for step, idx, _, _ in saved["ahead_per_rank"][0]] == [(2, 2), (3, 2)]
    versions = {c["policy_version"] for _, _, _, groups in saved["ahead_per_rank"][0] for g in groups for c in g}
    assert versions == {0, 1}  # generated on the weights of steps 0 and 1, before the update that ended step 2
    assert main([*ARGS, "--out", str(tmp_path / "cut"), "--train.resume", "true"]) == 0

    a = load_file(tmp_path / "whole" / "checkpoints" / "step-0000004" / "model.safetensors")
    b = load_file(tmp_path / "cut" / "checkpoints" / "step-0000004" / "model.safetensors")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) == 0.0
    whole, cut = _rows(tmp_path / "whole"), _rows(tmp_path / "cut")
    keys = ("reward_mean", "loss", "offpolicy/staleness", "offpolicy/is_mean")
    assert [[m[k] for k in keys] for m in whole[2:]] == [[m[k] for k in keys] for m in cut[-2:]]
    assert [m["offpolicy/staleness"] for m in whole] == [0, 1, 2, 2]
    assert all(m["grad_norm"] > 0 for m in whole)  # every step changed the weights
    assert all(m["time/worker_idle_s"] >= 0 and m["time/wait_rollout_s"] >= 0 for m in whole)  # each role's idle time
