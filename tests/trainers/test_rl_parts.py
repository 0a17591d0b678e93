"""Hand-computed tests for the pieces the online RL trainer composes (presets, batch layout,
KL shaping, DPO pairing, health checks) and layout equivalence against unpadded forwards."""
import math

import pytest
import torch

from posttrain.models import load_model_and_tokenizer
from posttrain.ops import naive_token_logprobs
from posttrain.rollout import Completion, HFEngine, SamplingParams
from posttrain.trainers.rl_batch import RolloutBatch, collate_completions, make_task_reward, policy_forward
from posttrain.trainers.rl_presets import PRESETS, Algorithm, resolve_algorithm
from posttrain.trainers.rl_update import dpo_pairs, health_warnings, kl_shaped_rewards, update_policy


pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_preset_resolves_and_overrides_apply():
    for name in PRESETS:
        resolve_algorithm(name, {}, max_new_tokens=64).validate()
    assert resolve_algorithm("dapo", {}, 64).overlong_buffer == 16
    assert resolve_algorithm("dapo", {}, 64).clip_high == 0.28
    alg = resolve_algorithm("grpo", {"kl_coef": 0.0, "reducer": "token-mean", "clip_high": None}, 64)
    assert (alg.kl_coef, alg.reducer, alg.clip_high, alg.needs_reference) == (0.0, "token-mean", 0.2, False)
    assert resolve_algorithm("ppo", {}, 64).value_model and resolve_algorithm("online_dpo", {}, 64).needs_reference
    with pytest.raises(ValueError, match="unknown --algo 'gpro'"):
        resolve_algorithm("gpro", {}, 64)
    with pytest.raises(ValueError, match="kl_placement"):
        resolve_algorithm("grpo", {"kl_placement": "both"}, 64)
    with pytest.raises(KeyError):
        resolve_algorithm("grpo", {"estimator": "nope"}, 64)


def test_collate_completions_masks_and_truncation():
    comps = [Completion([5, 6, 7], [-0.1, -0.2, -0.3], "length"), Completion([8], [-0.5], "stop")]
    ids, tmask, lmask, lp, trunc = collate_completions(comps, pad_id=0, mask_truncated=True)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert tmask.tolist() == [[True] * 3, [True, False, False]]
    assert lmask.tolist() == [[False] * 3, [True, False, False]]  # the truncated one is not trained
    assert trunc.tolist() == [True, False]
    assert lp[1].tolist() == pytest.approx([-0.5, 0.0, 0.0])
    _, _, lmask2, _, _ = collate_completions(comps, pad_id=0, mask_truncated=False)
    assert lmask2.tolist() == tmask.tolist()


def test_kl_in_reward_sequence_and_token_level_by_hand():
    old = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -3.0], [-0.5, -1.5, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    r = torch.tensor([1.0, 0.0])
    # k1 = old - ref: [[0.5, -1, 0], [0, 1, (masked)]]
    seq = Algorithm(estimator="rloo", kl_placement="reward", kl_estimator="k1", kl_coef=0.1)
    shaped, tok, mean = kl_shaped_rewards(seq, r, old, ref, mask)
    assert tok is None
    assert shaped.tolist() == pytest.approx([1.0 - 0.1 * (-0.5), 0.0 - 0.1 * 1.0])
    assert mean == pytest.approx((0.5 - 1 + 0 + 0 + 1) / 5)
    token = Algorithm(estimator="reinforce_pp", kl_placement="reward", kl_estimator="k1", kl_coef=0.1)
    shaped, tok, _ = kl_shaped_rewards(token, r, old, ref, mask)
    assert shaped is r
    assert torch.allclose(tok, torch.tensor([[-0.05, 0.1, 0.0], [0.0, -0.1, 0.0]]))


def _batch(rewards, groups, T=2):
    n = len(rewards)
    return RolloutBatch(rows=[None] * n, prompt_ids=[[1]] * n, completions=[], completion=torch.zeros((n, T), dtype=torch.long),
                        token_mask=torch.ones((n, T), dtype=torch.bool), loss_mask=torch.ones((n, T), dtype=torch.bool),
                        rollout_logp=torch.zeros((n, T)), truncated=torch.zeros(n, dtype=torch.bool),
                        group_ids=torch.tensor(groups), rewards=torch.tensor(rewards))


def test_dpo_pairs_pick_best_and_worst_and_drop_ties():
    b = _batch([0.0, 1.0, 0.5, 1.0, 1.0, 1.0, 0.2, -1.0, 0.3], [0, 0, 0, 1, 1, 1, 2, 2, 2])
    assert dpo_pairs(b, list(range(9))) == [(1, 0), (8, 7)]
    assert dpo_pairs(b, [3, 4, 5]) == []


def test_health_warnings_name_each_failure_and_stay_quiet_when_healthy():
    alg = Algorithm()
    healthy = {"truncated_share": 0.1, "zero_variance_group_share": 0.3, "grad_norm": 0.5, "kl": 0.01,
               "entropy": 1.0, "reward_std": 0.4, "rollout/logprob_abs_diff": 1e-7}
    assert health_warnings(healthy, alg, min_entropy=0.01, max_kl=1.0) == []
    bad = {"truncated_share": 1.0, "zero_variance_group_share": 1.0, "grad_norm": 0.0, "kl": 3.0,
           "entropy": 0.001, "rollout/logprob_abs_diff": 0.2}
    kinds = [w.split(":")[0] for w in health_warnings(bad, alg, min_entropy=0.01, max_kl=1.0)]
    assert kinds == ["truncation", "no_signal", "zero_grad", "kl", "entropy", "mismatch"]
    assert "every completion" in health_warnings({"truncated_share": 1.0}, alg, 0.01, 1.0)[0]
    assert "60%" in health_warnings({"truncated_share": 0.6}, alg, 0.01, 1.0)[0]


def test_task_reward_counts_missing_answers_as_none():
    from posttrain.tasks import load_task_spec

    fn = make_task_reward(load_task_spec("addition:digits=1"))
    assert fn(["", "", ""], ["12", "13", "no answer"], answer=["12", "12", "12"]) == [1.0, 0.0, None]
    cd = make_task_reward(load_task_spec("countdown"))
    assert cd(["", ""], ["<answer>3+4</answer>", "  "], answer=["7|3 4", "7|3 4"]) == [1.0, None]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return load_model_and_tokenizer("tiny-llama:d=32,l=2,h=2", seed=0)


def _unpadded_logps(model, prompt, completion):
    ids = torch.tensor([prompt + completion])
    logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1]
    return naive_token_logprobs(logits, torch.tensor(completion))


def test_padded_layout_matches_unpadded_forward(tiny):
    model, tok = tiny
    prompts = [[1, 20, 21, 22, 23], [1, 30], [1, 40, 41]]
    comps = [[50, 51], [60, 61, 62, 63], [70]]
    ids, tmask, _, _, _ = collate_completions([Completion(c, [0.0] * len(c), "stop") for c in comps], tok.pad_token_id, False)
    with torch.no_grad():
        logp, ent = policy_forward(model, prompts, ids, tmask, tok.pad_token_id, temperature=1.0)
        for i, (p, c) in enumerate(zip(prompts, comps)):
            assert logp[i, : len(c)].tolist() == pytest.approx(_unpadded_logps(model, p, c).tolist(), abs=1e-5)
    assert torch.isfinite(ent).all()


def test_trainer_logprobs_equal_engine_sampling_logprobs(tiny):
    model, tok = tiny
    prompts = [[1, 20, 21, 22], [1, 30]]
    outs = HFEngine(model, tok).generate(prompts, SamplingParams(n=3, temperature=0.7, max_new_tokens=6, seed=3))
    comps = [c for group in outs for c in group]
    ids, tmask, _, rlp, _ = collate_completions(comps, tok.pad_token_id, False)
    with torch.no_grad():
        logp, _ = policy_forward(model, [p for p in prompts for _ in range(3)], ids, tmask, tok.pad_token_id, temperature=0.7)
    assert torch.where(tmask, (logp - rlp).abs(), torch.zeros_like(logp)).max() < 1e-5


def test_policy_gradient_equals_hand_objective(tiny):
    """GRPO-style update (ppo loss, old = current, seq-mean-token-mean) has the gradient of
    -1/N sum_i A_i mean_t log p(y_it), computed one unpadded sequence at a time."""
    model, tok = tiny
    prompts = [[1, 20, 21], [1, 30, 31, 32], [1, 40]]
    comps = [[50, 51, 52], [60], [70, 71]]
    adv = torch.tensor([1.0, -0.5, 2.0])
    ids, tmask, lmask, rlp, trunc = collate_completions([Completion(c, [0.0] * len(c), "stop") for c in comps], tok.pad_token_id, False)
    batch = RolloutBatch([None] * 3, prompts, [], ids, tmask, lmask, rlp, trunc, torch.arange(3), torch.zeros(3), advantages=adv)
    alg = Algorithm(estimator="grpo", loss="ppo", reducer="seq-mean-token-mean", kl_placement="none", kl_coef=0.0)
    model.zero_grad()
    st = update_policy(model, batch, [0, 1, 2], alg, tok.pad_token_id, 1.0, sequences_per_microbatch=2, max_new_tokens=8)
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    ref = sum(-a * _unpadded_logps(model, p, c).mean() for a, p, c in zip(adv, prompts, comps)) / 3
    ref.backward()
    for g, p in zip(got, model.parameters()):
        assert torch.allclose(g, p.grad, atol=1e-6, rtol=1e-4)
    model.zero_grad()
    assert st["loss"] == pytest.approx(-float(adv.mean()), abs=1e-6)  # ratio 1 -> -mean(A)
    assert math.isfinite(st["entropy"])


@pytest.mark.parametrize("name", ["tiny-llama:d=32,l=2,h=2", "tiny-qwen2:d=32,l=2,h=4,kv=2"])
def test_shared_prompt_forward_equals_the_full_forward_in_values_and_gradients(name):
    """Rows that repeat a prompt share one prompt pass (uneven groups, interleaved order): the
    logprobs, the entropy and the gradient equal those of one unpadded sequence at a time."""
    model, tok = load_model_and_tokenizer(name, seed=3)
    a, b, c = [1, 20, 21, 22, 23], [1, 30], [1, 40, 41]
    prompts = [a, b, a, c, a, b]
    comps = [[50, 51], [60, 61, 62, 63], [52], [70, 71, 72], [53, 54, 55], [64]]
    w = torch.tensor([0.5, -1.0, 2.0, 1.5, -0.3, 0.8])
    ids, tmask, _, _, _ = collate_completions([Completion(x, [0.0] * len(x), "stop") for x in comps], tok.pad_token_id, False)
    model.zero_grad()
    logp, ent = policy_forward(model, prompts, ids, tmask, tok.pad_token_id, temperature=0.7, entropy="grad")
    assert logp.shape == ids.shape
    ((logp * tmask * w[:, None]).sum() + 0.1 * (ent * tmask).sum()).backward()
    shared = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    ref_logp, ref_ent = policy_forward(model, prompts, ids, tmask, tok.pad_token_id, temperature=0.7, entropy="grad",
                                       share_prompts=False)
    ((ref_logp * tmask * w[:, None]).sum() + 0.1 * (ref_ent * tmask).sum()).backward()
    for i, (p, x) in enumerate(zip(prompts, comps)):
        want = naive_token_logprobs(model(input_ids=torch.tensor([p + x])).logits[0, len(p) - 1 : -1] / 0.7, torch.tensor(x))
        assert logp[i, : len(x)].tolist() == pytest.approx(want.tolist(), abs=1e-5)
    assert torch.allclose(torch.where(tmask, ent - ref_ent, torch.zeros_like(ent)), torch.zeros_like(ent), atol=1e-5)
    for g, p in zip(shared, model.parameters()):
        assert torch.allclose(g, p.grad, atol=1e-5, rtol=1e-4)
    one = collate_completions([Completion([50], [0.0], "stop")] * 2, tok.pad_token_id, False)
    with torch.no_grad():  # a batch whose completions are one token long only needs the prompt pass
        lp1, _ = policy_forward(model, [a, a], one[0], one[1], tok.pad_token_id, 1.0, "none")
        want = naive_token_logprobs(model(input_ids=torch.tensor([a])).logits[0, -1:], torch.tensor([50]))
        assert lp1[:, 0].tolist() == pytest.approx([float(want[0])] * 2, abs=1e-5)


def test_shared_prompt_forward_falls_back_when_the_model_gives_no_cache(tiny):
    model, tok = tiny
    prompts = [[1, 20, 21], [1, 20, 21]]
    ids, tmask, _, _, _ = collate_completions([Completion([50, 51], [0.0, 0.0], "stop")] * 2, tok.pad_token_id, False)
    with torch.no_grad():
        want, _ = policy_forward(model, prompts, ids, tmask, tok.pad_token_id, 1.0, "none", share_prompts=False)
        model.gradient_checkpointing_enable()  # training with it, transformers drops use_cache=True
        model.train()
        try:
            got, _ = policy_forward(model, prompts, ids, tmask, tok.pad_token_id, 1.0, "none")
        finally:
            model.gradient_checkpointing_disable()
            model.eval()
    assert torch.allclose(got, want, atol=1e-5)
