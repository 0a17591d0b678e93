"""A TRL-style reward `fn(completions, prompts=None, **kwargs)` in RL on your own file: the dataset's
columns arrive as keywords, aligned with the completions (each prompt's row repeated per sample)."""
import json

import pytest

from posttrain.configs import DataConfig, ModelConfig, OptimConfig, RLConfig, RLOptions, TrainConfig
from posttrain.trainers.rl import RLTrainer

MODEL = "tiny-llama:d=32,l=2,h=2"
pytestmark = pytest.mark.usefixtures("one_thread")


def _trainer(tmp_path, rows, fns):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = RLConfig(algo="grpo", model=ModelConfig(name=MODEL), data=DataConfig(path=str(path), eval_rows=0),
                   optim=OptimConfig(lr=1e-3, schedule="constant"),
                   train=TrainConfig(out=str(tmp_path / "rl"), max_steps=1, progress=False),
                   rl=RLOptions(prompts_per_step=3, samples_per_prompt=2, max_new_tokens=3, show_every=0))
    return RLTrainer(cfg, reward_fns=fns if isinstance(fns, list) else [(fns, 1.0)])


def test_dataset_columns_arrive_as_keywords(tmp_path):
    rows = [{"prompt": f"{a}+{a}=", "target": str(2 * a), "level": a, "tags": ["x"] * a} for a in range(1, 4)]
    calls = []

    def reward(completions, prompts=None, **kwargs):  # TRL's documented signature
        calls.append(dict(kwargs, completions=completions, prompts=prompts))
        return [float(len(c)) for c in completions]

    trainer = _trainer(tmp_path, rows, reward)
    m = trainer.step()
    (kw,) = calls
    n = len(kw["completions"])
    assert n == 6 and all(isinstance(c, str) for c in kw["completions"])
    by_prompt = {r["prompt"]: r for r in rows}
    assert len(kw["prompts"]) == n and set(kw["prompts"]) <= set(by_prompt)
    for key in ("target", "level", "tags"):  # each column, aligned with its completion's prompt
        assert kw[key] == [by_prompt[p][key] for p in kw["prompts"]], key
    assert [kw["prompts"].count(p) for p in set(kw["prompts"])] == [2] * len(set(kw["prompts"]))  # 2 samples each
    assert m["reward_mean"] == pytest.approx(sum(len(c) for c in kw["completions"]) / n)


def test_conversational_prompts_give_trl_message_lists(tmp_path):
    rows = [{"prompt": [{"role": "user", "content": f"{a}+{a}="}], "target": str(2 * a)} for a in range(1, 4)]
    calls, builtin_calls = [], []

    def reward(completions, prompts=None, **kwargs):
        calls.append((prompts, completions))
        return [0.0] * len(completions)

    def builtin(prompts, completions, **kwargs):  # stands for a posttrain reward: defined in a posttrain module
        builtin_calls.append((prompts, completions))
        return [0.0] * len(completions)

    builtin.__module__ = "posttrain.rewards.fake"
    _trainer(tmp_path, rows, [(reward, 1.0), (builtin, 1.0)]).step()
    prompts, completions = calls[0]
    assert len(prompts) == len(completions) == 6
    assert all(p in [r["prompt"] for r in rows] for p in prompts)  # the message list as the user gave it
    assert all(isinstance(c, list) and len(c) == 1 and c[0]["role"] == "assistant" and isinstance(c[0]["content"], str)
               for c in completions)
    text_prompts, texts = builtin_calls[0]  # built-in rewards keep reading text
    assert text_prompts == [p[0]["content"] for p in prompts] and texts == [c[0]["content"] for c in completions]


def test_plain_text_prompts_stay_text_next_to_conversational_ones():
    from posttrain.data import load_examples
    from posttrain.rollout import Completion
    from posttrain.trainers.rl_batch import score

    rows, _ = load_examples([{"prompt": "1+1=", "answer": "2"}, {"prompt": [{"role": "user", "content": "2+2="}], "answer": "4"}],
                            kind="verifiable")
    seen = []

    def reward(completions, prompts, **kwargs):
        seen.append((prompts, completions))
        return [1.0] * len(completions)

    comps = [Completion(text=t, token_ids=[1], logprobs=[0.0], finish_reason="stop") for t in ("2", "4")]
    out = score([(reward, 1.0)], rows, comps, 10.0)
    assert out.total.tolist() == [1.0, 1.0]
    (prompts, completions), = seen
    assert prompts == ["1+1=", [{"role": "user", "content": "2+2="}]]
    assert completions == ["2", [{"role": "assistant", "content": "4"}]]
