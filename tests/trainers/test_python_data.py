"""Trainers take their data from Python (`train_data=` / `eval_data=`: a list of dicts, a
`datasets.Dataset`, or a path) and the model by name: the same training as from a file, bad rows named
`train_data[i]`, and a run folder whose config says where the rows came from."""
import json

import datasets
import pytest
import torch

from posttrain.cli import main
from posttrain.configs import (
    DataConfig, ModelConfig, OptimConfig, PreferenceConfig, PreferenceOptions, RewardConfig, RewardOptions, SFTConfig,
    SFTOptions, TrainConfig,
)
from posttrain.data import DataError
from posttrain.trainers.preference import PreferenceTrainer
from posttrain.trainers.reward import RewardTrainer
from posttrain.trainers.sft import SFTTrainer

MODEL = "tiny-llama:d=32,l=2,h=2"
ROWS = [{"prompt": f"{a}+{b}=", "completion": str(a + b), "level": a} for a in range(6) for b in range(6)]
PAIRS = [{"prompt": f"{a}+{b}=", "chosen": str(a + b), "rejected": str(a + b + 1)} for a in range(6) for b in range(6)]

pytestmark = pytest.mark.usefixtures("one_thread")


def _sft_cfg(out, data=None):
    return SFTConfig(model=ModelConfig(name=MODEL), data=data or DataConfig(), optim=OptimConfig(lr=1e-2),
                     train=TrainConfig(out=str(out), max_steps=2, progress=False),
                     sft=SFTOptions(sequences_per_step=8, sequences_per_microbatch=8))


def _losses(trainer, n=2):
    return [trainer.train_step()["loss"] for _ in range(n)]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_sft_on_a_list_a_dataset_and_a_file_trains_identically(tmp_path):
    f = _write_jsonl(tmp_path / "rows.jsonl", ROWS)
    from_file = _losses(SFTTrainer(_sft_cfg(tmp_path / "a", DataConfig(path=str(f), eval_rows=0))))
    from_list = SFTTrainer(_sft_cfg(tmp_path / "b"), train_data=ROWS, eval_data=ROWS[:4])
    assert len(from_list.train_examples) == len(ROWS) and len(from_list.eval_examples) == 4
    assert _losses(from_list) == pytest.approx(from_file, abs=1e-6)
    from_dataset = _losses(SFTTrainer(_sft_cfg(tmp_path / "c"), train_data=datasets.Dataset.from_list(ROWS)))
    assert from_dataset == pytest.approx(from_file, abs=1e-6)
    from_path = SFTTrainer(_sft_cfg(tmp_path / "d"), train_data=f)  # a path is --data
    assert from_path.cfg.data.path == str(f) and _losses(from_path) == pytest.approx(from_file, abs=1e-6)
    assert from_file[1] < from_file[0]  # it trains


def test_in_memory_rows_are_not_mutated_and_the_run_folder_records_their_origin(tmp_path, capsys):
    rows = [dict(r) for r in ROWS]
    trainer = SFTTrainer(_sft_cfg(tmp_path / "run"), train_data=rows)
    assert rows == ROWS
    trainer.train()
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "path: python:train_data" in saved and "task:addition" not in saved
    # the CLI cannot resume it silently on the default data: it asks for the rows
    capsys.readouterr()
    assert main(["sft", "--out", str(tmp_path / "run"), "--resume", "--max-steps", "3"]) == 2
    err = capsys.readouterr().err
    assert "python:train_data" in err and "train_data=" in err


def test_bad_rows_from_python_name_the_row_and_field(tmp_path):
    bad = ROWS[:3] + [{"prompt": "", "completion": "x"}]
    with pytest.raises(DataError, match=r"^train_data\[3\]: field 'prompt': empty string"):
        SFTTrainer(_sft_cfg(tmp_path / "a"), train_data=bad)
    with pytest.raises(DataError, match=r"^eval_data\[1\]: field 'completion': expected a string"):
        SFTTrainer(_sft_cfg(tmp_path / "b"), train_data=ROWS, eval_data=[ROWS[0], {"prompt": "q", "completion": 3}])
    with pytest.raises(DataError, match=r"^train_data\[2\]: expected a dict"):
        SFTTrainer(_sft_cfg(tmp_path / "c"), train_data=ROWS[:2] + ["not a row"])
    ds = datasets.Dataset.from_list(ROWS[:4] + [{"prompt": "q", "completion": " ", "level": 0}])
    with pytest.raises(DataError, match=r"^train_data\[4\]: field 'completion': empty string"):
        SFTTrainer(_sft_cfg(tmp_path / "d"), train_data=ds)
    with pytest.raises(DataError, match=r"^train_data\[1\]: field 'rejected': identical to 'chosen'"):
        PreferenceTrainer(PreferenceConfig(model=ModelConfig(name=MODEL), train=TrainConfig(out=str(tmp_path / "e"))),
                          train_data=[PAIRS[0], {**PAIRS[1], "rejected": PAIRS[1]["chosen"]}])


def test_model_by_name_or_as_objects(tmp_path, tiny):
    named = SFTTrainer(_sft_cfg(tmp_path / "a", DataConfig(path="task:addition")), model="tiny-llama:d=32,l=2,h=4",
                       train_data=ROWS)
    assert named.cfg.model.name == "tiny-llama:d=32,l=2,h=4" and named.model.config.num_attention_heads == 4
    model, tok = tiny
    given = SFTTrainer(_sft_cfg(tmp_path / "b"), model=model, tokenizer=tok, train_data=ROWS)
    assert given.model is model


def _pref_cfg(out, **kw):
    return PreferenceConfig(model=ModelConfig(name=MODEL), optim=OptimConfig(lr=1e-2), beta=0.5,
                            train=TrainConfig(out=str(out), max_steps=3, progress=False),
                            pref=PreferenceOptions(pairs_per_step=8, pairs_per_microbatch=8, eval_before=False), **kw)


def test_dpo_on_pairs_from_python_uses_them_whole_and_evaluates_on_eval_data(tmp_path):
    f = _write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    from_file = PreferenceTrainer(_pref_cfg(tmp_path / "a", data=DataConfig(path=str(f), eval_rows=0)))
    trainer = PreferenceTrainer(_pref_cfg(tmp_path / "b"), train_data=PAIRS, eval_data=PAIRS[:5])
    assert len(trainer.items) == len(PAIRS) and len(trainer.eval_pairs) == 5  # no rows held out of train_data
    assert [trainer.train_step()["loss"] for _ in range(3)] == pytest.approx(
        [from_file.train_step()["loss"] for _ in range(3)], abs=1e-6)
    m = trainer.evaluate()
    assert m["eval/rewards/margin"] > 0  # three steps pushed the held-out chosen above rejected
    no_eval = PreferenceTrainer(_pref_cfg(tmp_path / "c"), train_data=datasets.Dataset.from_list(PAIRS))
    assert no_eval.eval_pairs == [] and len(no_eval.items) == len(PAIRS)


def test_reward_model_on_pairs_from_python(tmp_path):
    cfg = RewardConfig(model=ModelConfig(name=MODEL), optim=OptimConfig(lr=1e-2),
                       train=TrainConfig(out=str(tmp_path / "rm"), max_steps=4, progress=False),
                       rm=RewardOptions(pairs_per_step=12, pairs_per_microbatch=12))
    trainer = RewardTrainer(cfg, train_data=PAIRS[:24], eval_data=PAIRS[24:])
    assert len(trainer.pairs) == 24 and len(trainer.eval_pairs) == 12
    out = trainer.train()
    assert out["eval/pairs"] == 12 and (tmp_path / "rm" / "model" / "config.json").exists()
    with pytest.raises(DataError, match=r"^eval_data\[1\]: field 'rejected': empty string"):
        RewardTrainer(RewardConfig(model=ModelConfig(name=MODEL), train=TrainConfig(out=str(tmp_path / "rm2"))),
                      train_data=PAIRS, eval_data=[PAIRS[0], {"prompt": "x", "chosen": "y", "rejected": ""}])
    assert torch.isfinite(torch.tensor(out["loss"]))


RL_ROWS = [{"prompt": f"{a}+{b}=", "answer": str(a + b), "level": a} for a in range(4) for b in range(4)]


def _rl_cfg(out, data=None):
    from posttrain.configs import RLConfig, RLOptions

    return RLConfig(algo="grpo", model=ModelConfig(name=MODEL), data=data or DataConfig(eval_rows=4),
                    optim=OptimConfig(lr=1e-3, schedule="constant"),
                    train=TrainConfig(out=str(out), max_steps=1, progress=False),
                    rl=RLOptions(prompts_per_step=4, samples_per_prompt=2, max_new_tokens=3, show_every=0))


def _first_step(trainer):
    m = trainer.step()
    return {k: m[k] for k in ("reward_mean", "loss", "grad_norm", "completion_tokens_mean")}


def test_rl_on_a_list_a_dataset_and_a_file_gives_the_same_first_step(tmp_path):
    from posttrain.trainers.rl import RLTrainer

    f = _write_jsonl(tmp_path / "prompts.jsonl", RL_ROWS)
    from_file = _first_step(RLTrainer(_rl_cfg(tmp_path / "a", DataConfig(path=str(f), eval_rows=4))))
    from_list = RLTrainer(_rl_cfg(tmp_path / "b"), train_data=RL_ROWS, eval_data=RL_ROWS[:3])
    assert from_list.cfg.data.path == "python:train_data" and len(from_list.rows) == len(RL_ROWS)
    assert len(from_list.eval_rows) == 3 and from_list.task is None
    assert _first_step(from_list) == pytest.approx(from_file, abs=1e-6)
    from_dataset = RLTrainer(_rl_cfg(tmp_path / "c"), train_data=datasets.Dataset.from_list(RL_ROWS))
    assert from_dataset.eval_rows == []  # no eval_data: no slice of the training rows is held out
    assert _first_step(from_dataset) == pytest.approx(from_file, abs=1e-6)


def test_rl_bad_rows_from_python_name_the_row_and_field(tmp_path):
    from posttrain.trainers.rl import RLTrainer

    with pytest.raises(DataError, match=r"^train_data\[2\]: field 'prompt': empty string"):
        RLTrainer(_rl_cfg(tmp_path / "a"), train_data=RL_ROWS[:2] + [{"prompt": " ", "answer": "1"}])
    with pytest.raises(DataError, match=r"^eval_data\[1\]: field 'prompt'"):
        RLTrainer(_rl_cfg(tmp_path / "b"), train_data=RL_ROWS, eval_data=[RL_ROWS[0], {"prompt": 5, "answer": "1"}])


def _stepwise(n):
    return [{"prompt": "check", "completions": [f"{10 + i} ok", f"{20 + i} {'ok' if i % 2 else 'no'}"],
             "labels": [1.0, float(i % 2)]} for i in range(n)]


def _prm_cfg(out, data=None):
    from posttrain.configs import PRMConfig, PRMOptions

    return PRMConfig(model=ModelConfig(name="tiny-llama:d=32,l=1,h=2"), data=data or DataConfig(max_length=64),
                     optim=OptimConfig(lr=1e-2, schedule="constant"),
                     train=TrainConfig(out=str(out), max_steps=2, progress=False),
                     prm=PRMOptions(sequences_per_step=8, sequences_per_microbatch=8, eval_share=0.0))


def test_prm_on_a_list_a_dataset_and_a_file_trains_identically(tmp_path):
    from posttrain.trainers.prm import PRMTrainer

    rows = _stepwise(16)
    f = _write_jsonl(tmp_path / "steps.jsonl", rows)
    from_file = _losses(PRMTrainer(_prm_cfg(tmp_path / "a", DataConfig(path=str(f), max_length=64))))
    from_list = PRMTrainer(_prm_cfg(tmp_path / "b"), train_data=rows, eval_data=_stepwise(3))
    assert len(from_list.train_set) == 16 and len(from_list.eval_set) == 3
    assert _losses(from_list) == pytest.approx(from_file, abs=1e-6)
    assert set(from_list.evaluate()) == {"eval/loss", "eval/step_accuracy"}
    from_dataset = PRMTrainer(_prm_cfg(tmp_path / "c"), train_data=datasets.Dataset.from_list(rows))
    assert _losses(from_dataset) == pytest.approx(from_file, abs=1e-6)
    with pytest.raises(DataError, match=r"^train_data\[1\]: field 'labels'"):
        PRMTrainer(_prm_cfg(tmp_path / "d"), train_data=[rows[0], {**rows[1], "labels": [1.0]}])
    with pytest.raises(DataError, match=r"^eval_data\[0\]: field 'completions'"):
        PRMTrainer(_prm_cfg(tmp_path / "e"), train_data=rows, eval_data=[{**rows[0], "completions": "one step"}])
