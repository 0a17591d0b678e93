"""Tiny-model runs of the online RL trainer: every --algo preset learns, the update is independent
of the micro-batch split, and bad inputs are counted rather than crashing."""
import dataclasses
import json
import math

import pytest
import torch

from posttrain.trainers.common import DataConfig, ModelConfig, OptimConfig, TrainConfig
from posttrain.trainers.rl import RLConfig, RLOptions, RLTrainer, run_rl_stage
from posttrain.trainers.rl_presets import PRESETS

MODEL = "tiny-llama:d=32,l=2,h=2"


pytestmark = pytest.mark.usefixtures("one_thread")


def digit_share(prompts, completions, **_):
    """An easy, graded reward on the addition task's prompts: the share of digits in the answer."""
    return [sum(ch.isdigit() for ch in c) / max(1, len(c)) for c in completions]


def _cfg(tmp_path, algo="grpo", steps=30, lr=3e-2, data="task:addition:digits=1", eval_rows=0, **rl):
    opts = dict(prompts_per_step=4, samples_per_prompt=4, max_new_tokens=4, show_every=0)
    opts.update(rl)
    return RLConfig(
        algo=algo,
        model=ModelConfig(name=MODEL),
        data=DataConfig(path=data, train_rows=64, eval_rows=eval_rows, on_error="skip"),
        optim=OptimConfig(lr=lr, schedule="constant"),
        train=TrainConfig(out=str(tmp_path / algo), max_steps=steps, progress=False, eval_every=-1),
        rl=RLOptions(**opts),
    )


@pytest.mark.parametrize("algo", list(PRESETS))
def test_every_preset_trains_30_steps_with_rising_reward(tmp_path, algo):
    trainer = RLTrainer(_cfg(tmp_path, algo), reward_fns=[(digit_share, 1.0)])
    trainer.train()
    hist = trainer.history
    assert len(hist) == 30
    for h in hist:
        for k, v in h.items():
            assert math.isfinite(v), f"{algo} step {h['step']}: {k} = {v}"
    rewards = [h["reward_mean"] for h in hist if "reward_mean" in h]
    # dapo's soft overlong punishment is part of its reward; compare like with like
    assert sum(rewards[-5:]) / 5 > sum(rewards[:5]) / 5 + 0.2, rewards
    assert any("grad_norm" in h and h["grad_norm"] > 0 for h in hist)
    if algo == "dapo":
        assert all("dynamic_sampling/kept_groups" in h for h in hist)


def _params_after_one_step(tmp_path, sequences_per_microbatch, algo, **rl):
    torch.manual_seed(0)
    cfg = _cfg(tmp_path / str(sequences_per_microbatch), algo, steps=1, lr=1e-2, sequences_per_microbatch=sequences_per_microbatch,
               prompts_per_step=4, samples_per_prompt=4, **rl)
    trainer = RLTrainer(cfg, reward_fns=[(digit_share, 1.0)])
    grads = []  # the accumulated gradient at each optimizer step (Adam's update would amplify float noise)
    trainer.opt.register_step_pre_hook(
        lambda opt, args, kwargs: grads.append([p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in trainer.model.parameters()]))
    m = trainer.step()
    assert m["grad_norm"] > 0
    assert len(grads) == cfg.rl.minibatches_per_rollout * cfg.rl.epochs_per_rollout
    return [g for gs in grads for g in gs], m


@pytest.mark.parametrize("rl", [
    dict(algo="grpo"),  # seq-mean-token-mean, k3 KL in the loss, fused old logprobs
    dict(algo="dr_grpo", minibatches_per_rollout=2, epochs_per_rollout=2),  # seq-sum-norm, stored old logprobs
    dict(algo="dapo", max_new_tokens=6),  # token-mean, clip-higher, overlong shaping, dynamic sampling
    dict(algo="ppo"),  # critic + GAE
])
def test_update_does_not_depend_on_the_microbatch_split(tmp_path, rl):
    ref, m_ref = _params_after_one_step(tmp_path, 16, **rl)  # 1 x 16
    for size in (4, 1):  # 4 x 4, 16 x 1
        got, m = _params_after_one_step(tmp_path, size, **rl)
        assert m["reward_mean"] == m_ref["reward_mean"]  # same rollouts
        for a, b in zip(ref, got):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
        assert m["loss"] == pytest.approx(m_ref["loss"], abs=1e-6)


@pytest.mark.parametrize("algo", ["grpo", "online_dpo", "reinforce_pp"])
def test_fast_paths_leave_rollouts_and_update_unchanged(tmp_path, algo):
    """The lean decoder and the shared-prompt passes are speed only: same rollouts, same gradient."""
    ref, m_ref = _params_after_one_step(tmp_path / "slow", 16, algo, lean_decoder=False, share_prompts=False)
    got, m = _params_after_one_step(tmp_path / "fast", 16, algo)
    assert m["reward_mean"] == m_ref["reward_mean"]
    for a, b in zip(ref, got):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    assert m["loss"] == pytest.approx(m_ref["loss"], abs=1e-6)


def test_bad_inputs_are_counted_not_fatal(tmp_path):
    rows = [{"prompt": "", "answer": "1"}] + [{"prompt": f"{i}+1=", "answer": str(i + 1)} for i in range(8)]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))

    def flaky(prompts, completions, *, answer, **_):
        if any(c.startswith("1") or len(c) % 3 == 0 for c in completions):
            raise RuntimeError("boom")
        return [0.5] * len(completions)

    def half_nan(prompts, completions, **_):
        return [float("nan") if i % 2 else 1.0 for i in range(len(completions))]

    def no_answer(prompts, completions, **_):
        return [None] * len(completions)

    cfg = _cfg(tmp_path, steps=2, data=str(path))
    out = RLTrainer(cfg, reward_fns=[(flaky, 1.0), (half_nan, 1.0), (no_answer, 1.0)]).train()
    bad = out["bad_cases"]
    assert bad["empty_prompt"] == 1
    assert bad["reward_nans"] == 2 * 16 // 2
    assert bad["reward_missing"] == 2 * 16
    assert bad["reward_errors"] > 0
    logged = [json.loads(x) for x in (tmp_path / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["reward/nans"] == 8 and r["reward/missing"] == 16 for r in logged if "reward/nans" in r)
    assert math.isfinite(out["reward_mean"])


def test_run_rl_stage_returns_curves_and_accuracy(tmp_path):
    from posttrain.models import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(MODEL)
    cfg = _cfg(tmp_path, steps=2, eval_rows=8)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, eval_every=0))  # 0: before and after only
    out = run_rl_stage(model, tok, cfg, reward_fns=[(digit_share, 1.0)])
    assert len(out["curves"]["reward_mean"]) == 2 and out["curves"]["step"] == [1, 2]
    assert 0.0 <= out["eval_before"] <= 1.0 and 0.0 <= out["eval_after"] <= 1.0
    assert out["model"] is model


def test_cli_lists_rl_options(capsys):
    from posttrain.cli import main

    assert main(["rl", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--algo " in text and "rl.prompts_per_step" in text and "rl.kl_placement" in text


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_resume_equals_straight_run(tmp_path, algo):
    """Stopped after 2 of 4 steps and resumed: the same weights as the straight 4-step run."""
    def params(t):
        return torch.cat([p.detach().flatten() for p in t.model.parameters()])

    straight = RLTrainer(_cfg(tmp_path / "a", algo, steps=4), reward_fns=[(digit_share, 1.0)])
    for _ in range(4):
        straight.step()
    first = RLTrainer(_cfg(tmp_path / "b", algo, steps=4), reward_fns=[(digit_share, 1.0)])
    for _ in range(2):
        first.step()
    first.save()
    cfg = _cfg(tmp_path / "b", algo, steps=4)
    resumed = RLTrainer(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, resume=True)), reward_fns=[(digit_share, 1.0)])
    assert resumed.step_num == 2
    for _ in range(2):
        resumed.step()
    assert torch.allclose(params(straight), params(resumed), atol=1e-6)
