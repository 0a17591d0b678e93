"""The lean decoder against the Hugging Face forward: same logits, same tokens, on Llama and Qwen2."""
import pytest
import torch

from posttrain.models import load_model_and_tokenizer
from posttrain.models.fast import LeanDecoder, supports

pytestmark = pytest.mark.usefixtures("one_thread")

ARCHS = ["tiny-llama:d=32,l=2,h=4", "tiny-qwen2:d=32,l=2,h=4,kv=2"]  # qwen2: q/k/v bias, grouped KV heads


def _load(name):
    if name != "llama-with-biases":
        return load_model_and_tokenizer(name, seed=1)[0]
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    cfg = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, attention_bias=True, mlp_bias=True, attn_implementation="eager")
    return LlamaForCausalLM(cfg)


def _batch(seed=0, B=5, P=7):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 90, (B, P), generator=g)
    mask = torch.ones(B, P, dtype=torch.long)
    for b, pad in enumerate([0, 3, 1, 5, 2][:B]):  # left padding of different lengths
        mask[b, :pad] = 0
    return ids, mask, (mask.cumsum(-1) - 1).clamp_min(0)


@pytest.mark.parametrize("name", [*ARCHS, "llama-with-biases"])
def test_prefill_and_decode_logits_equal_the_hf_forward(name):
    model = _load(name)
    model.eval()
    with torch.no_grad():  # non-zero biases, so a dropped bias would show
        for p in model.parameters():
            if p.dim() == 1 and p.abs().sum() == 0:
                p.normal_(0, 0.5)
    ids, mask, pos = _batch()
    dec = LeanDecoder(model)
    with torch.no_grad():
        got = dec.prefill(ids, mask, pos, capacity=ids.shape[1] + 6)
        full, m, last = ids, mask, pos[:, -1]
        want = model(input_ids=full, attention_mask=m, position_ids=pos).logits[:, -1]
        assert torch.allclose(got, want, atol=1e-5)
        all_pos = pos
        for t in range(6):
            tok = want.argmax(-1)
            full = torch.cat([full, tok[:, None]], 1)
            m = torch.cat([m, torch.ones(len(tok), 1, dtype=torch.long)], 1)
            last = last + 1
            all_pos = torch.cat([all_pos, last[:, None]], 1)
            got = dec.decode(tok, m, last)
            want = model(input_ids=full, attention_mask=m, position_ids=all_pos).logits[:, -1]  # no cache at all
            assert torch.allclose(got, want, atol=1e-5), (t, (got - want).abs().max())


def test_refresh_follows_weight_updates_and_rows_can_be_repeated_and_dropped():
    model, _ = load_model_and_tokenizer(ARCHS[1], seed=0)
    model.eval()
    ids, mask, pos = _batch(B=3)
    dec = LeanDecoder(model)
    with torch.no_grad():
        model.model.layers[0].self_attn.k_proj.weight.mul_(3.0)  # an in-place update, as an optimizer makes
        dec.refresh()
        first = dec.prefill(ids, mask, pos, capacity=ids.shape[1] + 1)
        assert torch.allclose(first, model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1], atol=1e-5)
        dec.repeat_rows(2)  # rows 0,0,1,1,2,2
        dec.select_rows(torch.tensor([1, 4]))  # keep a copy of prompt 0 and of prompt 2
        tok = torch.tensor([11, 12])
        m2 = torch.cat([mask[[0, 2]], torch.ones(2, 1, dtype=torch.long)], 1)
        got = dec.decode(tok, m2, pos[[0, 2], -1] + 1)
        full = torch.cat([ids[[0, 2]], tok[:, None]], 1)
        want = model(input_ids=full, attention_mask=m2, position_ids=(m2.cumsum(-1) - 1).clamp_min(0)).logits[:, -1]
        assert torch.allclose(got, want, atol=1e-5)


def test_supports_only_plain_llama_family_models():
    from peft import LoraConfig, get_peft_model

    model, _ = load_model_and_tokenizer(ARCHS[0], seed=0)
    assert supports(model)
    assert not supports(get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"])))
    with pytest.raises(ValueError, match="does not support"):
        LeanDecoder(torch.nn.Linear(2, 2))
