"""The SFT loss with the LM head run only at trained positions (fused, chunked `linear_nll_sum`),
after the decoder's own forward or the padding-free one (`posttrain.ops.unpadded`), equals the
full-forward path (every position's logits, then `token_logprobs`) in loss and gradients."""
import dataclasses

import pytest
import torch

from posttrain.ops import aggregate, token_logprobs
from posttrain.runtime.device import Runtime
from posttrain.trainers import sft as sft_mod
from posttrain.ops.unpadded import unpadded_layout
from posttrain.trainers.common import DataConfig, ModelConfig, OptimConfig, TrainConfig
from posttrain.trainers.sft import SFTConfig, SFTOptions, SFTTrainer, make_batches, microbatch_loss

MODEL = "tiny-llama:d=32,l=2,h=2"


def _trainer(tmp_path, name="run", model=MODEL, model_opts=None, **sft):
    opts = dict(sequences_per_step=8, sequences_per_microbatch=8)
    opts.update(sft)
    return SFTTrainer(SFTConfig(
        model=ModelConfig(name=model, **(model_opts or {})),
        data=DataConfig(path="task:addition", train_rows=64, eval_rows=8),
        optim=OptimConfig(lr=1e-2, warmup_steps=1),
        train=TrainConfig(out=str(tmp_path / name), max_steps=2, progress=False),
        sft=SFTOptions(**opts),
    ))


def _reference_loss(model, batch, num_loss_tokens, rt=Runtime()):
    """The previous `microbatch_loss`: full forward, (tokens x vocab) fp32 logits, masked sum."""
    with rt.autocast():
        logits = model(**batch.model_inputs()).logits
    mask = batch.labels != -100
    nll = -token_logprobs(logits.float(), batch.labels) * mask
    return aggregate(nll, mask, "token-mean", num_tokens=num_loss_tokens), float(nll.detach().sum())


def _loss_and_grads(fn, t, examples, rt=Runtime()):
    model = t.train_model
    model.zero_grad(set_to_none=True)
    n = sum(sum(e.loss_mask[1:]) for e in examples)
    total, sums = 0.0, 0.0
    for mb in make_batches(examples, t.cfg.sft, t.tokenizer.pad_token_id):
        loss, s = fn(model, mb, n, rt)
        loss.backward()
        total += float(loss.detach())
        sums += s
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return total, sums, grads


@pytest.mark.parametrize("model", [MODEL, "tiny-llama:d=32,l=2,h=4,kv=2", "tiny-qwen2:d=32,l=2,h=4,kv=2"])
@pytest.mark.parametrize("unpadded", [True, False])
@pytest.mark.parametrize("pack", [True, False])
@pytest.mark.parametrize("micro", [8, 3, 1])
def test_fused_head_loss_equals_full_forward(tmp_path, monkeypatch, model, unpadded, pack, micro):
    t = _trainer(tmp_path, model=model, sequences_per_microbatch=micro, pack=pack)
    monkeypatch.setattr(sft_mod, "_MIN_PAD_SHARE", 0.0 if unpadded else 2.0)  # force either decoder path
    calls, forwards = [], []
    fused, unpad = sft_mod.linear_nll_sum, sft_mod.unpadded_forward
    monkeypatch.setattr(sft_mod, "linear_nll_sum", lambda h, *a, **k: (calls.append(h.shape[0]), fused(h, *a, **k))[1])
    monkeypatch.setattr(sft_mod, "unpadded_forward", lambda d, ids, *a: (forwards.append(ids.numel()), unpad(d, ids, *a))[1])
    examples = [t.train_examples[i] for i in range(8)]
    loss, nll_sum, grads = _loss_and_grads(microbatch_loss, t, examples)
    ref_loss, ref_sum, ref_grads = _loss_and_grads(_reference_loss, t, examples)
    n_loss = sum(sum(e.loss_mask[1:]) for e in examples)
    assert sum(calls) == n_loss  # the head ran at the trained positions only
    assert bool(forwards) == unpadded and (not unpadded or sum(forwards) == sum(len(e) for e in examples))
    assert sum(len(e) for e in examples) > n_loss  # ... which are fewer than all positions
    assert loss == pytest.approx(ref_loss, abs=1e-5) and nll_sum == pytest.approx(ref_sum, rel=1e-5)
    assert grads.keys() == ref_grads.keys()
    for k in grads:
        assert torch.allclose(grads[k], ref_grads[k], atol=1e-5, rtol=0), k


@pytest.mark.parametrize("model_opts, unpadded", [(dict(lora_rank=4), True), (dict(gradient_checkpointing=True), False)])
def test_lora_and_checkpointing_equal_full_forward(tmp_path, monkeypatch, model_opts, unpadded):
    """LoRA (adapters in every projection, frozen head): the padding-free forward calls the adapted
    modules. Gradient checkpointing: the decoder's own (checkpointed) forward, head at trained tokens."""
    t = _trainer(tmp_path, model_opts=model_opts, sequences_per_microbatch=3)
    monkeypatch.setattr(sft_mod, "_MIN_PAD_SHARE", 0.0)
    forwards, unpad = [], sft_mod.unpadded_forward
    monkeypatch.setattr(sft_mod, "unpadded_forward", lambda d, ids, *a: (forwards.append(ids.numel()), unpad(d, ids, *a))[1])
    examples = [t.train_examples[i] for i in range(8)]
    t.train_model.train()
    loss, _, grads = _loss_and_grads(microbatch_loss, t, examples)
    ref_loss, _, ref_grads = _loss_and_grads(_reference_loss, t, examples)
    assert bool(forwards) == unpadded
    assert loss == pytest.approx(ref_loss, abs=1e-5)
    trained = [k for k, p in t.train_model.named_parameters() if p.requires_grad]
    assert trained and (("lora" in trained[0]) == ("lora_rank" in model_opts))
    for k in trained:
        assert torch.allclose(grads[k], ref_grads[k], atol=1e-5, rtol=0), k


@pytest.mark.parametrize("min_pad_share", [0.0, 2.0])
def test_training_steps_equal_full_forward_steps(tmp_path, monkeypatch, min_pad_share):
    """Two optimizer steps (packing, 2 micro-batches): same losses and gradients (1e-5), same weights
    to 3e-4 (AdamW's first steps divide by sqrt(v) ~ |g|, which magnifies float noise in near-zero
    gradient entries: one of 36k weights moves 1.1e-4 with the padding-free forward, lr 1e-2)."""
    runs = []
    monkeypatch.setattr(sft_mod, "_MIN_PAD_SHARE", min_pad_share)
    for name, parts in (("fused", sft_mod._decoder_and_head), ("full", lambda model, rt: None)):
        monkeypatch.setattr(sft_mod, "_decoder_and_head", parts)
        t = _trainer(tmp_path, name, sequences_per_microbatch=4)
        seen, step = [], t.opt.step
        t.opt.step = lambda *a, **k: (seen.append(torch.cat([p.grad.flatten() for p in t.model.parameters()])), step(*a, **k))[1]
        losses = [t.train_step()["loss"] for _ in range(2)]
        runs.append((losses, seen, torch.cat([p.detach().flatten() for p in t.model.parameters()]), t.eval_loss()))
    (l0, g0, w0, e0), (l1, g1, w1, e1) = runs
    assert l0 == pytest.approx(l1, abs=1e-5) and e0 == pytest.approx(e1, abs=1e-5)
    for a, b in zip(g0, g1):
        assert torch.allclose(a, b, atol=1e-5, rtol=0)
    assert torch.allclose(w0, w1, atol=3e-4, rtol=0)


def test_wrapped_models_keep_the_full_forward(tmp_path, monkeypatch):
    """Under DDP / FSDP2 (the wrapper's forward must run) and for a model without a separate head,
    the loss goes through the model's own forward; the value is the same."""
    t = _trainer(tmp_path)
    monkeypatch.setattr(sft_mod, "linear_nll_sum", lambda *a, **k: pytest.fail("the fused head must not run"))
    examples = [t.train_examples[i] for i in range(8)]
    mb = next(make_batches(examples, t.cfg.sft, t.tokenizer.pad_token_id))
    n = sum(sum(e.loss_mask[1:]) for e in examples)
    ref, _ = _reference_loss(t.model, mb, n)

    class Opaque(torch.nn.Module):  # a causal LM without get_decoder / get_output_embeddings
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, **kw):
            return self.inner(**kw)

    for model, rt in ((t.model, dataclasses.replace(Runtime(), parallel="ddp")), (Opaque(t.model), Runtime())):
        loss, _ = microbatch_loss(model, mb, n, rt)
        assert float(loss) == pytest.approx(float(ref), abs=1e-6)


def test_bf16_autocast_close_to_full_forward(tmp_path):
    t = _trainer(tmp_path)
    rt = dataclasses.replace(Runtime(), compute_dtype=torch.bfloat16)
    examples = [t.train_examples[i] for i in range(8)]
    loss, _, grads = _loss_and_grads(microbatch_loss, t, examples, rt)
    ref, _, ref_grads = _loss_and_grads(_reference_loss, t, examples, rt)
    assert loss == pytest.approx(ref, rel=2e-2)
    flat = torch.cat([g.flatten() for g in grads.values()])
    ref_flat = torch.cat([g.flatten() for g in ref_grads.values()])
    assert torch.nn.functional.cosine_similarity(flat, ref_flat, dim=0) > 0.99


def test_unpadded_layout_segments():
    # packed rows: segments where position_ids restart; the tail padding segment (no label) is dropped
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 1], [0, 1, 2, 3, 0, 1, 2]])
    labels = torch.tensor([[-100, 5, -100, 7, -100, -100, -100], [-100, 1, 2, -100, -100, -100, -100]])
    lay = unpadded_layout(torch.zeros_like(pos), pos, None, labels)
    assert lay.segments == [3, 2, 4] and lay.index.tolist() == [0, 1, 2, 3, 4, 7, 8, 9, 10] and lay.padded == 14
    # padded rows: each row's unmasked tokens are one segment; a row with no label is dropped
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]])
    labels = torch.tensor([[-100, 3, -100, -100], [4, -100, -100, -100], [-100, -100, -100, -100]])
    lay = unpadded_layout(torch.zeros_like(mask), (mask.cumsum(-1) - 1).clamp_min(0), mask, labels)
    assert lay.segments == [3, 2] and lay.index.tolist() == [0, 1, 2, 4, 5]
    # a label at a masked position: the padded forward would score it, so no layout
    labels[0, 3] = 9
    assert unpadded_layout(torch.zeros_like(mask), torch.zeros_like(mask), mask, labels) is None
