import json

import pytest
import torch

from posttrain.checkpoint import latest_checkpoint
from posttrain.trainers.common import DataConfig, ModelConfig, OptimConfig, TrainConfig
from posttrain.trainers.sft import SFTConfig, SFTOptions, SFTTrainer

MODEL = "tiny-llama:d=32,l=2,h=2"


def _cfg(tmp_path, name="run", **kw):
    sft = dict(sequences_per_step=8, sequences_per_microbatch=8)
    sft.update(kw.pop("sft", {}))
    train = dict(out=str(tmp_path / name), max_steps=4, progress=False)
    train.update(kw.pop("train", {}))
    return SFTConfig(
        model=ModelConfig(name=MODEL, **kw.pop("model", {})),
        data=DataConfig(path="task:addition", train_rows=64, eval_rows=8),
        optim=OptimConfig(lr=1e-2, warmup_steps=1),
        train=TrainConfig(**train),
        sft=SFTOptions(**sft),
    )


def _params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("pack", [True, False])
def test_microbatch_split_gives_same_update(tmp_path, pack):
    """1x8, 2x4 and 8x1 micro-batches: the accumulated gradient at each step agrees to 1e-5 (the
    parameters after two AdamW steps to 1e-4, Adam's normalisation amplifying float noise)."""
    finals, grads = [], []
    for mb in (8, 4, 1):
        t = SFTTrainer(_cfg(tmp_path, f"mb{mb}", sft=dict(sequences_per_microbatch=mb, pack=pack), train=dict(max_steps=2)))
        seen, step = [], t.opt.step
        t.opt.step = lambda *a, **k: (seen.append(torch.cat([p.grad.flatten() for p in t.model.parameters()])), step(*a, **k))[1]
        t.train_step()
        t.train_step()
        finals.append(_params(t.model))
        grads.append(seen)
    for other in (1, 2):
        for g0, g1 in zip(grads[0], grads[other]):
            assert torch.allclose(g0, g1, atol=1e-5, rtol=0)
        assert torch.allclose(finals[0], finals[other], atol=1e-4, rtol=0)
    start = _params(SFTTrainer(_cfg(tmp_path, "fresh")).model)
    assert not torch.allclose(finals[0], start, atol=1e-3)  # it did train


def test_resume_equals_straight_run(tmp_path):
    straight = SFTTrainer(_cfg(tmp_path, "straight", train=dict(max_steps=6)))
    straight.train()
    first = SFTTrainer(_cfg(tmp_path, "resumed", train=dict(max_steps=6, save_every=3)))
    step = first.train_step

    def crash_after_three():
        if first.step == 3:
            raise KeyboardInterrupt("stopped")
        return step()

    first.train_step = crash_after_three
    with pytest.raises(KeyboardInterrupt):
        first.train()
    resumed = SFTTrainer(_cfg(tmp_path, "resumed", train=dict(max_steps=6, save_every=3, resume=True)))
    assert resumed.step == 3
    resumed.train()
    assert torch.allclose(_params(straight.model), _params(resumed.model), atol=1e-6)
    steps = [json.loads(l)["step"] for l in open(tmp_path / "resumed" / "metrics.jsonl") if '"loss"' in l]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_interrupted_save_keeps_latest(tmp_path, monkeypatch):
    t = SFTTrainer(_cfg(tmp_path, train=dict(max_steps=2)))
    t.train()
    good = latest_checkpoint(tmp_path / "run")
    assert good is not None and good.name == "step-0000002"
    t.step = 3

    def crash(*a, **k):
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        t.save()
    assert latest_checkpoint(tmp_path / "run") == good
    assert (good / "model.safetensors").exists() and (good / "trainer_state.pt").exists()


def test_loss_falls_and_lora_trains_only_adapters(tmp_path):
    t = SFTTrainer(_cfg(tmp_path, model=dict(lora_rank=4), train=dict(max_steps=12)))
    frozen = {n: p.detach().clone() for n, p in t.model.named_parameters() if not p.requires_grad}
    losses = [t.train_step()["loss"] for _ in range(12)]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    for n, p in t.model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    assert any("lora" in n for n, p in t.model.named_parameters() if p.requires_grad)
    path = t.save()
    assert (path / "adapter_model.safetensors").exists()


def test_file_data_eval_loss_and_reference_answers(tmp_path):
    rows = [{"question": f"{a}+{a}", "answer": f"{a}+{a}={2 * a}\n#### {2 * a}"} for a in range(10, 30)]
    train, held = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows[:16]))
    held.write_text("".join(json.dumps(r) + "\n" for r in rows[16:]))
    cfg = SFTConfig(
        model=ModelConfig(name=MODEL),
        data=DataConfig(path=str(train), eval_path=str(held), columns={"question": "prompt", "answer": "completion"}),
        train=TrainConfig(out=str(tmp_path / "f"), max_steps=2, progress=False),
        sft=SFTOptions(sequences_per_step=8, sequences_per_microbatch=4, eval_max_new_tokens=4),
    )
    t = SFTTrainer(cfg)
    assert [ex.answer for ex in t.answered] == ["52", "54", "56", "58"]
    out = t.train()
    assert out["eval/loss"] > 0 and 0.0 <= out["eval/accuracy"] <= 1.0


def test_stops_at_target_accuracy(tmp_path):
    cfg = _cfg(tmp_path, sft=dict(target_accuracy=0.9), train=dict(max_steps=10, eval_every=2))
    t = SFTTrainer(cfg)
    accs = iter([0.5, 0.95])
    t.evaluate = lambda: {"eval/accuracy": next(accs)}
    out = t.train()
    assert t.step == 4 and out["eval/accuracy"] == 0.95
    assert latest_checkpoint(tmp_path / "run").name == "step-0000004"
