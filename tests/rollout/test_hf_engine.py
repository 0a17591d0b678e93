import pytest
import torch

from posttrain.data import encode_prompt
from posttrain.ops import token_logprobs
from posttrain.rollout import HFEngine, SamplingParams


def _prompts(tok):
    return [encode_prompt(tok, [{"role": "user", "content": c}]) for c in ("12+345", "7", "999+1", "3+4")]


def test_batched_left_padded_greedy_equals_one_by_one_and_generate(tiny):
    model, tok = tiny
    prompts = _prompts(tok)
    engine = HFEngine(model, tok, sequences_per_batch=4)
    params = SamplingParams(temperature=0.0, max_new_tokens=6)
    batched = [c[0].token_ids for c in engine.generate(prompts, params)]
    single = [engine.generate([p], params)[0][0].token_ids for p in prompts]
    assert batched == single
    for p, ids in zip(prompts, batched):
        ref = model.generate(torch.tensor([p]), max_new_tokens=6, do_sample=False, eos_token_id=tok.eos_token_id)
        want = ref[0, len(p):].tolist()
        if tok.eos_token_id in want:
            want = want[: want.index(tok.eos_token_id) + 1]
        assert ids == want


def test_sampling_logprobs_match_a_recomputed_forward_pass(tiny):
    model, tok = tiny
    p = _prompts(tok)[0]
    (c,) = HFEngine(model, tok).generate([p], SamplingParams(n=1, temperature=0.7, max_new_tokens=5, seed=3))[0]
    ids = torch.tensor([p + c.token_ids])
    logits = model(ids).logits[0, len(p) - 1 : -1] / 0.7
    again = token_logprobs(logits, torch.tensor(c.token_ids))
    assert torch.allclose(again, torch.tensor(c.logprobs), atol=1e-5)


def test_seeded_sampling_is_reproducible_and_n_per_prompt(tiny):
    model, tok = tiny
    engine = HFEngine(model, tok)
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=5, seed=11)
    a = engine.generate(_prompts(tok)[:2], params)
    b = engine.generate(_prompts(tok)[:2], params)
    assert [len(x) for x in a] == [3, 3]
    assert [[c.token_ids for c in x] for x in a] == [[c.token_ids for c in x] for x in b]
    assert all(c.finish_reason in ("stop", "length") and len(c.token_ids) == len(c.logprobs) for x in a for c in x)


def test_stop_strings_end_completions_and_keep_the_stop(tiny):
    model, tok = tiny
    engine = HFEngine(model, tok)
    params = SamplingParams(temperature=1.0, max_new_tokens=8, seed=1)
    free = engine.generate(_prompts(tok)[:1], params)[0][0]
    stop = free.text[2:4]  # a stop string this seeded continuation is known to produce
    assert len(stop) == 2 and free.finish_reason == "length"
    c = engine.generate(_prompts(tok)[:1], SamplingParams(temperature=1.0, max_new_tokens=8, seed=1, stop=(stop,)))[0][0]
    assert c.text.endswith(stop) and c.stop_reason == stop and c.finish_reason == "stop"
    assert c.token_ids == free.token_ids[: len(c.token_ids)]


def test_empty_prompt_is_an_error(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="empty prompt"):
        HFEngine(model, tok).generate([[]], SamplingParams(max_new_tokens=2))


def test_finished_rows_leave_the_batch_without_changing_the_others(tiny):
    """A completion cut by a stop string leaves the batch (and the shared-prefix KV cache) early; the
    other completions sample exactly what they sample without it, and every logprob still matches
    a forward pass over prompt + completion."""
    model, tok = tiny
    prompts = _prompts(tok)[:2]
    engine = HFEngine(model, tok, sequences_per_batch=8)
    free = engine.generate(prompts, SamplingParams(n=4, temperature=1.0, max_new_tokens=10, seed=5))
    stop = free[0][1].text[1:3]
    cut = engine.generate(prompts, SamplingParams(n=4, temperature=1.0, max_new_tokens=10, seed=5, stop=(stop,)))
    assert cut[0][1].stop_reason == stop and len(cut[0][1].token_ids) < 10
    for p, fs, cs in zip(prompts, free, cut):
        for f, c in zip(fs, cs):
            if c.stop_reason is None:
                assert c.token_ids == f.token_ids
            else:
                assert c.token_ids == f.token_ids[: len(c.token_ids)] and c.text.endswith(c.stop_reason)
            logits = model(torch.tensor([p + c.token_ids])).logits[0, len(p) - 1 : -1]
            assert torch.allclose(token_logprobs(logits, torch.tensor(c.token_ids)), torch.tensor(c.logprobs), atol=1e-5)


def test_more_samples_than_a_batch_holds(tiny):
    model, tok = tiny
    out = HFEngine(model, tok, sequences_per_batch=4).generate(
        _prompts(tok)[:2], SamplingParams(n=6, temperature=1.0, max_new_tokens=3, seed=0))
    assert [len(x) for x in out] == [6, 6]
    assert len({tuple(c.token_ids) for c in out[0]}) > 1


@pytest.mark.parametrize("name", ["tiny-llama:d=32,l=2,h=2", "tiny-qwen2:d=32,l=2,h=4,kv=2"])
def test_lean_decoder_and_hf_forward_sample_the_same_tokens(name):
    from posttrain.models import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(name, seed=2)
    prompts = _prompts(tok)
    for params in (SamplingParams(temperature=0.0, max_new_tokens=8),
                   SamplingParams(n=3, temperature=1.0, top_p=0.9, max_new_tokens=8, seed=5)):
        lean = HFEngine(model, tok, sequences_per_batch=6).generate(prompts, params)
        hf = HFEngine(model, tok, sequences_per_batch=6, lean=False).generate(prompts, params)
        for a, b in zip(lean, hf):
            assert [c.token_ids for c in a] == [c.token_ids for c in b]
            assert [c.finish_reason for c in a] == [c.finish_reason for c in b]
            for ca, cb in zip(a, b):
                assert torch.allclose(torch.tensor(ca.logprobs), torch.tensor(cb.logprobs), atol=1e-5)


def test_per_prompt_seeds_make_samples_independent_of_batching(tiny):
    """With `seeds`, what a prompt samples depends on its seed only: alone, in another batch, in a
    batch split across engines (data-parallel ranks) or in another order, its completions are equal;
    another seed gives other completions."""
    model, tok = tiny
    prompts = [encode_prompt(tok, f"{a}+{a + 1}=") for a in range(6)]
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=8, seeds=tuple(range(100, 106)))
    together = HFEngine(model, tok, sequences_per_batch=18).generate(prompts, params)
    small = HFEngine(model, tok, sequences_per_batch=3)  # one prompt per engine batch
    halves = (small.generate(prompts[:3], SamplingParams(n=3, temperature=1.0, max_new_tokens=8, seeds=(100, 101, 102)))
              + small.generate(prompts[3:], SamplingParams(n=3, temperature=1.0, max_new_tokens=8, seeds=(103, 104, 105))))
    flipped = small.generate(prompts[::-1], SamplingParams(n=3, temperature=1.0, max_new_tokens=8, seeds=tuple(range(105, 99, -1))))[::-1]
    ids = lambda outs: [[c.token_ids for c in group] for group in outs]  # noqa: E731
    assert ids(together) == ids(halves) == ids(flipped)
    assert len({tuple(c.token_ids) for group in together for c in group}) > 6  # they really sample
    other = HFEngine(model, tok).generate(prompts, SamplingParams(n=3, temperature=1.0, max_new_tokens=8, seeds=tuple(range(6))))
    assert ids(other) != ids(together)
    with pytest.raises(ValueError, match="3 seeds for 6 prompts"):
        small.generate(prompts, SamplingParams(n=1, temperature=1.0, seeds=(1, 2, 3)))
