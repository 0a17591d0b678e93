import pytest
import torch
import torch.nn.functional as F

from posttrain.ops.linear_nll import linear_nll_sum


def _naive(hidden, weight, labels, bias=None):
    return -torch.log_softmax(F.linear(hidden, weight, bias).float(), dim=-1).gather(-1, labels.unsqueeze(-1)).sum()


@pytest.mark.parametrize("chunk", [1, 3, 7, 1024])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_naive_value_and_grads(chunk, with_bias):
    torch.manual_seed(0)
    h = torch.randn(10, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(13, 6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(13, dtype=torch.float64, requires_grad=True) if with_bias else None
    y = torch.randint(0, 13, (10,))
    scale = 0.37  # the incoming gradient (the trainer divides by a token count)
    fast = linear_nll_sum(h, w, y, b, chunk_rows=chunk)
    g_fast = torch.autograd.grad(fast * scale, [h, w] + ([b] if with_bias else []))
    slow = _naive(h, w, y, b)
    g_slow = torch.autograd.grad(slow * scale, [h, w] + ([b] if with_bias else []))
    assert fast.dtype == torch.float32
    assert fast.item() == pytest.approx(slow.item(), rel=1e-6)
    for a, c in zip(g_fast, g_slow):
        assert a.dtype == c.dtype and torch.allclose(a, c, atol=1e-6)


def test_only_the_inputs_that_need_grads_get_them():
    torch.manual_seed(1)
    h = torch.randn(5, 4, requires_grad=True)
    w = torch.randn(9, 4)  # frozen head
    y = torch.randint(0, 9, (5,))
    linear_nll_sum(h, w, y).backward()
    (gh,) = torch.autograd.grad(_naive(h, w, y), [h])
    assert w.grad is None and torch.allclose(h.grad, gh, atol=1e-6)


def test_no_grad_forward_and_empty_selection():
    torch.manual_seed(2)
    h, w = torch.randn(5, 4, requires_grad=True), torch.randn(9, 4, requires_grad=True)
    y = torch.randint(0, 9, (5,))
    with torch.no_grad():
        out = linear_nll_sum(h, w, y, chunk_rows=2)
    assert not out.requires_grad and out.item() == pytest.approx(_naive(h, w, y).item(), rel=1e-6)
    empty = linear_nll_sum(h[:0], w, y[:0])
    empty.backward()
    assert empty.item() == 0.0 and torch.count_nonzero(w.grad) == 0


def test_bf16_compute_dtype_close_to_autocast_reference():
    torch.manual_seed(3)
    h = torch.randn(8, 16, requires_grad=True)
    w = torch.randn(32, 16, requires_grad=True)
    y = torch.randint(0, 32, (8,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = linear_nll_sum(h, w, y, compute_dtype=torch.bfloat16)
        ref = _naive(h, w, y)  # autocast: the head matmul in bf16, log-softmax in fp32
    assert out.item() == pytest.approx(ref.item(), rel=1e-3)
    gh, gw = torch.autograd.grad(out, [h, w])
    rh, rw = torch.autograd.grad(ref, [h, w])
    assert gh.dtype == torch.float32 and gw.dtype == torch.float32
    assert torch.allclose(gh, rh, atol=3e-2) and torch.allclose(gw, rw, atol=3e-2)


def test_bad_inputs_and_double_backward_are_refused():
    h, w = torch.randn(3, 4, requires_grad=True), torch.randn(5, 4)
    with pytest.raises(ValueError, match="labels must lie"):
        linear_nll_sum(h, w, torch.tensor([0, -100, 1]))
    with pytest.raises(ValueError, match="disagree"):
        linear_nll_sum(h, w, torch.tensor([0, 1]))
    out = linear_nll_sum(h, w, torch.tensor([0, 1, 2]))
    out.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward called twice"):
        out.backward()
