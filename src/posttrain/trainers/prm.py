"""`posttrain prm`: train a process reward model with per-step BCE on stepwise data.

Data (``--data``):
- a stepwise file (prompt, completions = steps, labels = one label in [0, 1] per step), validated by
  `posttrain.data.load_examples` (a row whose label count differs from its step count is an error
  naming the file, row and field, or a counted skip with ``--data.on_error skip``);
- PRM800K phase-1 parquet rows (instruction, responses = earlier steps, next_response, rating), one
  stepwise row per rated step (`prm800k_rows`): Lightman et al. 2023, "Let's Verify Step by Step";
- ``task:SPEC`` (e.g. ``task:addition:scratchpad=1``): steps labelled automatically, Math-Shepherd
  style (Wang et al. 2024, "Math-Shepherd: Verify and Reinforce LLMs Step-by-step without Human
  Annotations"): a generator samples solutions; from the prefix ending at each step a completer
  rolls out N completions and the step's soft label is the share that reach the right answer
  (their "SE"; hard label, their "HE": 1 if any does). The final step's label is the solution's
  own correctness. The completer is ``--prm.policy`` (default: ``--model``); the generator is
  ``--prm.solution_policy`` (default: the completer). Math-Shepherd also separates the two (a
  fine-tuned "completer" rolls out from other models' solutions): a stronger completer gives more
  accurate labels, and a generator equal to the policy that will be searched shows the PRM the
  errors it has to catch.

Model: `posttrain.models.prm.ProcessRewardModel` (a backbone from ``--model`` plus a linear head at
each step's separator). Loss: `losses.reward.prm_step_loss`, summed over steps and divided by the
step's total step count, so micro-batch splits give the same update.

Options beyond the papers: ``--prm.likelihood_features`` (the head also reads each step's and
prefix's log-likelihood under the backbone, see `posttrain.models.prm`) and
``--prm.freeze_backbone`` (train the head only: a probe of a backbone that can already solve the task).

Departures: PRM800K rows carry only the rating of their last step; the earlier steps (those the
rater continued from) are labelled 1, and neutral ratings (0) map to ``--prm.neutral_label``
(default 1: "not an error", the convention first-error benchmarks such as ProcessBench use).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from posttrain.config import ConfigError
from posttrain.checkpoint import load_state, load_weights_into, restore_checkpoint
from posttrain.errors import UserError
from posttrain.runtime.worker import PolicyWorker
from posttrain.configs import PRMConfig, PRMOptions  # noqa: F401  (re-exported)
from posttrain.data import DataError, load_examples, read_rows
from posttrain.logging import MetricsLogger, console, warn
from posttrain.losses.reward import prm_step_loss
from posttrain.models.prm import PRMScorer, ProcessRewardModel, collate_steps, encode_steps, prompt_ids, split_token_steps
from posttrain.rollout import HFEngine, SamplingParams
from posttrain.trainers.common import (
    IN_MEMORY, DataOrder, NullLogger, _missing_rows, bind_inputs, check_global_batch, print_report, save_run_checkpoint,
    seed_everything, start_run, training_loop,
)

__all__ = ["PRMOptions", "PRMConfig", "PRMTrainer", "prm800k_rows", "auto_label", "task_prm_rows", "split_token_steps", "run"]


_RATING_COLUMNS = {"instruction", "next_response", "rating"}


def prm800k_rows(source, neutral_label: float = 1.0, limit: int = 0, on_error: str = "raise") -> tuple[list[dict], int]:
    """Stepwise rows from PRM800K phase-1 "stepwise-critic" rows, and the number of rows skipped."""
    rows = read_rows(source)
    if limit > 0:
        rows = rows[:limit]
    out, skipped = [], 0
    for r in rows:
        d = r.data
        try:
            rating = d.get("rating")
            if not isinstance(rating, (int, float)) or rating != rating or rating not in (-1, 0, 1):
                raise DataError(f"{r.where('rating')}: expected -1, 0 or 1, got {rating!r}")
            prior = d.get("responses") if d.get("responses") is not None else []
            if not isinstance(prior, list) or not all(isinstance(s, str) for s in prior):
                raise DataError(f"{r.where('responses')}: expected a list of earlier step strings")
            if not isinstance(d.get("next_response"), str) or not d["next_response"].strip():
                raise DataError(f"{r.where('next_response')}: expected a non-empty step string")
        except DataError:
            if on_error == "raise":
                raise
            skipped += 1
            continue
        last = {1: 1.0, 0: neutral_label, -1: 0.0}[int(rating)]
        out.append({"prompt": d["instruction"], "completions": [*prior, d["next_response"]],
                    "labels": [1.0] * len(prior) + [last]})
    return out, skipped


def auto_label(engine, tokenizer, rows: list[dict], verify, opts: PRMOptions, seed: int = 0,
               solution_engine=None) -> list[dict]:
    """Math-Shepherd labels (see the module docstring): rows {prompt, answer} -> stepwise rows.

    `solution_engine` samples the solutions (default: `engine`); `engine` rolls out from every step
    prefix. Both must share `tokenizer` (prefixes are passed as token ids)."""
    p_ids = [prompt_ids(tokenizer, r["prompt"], chat=True) for r in rows]
    sols = (solution_engine or engine).generate(p_ids, SamplingParams(n=opts.solutions_per_problem, temperature=opts.label_temperature,
                                                 max_new_tokens=opts.label_max_new_tokens, seed=seed))
    items, prefixes = [], []  # items: (row index, steps, ends, final correct); prefixes: (item, step, ids)
    for i, group in enumerate(sols):
        for c in group:
            steps, ends = split_token_steps(tokenizer, list(c.token_ids), opts.step_sep)
            if not steps:
                continue
            item = len(items)
            items.append((i, steps, ends, bool(verify(c.text, rows[i]["answer"]))))
            prefixes += [(item, k, p_ids[i] + list(c.token_ids[: ends[k]])) for k in range(len(steps) - 1)]
    outs = engine.generate([p for _, _, p in prefixes],
                           SamplingParams(n=opts.rollouts_per_step, temperature=opts.label_temperature,
                                          max_new_tokens=opts.label_max_new_tokens, seed=seed + 1))
    labels = [[0.0] * (len(s) - 1) + [float(ok)] for _, s, _, ok in items]
    for (item, k, pids), group in zip(prefixes, outs):
        i = items[item][0]
        head = tokenizer.decode(pids[len(p_ids[i]):], skip_special_tokens=True)
        share = sum(bool(verify(head + c.text, rows[i]["answer"])) for c in group) / len(group)
        labels[item][k] = share if opts.labels == "soft" else float(share > 0)
    return [{"prompt": rows[i]["prompt"], "completions": steps, "labels": lab, "answer": rows[i]["answer"]}
            for (i, steps, _, _), lab in zip(items, labels)]


def _is_prm800k(path: str) -> bool:
    if not path.endswith(".parquet"):
        return False
    import pyarrow.parquet as pq

    return _RATING_COLUMNS <= set(pq.read_schema(path).names)


def task_prm_rows(task, completer, tokenizer, opts: PRMOptions, seed: int = 0, generator=None,
                  out_dir: str | Path | None = None) -> list[dict]:
    """Math-Shepherd stepwise rows {prompt, completions, labels} for `opts.label_problems` of a
    built-in task's training problems: `generator` (a model; default: `completer`) samples the
    solutions, `completer` rolls out from their step prefixes (see the module docstring). The raw
    labels are also written to `out_dir/labels.jsonl` (reusable as a stepwise file) when given."""
    rows = task.rl_rows(opts.label_problems, seed=seed + 11)
    engine = HFEngine(completer, tokenizer, sequences_per_batch=256)
    solution_engine = HFEngine(generator, tokenizer, sequences_per_batch=256) if generator is not None else None
    raw = auto_label(engine, tokenizer, rows, task.verify, opts, seed, solution_engine=solution_engine)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "labels.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in raw)
    examples, _ = load_examples(raw, kind="stepwise")
    return [{"prompt": e.prompt, "completions": e.steps, "labels": e.step_labels} for e in examples]


def load_prm_rows(cfg: PRMConfig, seed: int = 0) -> list[dict]:
    """Stepwise rows for `cfg.data.path` (see the module docstring), validated by `load_examples`."""
    path, opts = cfg.data.path, cfg.prm
    if path.startswith(IN_MEMORY):  # a run trained on rows from Python, resumed without them
        raise _missing_rows(path)
    if path.startswith("task:"):
        from posttrain.models import load_model_and_tokenizer
        from posttrain.tasks import load_task_spec

        task = load_task_spec(path[len("task:"):])
        completer_name = opts.policy or cfg.model.name
        completer, ptok = load_model_and_tokenizer(completer_name, seed=seed)
        generator = None
        if opts.solution_policy and opts.solution_policy != completer_name:
            generator, gtok = load_model_and_tokenizer(opts.solution_policy, seed=seed)
            if gtok.get_vocab() != ptok.get_vocab():
                raise ConfigError(f"prm.solution_policy {opts.solution_policy} and the completer {completer_name} "
                                 "must share a tokenizer (step prefixes are passed as token ids)")
        console.print(f"prm: labelling {opts.label_problems} problems x {opts.solutions_per_problem} solutions from "
                      f"{opts.solution_policy or completer_name}, {opts.rollouts_per_step} rollouts per step with "
                      f"{completer_name} (Math-Shepherd)")
        return task_prm_rows(task, completer, ptok, opts, seed, generator, cfg.train.out)
    if _is_prm800k(path):
        raw, skipped = prm800k_rows(path, opts.neutral_label, cfg.data.train_rows, cfg.data.on_error)
        if skipped:
            warn(f"{path}: skipped {skipped} malformed PRM800K rows")
        examples, report = load_examples(raw, kind="stepwise", on_error=cfg.data.on_error)
        return [{"prompt": e.prompt, "completions": e.steps, "labels": e.step_labels} for e in examples]
    examples, report = load_examples(path, kind="stepwise", columns=cfg.data.columns,
                                     on_error=cfg.data.on_error, limit=cfg.data.train_rows)
    console.print(f"data: {report.summary()}")
    return [{"prompt": e.prompt, "completions": e.steps, "labels": e.step_labels} for e in examples]


def _stepwise_rows(source, cfg: PRMConfig, limit: int, name: str | None = None) -> list[dict]:
    """Stepwise rows {prompt, completions, labels} of a stepwise file or of rows from Python (`name`:
    what errors call them, ``train_data`` / ``eval_data``), validated by `load_examples`."""
    examples, report = load_examples(source, kind="stepwise", columns=cfg.data.columns, on_error=cfg.data.on_error,
                                     limit=limit, name=name)
    print_report(report)
    return [{"prompt": e.prompt, "completions": e.steps, "labels": e.step_labels} for e in examples]


class PRMTrainer:
    """A process reward model (see the module docstring): a backbone plus a linear head scoring each
    reasoning step, trained with per-step BCE; the saved folder is what ``--rl.prm_model`` and the
    search commands load.

    `cfg` holds every option (`PRMConfig`; the CLI builds the same object from YAML and flags).
    `model`: a name or folder (``"tiny-llama:d=32,l=2,h=2"``, a Hugging Face folder) or a causal LM
    module given with its `tokenizer`, the backbone; None loads ``cfg.model.name``.
    `train_data` / `eval_data`: a path (or ``task:NAME``, auto-labelled), a list of dicts or a
    ``datasets.Dataset`` of stepwise rows (``prompt``, ``completions`` = the steps, ``labels`` = one
    label in [0, 1] per step); they replace ``cfg.data.path`` / ``cfg.data.eval_path`` (see
    `posttrain.trainers.common.bind_inputs`). A bad row raises `DataError` naming it
    (``train_data[3]: field 'labels': ...``) before any model loads. The held-out rows are
    `eval_data` (or ``data.eval_path``) when given, else a ``prm.eval_share`` slice of file or task
    rows; in-memory training rows are used whole.
    `rows`: already validated stepwise dicts used instead of the data (split by ``prm.eval_share``).
    The run folder is ``cfg.train.out``.
    """

    def __init__(self, cfg: PRMConfig, model=None, tokenizer=None, rows: list[dict] | None = None, *,
                 train_data=None, eval_data=None):
        from posttrain.models import load_model_and_tokenizer

        cfg, model, train_rows, eval_rows = bind_inputs(cfg, model, train_data, eval_data)
        self.cfg = cfg
        self.rt, self.resume_from = start_run(cfg, "prm", (cfg.model.name, cfg.prm.policy, cfg.prm.solution_policy))
        check_global_batch(self.rt, "prm.sequences_per_step", cfg.prm.sequences_per_step)
        seed_everything(cfg.train.seed)
        # the data first: a bad row is reported before any model is loaded
        in_memory = train_rows is not None  # train_data rows are used whole (`bind_inputs`)
        if rows is None:
            rows = (_stepwise_rows(train_rows, cfg, cfg.data.train_rows, "train_data") if train_rows is not None
                    else load_prm_rows(cfg, cfg.train.seed))
        held_out = None  # explicit held-out rows (else a slice of file / task rows, below)
        if eval_rows is not None:
            held_out = _stepwise_rows(eval_rows, cfg, cfg.data.eval_rows, "eval_data")
        elif cfg.data.eval_path:
            if cfg.data.eval_path.startswith(IN_MEMORY):
                raise _missing_rows(cfg.data.eval_path)
            if cfg.data.eval_path.startswith("task:"):
                raise ConfigError(f"prm: data.eval_path '{cfg.data.eval_path}': held-out PRM rows come from a stepwise "
                                  "file (a task's rows are labelled from --data and split by prm.eval_share)")
            held_out = _stepwise_rows(cfg.data.eval_path, cfg, cfg.data.eval_rows)
        if model is None:
            model, tokenizer = load_model_and_tokenizer(cfg.model.name, seed=cfg.train.seed)
        self.tokenizer = tokenizer
        self.prm = ProcessRewardModel(model, cfg.prm.step_sep, chat=True, likelihood_features=cfg.prm.likelihood_features)
        if cfg.prm.freeze_backbone:
            self.prm.lm.requires_grad_(False)
        self.rows = rows
        if cfg.prm.labels not in ("soft", "hard"):
            raise ConfigError(f"prm.labels must be 'soft' or 'hard', got {cfg.prm.labels!r}")
        enc, labels = self._encode(rows, "")
        n_eval = int(len(enc) * cfg.prm.eval_share) if len(enc) > 10 and held_out is None and not in_memory else 0
        perm = torch.randperm(len(enc), generator=torch.Generator().manual_seed(cfg.train.seed)).tolist()
        self.eval_set = [(enc[j], labels[j]) for j in perm[:n_eval]]
        self.train_set = [(enc[j], labels[j]) for j in perm[n_eval:]]
        if held_out is not None:
            self.eval_set = list(zip(*self._encode(held_out, "held-out ")))
        if not self.train_set:
            raise DataError(f"{cfg.data.path}: no usable PRM training rows")
        self.run_dir = Path(cfg.train.out)
        if cfg.train.resume:  # the weights before the model is wrapped or sharded
            load_weights_into(self.prm.lm, self.resume_from)
            self.prm.head.load_state_dict(torch.load(self.resume_from / "prm_head.pt", weights_only=True))
        self.worker = PolicyWorker(self.prm, self.rt, None, cfg.optim, cfg.train.max_steps)
        self.train_model, self.model = self.worker.train_model, self.prm
        self.opt, self.sched = self.worker.opt, self.worker.sched
        self.order = DataOrder(len(self.train_set), cfg.train.seed)
        self.step = 0
        if cfg.train.resume:
            self._resume()
        self.logger = (MetricsLogger(self.run_dir, cfg.train.loggers, dataclasses.asdict(cfg), resume=cfg.train.resume)
                       if self.rt.is_main else NullLogger())

    def _encode(self, rows: list[dict], what: str) -> tuple[list, list]:
        """(encoded rows, their labels) of the rows with at least one step within data.max_length."""
        cfg = self.cfg
        enc = [encode_steps(self.tokenizer, r["prompt"], r["completions"], cfg.prm.step_sep, True, cfg.data.max_length)
               for r in rows]
        labels = [[float(x > 0) if cfg.prm.labels == "hard" else x for x in r["labels"]] for r in rows]
        kept = [i for i, e in enumerate(enc) if e.step_positions]
        cut = sum(len(enc[i].step_positions) < len(rows[i]["completions"]) for i in kept)
        if len(kept) < len(enc) or cut:
            warn(f"{len(enc) - len(kept)} {what}rows dropped (prompt alone exceeds data.max_length={cfg.data.max_length}), "
                 f"{cut} cut short")
        return [enc[i] for i in kept], [labels[i] for i in kept]

    def _batch(self, items):
        b = collate_steps([e for e, _ in items], self.tokenizer.pad_token_id or 0, [lab for _, lab in items])
        if self.rt.device.type != "cpu":
            b = {k: v.to(self.rt.device) if isinstance(v, torch.Tensor) else v for k, v in b.items()}
        return b

    def train_step(self) -> dict:
        """One optimizer step on ``prm.sequences_per_step`` rows (in micro-batches of
        ``prm.sequences_per_microbatch``, normalized by the step's total step count); returns
        ``loss``, ``step_accuracy``, ``grad_norm``, ``lr`` and ``sequences``."""
        c, rt = self.cfg.prm, self.rt
        items = rt.shard([self.train_set[i] for i in self.order.take(c.sequences_per_step)])  # this rank's share
        n_steps = int(rt.all_reduce_sum(sum(len(e.step_positions) for e, _ in items)))  # the global normalizer
        self.prm.train()
        total, acc = 0.0, 0.0
        starts = range(0, len(items), c.sequences_per_microbatch)
        for k, s in enumerate(starts):
            b = self._batch(items[s : s + c.sequences_per_microbatch])
            with self.worker.accumulate(last=k == len(starts) - 1):
                with rt.autocast():
                    logits = self.train_model(b["input_ids"], b["attention_mask"], b["step_positions"],
                                              prompt_lengths=b["prompt_lengths"]).float()
                loss, stats = prm_step_loss(logits, b["step_labels"], b["step_mask"])
                self.worker.backward(loss.sum() / n_steps)
            total += float(loss.detach().sum())
            acc += float(stats["accuracy"]) * float(stats["num_steps"])
        if rt.distributed:
            total, acc = rt.all_reduce_sum(torch.tensor([total, acc], dtype=torch.float64)).tolist()
        grad_norm, lr = self.worker.step(self.step, total / n_steps, self.cfg.optim.max_grad_norm)
        self.step += 1
        return {"loss": total / n_steps, "step_accuracy": acc / n_steps, "grad_norm": grad_norm, "lr": lr,
                "sequences": c.sequences_per_step}

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Per-step BCE and accuracy on the held-out rows (``eval/loss``, ``eval/step_accuracy``), plus
        ``processbench/*`` when ``prm.processbench`` is set; {} with neither."""
        out: dict = {}
        if self.eval_set:
            self.prm.eval()
            tot, acc, n = 0.0, 0.0, 0
            for s in range(0, len(self.eval_set), self.cfg.prm.sequences_per_microbatch):
                b = self._batch(self.eval_set[s : s + self.cfg.prm.sequences_per_microbatch])
                with self.rt.autocast():
                    logits = self.train_model(b["input_ids"], b["attention_mask"], b["step_positions"],
                                              prompt_lengths=b["prompt_lengths"]).float()
                loss, st = prm_step_loss(logits,
                                         b["step_labels"], b["step_mask"])
                tot, acc, n = tot + float(loss.sum()), acc + float(st["accuracy"] * st["num_steps"]), n + int(st["num_steps"])
            out = {"eval/loss": tot / max(n, 1), "eval/step_accuracy": acc / max(n, 1)}
        if self.cfg.prm.processbench:
            from posttrain.eval.processbench import evaluate_processbench

            pb = evaluate_processbench(self.scorer(), self.cfg.prm.processbench, self.cfg.prm.threshold, self.cfg.prm.processbench_limit)
            out.update({f"processbench/{k}": v for k, v in pb.items()})
        return out

    def scorer(self, batch_size: int = 16) -> PRMScorer:
        """A `PRMScorer` of the model being trained (``score_steps(prompt, steps)`` -> a probability of
        correctness per step), as best-of-N / beam search and ``--rl.prm_model`` use it."""
        return PRMScorer(self.prm, self.tokenizer, batch_size=batch_size, max_length=self.cfg.data.max_length)

    def save(self) -> Path:
        """Write a checkpoint of the current step (backbone, head, tokenizer, optimizer, schedule and
        data order) to the run folder; returns its folder. Collective under data parallelism."""
        return save_run_checkpoint(self, self.cfg.train.keep_checkpoints)

    def _resume(self) -> None:
        rt = self.rt
        if "scheduler" not in load_state(self.resume_from):
            raise UserError(f"{self.resume_from}: a PRM checkpoint of an older posttrain (no scheduler state); it cannot be resumed")
        st = restore_checkpoint(self.run_dir, self.prm, self.opt, self.sched, self.cfg.optim.lr, weights=False,
                                load_optimizer=self.worker.load_optimizer, rank=rt.rank, world_size=rt.world_size,
                                verbose=rt.is_main)
        self.order = DataOrder(len(self.train_set), self.cfg.train.seed, **st["data"])
        self.step = st["step"]

    def train(self) -> dict:
        """`train_step()` until ``train.max_steps`` with evaluation, logging and checkpoints on the
        ``train.*`` cadences (`posttrain.trainers.common.training_loop`), then a final checkpoint.
        Returns the last metrics and ``checkpoint`` (its folder)."""
        c = self.cfg
        pos = sum(sum(lab) for _, lab in self.train_set) / max(1, sum(len(lab) for _, lab in self.train_set))
        if self.rt.is_main:
            console.print(f"prm config: {json.dumps(dataclasses.asdict(c), default=str)}")
            console.print(f"prm sizes: train rows {len(self.train_set)}, eval rows {len(self.eval_set)}, mean step label {pos:.3f}")
        bar = lambda m: {"loss": m["loss"], "acc": m["step_accuracy"]}  # noqa: E731
        out = training_loop(self, c.train, "prm", "sequences", bar)
        path = self.save()
        self.logger.close()
        return {**out, "checkpoint": str(path)}


HELP = "train a process reward model (PRM800K, stepwise files, or Math-Shepherd auto-labelled task steps)"
CONFIG = PRMConfig


def run(cfg: PRMConfig) -> dict:
    return PRMTrainer(cfg).train()
