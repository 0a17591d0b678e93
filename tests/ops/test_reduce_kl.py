"""Hand values for the two review fixes in ops: fully masked rows are not sequences in the seq-mean
reducers (as verl's agg_loss), and k3 clamps its value to [-10, 10] (as verl's low_var_kl)."""
import math

import pytest
import torch

from posttrain.ops import aggregate, count_sequences, kl_estimate

V = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
M = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 0, 0]])  # row 1: a truncated completion under mask_truncated


def test_fully_masked_rows_are_left_out_of_the_sequence_count():
    assert int(count_sequences(M)) == 2
    assert aggregate(V, M, "seq-mean-token-mean").item() == pytest.approx((1.5 + 7.0) / 2)  # not / 3
    assert aggregate(V, M, "seq-mean-token-sum").item() == pytest.approx((3.0 + 7.0) / 2)
    assert aggregate(V, M, "seq-sum-norm", fixed_length=4).item() == pytest.approx(10.0 / (2 * 4))
    assert aggregate(V, M, "token-mean").item() == pytest.approx(10.0 / 3)
    assert aggregate(V, torch.zeros_like(M), "seq-mean-token-mean").item() == 0.0  # nothing trained: 0, not nan


@pytest.mark.parametrize("mode", ["seq-mean-token-mean", "seq-mean-token-sum", "seq-sum-norm"])
def test_split_with_a_masked_row_adds_up_with_the_global_count(mode):
    full = aggregate(V, M, mode, fixed_length=3)
    n = count_sequences(M)
    parts = sum(aggregate(V[i : i + 1], M[i : i + 1], mode, num_seqs=n, fixed_length=3) for i in range(3))
    assert parts.item() == pytest.approx(full.item(), abs=1e-6)


def test_k3_clamps_its_value_not_only_the_log_ratio():
    logp = torch.tensor([0.0, 0.0, 0.0, 0.0], requires_grad=True)
    ref = torch.tensor([-0.5, 2.0, 12.0, -30.0])  # log r = ref - logp
    k3 = kl_estimate(logp, ref, "k3")
    want = [math.exp(-0.5) + 0.5 - 1, math.exp(2.0) - 2.0 - 1, 10.0, min(10.0, math.exp(-20) + 20 - 1)]
    assert k3.tolist() == pytest.approx(want, abs=1e-5)  # exp(12) - 13 and 29 would be the unclamped values
    k3.sum().backward()
    assert logp.grad[2].item() == 0.0 and logp.grad[3].item() == 0.0  # past the clamp: no gradient, as verl
    assert logp.grad[0].item() == pytest.approx(1 - math.exp(-0.5), abs=1e-6)  # d/dlogp (e^(ref-logp) - 1 - (ref-logp))
    assert torch.isfinite(kl_estimate(torch.zeros(1), torch.tensor([1e4]), "k3")).all()
