"""The off-policy correction of asynchronous RL: decoupled PPO's importance weights against values
computed by hand, their place in the update (a per-token factor on the policy loss), and the trainer's
two modes (bypass: the sampler's logprobs as the old policy; decoupled: the old policy recomputed, the
weight pi_old / pi_behaviour truncated or masked)."""
import math

import pytest
import torch

from posttrain.models import load_model_and_tokenizer
from posttrain.rollout import Completion
from posttrain.trainers.rl_batch import RolloutBatch, collate_completions, policy_forward
from posttrain.trainers.rl_presets import resolve_algorithm
from posttrain.trainers.rl_update import off_policy_weights, step_advantages, update_policy

pytestmark = pytest.mark.usefixtures("one_thread")


def test_importance_weights_match_hand_computed_values():
    old = torch.log(torch.tensor([[0.5, 0.2, 0.9, 0.7]]))
    behaviour = torch.log(torch.tensor([[0.25, 0.4, 0.3, 0.1]]))
    mask = torch.tensor([[True, True, True, False]])  # the last token is padding
    w, st = off_policy_weights(old, behaviour, mask, cap=2.5, mode="truncate")
    assert w.tolist()[0] == pytest.approx([2.0, 0.5, 2.5, 0.0], abs=1e-6)  # 0.9 / 0.3 = 3 truncated to 2.5
    assert st["offpolicy/is_mean"] == pytest.approx((2 + 0.5 + 3) / 3, abs=1e-6)
    assert st["offpolicy/is_max"] == pytest.approx(3.0, abs=1e-6)
    assert st["offpolicy/is_truncated_share"] == pytest.approx(1 / 3)
    w, _ = off_policy_weights(old, behaviour, mask, cap=2.5, mode="mask")
    assert w.tolist()[0] == pytest.approx([2.0, 0.5, 0.0, 0.0], abs=1e-6)
    with pytest.raises(ValueError, match="is_mode"):
        off_policy_weights(old, behaviour, mask, cap=2.5, mode="clip")


def _batch(model, pad_id):
    prompts = [[1, 20, 21]] * 2 + [[1, 30, 31]] * 2
    comps = [Completion(c, [0.0] * len(c), "stop") for c in ([50, 51], [52], [53, 54, 55], [56])]
    ids, tmask, lmask, rlp, trunc = collate_completions(comps, pad_id, False)
    with torch.no_grad():
        logp, _ = policy_forward(model, prompts, ids, tmask, pad_id, 1.0, "none", False)
    g = torch.Generator().manual_seed(0)
    behaviour = (logp + 0.6 * (torch.rand(logp.shape, generator=g) - 0.5)) * tmask  # older weights sampled these
    batch = RolloutBatch([None] * 4, prompts, comps, ids, tmask, lmask, behaviour, trunc, torch.tensor([0, 0, 1, 1]),
                         torch.tensor([1.0, 0.0, 0.3, 0.9]))
    return batch, logp


def test_decoupled_weights_scale_each_tokens_policy_loss(tiny_model):
    """With weights w, the update's gradient is the gradient of sum_t w_t * loss_t (reducer and all):
    against a hand-written objective, token by token."""
    model, tok = tiny_model
    alg = resolve_algorithm("grpo", {"kl_coef": 0.0, "kl_placement": "none", "entropy_coef": 0.0}, 4)
    batch, logp = _batch(model, tok.pad_token_id)
    step_advantages(alg, batch)
    batch.old_logp = logp.clone()  # decoupled: the proximal policy is this one
    batch.is_weights, _ = off_policy_weights(batch.old_logp, batch.rollout_logp, batch.loss_mask, cap=1.2, mode="truncate")
    model.zero_grad(set_to_none=True)
    update_policy(model, batch, [0, 1, 2, 3], alg, tok.pad_token_id, 1.0, 2, 4, share_prompts=False)
    got = [p.grad.clone() for p in model.parameters()]

    model.zero_grad(set_to_none=True)
    new, _ = policy_forward(model, batch.prompt_ids, batch.completion, batch.token_mask, tok.pad_token_id, 1.0, "none", False)
    total = 0.0
    for i in range(4):  # seq-mean-token-mean over the 4 sequences of PPO-clip at eps 0.2, weighted per token
        n = int(batch.loss_mask[i].sum())
        ratio = torch.exp(new[i, :n] - batch.old_logp[i, :n])
        adv = batch.advantages[i] if batch.advantages.dim() == 1 else batch.advantages[i, :n]
        per_token = -torch.minimum(ratio * adv, ratio.clamp(0.8, 1.2) * adv) * batch.is_weights[i, :n]
        total = total + per_token.mean()
    (total / 4).backward()
    for a, b in zip(got, [p.grad for p in model.parameters()]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert 0 < float(batch.is_weights[batch.loss_mask].min()) < 1.0 < float(batch.is_weights[batch.loss_mask].max()) <= 1.2 + 1e-6
    assert not math.isnan(float(total))
    # fused (one optimizer step per rollout): the weights from the loss pass's own detached logprobs,
    # no old-policy pass: the same gradient and the same weight statistics
    want = off_policy_weights(batch.old_logp, batch.rollout_logp, batch.loss_mask, cap=1.2, mode="truncate")[1]
    batch.old_logp, batch.is_weights, batch.fused_is = None, None, (1.2, "truncate")
    model.zero_grad(set_to_none=True)
    st = update_policy(model, batch, [0, 1, 2, 3], alg, tok.pad_token_id, 1.0, 2, 4, share_prompts=False)
    for a, b in zip(got, [p.grad for p in model.parameters()]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    for k, v in want.items():
        assert st[k] == pytest.approx(v, abs=1e-5), k


@pytest.fixture(scope="module")
def tiny_model():
    return load_model_and_tokenizer("tiny-llama:d=32,l=2,h=2", seed=0)


@pytest.mark.parametrize("mode", ["bypass", "decoupled"])
def test_the_trainer_applies_the_chosen_correction(tmp_path, mode):
    """In synchronous mode (the engine/trainer logprob gap): bypass trains against the sampler's
    logprobs; decoupled logs importance weights near 1 (same weights, only numerics differ)."""
    import json

    from posttrain.cli import main

    assert main(["rl", "--model", "tiny-llama:d=32,l=2,h=2", "--data", "task:addition:digits=1", "--data.train_rows", "16",
                 "--data.eval_rows", "0", "--train.progress", "false", "--max-steps", "2", "--rl.prompts_per_step", "2",
                 "--rl.samples_per_prompt", "4", "--rl.max_new_tokens", "4", "--rl.correction", mode,
                 "--out", str(tmp_path / mode)]) == 0
    metrics = [json.loads(line) for line in (tmp_path / mode / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert len(metrics) == 2
    if mode == "decoupled":
        assert all(m["offpolicy/is_mean"] == pytest.approx(1.0, abs=1e-3) for m in metrics)
        assert all(m["offpolicy/staleness"] == 0 for m in metrics)
    else:
        assert all("offpolicy/is_mean" not in m for m in metrics)
