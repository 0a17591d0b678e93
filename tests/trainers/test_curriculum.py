"""The online curriculum: the pass-rate sampler prefers learnable prompts and resumes exactly, the
gates admit what they should, refill keeps the batch size, and a curriculum run resumed equals the
straight run (including the per-prompt reward history LIMR reads)."""
import json

import pytest
import torch

from posttrain.trainers.curriculum import PassRateSampler, UniformSampler, admit
from posttrain.trainers.common import DataConfig, DataOrder, ModelConfig, OptimConfig, TrainConfig
from posttrain.trainers.rl import RLTrainer
from posttrain.trainers.rl_config import RLConfig, RLOptions

pytestmark = pytest.mark.usefixtures("one_thread")


def test_uniform_sampler_is_the_data_order():
    s, o = UniformSampler(10, 3), DataOrder(10, 3)
    assert [s.take(4) for _ in range(5)] == [o.take(4) for _ in range(5)]


def test_pass_rate_sampler_prefers_learnable_prompts_and_resumes_exactly():
    s = PassRateSampler(3, seed=0, ema=1.0, floor=0.01)
    s.observe([0, 1, 2], [1.0, 0.5, 0.0])
    assert s.weights().tolist() == pytest.approx([0.01, 0.26, 0.01])
    counts = torch.bincount(torch.tensor([s.take(1)[0] for _ in range(600)]), minlength=3)
    assert counts[1] > 0.85 * 600  # 0.26 / 0.28 of the draws
    s.observe([1], [0.0])  # ema 1: the newest mean replaces the estimate
    assert s.pass_rate[1] == 0.0
    t = PassRateSampler(3, seed=0)
    t.load_state(s.state())
    assert [s.take(2) for _ in range(5)] == [t.take(2) for _ in range(5)]
    assert sorted(PassRateSampler(5, seed=1).take(5)) == [0, 1, 2, 3, 4]  # without replacement


def test_gates():
    r = torch.tensor
    assert admit(r([1.0, 1.0]), zero_variance=True) == "zero_variance"
    assert admit(r([1.0, 0.0]), zero_variance=True) is None
    assert admit(r([1.0, 0.99]), zero_variance=True, min_spread=0.05) == "zero_variance"
    assert admit(r([1.0, 1.0, 1.0, 0.0]), zero_variance=False, band=(0.1, 0.7)) == "reward_band"
    assert admit(r([1.0, 0.0]), zero_variance=False, band=(0.1, 0.7)) is None


def _cfg(out, steps, resume=False, **rl):
    return RLConfig(
        algo="grpo", model=ModelConfig(name="tiny-llama:d=32,l=1,h=2"),
        data=DataConfig(path="task:addition:digits=1", train_rows=32, eval_rows=0, on_error="skip"),
        optim=OptimConfig(lr=1e-2, schedule="constant"),
        train=TrainConfig(out=str(out), max_steps=steps, progress=False, eval_every=-1, save_every=2, resume=resume),
        rl=RLOptions(prompts_per_step=4, samples_per_prompt=4, max_new_tokens=3, show_every=0, **rl),
    )


def test_band_gate_refills_to_the_batch_size(tmp_path):
    rewards = iter([1.0, 1.0, 1.0, 1.0] * 3 + [1.0, 0.0, 1.0, 0.0] * 100)

    def scripted(prompts, completions, **kw):  # the first 3 groups are all-correct (refused), then mixed
        return [next(rewards) for _ in completions]

    tr = RLTrainer(_cfg(tmp_path / "rl", 1, reward_band=(0.2, 0.8)), reward_fns=[(scripted, 1.0)])
    m = tr.step()
    assert m["dynamic_sampling/kept_groups"] == 4 and m["reward/dropped_reward_band"] == 3
    assert m["reward/sampled_groups"] == 7
    log = [json.loads(l) for l in open(tmp_path / "rl" / "prompt_rewards.jsonl")]
    assert [r["admitted"] for r in log] == [False] * 3 + [True] * 4 and all(r["step"] == 1 for r in log)


def test_curriculum_run_resumed_equals_the_straight_run(tmp_path):
    def losses(out):
        return [(r["step"], r["loss"]) for r in map(json.loads, open(out / "metrics.jsonl")) if "loss" in r]

    RLTrainer(_cfg(tmp_path / "straight", 4, sampler="pass_rate")).train()
    RLTrainer(_cfg(tmp_path / "r", 2, sampler="pass_rate")).train()
    RLTrainer(_cfg(tmp_path / "r", 4, resume=True, sampler="pass_rate")).train()
    got, want = losses(tmp_path / "r"), losses(tmp_path / "straight")
    assert [s for s, _ in got] == [1, 2, 3, 4]
    assert [l for _, l in got] == pytest.approx([l for _, l in want], abs=1e-6)
    hist = lambda out: [(r["step"], r["prompt_id"], r["reward_mean"]) for r in map(json.loads, open(out / "prompt_rewards.jsonl"))]  # noqa: E731
    assert hist(tmp_path / "r") == hist(tmp_path / "straight")
