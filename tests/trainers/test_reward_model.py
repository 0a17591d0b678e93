"""Bradley-Terry reward models: built from a causal backbone, saved so AutoModelForSequenceClassification
loads them, scored at the last real token, trained to separate right from wrong task solutions."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from posttrain.data import DataError
from posttrain.models import load_model_and_tokenizer
from posttrain.rewards.base import combine_rewards
from posttrain.rewards.model import RewardModelScorer
from posttrain.tasks import get_task
from posttrain.trainers.common import DataConfig, ModelConfig, OptimConfig, TrainConfig
from posttrain.trainers.reward import RewardConfig, RewardOptions, RewardTrainer, reward_model_from_causal

TINY = "tiny-llama:d=32,l=2,h=2"


pytestmark = pytest.mark.usefixtures("one_thread")


def make(tmp_path, name="rm", steps=3, lr=3e-3, model=TINY, path="task:addition", rows=64, eval_rows=16, lora=0, **rm):
    cfg = RewardConfig(
        model=ModelConfig(name=model, lora_rank=lora, lora_alpha=2 * lora),
        data=DataConfig(path=path, train_rows=rows, eval_rows=eval_rows),
        optim=OptimConfig(lr=lr, warmup_steps=min(10, steps // 10)),
        train=TrainConfig(out=str(tmp_path / name), max_steps=steps, progress=False),
        rm=RewardOptions(pairs_per_step=16, **rm),
    )
    return RewardTrainer(cfg)


def test_backbone_weights_are_copied_from_the_causal_model():
    causal, tok = load_model_and_tokenizer(TINY)
    rm = reward_model_from_causal(causal, tok.pad_token_id)
    assert type(rm).__name__ == "LlamaForSequenceClassification" and rm.config.num_labels == 1
    for (name, p), (_, q) in zip(causal.model.named_parameters(), rm.model.named_parameters()):
        assert torch.equal(p, q), name


def test_saved_model_loads_with_auto_class_and_scores_the_same(tmp_path):
    tr = make(tmp_path, steps=3)
    out = tr.train()
    loaded = AutoModelForSequenceClassification.from_pretrained(out["model"])
    scorer = RewardModelScorer(out["model"])
    row = get_task("addition").preference_rows(1, held_out=True)[0]
    completions = [row["chosen"][0]["content"], row["rejected"][0]["content"], "12"]
    got = scorer.score(row["prompt"], completions)
    want = []
    for c in completions:
        ids = tr.tokenizer.apply_chat_template(row["prompt"] + [{"role": "assistant", "content": c}], tokenize=False)
        x = torch.tensor([tr.tokenizer(ids, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            want.append(loaded(input_ids=x).logits[0, 0].item())
            assert tr.model.eval()(input_ids=x).logits[0, 0].item() == pytest.approx(want[-1], abs=1e-5)
    assert got == pytest.approx(want, abs=1e-5)  # padded, length-sorted batches score like single rows
    assert out["eval/pairs"] == 16 and 0.0 <= out["eval/pairwise_accuracy"] <= 1.0


def test_scorer_is_a_reward_function(tmp_path):
    tr = make(tmp_path, steps=1)
    scorer = RewardModelScorer(tr.model, tr.tokenizer, sequences_per_batch=2)
    rows = get_task("addition").preference_rows(3, held_out=True)
    prompts = [r["prompt"] for r in rows] * 2
    completions = [r["chosen"][0]["content"] for r in rows] + [r["rejected"][0]["content"] for r in rows]
    out = combine_rewards([(scorer, 1.0)], prompts, completions, {"answer": [r["answer"] for r in rows] * 2})
    assert out.num_failed == 0 and out.total.shape == (6,)
    one_by_one = [scorer([p], [c])[0] for p, c in zip(prompts, completions)]
    assert out.total.tolist() == pytest.approx(one_by_one, abs=1e-5)


def test_bt_reward_model_learns_to_separate_right_from_wrong_solutions(tmp_path):
    """A fast check that held-out pairwise accuracy rises; the >= 95% figure is benchmarks/rm_task.py."""
    tr = make(tmp_path, steps=80, lr=3e-3, path="task:addition:scratchpad=1", rows=2000, eval_rows=100)
    before = tr.evaluate()["eval/pairwise_accuracy"]
    for _ in range(80):
        tr.train_step()
    after = tr.evaluate()["eval/pairwise_accuracy"]
    assert after >= 0.7 and after > before + 0.15


def test_margin_column_enters_the_loss_and_bad_values_are_named(tmp_path):
    rows = [{"prompt": f"q{i}", "chosen": "good", "rejected": "bad", "strength": 2.0} for i in range(20)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    plain = make(tmp_path, "p", path=str(path), eval_rows=4).train_step()
    margin = make(tmp_path, "m", path=str(path), eval_rows=4, margin_column="strength").train_step()
    d = plain["margin"]  # same weights and order: the same reward differences in both runs
    assert margin["margin"] == pytest.approx(d, abs=1e-6)
    softplus = torch.nn.functional.softplus
    assert plain["loss"] == pytest.approx(softplus(torch.tensor(-d)).item(), abs=1e-2)
    assert margin["loss"] == pytest.approx(softplus(torch.tensor(2.0 - d)).item(), abs=1e-2)
    rows[3]["strength"] = "high"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"pairs.jsonl: line 4: field 'strength': expected a number"):
        make(tmp_path, "b", path=str(path), eval_rows=4, margin_column="strength")


def test_centering_term_pulls_rewards_to_zero(tmp_path):
    def last_centers(**rm):
        tr = make(tmp_path, str(rm), steps=40, **rm)
        return sum(tr.train_step()["center"] for _ in range(40)) / 40

    free, centered = last_centers(), last_centers(center_coef=1.0)
    assert centered < 0.2 * free


def test_lora_reward_model_exports_merged_weights(tmp_path):
    tr = make(tmp_path, "l", steps=2, lora=4)
    assert any("lora_" in n for n, _ in tr.model.named_parameters())
    out = tr.train()
    loaded = AutoModelForSequenceClassification.from_pretrained(out["model"])
    assert not any("lora_" in n for n, _ in loaded.named_parameters())
    x = torch.tensor([[5, 30, 31, 6, 30, 2]])
    with torch.no_grad():
        assert loaded(input_ids=x).logits[0, 0].item() == pytest.approx(tr.model.eval()(input_ids=x).logits[0, 0].item(), abs=1e-5)
