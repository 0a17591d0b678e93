import pytest
import torch

from posttrain.data import DataError, load_examples, pack_rows, packed_batch, pad_batch, tokenize_sft
from posttrain.data.chat import TokenizedExample, check_example
from posttrain.trainers.sft import microbatch_loss

U = lambda s: [{"role": "user", "content": s}]  # noqa: E731
A = lambda s: [{"role": "assistant", "content": s}]  # noqa: E731


def test_assistant_mask_covers_only_assistant_turns_and_eos(tiny):
    _, tok = tiny
    (ex,), _ = load_examples([{"messages": U("1+2") + A("3") + U("2+2") + A("4")}])
    t = tokenize_sft(tok, ex)
    trained = tok.decode([i for i, m in zip(t.input_ids, t.loss_mask) if m])
    assert trained == "3<|eos|>4<|eos|>"
    assert tok.decode(t.input_ids) == "<|user|>1+2<|assistant|>3<|eos|><|user|>2+2<|assistant|>4<|eos|>"


def test_prompt_completion_trains_completion_only(tiny):
    _, tok = tiny
    (ex,), _ = load_examples([{"prompt": "12+3=", "completion": "15"}])
    t = tokenize_sft(tok, ex)
    assert tok.decode([i for i, m in zip(t.input_ids, t.loss_mask) if m]) == "15<|eos|>"


def test_checks_empty_mask_doubled_bos_and_missing_eos(tiny):
    _, tok = tiny
    b, e = tok.bos_token_id, tok.eos_token_id
    with pytest.raises(DataError, match="row 7: empty assistant"):
        check_example(tok, TokenizedExample([5, 6, 7], [0, 0, 0]), "f.jsonl: row 7")
    with pytest.raises(DataError, match="doubled BOS"):
        check_example(tok, TokenizedExample([b, b, 7, e], [0, 0, 1, 1]), "x")
    with pytest.raises(DataError, match="EOS token"):
        check_example(tok, TokenizedExample([5, 6, 7], [0, 1, 1]), "x")


def test_packed_loss_equals_unpacked_loss_and_grads(tiny):
    model, tok = tiny
    rows = [{"prompt": U(f"{a}+{a * 7}"), "completion": A(str(a + a * 7) * (1 + a % 3))} for a in range(1, 9)]
    exs, _ = load_examples(rows)
    toks = [tokenize_sft(tok, e) for e in exs]
    n = sum(sum(t.loss_mask[1:]) for t in toks)
    grads = []
    losses = []
    for batch in (pad_batch(toks, tok.pad_token_id), packed_batch(pack_rows(toks, 40), tok.pad_token_id)):
        model.zero_grad()
        loss, _ = microbatch_loss(model, batch, n)
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    packed = packed_batch(pack_rows(toks, 40), tok.pad_token_id)
    assert packed.input_ids.shape[0] < len(toks)  # really packed several examples per row
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_pack_rows_first_fit():
    ex = lambda n: TokenizedExample(list(range(n)), [1] * n)  # noqa: E731
    rows = pack_rows([ex(6), ex(5), ex(4), ex(3)], 10)
    assert [[len(e) for e in r] for r in rows] == [[6, 4], [5, 3]]
    with pytest.raises(ValueError, match="exceeds"):
        pack_rows([ex(11)], 10)
