"""Data parallel on the runtime seam, for real: 2 CPU processes under torchrun (gloo).

N ranks x B/N sequences must give the update of 1 process x B (the loss normalizers are global), for
DDP and FSDP2, SFT and the reward model: the saved parameters after 3 optimizer steps agree with a
single-process run of the same global batch to 1e-5 (the single process uses other micro-batch
sizes, so the sums really are grouped differently). A checkpoint resumes under another `parallel`.
A rank that raises ends the job quickly, and the output names it.
"""
import os
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from posttrain.cli import main

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(sys.platform == "win32", reason="torchrun with gloo on Linux/macOS only")]

MODEL = "tiny-llama:d=32,l=2,h=2"
COMMON = ["--model", MODEL, "--data", "task:addition", "--data.train_rows", "64", "--train.progress", "false", "--lr", "1e-3"]
STAGE_ARGS = {
    # one process runs SFT's fused head (logits at the loss positions only, in chunks), the ranks the
    # full forward (a DDP / FSDP2 wrapper's own forward must run): the same loss summed in another
    # order, which Adam at lr 1e-3 turns into 1.2e-5 on the worst weight; at 3e-4 it stays below 1e-5
    "sft": ["--data.eval_rows", "0", "--sft.sequences_per_step", "8", "--lr", "3e-4"],
    # Adam turns a rounding-level difference in a near-zero gradient coordinate into up to lr per step;
    # at lr 1e-3 the reward model's worst weight lands at 1.07e-5 (losses and grad norms agree to 7
    # digits), so it trains at 3e-4, where the same rounding stays below the 1e-5 bar
    "rm": ["--data.eval_rows", "0", "--rm.pairs_per_step", "8", "--lr", "3e-4"],
    "dpo": ["--data.eval_rows", "0", "--pref.pairs_per_step", "8", "--pref.eval_before", "false"],
}
MICRO = {"sft": "--sft.sequences_per_microbatch", "rm": "--rm.pairs_per_microbatch", "dpo": "--pref.pairs_per_microbatch"}


def torchrun(args: list[str], env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "posttrain", *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env)


def weights(run_dir, step: int) -> dict:
    return load_file(run_dir / "checkpoints" / f"step-{step:07d}" / "model.safetensors")


def assert_close(a: dict, b: dict, atol: float = 1e-5) -> float:
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= atol, worst
    return worst


def single(stage: str, out, *extra: str) -> None:
    assert main([stage, *COMMON, *STAGE_ARGS[stage], "--out", str(out), *extra]) == 0


@pytest.mark.parametrize("stage", ["sft", "rm", "dpo"])
@pytest.mark.parametrize("parallel", ["ddp", "fsdp2"])
def test_two_ranks_equal_one_process(tmp_path, stage, parallel):
    single(stage, tmp_path / "one", "--max-steps", "3", MICRO[stage], "8")  # 1 x 8, one micro-batch
    r = torchrun([stage, *COMMON, *STAGE_ARGS[stage], "--out", str(tmp_path / "two"), "--max-steps", "3",
                  MICRO[stage], "2", "--runtime.parallel", parallel])  # 2 ranks x 4, two micro-batches each
    assert r.returncode == 0, r.stderr[-3000:]
    assert_close(weights(tmp_path / "one", 3), weights(tmp_path / "two", 3))
    one = (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()
    two = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert len(one) == len(two) == 3  # rank 0 alone logged
    assert (tmp_path / "two" / "config.yaml").read_text().count("parallel: " + parallel) == 1
    if stage == "rm":
        assert (tmp_path / "two" / "model" / "model.safetensors").exists()


def _stepwise_file(path) -> str:
    """24 PRM rows: a sum, its steps, a label per step (the second step is wrong in every third row)."""
    import json

    rows = []
    for i in range(24):
        a, b = i % 7 + 1, i % 5 + 2
        wrong = i % 3 == 0
        rows.append({"prompt": f"{a}+{b}=?", "completions": [f"{a} plus {b}", f"is {a + b + (1 if wrong else 0)}"],
                     "labels": [1, 0 if wrong else 1]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp2"])
def test_prm_two_ranks_equal_one_process(tmp_path, parallel):
    data = _stepwise_file(tmp_path / "steps.jsonl")
    args = ["prm", "--model", MODEL, "--data", data, "--train.progress", "false", "--lr", "1e-3", "--max-steps", "3",
            "--prm.sequences_per_step", "8", "--prm.eval_share", "0"]
    assert main([*args, "--out", str(tmp_path / "one"), "--prm.sequences_per_microbatch", "8"]) == 0
    r = torchrun([*args, "--out", str(tmp_path / "two"), "--prm.sequences_per_microbatch", "2", "--runtime.parallel", parallel])
    assert r.returncode == 0, r.stderr[-3000:]
    assert_close(weights(tmp_path / "one", 3), weights(tmp_path / "two", 3))
    import torch

    heads = [torch.load(tmp_path / d / "checkpoints" / "step-0000003" / "prm_head.pt") for d in ("one", "two")]
    assert_close(*heads)


# RL: a length-shaped reward (DAPO's overlong penalty on 1-digit sums a random model never solves) gives
# the groups reward spread, so the updates are not zero; per-prompt seeds make each prompt's samples
# the same whichever rank draws them, so the 2-rank rollouts are the 1-process rollouts.
RL = ["rl", "--model", MODEL, "--data", "task:addition:digits=1", "--data.train_rows", "64", "--data.eval_rows", "0",
      "--train.progress", "false", "--lr", "1e-3", "--rl.prompts_per_step", "4", "--rl.samples_per_prompt", "8",
      "--rl.max_new_tokens", "6", "--rl.overlong_buffer", "5", "--rl.stop", "1,7", "--rl.temperature", "1.5", "--rl.seed_per_prompt", "true",
      "--optim.schedule", "constant"]


def _rl_moved(run_dir, step: int) -> None:
    import json

    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any(m.get("advantage_abs_mean", 0) > 0.05 for m in metrics), metrics  # a real update, not zeros
    assert len([m for m in metrics if "reward_mean" in m]) == step


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
@pytest.mark.parametrize("parallel", ["ddp", "fsdp2"])
def test_rl_two_ranks_equal_one_process(tmp_path, algo, parallel):
    """Each rank rolls out 2 of the 4 prompts with its own engine; advantages (PPO: GAE, whitened over
    the global batch; a critic trained beside the policy) and the loss normalizers are global."""
    args = [*RL, "--algo", algo, "--max-steps", "3"]
    assert main([*args, "--out", str(tmp_path / "one"), "--rl.sequences_per_microbatch", "32"]) == 0
    r = torchrun([*args, "--out", str(tmp_path / "two"), "--rl.sequences_per_microbatch", "8", "--runtime.parallel", parallel])
    assert r.returncode == 0, r.stderr[-3000:]
    _rl_moved(tmp_path / "two", 3)
    assert_close(weights(tmp_path / "one", 3), weights(tmp_path / "two", 3))
    one = [line for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    two = [line for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    import json

    for a, b in zip(one, two):  # the logged step metrics are the global batch's
        a, b = json.loads(a), json.loads(b)
        for key in ("reward_mean", "reward_std", "completion_tokens_mean", "advantage_abs_mean"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), key


def test_rl_two_rank_run_stopped_and_resumed_equals_the_straight_run(tmp_path):
    args = [*RL, "--algo", "ppo", "--runtime.parallel", "ddp", "--rl.sequences_per_microbatch", "8"]
    r = torchrun([*args, "--out", str(tmp_path / "straight"), "--max-steps", "3"])
    assert r.returncode == 0, r.stderr[-3000:]
    r = torchrun([*args, "--out", str(tmp_path / "resumed"), "--max-steps", "2"])
    assert r.returncode == 0, r.stderr[-3000:]
    r = torchrun(["rl", "--out", str(tmp_path / "resumed"), "--resume", "--max-steps", "3"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert_close(weights(tmp_path / "straight", 3), weights(tmp_path / "resumed", 3), atol=1e-6)


def test_checkpoint_resumes_under_another_parallel(tmp_path):
    """ddp (2 ranks) -> fsdp2 (2 ranks) -> fsdp2 -> one process: the optimizer state moves from the
    plain layout into FSDP2's shards, is saved shard by shard through torch.distributed.checkpoint,
    resumed sharded, then read back whole by one process; the result equals a straight 4-step run."""
    import torch

    single("sft", tmp_path / "straight", "--max-steps", "4", "--optim.schedule", "constant")  # the cosine follows max_steps
    out = str(tmp_path / "moved")
    r = torchrun(["sft", *COMMON, *STAGE_ARGS["sft"], "--out", out, "--max-steps", "1", "--runtime.parallel", "ddp",
                  "--optim.schedule", "constant"])
    assert r.returncode == 0, r.stderr[-3000:]
    r = torchrun(["sft", "--out", out, "--resume", "--max-steps", "2", "--runtime.parallel", "fsdp2"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "--resume: runtime.parallel 'ddp' -> 'fsdp2'" in r.stderr  # listed, not refused
    step2 = tmp_path / "moved" / "checkpoints" / "step-0000002"
    state = torch.load(step2 / "trainer_state.pt", weights_only=False)
    assert state["optimizer_format"] == "dcp" and state["optimizer"] is None  # rank 0 did not gather it
    assert sorted(p.name for p in (step2 / "optimizer").iterdir() if p.suffix == ".distcp") == ["__0_0.distcp", "__1_0.distcp"]
    r = torchrun(["sft", "--out", out, "--resume", "--max-steps", "3"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert main(["sft", "--out", out, "--resume", "--max-steps", "4", "--runtime.parallel", "none"]) == 0
    assert_close(weights(tmp_path / "straight", 4), weights(tmp_path / "moved", 4))
    assert not list((tmp_path / "moved" / "checkpoints").glob(".sharded-*"))


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_nodes_on_localhost_equal_two_processes(tmp_path):
    """Two `torchrun --nnodes 2 --node_rank {0,1}` launches (one process each, a static rendezvous on
    localhost, as two machines would run them) train SFT together and match the one-node 2-process run."""
    args = ["sft", *COMMON, *STAGE_ARGS["sft"], "--max-steps", "3", "--sft.sequences_per_microbatch", "2", "--runtime.parallel", "ddp"]
    r = torchrun([*args, "--out", str(tmp_path / "one-node")])
    assert r.returncode == 0, r.stderr[-3000:]
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank),
                               "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
                               "-m", "posttrain", *args, "--out", str(tmp_path / "two-nodes")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for rank in (0, 1)]
    outs = [n.communicate(timeout=150) for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    assert_close(weights(tmp_path / "one-node", 3), weights(tmp_path / "two-nodes", 3), atol=1e-6)


def test_a_failing_rank_ends_the_job_and_is_named(tmp_path):
    t0 = time.perf_counter()
    r = torchrun(["sft", *COMMON, *STAGE_ARGS["sft"], "--out", str(tmp_path / "f"), "--max-steps", "3",
                  "--runtime.parallel", "ddp", "--runtime.timeout_s", "30"],
                 env={"POSTTRAIN_TEST_FAIL_RANK": "1", "POSTTRAIN_TEST_FAIL_AT": "step-2"}, timeout=90)
    assert r.returncode != 0
    assert time.perf_counter() - t0 < 60
    out = r.stdout + r.stderr
    assert "posttrain sft (rank 1 of 2): failed: RuntimeError: injected failure on rank 1 at step-2" in out


def test_torchrun_without_parallel_is_refused(tmp_path):
    r = torchrun(["sft", *COMMON, *STAGE_ARGS["sft"], "--out", str(tmp_path / "x"), "--max-steps", "1"], timeout=90)
    assert r.returncode != 0  # each rank exits 2 (a config error); torchrun reports 1
    assert "posttrain sft (rank 1 of 2): config error: running as rank 1 of 2 (torchrun) with runtime.parallel=none" in r.stderr
