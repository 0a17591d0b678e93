"""PRM: data conversion and validation, step encoding, the head, Math-Shepherd labels on a scripted
engine, a tiny training run that learns, ProcessBench F1, the scorer and dense RL rewards."""
import re

import pytest
import torch

from posttrain.data import DataError, load_examples
from posttrain.eval.processbench import baseline_f1, first_error, load_processbench, processbench_f1
from posttrain.models import build_char_tokenizer
from posttrain.models.prm import PRMScorer, ProcessRewardModel, collate_steps, encode_steps, load_prm, split_token_steps
from posttrain.rewards.prm import prm_step_rewards
from posttrain.rollout.base import Completion
from posttrain.trainers.common import DataConfig, ModelConfig, OptimConfig, TrainConfig
from posttrain.trainers.prm import PRMConfig, PRMOptions, PRMTrainer, auto_label, prm800k_rows


def test_prm800k_rows_conversion_and_bad_rating():
    rows = [
        {"instruction": "Q1", "responses": [], "next_response": "s1", "rating": 1.0},
        {"instruction": "Q1", "responses": ["s1"], "next_response": "s2", "rating": -1.0},
        {"instruction": "Q2", "responses": ["t1", "t2"], "next_response": "t3", "rating": 0.0},
    ]
    out, skipped = prm800k_rows(rows, neutral_label=0.5)
    assert skipped == 0
    assert out[1] == {"prompt": "Q1", "completions": ["s1", "s2"], "labels": [1.0, 0.0]}
    assert out[2]["labels"] == [1.0, 1.0, 0.5]
    bad = rows + [{"instruction": "Q3", "responses": [], "next_response": "x", "rating": float("nan")}]
    with pytest.raises(DataError, match=r"rows\[3\]: field 'rating'"):
        prm800k_rows(bad)
    assert prm800k_rows(bad, on_error="skip")[1] == 1


def test_stepwise_label_count_mismatch_is_named_error_or_counted_skip():
    rows = [{"prompt": "p", "completions": ["a", "b"], "labels": [1, 0]},
            {"prompt": "p", "completions": ["a", "b", "c"], "labels": [1, 0]}]
    with pytest.raises(DataError, match=r"rows\[1\]: field 'labels': 2 labels for 3 steps"):
        load_examples(rows, kind="stepwise")
    kept, report = load_examples(rows, kind="stepwise", on_error="skip")
    assert len(kept) == 1 and sum(report.skipped.values()) == 1


def test_encode_steps_positions_are_separators_and_collate():
    tok = build_char_tokenizer()
    enc = encode_steps(tok, "1+2", ["1+2+0=3 c0", "#### 3\n"], "\n")
    nl = tok.convert_tokens_to_ids("\n")
    assert [enc.input_ids[p] for p in enc.step_positions] == [nl, nl]
    assert tok.decode(enc.input_ids).endswith("<|assistant|>1+2+0=3 c0\n#### 3\n")
    short = encode_steps(tok, "1+2", ["aaaa", "bbbb"], "\n", max_length=len(enc.input_ids) - 12)
    assert len(short.step_positions) == 1
    b = collate_steps([enc, short], tok.pad_token_id, [[1.0, 0.0], [0.5]])
    assert b["step_mask"].tolist() == [[True, True], [True, False]] and b["step_labels"][1, 0] == 0.5


def test_step_logits_batched_equal_one_by_one(tiny):
    model, tok = tiny
    prm = ProcessRewardModel(model).eval()
    encs = [encode_steps(tok, "12+3", ["a", "bb", "c"]), encode_steps(tok, "1+1", ["xyz"])]
    b = collate_steps(encs, tok.pad_token_id)
    with torch.no_grad():
        both = prm.step_logits(b["input_ids"], b["attention_mask"], b["step_positions"])
        for i, e in enumerate(encs):
            one = collate_steps([e], tok.pad_token_id)
            alone = prm.step_logits(one["input_ids"], one["attention_mask"], one["step_positions"])[0]
            torch.testing.assert_close(both[i, : len(e.step_positions)], alone, atol=1e-5, rtol=1e-5)


def test_likelihood_features_are_step_and_prefix_log_likelihoods(tiny):
    model, tok = tiny
    prm = ProcessRewardModel(model, likelihood_features=True).eval()
    encs = [encode_steps(tok, "12+3", ["ab", "c"]), encode_steps(tok, "1+1", ["xyz", "q", "rr"])]
    b = collate_steps(encs, tok.pad_token_id)
    with torch.no_grad():
        hidden = prm.backbone()(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
        feats = prm.step_likelihood(hidden, b["input_ids"], b["step_positions"], b["prompt_lengths"])
        for i, e in enumerate(encs):
            ids = torch.tensor([e.input_ids])
            lp = model(ids).logits[0, :-1].log_softmax(-1).gather(-1, ids[0, 1:, None])[:, 0]  # lp[j]: ids[j + 1]
            first = e.prompt_length
            for k, pos in enumerate(e.step_positions):
                start = first if k == 0 else e.step_positions[k - 1] + 1
                want = torch.stack([lp[start - 1 : pos].sum(), lp[first - 1 : pos].sum(), lp[first - 1 : pos].min()])
                torch.testing.assert_close(feats[i, k], want, atol=1e-4, rtol=1e-4)
        both = prm.step_logits(b["input_ids"], b["attention_mask"], b["step_positions"], prompt_lengths=b["prompt_lengths"])
        for i, e in enumerate(encs):
            one = collate_steps([e], tok.pad_token_id)
            alone = prm.step_logits(one["input_ids"], one["attention_mask"], one["step_positions"], prompt_lengths=one["prompt_lengths"])
            torch.testing.assert_close(both[i, : len(e.step_positions)], alone[0], atol=1e-5, rtol=1e-5)
    assert encs[0].prompt_length == len(encode_steps(tok, "12+3", []).input_ids)
    with pytest.raises(ValueError, match="prompt_lengths"):
        prm.step_logits(b["input_ids"], b["attention_mask"], b["step_positions"])


def test_frozen_backbone_likelihood_prm_trains_head_only_and_reloads(tmp_path):
    from posttrain.models import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer("tiny-llama:d=32,l=1,h=2", seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = PRMConfig(data=DataConfig(path="<rows>", max_length=64), optim=OptimConfig(lr=1e-2, warmup_steps=1),
                    train=TrainConfig(out=str(tmp_path), max_steps=3, progress=False),
                    prm=PRMOptions(sequences_per_step=8, sequences_per_microbatch=4, likelihood_features=True, freeze_backbone=True))
    tr = PRMTrainer(cfg, model, tok, rows=_rows(20))
    head = tr.prm.head.weight.detach().clone()
    tr.train()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert tr.prm.head.weight.shape[1] == 32 + 3 and not torch.equal(tr.prm.head.weight, head)
    prm, tok2 = load_prm(tmp_path)
    assert prm.likelihood_features
    s1 = PRMScorer(tr.prm, tok).score_steps("check", [["12 ok", "34 no"], ["5 ok"]])
    s2 = PRMScorer(prm, tok2).score_steps("check", [["12 ok", "34 no"], ["5 ok"]])
    assert s1 == [pytest.approx(x, abs=1e-5) for x in s2]


class ShepherdEngine:
    """Solutions: 'a\\nb\\n#### 5' (right) and 'a\\nz\\n#### 7' (wrong). From a prefix ending 'a\\n',
    even rollouts finish right, odd ones wrong; after 'b\\n' all right; after 'z\\n' all wrong."""

    def __init__(self, tok):
        self.tok = tok

    def _c(self, text):
        ids = self.tok.encode(text, add_special_tokens=False) + [self.tok.eos_token_id]
        return Completion(ids, [0.0] * len(ids), "stop", text)

    def generate(self, prompts, params):
        out = []
        for ids in prompts:
            ctx = self.tok.decode(ids, skip_special_tokens=False)
            if ctx.endswith("<|assistant|>"):
                out.append([self._c(["a\nb\n#### 5", "a\nz\n#### 7"][j % 2]) for j in range(params.n)])
            elif ctx.endswith("a\n"):
                out.append([self._c(["b\n#### 5", "q\n#### 6"][j % 2]) for j in range(params.n)])
            elif ctx.endswith("b\n"):
                out.append([self._c("#### 5") for _ in range(params.n)])
            else:
                out.append([self._c("#### 7") for _ in range(params.n)])
        return out


def test_math_shepherd_auto_labels_soft_and_hard():
    tok = build_char_tokenizer()
    verify = lambda text, ans: re.search(r"#### (\d+)", text).group(1) == ans  # noqa: E731
    rows = [{"prompt": [{"role": "user", "content": "2+3"}], "answer": "5"}]
    opts = PRMOptions(solutions_per_problem=2, rollouts_per_step=4)
    out = auto_label(ShepherdEngine(tok), tok, rows, verify, opts)
    assert [r["completions"] for r in out] == [["a", "b", "#### 5"], ["a", "z", "#### 7"]]
    assert [r["labels"] for r in out] == [[0.5, 1.0, 1.0], [0.5, 0.0, 0.0]]
    hard = auto_label(ShepherdEngine(tok), tok, rows, verify, PRMOptions(solutions_per_problem=2, rollouts_per_step=4, labels="hard"))
    assert [r["labels"] for r in hard] == [[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]


class WrongSolver(ShepherdEngine):
    """A weaker generator: every solution is 'a\nz\n#### 7' (the completer never produces it alone)."""

    def generate(self, prompts, params):
        return [[self._c("a\nz\n#### 7") for _ in range(params.n)] for _ in prompts]


def test_math_shepherd_separate_generator_and_completer():
    tok = build_char_tokenizer()
    verify = lambda text, ans: re.search(r"#### (\d+)", text).group(1) == ans  # noqa: E731
    rows = [{"prompt": [{"role": "user", "content": "2+3"}], "answer": "5"}]
    opts = PRMOptions(solutions_per_problem=2, rollouts_per_step=4)
    out = auto_label(ShepherdEngine(tok), tok, rows, verify, opts, solution_engine=WrongSolver(tok))
    # solutions come from the generator, the step labels from the completer's rollouts
    assert [r["completions"] for r in out] == [["a", "z", "#### 7"]] * 2
    assert [r["labels"] for r in out] == [[0.5, 0.0, 0.0]] * 2


def test_prm_task_labels_use_solution_policy(tmp_path):
    """`prm.solution_policy` samples the labelled solutions (`prm.policy` rolls out from their prefixes)."""
    import json

    from posttrain.models import load_model_and_tokenizer
    from posttrain.models.prm import prompt_ids
    from posttrain.rollout import HFEngine, SamplingParams
    from posttrain.tasks import load_task_spec
    from posttrain.trainers.prm import load_prm_rows

    for name, seed in (("gen", 1), ("comp", 2)):
        m, t = load_model_and_tokenizer("tiny-llama:d=32,l=1,h=2", seed=seed)
        m.save_pretrained(tmp_path / name)
        t.save_pretrained(tmp_path / name)
    opts = PRMOptions(policy=str(tmp_path / "comp"), solution_policy=str(tmp_path / "gen"), label_problems=3,
                      solutions_per_problem=2, rollouts_per_step=2, label_max_new_tokens=12)
    cfg = PRMConfig(model=ModelConfig(name=str(tmp_path / "comp")), data=DataConfig(path="task:addition:digits=1,scratchpad=2"),
                    train=TrainConfig(out=str(tmp_path / "run")), prm=opts)
    load_prm_rows(cfg, seed=0)
    written = [json.loads(line) for line in open(tmp_path / "run" / "labels.jsonl")]
    rows = load_task_spec("addition:digits=1,scratchpad=2").rl_rows(3, seed=11)
    for name, is_source in (("gen", True), ("comp", False)):
        model, tok = load_model_and_tokenizer(str(tmp_path / name))
        sols = HFEngine(model, tok).generate([prompt_ids(tok, r["prompt"], True) for r in rows],
                                             SamplingParams(n=2, temperature=1.0, max_new_tokens=12, seed=0))
        steps = [s for g in sols for c in g if (s := split_token_steps(tok, list(c.token_ids), "\n")[0])]
        assert ([r["completions"] for r in written] == steps) == is_source
    assert all(len(r["labels"]) == len(r["completions"]) for r in written)


def _rows(n, seed=0):
    """Steps '<digits> ok' (label 1) or '<digits> no' (label 0), three per row."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        good = (torch.rand(3, generator=g) < 0.5).tolist()
        digits = torch.randint(10, 99, (3,), generator=g).tolist()
        rows.append({"prompt": "check", "completions": [f"{d} {'ok' if ok else 'no'}" for d, ok in zip(digits, good)],
                     "labels": [float(ok) for ok in good]})
    return rows


def test_tiny_prm_learns_to_check_steps(tmp_path):
    from posttrain.models import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer("tiny-llama:d=32,l=1,h=2", seed=0)
    cfg = PRMConfig(data=DataConfig(path="<rows>", max_length=64), optim=OptimConfig(lr=1e-2, warmup_steps=3),
                    train=TrainConfig(out=str(tmp_path), max_steps=40, progress=False),
                    prm=PRMOptions(sequences_per_step=32, sequences_per_microbatch=16, eval_share=0.2))
    tr = PRMTrainer(cfg, model, tok, rows=_rows(200))
    before = tr.evaluate()
    res = tr.train()
    assert res["eval/loss"] < before["eval/loss"] - 0.3
    assert res["eval/step_accuracy"] > 0.95
    prm, tok2 = load_prm(tmp_path)  # the run folder's latest checkpoint
    s1 = PRMScorer(tr.prm, tok).score_steps("check", [["12 ok", "34 no"]])
    s2 = PRMScorer(prm, tok2).score_steps("check", [["12 ok", "34 no"]])
    assert s1[0] == pytest.approx(s2[0], abs=1e-5) and s1[0][0] > 0.5 > s1[0][1]


def test_processbench_f1_and_loader(tmp_path):
    m = processbench_f1([-1, 2, 0, -1, 1], [-1, 2, 1, 0, -1])
    assert m["error_acc"] == pytest.approx(1 / 3) and m["correct_acc"] == pytest.approx(1 / 2)
    assert m["f1"] == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    assert baseline_f1([-1, 2, 1, 0, -1]) == 0.0
    assert first_error([0.9, 0.7, 0.4, 0.9]) == 2 and first_error([0.9, 0.6]) == -1
    path = tmp_path / "pb.json"
    path.write_text('[{"problem": "p", "steps": ["a", "b"], "label": 1}, {"problem": "q", "steps": ["a"], "label": 3}]')
    with pytest.raises(DataError, match=r"row 2: field 'label'"):
        load_processbench(path)
    assert load_processbench(path, limit=1)[0]["label"] == 1


class FixedScorer:
    def __init__(self):
        self.calls = []

    def score_steps(self, prompt, steps_list):
        self.calls.append((prompt, steps_list))
        return [[0.1 * (i + 1) for i in range(len(s))] for s in steps_list]


def test_prm_step_rewards_land_on_step_end_tokens():
    tok = build_char_tokenizer()
    texts = ["ab\ncd\n#### 3", "x\n"]
    ids = [tok.encode(t, add_special_tokens=False) + [tok.eos_token_id] for t in texts]
    scorer = FixedScorer()
    out = prm_step_rewards(scorer, ["p", "p"], texts, ids, tok, "\n", baseline=0.05)
    assert [i for i, _ in out[0]] == [2, 5, 11] and [i for i, _ in out[1]] == [1]
    assert [r for _, r in out[0]] == pytest.approx([0.05, 0.15, 0.25])
    assert len(scorer.calls) == 1 and scorer.calls[0][1] == [["ab", "cd", "#### 3"], ["x"]]
    assert split_token_steps(tok, ids[0], "\n")[1] == [3, 6, 12]
    with pytest.raises(ValueError, match="must be equal"):
        prm_step_rewards(scorer, ["p"], texts, ids, tok)


def test_prm_saves_every_n_steps_and_resumes_exactly(tmp_path):
    """save_every and --resume are honoured: 2 steps, saved, then resumed to 5 equals 5 straight steps."""
    import json

    from posttrain.checkpoint import checkpoint_steps
    from posttrain.models import load_model_and_tokenizer

    def make(out, steps, resume=False):
        model, tok = load_model_and_tokenizer("tiny-llama:d=32,l=1,h=2", seed=0)
        cfg = PRMConfig(data=DataConfig(path="<rows>", max_length=64), optim=OptimConfig(lr=1e-2, schedule="constant"),
                        train=TrainConfig(out=str(out), max_steps=steps, progress=False, save_every=2, resume=resume),
                        prm=PRMOptions(sequences_per_step=8, sequences_per_microbatch=4, eval_share=0.0))
        return PRMTrainer(cfg, model, tok, rows=_rows(40))

    make(tmp_path / "straight", 5).train()
    make(tmp_path / "r", 2).train()
    assert checkpoint_steps(tmp_path / "r") == [2]
    make(tmp_path / "r", 5, resume=True).train()
    assert checkpoint_steps(tmp_path / "r") == [4, 5]

    def losses(out):
        return [(r["step"], r["loss"]) for r in map(json.loads, open(out / "metrics.jsonl")) if "loss" in r]

    got, want = losses(tmp_path / "r"), losses(tmp_path / "straight")
    assert [s for s, _ in got] == [1, 2, 3, 4, 5]
    assert [l for _, l in got] == pytest.approx([l for _, l in want], abs=1e-6)
