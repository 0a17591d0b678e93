"""What a registered piece needs is declared where it is registered, and the declarations are true:
each estimator's `EstimatorNeeds` matches what it does on a toy batch, each preference loss's
`PreferenceNeeds` matches whether it reads reference logps, and each RL update kind's `UpdateKind`
is what the trainer acts on (no name lists in the trainers)."""
import re
from pathlib import Path

import pytest
import torch

from posttrain.advantages import ADVANTAGE_ESTIMATORS, EstimatorNeeds, estimator_needs
from posttrain.losses.preference import PREFERENCE_LOSSES, PreferenceLogps, preference_needs
from posttrain.registry import Registry
from posttrain.trainers.rl_presets import PRESETS, resolve_algorithm
from posttrain.trainers.rl_update import UPDATE_KINDS, update_kind

R = torch.tensor([1.0, 0.0, 0.5, 2.0, 2.0, 1.0])
G = torch.tensor([0, 0, 0, 1, 1, 1])
MASK = torch.ones(6, 3, dtype=torch.bool)


def test_registry_keeps_needs_and_refuses_unknown_names():
    reg: Registry = Registry("thing")
    reg.register("a", needs={"x": 1})(len)
    reg.register("b")(len)
    assert reg.needs("a") == {"x": 1} and reg.needs("b") is None
    with pytest.raises(KeyError, match="unknown thing 'c'"):
        reg.needs("c")


@pytest.mark.parametrize("name", ADVANTAGE_ESTIMATORS.names())
def test_every_estimator_declares_needs_that_are_true(name):
    needs = ADVANTAGE_ESTIMATORS.needs(name)
    assert isinstance(needs, EstimatorNeeds) and estimator_needs(name) is needs
    fn = ADVANTAGE_ESTIMATORS.get(name)
    full = dict(baseline_rewards=torch.full((6,), 0.5), values=torch.zeros(6, 3), mask=MASK)
    for key, need in (("baseline_rewards", needs.baseline_rollout), ("values", needs.value_model)):
        if need:
            with pytest.raises(ValueError):
                fn(R, G, **{k: v for k, v in full.items() if k != key})
    adv, _ = fn(R, G, token_rewards=torch.full((6, 3), 0.1), **full)
    assert (adv.dim() == 2) == needs.token_rewards  # per-token rewards are used only where declared
    # groups: a batch whose groups each hold equal rewards carries no signal exactly when declared
    flat, _ = fn(torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0]), G, **full)
    assert bool((flat == 0).all()) == needs.groups


def test_preference_losses_declare_whether_they_read_the_reference():
    lp = PreferenceLogps(chosen_logps=torch.tensor([-1.0]), rejected_logps=torch.tensor([-2.0]),
                         chosen_lengths=torch.tensor([2.0]), rejected_lengths=torch.tensor([3.0]),
                         chosen_nll=torch.tensor([0.5]))
    for name in PREFERENCE_LOSSES.names():
        fn = PREFERENCE_LOSSES.get(name)
        if preference_needs(name).reference:
            with pytest.raises(ValueError, match="ref_"):
                fn(lp, beta=0.1)
        else:
            fn(lp, beta=0.1)  # reference-free: runs without reference logps
    assert [n for n in PREFERENCE_LOSSES.names() if not preference_needs(n).reference] == ["orpo", "sft", "simpo"]


def test_update_kinds_drive_the_presets():
    assert UPDATE_KINDS.names() == ["dpo", "policy"]
    dpo, policy = update_kind("dpo"), update_kind("ppo")
    assert policy is UPDATE_KINDS.get("policy") and update_kind("cispo") is policy
    assert dpo.reference and not dpo.advantages and dpo.whole_groups and dpo.min_samples_per_prompt == 2
    for algo in PRESETS:
        alg = resolve_algorithm(algo, {}, 64)
        assert alg.update is (dpo if algo == "online_dpo" else policy)
    with pytest.raises(KeyError, match="unknown policy loss 'nope'"):
        resolve_algorithm("grpo", {"loss": "nope"}, 64)


def test_trainers_keep_no_name_lists_of_estimators_or_losses():
    root = Path(__file__).resolve().parents[1] / "src" / "posttrain" / "trainers"
    for f in ("rl.py", "rl_presets.py", "rl_batch.py", "rl_update.py"):
        text = (root / f).read_text()
        assert not re.search(r"_ESTIMATORS\s*=\s*\(", text), f
        assert not re.search(r"""(loss|estimator)\s*(==|!=|in)\s*\(?["']""", text), f
