import pytest
import torch

from posttrain.models import load_model_and_tokenizer
from posttrain.rollout import HFEngine, SamplingParams

pytestmark = pytest.mark.usefixtures("one_thread")


def _padded_batch():
    ids = torch.randint(3, 90, (3, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :4], mask[1, :1] = 0, 0  # left padding
    return ids, mask, (mask.cumsum(-1) - 1).clamp_min(0)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_grouped_query_attention_matches_eager_on_a_padded_batch(arch):
    """posttrain_sdpa (grouped KV heads passed straight to SDPA) = transformers' eager attention
    (KV heads repeated) in logits and gradients, with a padding mask."""
    model, _ = load_model_and_tokenizer(f"tiny-{arch}:d=64,l=2,h=4,kv=2")
    assert model.config._attn_implementation == "posttrain_sdpa" and model.model.layers[0].self_attn.num_key_value_groups == 2
    ids, mask, pos = _padded_batch()
    outs = {}
    for impl in ("posttrain_sdpa", "eager"):
        model.set_attn_implementation(impl)
        model.zero_grad()
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        (logits[mask.bool()] ** 2).mean().backward()
        outs[impl] = (logits[mask.bool()].detach(), model.model.layers[0].self_attn.k_proj.weight.grad.clone())
    assert torch.allclose(outs["posttrain_sdpa"][0], outs["eager"][0], atol=1e-5)
    assert torch.allclose(outs["posttrain_sdpa"][1], outs["eager"][1], atol=1e-5, rtol=1e-4)


def test_grouped_query_decoding_matches_eager():
    model, tok = load_model_and_tokenizer("tiny-llama:d=64,l=2,h=4,kv=1")
    prompts = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=6, seed=4)
    got = HFEngine(model, tok).generate(prompts, params)
    model.set_attn_implementation("eager")
    want = HFEngine(model, tok).generate(prompts, params)
    for g, w in zip(got, want):
        for a, b in zip(g, w):
            assert a.token_ids == b.token_ids
            assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < 1e-5
