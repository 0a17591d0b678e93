"""A PRM as a dense reward in online RL: the process-advantage formula (DeepSeekMath Sec. 4.1.3) by
hand and against a looped reference, the step-reward layout, and tiny runs of the RL trainer with a
tiny trained PRM (metrics, step placement, prm_coef=0 equals no PRM, PRM failures counted)."""
import dataclasses
import json
import math
import random

import pytest
import torch

from posttrain.advantages import ADVANTAGE_ESTIMATORS, process_advantages
from posttrain.rewards.prm import dense_step_rewards
from posttrain.tasks.arithmetic import scratchpad_steps
from posttrain.trainers.common import DataConfig, ModelConfig, OptimConfig, TrainConfig
from posttrain.trainers.rl import RLConfig, RLOptions, RLTrainer
from posttrain.trainers.rl_update import prm_token_rewards

TOL = dict(atol=1e-5, rtol=1e-5)
EPS = 1e-6


def _t(x):
    return torch.tensor(x, dtype=torch.float32)


# ---------------------------------------------------------------- the formula, by hand
#
# 5 completions, T = 5. group 7: row 0 has 2 steps (ending at tokens 1 and 3, then an EOS at 4), row 1
# one step (token 2), row 2 no step; group 3: row 3 two steps; group 9: row 4 a single step (alone).
# A 99 at a non-step position of row 0 must be ignored.
STEP_R = _t([[0.0, 0.9, 99.0, 0.6, 0.0],
             [0.0, 0.0, 0.0, 0.0, 0.0],
             [0.0, 0.0, 0.0, 0.0, 0.0],
             [0.0, 0.2, 0.0, 0.8, 0.0],
             [0.0, 0.7, 0.0, 0.0, 0.0]])
STEP_M = torch.tensor([[0, 1, 0, 1, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 0], [0, 1, 0, 1, 0], [0, 1, 0, 0, 0]], dtype=torch.bool)
MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
GROUPS = torch.tensor([7, 7, 7, 3, 9])


def test_process_advantages_hand_values():
    # group 7 steps [0.9, 0.6, 0.0]: mean 0.5, unbiased std sqrt(0.21) -> [0.4, 0.1, -0.5] / s7
    s7 = math.sqrt((0.16 + 0.01 + 0.25) / 2) + EPS
    # group 3 steps [0.2, 0.8]: mean 0.5, std sqrt(0.18) -> [-0.3, 0.3] / s3; group 9: one step -> 0
    s3 = math.sqrt(0.18) + EPS
    want = [[0.5 / s7, 0.5 / s7, 0.1 / s7, 0.1 / s7, 0.0],  # sum of steps ending at or after t; EOS 0
            [-0.5 / s7, -0.5 / s7, -0.5 / s7, 0.0, 0.0],
            [0.0] * 5,  # no step: nothing
            [0.0, 0.0, 0.3 / s3, 0.3 / s3, 0.0],  # -0.3 + 0.3 before the first step end
            [0.0] * 5]
    got = process_advantages(STEP_R, STEP_M, GROUPS, mask=MASK, eps=EPS)
    torch.testing.assert_close(got, _t(want), **TOL)
    mean_only = [[0.5, 0.5, 0.1, 0.1, 0.0], [-0.5, -0.5, -0.5, 0.0, 0.0], [0.0] * 5, [0.0, 0.0, 0.3, 0.3, 0.0], [0.0] * 5]
    torch.testing.assert_close(process_advantages(STEP_R, STEP_M, GROUPS, mask=MASK, scale_by_std=False), _t(mean_only), **TOL)
    with pytest.raises(ValueError, match=r"\(N, T\)"):
        process_advantages(STEP_R, STEP_M[:, :3], GROUPS)


def _looped_process_advantages(r, sm, groups, mask, eps, scale_by_std):
    n, T = len(r), len(r[0])
    out = [[0.0] * T for _ in range(n)]
    for g in set(groups):
        rows = [i for i in range(n) if groups[i] == g]
        vals = [r[i][t] for i in rows for t in range(T) if sm[i][t]]
        if not vals:
            continue
        mean = sum(vals) / len(vals)
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / max(1, len(vals) - 1))
        for i in rows:
            norm = [((r[i][t] - mean) / (std + eps) if scale_by_std else r[i][t] - mean) if sm[i][t] else 0.0 for t in range(T)]
            for t in range(T):
                out[i][t] = sum(norm[t:]) if mask[i][t] else 0.0
    return out


@pytest.mark.parametrize("scale_by_std", [True, False])
def test_process_advantages_equal_looped_reference(scale_by_std):
    rng = random.Random(3)
    n, T = 12, 9
    groups = [rng.choice([0, 4, 5, 11]) for _ in range(n)]
    lengths = [rng.randint(0, T) for _ in range(n)]
    mask = [[t < lengths[i] for t in range(T)] for i in range(n)]
    sm = [[mask[i][t] and rng.random() < 0.35 for t in range(T)] for i in range(n)]
    r = [[rng.random() for _ in range(T)] for _ in range(n)]
    got = process_advantages(_t(r), torch.tensor(sm), torch.tensor(groups), mask=torch.tensor(mask), eps=EPS, scale_by_std=scale_by_std)
    torch.testing.assert_close(got, _t(_looped_process_advantages(r, sm, groups, mask, EPS, scale_by_std)), **TOL)


def test_dense_step_rewards_layout_and_errors():
    rewards, smask = dense_step_rewards([[(1, 0.9), (3, 0.6)], [], [(0, 0.2)]], 4)
    torch.testing.assert_close(rewards, _t([[0, 0.9, 0, 0.6], [0, 0, 0, 0], [0.2, 0, 0, 0]]))
    assert smask.tolist() == [[False, True, False, True], [False] * 4, [True, False, False, False]]
    with pytest.raises(IndexError, match="completion 0: step reward at token 4"):
        dense_step_rewards([[(4, 1.0)]], 4)


def test_prm_token_rewards_feed_gae_hand_values():
    # one completion of 3 tokens, a step ends at token 0 (score 0.9) and at token 2 (score 0.2);
    # coef 2, baseline 0.5 -> token rewards [0.8, 0, -0.6], outcome 1 at the last token
    scores, smask = dense_step_rewards([[(0, 0.9), (2, 0.2)]], 3)
    kl = _t([[-0.1, -0.1, -0.1]])
    tr = prm_token_rewards(kl, scores, smask, coef=2.0, baseline=0.5)
    torch.testing.assert_close(tr, _t([[0.7, -0.1, -0.7]]), **TOL)
    assert prm_token_rewards(None, scores, smask, 2.0, 0.5)[0, 1] == 0.0
    adv, _ = ADVANTAGE_ESTIMATORS.get("gae")(_t([1.0]), torch.tensor([0]), values=torch.zeros(1, 3), token_rewards=tr,
                                             mask=torch.ones(1, 3), gamma=1.0, lam=1.0)
    torch.testing.assert_close(adv, _t([[0.7 - 0.1 + 0.3, -0.1 + 0.3, 0.3]]), **TOL)


# ---------------------------------------------------------------- tiny runs of the trainer

POLICY = "tiny-llama:d=32,l=2,h=2"
DATA = "task:addition:digits=1,scratchpad=1"  # one step per line


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def prm_dir(tmp_path_factory):
    """A tiny PRM trained for a few steps by the `posttrain prm` trainer on addition scratchpad steps
    (right solutions labelled 1, a slipped digit labelled 0 from the slip on)."""
    from posttrain.models import load_model_and_tokenizer
    from posttrain.trainers.prm import PRMConfig, PRMOptions, PRMTrainer

    rng = random.Random(0)
    rows = []
    for _ in range(32):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        prompt = [{"role": "user", "content": f"{a}+{b}"}]
        right = scratchpad_steps(a, b)
        rows.append({"prompt": prompt, "completions": right, "labels": [1.0] * len(right)})
        wrong = scratchpad_steps(a, b, slip_digit_at=0)
        rows.append({"prompt": prompt, "completions": wrong, "labels": [0.0] * len(wrong)})
    out = tmp_path_factory.mktemp("prm")
    model, tok = load_model_and_tokenizer("tiny-llama:d=32,l=1,h=2", seed=1)
    cfg = PRMConfig(data=DataConfig(path="<rows>", max_length=64), optim=OptimConfig(lr=1e-2),
                    train=TrainConfig(out=str(out), max_steps=4, progress=False),
                    prm=PRMOptions(sequences_per_step=16, sequences_per_microbatch=16, eval_share=0.1))
    PRMTrainer(cfg, model, tok, rows=rows).train()
    return str(out)


def constant_reward(prompts, completions, **_):
    return [0.0] * len(completions)


def digit_share(prompts, completions, **_):
    return [sum(ch.isdigit() for ch in c) / max(1, len(c)) for c in completions]


def _cfg(out, algo="grpo", steps=3, **rl):
    opts = dict(prompts_per_step=4, samples_per_prompt=4, max_new_tokens=12, show_every=0)
    opts.update(rl)
    return RLConfig(algo=algo, model=ModelConfig(name=POLICY),
                    data=DataConfig(path=DATA, train_rows=32, eval_rows=0, on_error="skip"),
                    optim=OptimConfig(lr=1e-2, schedule="constant"),
                    train=TrainConfig(out=str(out), max_steps=steps, progress=False, eval_every=-1),
                    rl=RLOptions(**opts))


PRM_KEYS = ("prm/step_score_mean", "prm/steps_per_completion", "prm/no_step_completions", "prm/errors")


def test_grpo_with_prm_runs_and_logs_sane_metrics(tmp_path, prm_dir):
    # a constant outcome reward: every outcome advantage is 0, so any gradient comes from the PRM
    trainer = RLTrainer(_cfg(tmp_path / "run", prm_model=prm_dir), reward_fns=[(constant_reward, 1.0)])
    assert trainer.prm_sep == "\n" and trainer.describe()["prm"]["use"] == "process_advantages"
    out = trainer.train()
    hist = trainer.history
    assert len(hist) == 3
    for h in hist:
        assert all(math.isfinite(v) for v in h.values()), h
        assert all(k in h for k in PRM_KEYS), h
        assert 0.0 < h["prm/step_score_mean"] < 1.0 and h["prm/errors"] == 0
        assert 1.0 <= h["prm/steps_per_completion"] <= 12 and 0 <= h["prm/no_step_completions"] <= 16
        assert h["prm/advantage_abs_mean"] > 0
    assert hist[0]["grad_norm"] > 0  # step 1: policy == reference, outcome advantages 0: only the PRM moves it
    assert "prm_errors" not in out["bad_cases"]
    logged = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert sum(all(k in r for k in PRM_KEYS) for r in logged) == 3

    # the scores sit on the step-end tokens: a token whose text holds "\n", or the last non-EOS token
    batch = trainer.collect({})
    trainer.score_steps(batch, {})
    tok = trainer.tokenizer
    for i, c in enumerate(batch.completions):
        ids = c.token_ids[:-1] if c.token_ids and c.token_ids[-1] == tok.eos_token_id else c.token_ids
        for t in batch.step_mask[i].nonzero().flatten().tolist():
            assert "\n" in tok.decode([ids[t]]) or t == len(ids) - 1, (c.text, t)
        assert int(batch.step_mask[i].sum()) == len([s for s in c.text.split("\n") if s.strip()]), c.text


class ScratchpadEngine:
    """Scripted rollouts with known steps: per prompt, a 2-step right and a 2-step wrong solution, a
    1-step answer, and an empty completion (EOS only: no step)."""

    TEXTS = ("3+4+0=7 c0\n#### 7", "3+4+0=8 c0\n#### 8", "#### 7", "")

    def __init__(self, tok):
        self.tok = tok

    def generate(self, prompts, params):
        from posttrain.rollout.base import Completion

        def comp(text):
            ids = self.tok.encode(text, add_special_tokens=False) + [self.tok.eos_token_id]
            return Completion(ids, [0.0] * len(ids), "stop", text)

        return [[comp(self.TEXTS[j % 4]) for j in range(params.n)] for _ in prompts]

    def update_weights(self, named_weights, version):
        pass


def test_scripted_steps_metrics_placement_and_advantages(tmp_path, prm_dir):
    from posttrain.advantages import compute_advantages

    trainer = RLTrainer(_cfg(tmp_path / "run", prm_model=prm_dir, prm_coef=0.5), reward_fns=[(digit_share, 1.0)])
    trainer.engine = ScratchpadEngine(trainer.tokenizer)
    m: dict = {}
    batch = trainer.collect(m)
    trainer.score_steps(batch, m)
    assert m["prm/steps_per_completion"] == pytest.approx((2 + 2 + 1 + 0) / 4) and m["prm/no_step_completions"] == 4
    nl = trainer.tokenizer.convert_tokens_to_ids("\n")
    assert [batch.step_mask[i].nonzero().flatten().tolist() for i in range(4)] == [[10, 16], [10, 16], [5], []]
    assert int(batch.completion[0, 10]) == nl  # the first step ends on its newline; the second on its last digit
    assert 0 < float(batch.step_scores[0, 10]) < 1 and float(batch.step_scores[2, 5]) > 0
    trainer.reference(batch, m)
    trainer.advantages(batch, m)
    outcome = compute_advantages("grpo", batch.rewards, batch.group_ids)[0]
    adv = batch.advantages
    assert adv.shape == batch.completion.shape
    for i in range(len(batch)):
        n = int(batch.token_mask[i].sum())
        last_step = max(batch.step_mask[i].nonzero().flatten().tolist(), default=-1)
        # after the last step end (the EOS; the whole of an empty completion) only the outcome term is left
        torch.testing.assert_close(adv[i, last_step + 1 : n], outcome[i].expand(n - last_step - 1), **TOL)
        assert (adv[i, n:] == 0).all()
    assert (adv[0, :11] - outcome[0]).abs().min() > 1e-4  # the process term before the first step end
    for _ in range(2):
        out = trainer.step()
        assert all(math.isfinite(v) for v in out.values() if isinstance(v, float)) and out["prm/errors"] == 0


def _grads_after_one_step(out, algo, **rl):
    torch.manual_seed(0)
    trainer = RLTrainer(_cfg(out, algo, steps=1, **rl), reward_fns=[(digit_share, 1.0)])
    grads = []
    trainer.opt.register_step_pre_hook(lambda opt, args, kwargs: grads.append(
        torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None])))
    m = trainer.step()
    return grads[0], m


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_prm_coef_zero_equals_no_prm_and_coef_one_differs(tmp_path, prm_dir, algo):
    base, m0 = _grads_after_one_step(tmp_path / "none", algo)
    zero, mz = _grads_after_one_step(tmp_path / "zero", algo, prm_model=prm_dir, prm_coef=0.0)
    one, m1 = _grads_after_one_step(tmp_path / "one", algo, prm_model=prm_dir, prm_coef=1.0)
    assert "prm/step_score_mean" in mz and "prm/step_score_mean" not in m0  # the PRM was called, at weight 0
    assert mz["reward_mean"] == m0["reward_mean"] == m1["reward_mean"]  # same rollouts
    torch.testing.assert_close(zero, base, atol=1e-7, rtol=1e-6)
    assert mz["loss"] == pytest.approx(m0["loss"], abs=1e-7)
    assert (one - base).abs().max() > 1e-4 * base.abs().max()


class _FlakyScorer:
    """Raises on the first call, returns NaN scores on the second, works afterwards."""

    def __init__(self, real):
        self.real, self.calls = real, 0

    def score_steps(self, prompt, steps_list):
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("PRM server down")
        if self.calls == 2:
            return [[float("nan")] * len(s) for s in steps_list]
        return self.real.score_steps(prompt, steps_list)


def test_prm_failure_is_counted_and_trains_on_outcome_reward(tmp_path, prm_dir, monkeypatch):
    warnings = []
    monkeypatch.setattr("posttrain.trainers.rl.warn", warnings.append)
    trainer = RLTrainer(_cfg(tmp_path / "run", "ppo", steps=3, samples_per_prompt=2, prompts_per_step=2,
                             prm_model=prm_dir), reward_fns=[(digit_share, 1.0)])
    assert trainer.describe()["prm"]["use"] == "token_rewards"
    trainer.prm_scorer = _FlakyScorer(trainer.prm_scorer)
    out = trainer.train()
    assert out["bad_cases"]["prm_errors"] == 2
    assert [h["prm/errors"] for h in trainer.history] == [1, 1, 0]
    assert "prm/step_score_mean" not in trainer.history[0] and "prm/step_score_mean" in trainer.history[2]
    assert all(math.isfinite(v) for h in trainer.history for v in h.values())
    failed = [w for w in warnings if "PRM scoring failed" in w]
    assert len(failed) == 2 and "RuntimeError: PRM server down" in failed[0] and "FloatingPointError" in failed[1]


def test_prm_option_checks_and_cli_keys(tmp_path, prm_dir):
    from posttrain.config import load_config

    cfg = load_config(RLConfig, overrides={"rl.prm_model": "runs/prm", "rl.prm_coef": "0.5", "rl.prm_baseline": "0"})
    assert (cfg.rl.prm_model, cfg.rl.prm_coef, cfg.rl.prm_baseline) == ("runs/prm", 0.5, 0.0)
    with pytest.raises(ValueError, match="not online_dpo"):
        RLTrainer(_cfg(tmp_path / "dpo", "online_dpo", prm_model=prm_dir), reward_fns=[(digit_share, 1.0)])
    bad = _cfg(tmp_path / "neg", prm_model=prm_dir)
    with pytest.raises(ValueError, match="prm_coef >= 0"):
        RLTrainer(dataclasses.replace(bad, rl=dataclasses.replace(bad.rl, prm_coef=-1.0)), reward_fns=[(digit_share, 1.0)])
