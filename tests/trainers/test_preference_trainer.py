"""The preference trainer on a tiny model: cached vs live reference, LoRA reference, one concatenated
forward vs separate ones, micro-batch invariance, resume, unpaired losses, the falling-logps warning."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from posttrain.data import DataError
from posttrain.errors import UserError
from posttrain.ops import naive_token_logprobs
from posttrain.trainers.common import DataConfig, ModelConfig, OptimConfig, TrainConfig
from posttrain.trainers.pairs import pair_batch, sequence_logps
from posttrain.trainers.pref_data import FallingLogpsMonitor, parse_loss_spec
from posttrain.trainers.preference import PreferenceConfig, PreferenceOptions, PreferenceTrainer

TINY = "tiny-llama:d=32,l=2,h=2"


pytestmark = pytest.mark.usefixtures("one_thread")


def make(tmp_path, name="run", loss="dpo", reference="cached", lora=0, steps=4, lr=1e-3, per_step=8, per_mb=8, **kw):
    cfg = PreferenceConfig(
        model=ModelConfig(name=TINY, lora_rank=lora, lora_alpha=2 * lora),
        data=DataConfig(path=kw.pop("path", "task:addition"), train_rows=kw.pop("rows", 64), eval_rows=8),
        optim=OptimConfig(lr=lr, schedule="constant"),
        train=TrainConfig(out=str(tmp_path / name), max_steps=steps, progress=False, **kw),
        pref=PreferenceOptions(pairs_per_step=per_step, pairs_per_microbatch=per_mb, reference=reference,
                               eval_before=False, eval_max_new_tokens=4),
        loss=loss,
    )
    return PreferenceTrainer(cfg)


def run_steps(tr, n):
    return [tr.train_step() for _ in range(n)]


def test_cached_reference_gives_the_same_losses_as_live(tmp_path):
    cached = run_steps(make(tmp_path, "c", reference="cached"), 4)
    live = run_steps(make(tmp_path, "l", reference="live"), 4)
    assert cached[0]["loss"] == pytest.approx(0.693147, abs=1e-5)  # policy == reference at step 1
    assert len({round(m["loss"], 6) for m in cached}) > 1  # the policy moved, so the check below bites
    for a, b in zip(cached, live):
        for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "grad_norm"):
            assert a[key] == pytest.approx(b[key], abs=1e-6), key


def test_lora_reference_is_the_adapter_disabled_base_without_a_copy(tmp_path):
    live = make(tmp_path, "l", reference="live", lora=4)
    assert live.ref_model is None and live.ref_cache is None
    cached = make(tmp_path, "c", reference="cached", lora=4)
    a, b = run_steps(cached, 3), run_steps(live, 3)
    for x, y in zip(a, b):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-6)
    assert a[-1]["rewards/margins"] != 0.0
    # the disabled adapter really is the base: reference logps do not move while the adapter trains
    seen = [i for i in range(len(cached.items)) if not torch.isnan(cached.ref_cache["train"][i, 0])][:4]
    assert len(seen) == 4
    fresh = cached.reference_logps([cached.items[i] for i in seen])
    assert torch.allclose(fresh, cached.ref_cache["train"][seen], atol=1e-5)


def test_reference_free_losses_never_build_a_reference(tmp_path):
    for loss in ("simpo", "orpo", "sft"):
        tr = make(tmp_path, loss, loss=loss, reference="live")
        assert tr.ref_model is None and tr.ref_cache is None and not tr.uses_reference
        assert not (tmp_path / loss / "reference_logps.pt").exists()
        m = tr.train_step()
        assert torch.isfinite(torch.tensor(m["loss"]))


def test_concatenated_forward_equals_separate_full_logit_forwards(tmp_path):
    tr = make(tmp_path)
    pairs = tr.items[:5]
    logps, lengths = sequence_logps(tr.model, pair_batch(pairs, tr.tokenizer.pad_token_id))
    for i, p in enumerate(pairs):
        for j, resp in enumerate((p.chosen_ids, p.rejected_ids)):
            ids = torch.tensor([p.prompt_ids + resp])
            logits = tr.model(input_ids=ids).logits[0, len(p.prompt_ids) - 1 : -1]
            want = naive_token_logprobs(logits, torch.tensor(resp)).sum()
            assert logps[j * 5 + i].item() == pytest.approx(want.item(), abs=1e-4)
            assert lengths[j * 5 + i].item() == len(resp)


def test_microbatch_split_gives_the_same_update(tmp_path):
    one = make(tmp_path, "a", per_step=8, per_mb=8)
    two = make(tmp_path, "b", per_step=8, per_mb=2)
    ma, mb = run_steps(one, 2), run_steps(two, 2)
    for x, y in zip(ma, mb):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-6)
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-5)
    for p, q in zip(one.model.parameters(), two.model.parameters()):  # Adam amplifies float noise: 10% of lr
        assert torch.allclose(p, q, atol=1e-4)


def test_dpo_raises_preference_accuracy_on_train_pairs(tmp_path):
    tr = make(tmp_path, steps=30, lr=3e-3, rows=32)
    ms = run_steps(tr, 30)
    assert ms[-1]["loss"] < 0.5 < ms[0]["loss"]
    assert sum(m["rewards/accuracies"] for m in ms[-5:]) / 5 > 0.9
    assert ms[-1]["rewards/margins"] > ms[0]["rewards/margins"]


def test_resume_equals_the_straight_run(tmp_path):
    straight = make(tmp_path, "s", steps=4)
    want = run_steps(straight, 4)[-1]["loss"]
    first = make(tmp_path, "r", steps=4)
    run_steps(first, 2)
    first.save()
    resumed = make(tmp_path, "r", steps=4, resume=True)
    assert resumed.step == 2
    got = run_steps(resumed, 2)[-1]["loss"]
    assert got == pytest.approx(want, abs=1e-6)
    for p, q in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_resume_rejects_a_reference_cache_for_other_data(tmp_path):
    first = make(tmp_path, "r", steps=2)
    run_steps(first, 1)
    first.save()
    with pytest.raises(UserError, match=r"data.train_rows: 64 \(saved\) -> 48"):
        make(tmp_path, "r", steps=2, resume=True, rows=48)
    with pytest.raises(UserError, match="reference_logps.pt"):  # applied on purpose: the cache still does not match
        make(tmp_path, "r", steps=2, resume=True, rows=48, resume_changes="apply")


@pytest.mark.parametrize("loss", ["kto", "bco", "apo_zero_unpaired"])
def test_unpaired_losses_train_from_pairs(tmp_path, loss):
    tr = make(tmp_path, loss, loss=loss, steps=3)
    assert tr.unpaired and len(tr.items) == 128  # each pair gives a desirable and an undesirable row
    assert {it.label for it in tr.items} == {True, False}
    assert all(it.kl_completion_ids for it in tr.items)
    ms = run_steps(tr, 3)
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in ms)
    if loss == "bco":
        assert tr.bco_moments[1] == 3 * 8  # the running shift saw every reward


def test_paired_loss_on_unpaired_rows_is_a_named_error(tmp_path):
    path = tmp_path / "u.jsonl"
    path.write_text("".join(f'{{"prompt": "a{i}", "completion": "b", "label": {str(i % 2 == 0).lower()}}}\n' for i in range(12)))
    with pytest.raises(DataError, match="u.jsonl: line 1.*needs paired rows"):
        make(tmp_path, path=str(path), loss="dpo")


def test_mixture_logs_each_component(tmp_path):
    m = make(tmp_path, loss="dpo:0.8,bco_pair:0.2,sft:1").train_step()
    assert m["loss"] == pytest.approx(0.8 * m["loss/dpo"] + 0.2 * m["loss/bco_pair"] + m["loss/sft"], rel=1e-5)


def test_loss_spec_errors():
    assert parse_loss_spec("ipo") == {"ipo": 1.0}
    with pytest.raises(KeyError, match="did you mean 'simpo'"):
        parse_loss_spec("simpoo")
    with pytest.raises(ValueError, match="cannot be mixed"):
        parse_loss_spec("kto,dpo")
    with pytest.raises(ValueError, match="must be a number"):
        parse_loss_spec("dpo:x")


def test_falling_logps_monitor():
    mon = FallingLogpsMonitor(window=6)
    assert all(mon.update(-1.0 - 0.1 * i, -2.0 - 0.2 * i) is None for i in range(5))
    msg = mon.update(-1.5, -3.0)
    assert msg and "both falling" in msg
    rising = FallingLogpsMonitor(window=6)
    assert all(rising.update(-1.0 - 0.1 * i, -2.0 + 0.2 * i) is None for i in range(12))  # chosen falls alone: fine


def test_full_train_writes_before_after_eval_and_checkpoint(tmp_path):
    tr = make(tmp_path, steps=2)
    tr.cfg = dataclasses.replace(tr.cfg, pref=dataclasses.replace(tr.cfg.pref, eval_before=True))
    out = tr.train()
    for key in ("eval_before/accuracy", "eval/accuracy", "eval/rewards/accuracy", "eval_before/rewards/accuracy"):
        assert key in out
    assert (tmp_path / "run" / "checkpoints" / "step-0000002" / "trainer_state.pt").exists()


def test_self_generated_rejections_are_the_models_own_wrong_samples(tmp_path):
    cfg = dataclasses.replace(make(tmp_path, "sg").cfg, pref=PreferenceOptions(
        pairs_per_step=8, pairs_per_microbatch=8, eval_before=False, eval_max_new_tokens=4, self_generated=2))
    tr = PreferenceTrainer(cfg)
    synthetic = make(tmp_path, "syn").items
    task = tr.task
    replaced = [(a, b) for a, b in zip(tr.items, synthetic) if a.rejected_ids != b.rejected_ids]
    assert len(replaced) > len(tr.items) // 2  # an untrained model gets nearly every problem wrong
    for a, b in replaced:
        assert a.chosen_ids == b.chosen_ids and a.prompt_ids == b.prompt_ids
        assert not task.verify(tr.tokenizer.decode(a.rejected_ids, skip_special_tokens=True), "0" * 9)
    again = PreferenceTrainer(cfg)  # seeded: a resumed run rebuilds the same pairs
    assert [i.rejected_ids for i in again.items] == [i.rejected_ids for i in tr.items]
    assert torch.isfinite(torch.tensor(tr.train_step()["loss"]))


def test_step_pairs_keep_only_the_first_differing_step(tiny):
    from posttrain.trainers.pairs import TokenizedPair, first_divergent_step

    _, tok = tiny
    enc = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    prompt, eos = enc("<|user|>12+39<|assistant|>"), [tok.eos_token_id]
    chosen = enc("2+9+0=1 c1\n1+3+1=5 c0\n#### 51") + eos
    rejected = enc("2+9+0=1 c1\n1+3+1=4 c0\n#### 41") + eos
    q = first_divergent_step(TokenizedPair(prompt, chosen, rejected, 0.5, "row 3"), tok)
    assert q.prompt_ids == prompt + enc("2+9+0=1 c1\n")
    assert q.chosen_ids == enc("1+3+1=5 c0\n") and q.rejected_ids == enc("1+3+1=4 c0\n")
    assert (q.margin, q.where) == (0.5, "row 3")
    # a difference in the last step keeps that step to the end (EOS included); one in the first keeps the prompt
    last = first_divergent_step(TokenizedPair(prompt, chosen, enc("2+9+0=1 c1\n1+3+1=5 c0\n#### 52") + eos), tok)
    assert last.chosen_ids == enc("#### 51") + eos and last.rejected_ids == enc("#### 52") + eos
    first = first_divergent_step(TokenizedPair(prompt, chosen, enc("2+9+0=2 c1\n") + eos), tok)
    assert first.prompt_ids == prompt and first.chosen_ids == enc("2+9+0=1 c1\n")


def test_step_pairs_option_trains(tmp_path):
    tr = make(tmp_path, "steps", path="task:addition:scratchpad=1")
    cfg = dataclasses.replace(tr.cfg, pref=dataclasses.replace(tr.cfg.pref, step_pairs=True))
    st = PreferenceTrainer(cfg)
    assert all(s.prompt_ids[: len(p.prompt_ids)] == p.prompt_ids for s, p in zip(st.items, tr.items))
    assert sum(len(s.chosen_ids) for s in st.items) < sum(len(p.chosen_ids) for p in tr.items) / 2
    assert torch.isfinite(torch.tensor(st.train_step()["loss"]))
