"""GRPO from Python with a TRL-style reward function ``f(completions, answer, **kwargs)``: it gets TRL's
keywords, its values become the advantages, a broken one stops the run, and it trains."""
import pytest
import torch

from posttrain.rewards import RewardError
from posttrain.trainers.common import DataConfig, ModelConfig, OptimConfig, TrainConfig
from posttrain.trainers.rl import RLConfig, RLOptions, RLTrainer

MODEL = "tiny-llama:d=32,l=2,h=2"
TASK = "task:addition:digits=1"

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(tmp_path, steps=1, lr=3e-2, prompts=4, samples=4, seed=0, train_rows=64):
    return RLConfig(
        algo="grpo",
        model=ModelConfig(name=MODEL),
        data=DataConfig(path=TASK, train_rows=train_rows, eval_rows=0, on_error="skip"),
        optim=OptimConfig(lr=lr, schedule="constant"),
        train=TrainConfig(out=str(tmp_path / "rl"), max_steps=steps, progress=False, eval_every=-1, seed=seed),
        rl=RLOptions(prompts_per_step=prompts, samples_per_prompt=samples, max_new_tokens=4, show_every=0),
    )


def test_trl_style_reward_gets_trl_keywords_and_its_values_reach_the_advantages(tmp_path):
    calls = []

    def correct(completions, answer, **kwargs):  # the TRL GRPOTrainer signature
        calls.append(dict(kwargs, completions=completions, answer=answer))
        return [1.0 if c.strip() == a else 0.25 * (i % 4) for i, (c, a) in enumerate(zip(completions, answer))]

    trainer = RLTrainer(_cfg(tmp_path), reward_fns=[(correct, 1.0)])
    seen = {}
    advantages = trainer.advantages

    def spy(batch, m):
        advantages(batch, m)
        seen["batch"] = batch

    trainer.advantages = spy
    m = trainer.step()
    (kw,) = calls  # one batch call with all 16 completions
    batch = seen["batch"]
    n = len(batch)
    assert n == 16 and len(kw["completions"]) == n
    assert kw["completions"] == [c.text for c in batch.completions]  # text, not message lists
    assert all(isinstance(p, str) and "+" in p for p in kw["prompts"])
    assert kw["completion_ids"] == [list(c.token_ids) for c in batch.completions]
    assert kw["completion_lengths"] == [len(c.token_ids) for c in batch.completions]
    assert kw["answer"] == [ex.answer for ex in batch.rows] and kw["solution"] == kw["answer"] == kw["ground_truth"]
    assert all(a == str(sum(map(int, p.split("+")))) for a, p in zip(kw["answer"], kw["prompts"]))

    expected = torch.tensor(correct(kw["completions"], kw["answer"], **{k: v for k, v in kw.items()
                                                                      if k not in ("completions", "answer")}))
    torch.testing.assert_close(batch.rewards, expected)
    adv = torch.empty(n)
    for g in batch.group_ids.unique():
        sel = batch.group_ids == g
        r = expected[sel]
        adv[sel] = (r - r.mean()) / (r.std() + 1e-6)  # GRPO: group-normalized reward
    torch.testing.assert_close(batch.advantages, adv)
    assert m["reward_mean"] == pytest.approx(float(expected.mean()))
    assert m["grad_norm"] > 0


def test_reward_with_a_signature_mismatch_stops_the_run(tmp_path):
    def misspelled(completions, solutions):  # no such keyword, no **kwargs: every call raises TypeError
        return [0.0] * len(completions)

    trainer = RLTrainer(_cfg(tmp_path), reward_fns=[(misspelled, 1.0)])
    with pytest.raises(RewardError, match=r"'misspelled' failed on all 16 completions.*TypeError.*solutions"):
        trainer.step()


def test_grpo_with_trl_style_correctness_reward_raises_the_reward(tmp_path):
    """SFT a tiny model to a low held-out accuracy (~30-50% train reward), then GRPO with a TRL-style 0/1
    correctness reward: the mean reward of the last 10 steps beats the first 10 (about 6 s on one thread)."""
    from posttrain.trainers.sft import SFTConfig, SFTOptions, SFTTrainer

    sft = SFTTrainer(SFTConfig(
        model=ModelConfig(name=MODEL), data=DataConfig(path=TASK, train_rows=2000, eval_rows=8),
        optim=OptimConfig(lr=1e-2, schedule="constant"),
        train=TrainConfig(out=str(tmp_path / "sft"), max_steps=150, progress=False, eval_every=-1),
        sft=SFTOptions(sequences_per_step=32, sequences_per_microbatch=32, eval_max_new_tokens=4),
    ))
    for _ in range(150):
        sft.train_step()

    def correct(completions, answer, **kwargs):
        return [1.0 if c.strip() == a else 0.0 for c, a in zip(completions, answer)]

    cfg = _cfg(tmp_path, steps=150, lr=3e-3, prompts=16, samples=8, train_rows=2000)
    trainer = RLTrainer(cfg, model=sft.model, tokenizer=sft.tokenizer, reward_fns=[(correct, 1.0)])
    trainer.train()
    rewards = [h["reward_mean"] for h in trainer.history if "reward_mean" in h]
    assert len(rewards) >= 140
    first, last = sum(rewards[:10]) / 10, sum(rewards[-10:]) / 10
    assert last > first + 0.15, (first, last, rewards)
