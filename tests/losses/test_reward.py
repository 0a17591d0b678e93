"""Formula tests for posttrain.losses.reward against plain-`math` hand computations."""
from __future__ import annotations

import math

import pytest
import torch

from posttrain.losses.reward import bradley_terry_loss, prm_step_loss

CH = [1.5, -0.3, 0.2]
RJ = [0.5, 0.4, -1.0]


def t(xs, grad=False):
    return torch.tensor(xs, dtype=torch.float64, requires_grad=grad)


def sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def logsig(x):
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def bce(z, y):
    return -(y * logsig(z) + (1 - y) * logsig(-z))


@pytest.mark.parametrize("margin", [None, 0.25, [0.0, 1.0, 0.5]])
@pytest.mark.parametrize("coef", [0.0, 0.01])
def test_bradley_terry_matches_hand(margin, coef):
    m = [0.0] * 3 if margin is None else [margin] * 3 if isinstance(margin, float) else margin
    margin_arg = t(margin) if isinstance(margin, list) else margin
    loss, stats = bradley_terry_loss(t(CH), t(RJ), margin=margin_arg, center_coef=coef)
    expected = [-logsig(CH[i] - RJ[i] - m[i]) + coef * (CH[i] + RJ[i]) ** 2 for i in range(3)]
    assert loss.shape == (3,)
    assert loss.tolist() == pytest.approx(expected, abs=1e-9)
    assert stats["accuracy"].item() == pytest.approx(2 / 3)
    assert stats["margin"].item() == pytest.approx(sum(c - r for c, r in zip(CH, RJ)) / 3)


def test_bradley_terry_gradient_and_gradcheck():
    c, r = t(CH, True), t(RJ, True)
    coef = 0.05
    loss, stats = bradley_terry_loss(c, r, center_coef=coef)
    loss.sum().backward()
    hand_c = [-sig(-(CH[i] - RJ[i])) + 2 * coef * (CH[i] + RJ[i]) for i in range(3)]
    hand_r = [sig(-(CH[i] - RJ[i])) + 2 * coef * (CH[i] + RJ[i]) for i in range(3)]
    assert c.grad.tolist() == pytest.approx(hand_c, abs=1e-9)
    assert r.grad.tolist() == pytest.approx(hand_r, abs=1e-9)
    assert all(not v.requires_grad for v in stats.values())
    f = lambda a, b: bradley_terry_loss(a, b, margin=t([0.1, 0.2, 0.3]), center_coef=0.1)[0]  # noqa: E731
    assert torch.autograd.gradcheck(f, (t(CH, True), t(RJ, True)))


def test_bradley_terry_shape_mismatch_raises():
    with pytest.raises(ValueError, match="same shape"):
        bradley_terry_loss(t(CH), t(RJ).unsqueeze(-1))


LOGITS = [[0.8, -1.2, 2.0], [0.3, 0.0, -0.5]]
MASK = [[True, True, True], [True, True, False]]


@pytest.mark.parametrize(
    "labels",
    [
        [[1.0, 0.0, 1.0], [0.0, 1.0, -100.0]],  # hard, with an ignore value under the mask
        [[0.75, 0.25, 1.0], [0.4, 0.6, 0.0]],  # soft (Math-Shepherd)
    ],
)
def test_prm_step_loss_matches_hand(labels):
    loss, stats = prm_step_loss(t(LOGITS), t(labels), torch.tensor(MASK))
    expected = [
        [bce(LOGITS[b][s], labels[b][s]) if MASK[b][s] else 0.0 for s in range(3)] for b in range(2)
    ]
    assert loss.shape == (2, 3)
    assert loss.tolist()[0] == pytest.approx(expected[0], abs=1e-9)
    assert loss.tolist()[1] == pytest.approx(expected[1], abs=1e-9)
    valid = [(b, s) for b in range(2) for s in range(3) if MASK[b][s]]
    acc = sum((LOGITS[b][s] > 0) == (labels[b][s] > 0.5) for b, s in valid) / len(valid)
    assert stats["accuracy"].item() == pytest.approx(acc)
    assert stats["num_steps"].item() == 5


def test_prm_step_loss_hard_bool_labels_and_gradient():
    logits = t(LOGITS, True)
    labels = torch.tensor([[True, False, True], [False, True, True]])
    loss, stats = prm_step_loss(logits, labels, torch.tensor(MASK))
    loss.sum().backward()
    lab = labels.double().tolist()
    hand = [[(sig(LOGITS[b][s]) - lab[b][s]) if MASK[b][s] else 0.0 for s in range(3)] for b in range(2)]
    assert logits.grad.tolist()[0] == pytest.approx(hand[0], abs=1e-9)
    assert logits.grad.tolist()[1] == pytest.approx(hand[1], abs=1e-9)
    assert stats["accuracy"].item() == pytest.approx(3 / 5)  # wrong: (1, 0) logit 0.3 vs 0, (1, 1) logit 0.0 vs 1
    f = lambda z: prm_step_loss(z, t([[0.75, 0.25, 1.0], [0.4, 0.6, 0.0]]), torch.tensor(MASK))[0]  # noqa: E731
    assert torch.autograd.gradcheck(f, (t(LOGITS, True),))


def test_prm_step_loss_shape_mismatch_raises():
    with pytest.raises(ValueError, match="same shape"):
        prm_step_loss(t(LOGITS), t([[1.0, 0.0]]), torch.tensor(MASK))
