"""RL on environments: env tokens are context only (no loss weight, no gradient, no advantage), the
CLI trains on the guessing game end to end, a broken environment is counted while the run goes on."""
import json

import pytest
import torch

from posttrain.envs import make_session, register_env
from posttrain.rollout import HFEngine, SamplingParams
from posttrain.rollout.multiturn import EpisodeLimits, run_episodes
from posttrain.trainers.rl_batch import RolloutBatch, collate_completions, policy_mask, policy_forward, token_reward_stream
from posttrain.trainers.rl_presets import resolve_algorithm
from posttrain.trainers.rl_update import step_advantages, update_policy

pytestmark = pytest.mark.usefixtures("one_thread")
MODEL = "tiny-llama:d=32,l=2,h=2"


class Count:
    """Game: reward 0.5 per turn whose text has a digit; ends after 3 turns."""

    def reset(self, seed=None):
        self.t = 0
        return f"count {seed}", {}

    def step(self, action):
        self.t += 1
        return f"turn {self.t}", 0.5 * any(ch.isdigit() for ch in action), self.t >= 3, False, {}


def _batch(tiny, n=4):
    model, tok = tiny
    eps = run_episodes(HFEngine(model, tok), tok, [make_session(Count) for _ in range(n)], [{"seed": 0}] * n,
                       SamplingParams(max_new_tokens=5, seed=1), EpisodeLimits(max_turns=3, max_episode_tokens=200))
    ids, tmask, lmask, rlp, trunc = collate_completions(eps, tok.pad_token_id, False)
    batch = RolloutBatch([None] * n, [e.prompt_ids for e in eps], eps, ids, tmask, lmask, rlp, trunc,
                         torch.zeros(n, dtype=torch.long), torch.tensor([e.reward for e in eps]))
    batch.policy_mask = policy_mask(eps, ids.shape[1])
    batch.token_rewards = token_reward_stream(eps, ids.shape[1])
    return batch, eps


def test_loss_mask_is_the_policy_tokens(tiny):
    batch, eps = _batch(tiny)
    for i, e in enumerate(eps):
        want = torch.tensor(e.token_mask + [0] * (batch.completion.shape[1] - len(e.token_ids)), dtype=torch.bool)
        assert torch.equal(batch.loss_mask[i], want) and torch.equal(batch.policy_mask[i], want)
        assert int(batch.token_mask[i].sum()) == len(e.token_ids) > int(want.sum())  # env tokens are attended


@pytest.mark.parametrize("estimator", ["grpo", "turn_discounted"])
def test_env_tokens_get_exactly_zero_gradient(tiny, estimator):
    model, _ = tiny
    batch, _ = _batch(tiny)
    alg = resolve_algorithm("grpo", {"estimator": estimator, "kl_placement": "none", "gamma": 0.9}, 5)
    batch.rewards = torch.tensor([1.0, 0.0, 0.5, 0.25])
    step_advantages(alg, batch)
    env = batch.token_mask & ~batch.policy_mask
    if batch.advantages.dim() == 2:
        assert bool((batch.advantages[env] == 0).all())
    # d loss / d logp is zero on every env token: they have no weight in the loss
    logp, _ = policy_forward(model, batch.prompt_ids, batch.completion, batch.token_mask, 0, 1.0, "none")
    from posttrain.losses.policy import policy_loss
    from posttrain.ops import aggregate, count_sequences

    pl, _ = policy_loss(alg.loss, logp, logp.detach(), batch.advantages, batch.loss_mask, clip_low=0.2, clip_high=0.2)
    m = batch.loss_mask
    loss = aggregate(pl, m, alg.reducer, num_tokens=m.sum(), num_seqs=count_sequences(m), fixed_length=5)
    (g,) = torch.autograd.grad(loss, logp)
    assert bool((g[env] == 0).all()) and bool((g[batch.policy_mask] != 0).any())

    # and the trainer's update: garbage advantages / old logprobs on env tokens change no parameter gradient
    def grads(b):
        model.zero_grad(set_to_none=True)
        update_policy(model, b, list(range(len(b))), alg, 0, 1.0, 2, 5)
        return [p.grad.clone() for p in model.parameters()]

    base = grads(batch)
    adv = batch.advantages if batch.advantages.dim() == 2 else batch.advantages.unsqueeze(-1).expand_as(env).clone()
    batch.advantages = torch.where(env, torch.full_like(adv, 1e3), adv)
    batch.old_logp = torch.where(env, torch.full_like(adv, -30.0), logp.detach())
    base_old = grads(RolloutBatch(**{**batch.__dict__, "advantages": adv, "old_logp": logp.detach()}))
    poisoned = grads(batch)
    for a, b, c in zip(base, base_old, poisoned):
        torch.testing.assert_close(b, c, rtol=0, atol=0)
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    model.zero_grad(set_to_none=True)


def test_turn_rewards_reach_the_estimator_where_they_happened(tiny):
    batch, eps = _batch(tiny)
    assert torch.allclose(batch.token_rewards.sum(-1), batch.rewards)
    for i, e in enumerate(eps):
        for end, r in zip(e.turn_ends, e.turn_rewards):
            assert float(batch.token_rewards[i, end]) == pytest.approx(r)


def _cli(tmp_path, *extra):
    from posttrain.cli import main

    out = tmp_path / "run"
    args = ["rl", "--rl.env", "guess:high=4,max_guesses=3", "--model", MODEL, "--out", str(out), "--max-steps", "2",
            "--rl.prompts_per_step", "2", "--rl.samples_per_prompt", "4", "--rl.max_new_tokens", "3", "--rl.max_turns", "3",
            "--rl.show_every", "0", "--data.train_rows", "8", "--train.progress", "false", "--lr", "1e-2", *extra]
    assert main(args) == 0
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_cli_rl_on_the_guessing_game_runs_end_to_end(tmp_path):
    rows = _cli(tmp_path)
    last = [r for r in rows if "env/episodes" in r][-1]
    assert last["env/episodes"] == 8 and 1 <= last["env/turns_mean"] <= 3
    assert last["env/env_tokens_mean"] > 0 and "loss" in last and "grad_norm" in last
    assert (tmp_path / "run" / "checkpoints").exists()


def test_cli_turn_level_estimator_on_the_calculator_env(tmp_path):
    rows = _cli(tmp_path, "--rl.env", "calculator", "--rl.estimator", "turn_discounted", "--rl.gamma", "0.9")
    assert any("env/tool_calls" in r for r in rows)


@register_env("test-flaky", "raises on every other seed")
class Flaky:
    def reset(self, seed=None):
        self.seed = seed
        return "hello", {}

    def step(self, action):
        if self.seed % 2:
            raise RuntimeError("flaky env")
        return "ok", float(len(action) % 2), True, False, {}


def test_a_broken_env_is_counted_and_the_run_goes_on(tmp_path):
    from posttrain.trainers.common import DataConfig, ModelConfig, OptimConfig, TrainConfig
    from posttrain.trainers.rl import RLConfig, RLOptions, RLTrainer

    cfg = RLConfig(model=ModelConfig(name=MODEL), data=DataConfig(train_rows=6, eval_rows=0),
                   optim=OptimConfig(lr=1e-2, schedule="constant"),
                   train=TrainConfig(out=str(tmp_path / "flaky"), max_steps=2, progress=False, eval_every=-1),
                   rl=RLOptions(env="test-flaky", prompts_per_step=3, samples_per_prompt=2, max_new_tokens=3, show_every=0))
    out = RLTrainer(cfg).train()
    assert out["bad_cases"].get("env_error", 0) > 0 and "loss" in out
