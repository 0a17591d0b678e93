"""GPU check: posttrain's sft, dpo and GRPO in bf16 and fp32, a resume check, an eval run, and TRL's
sft / dpo / GRPO on the same model and data, in one script that ends in a few minutes on one GPU.

    python benchmarks/gpu_check.py --device cuda --out runs/gpu_check      # what scripts/gpu_check.sh runs
    python benchmarks/gpu_check.py --device cpu --tiny --out /tmp/gpu_check  # tiny model, about a minute on a CPU

The model. A randomly initialised Llama of SmolLM2-135M's shape (30 layers, hidden 576, 9 heads over
3 KV heads, intermediate 1536, tied embeddings, vocabulary 49152: the real vocabulary size, so the LM
head and the logits cost what they cost on the real model), written once into ``OUT/model`` as a
Hugging Face folder that both frameworks load. Its tokenizer is the project's character tokenizer
(`posttrain.models.tokenizer`) with its vocabulary padded by never-encoded filler tokens to 49152
entries, so that every id the model samples decodes. ``--tiny`` builds the same kind of model at
d=64, l=2, 4 heads over 2 KV heads, vocabulary 1024.

The data. The built-in addition task, on the GPU with 12-digit operands and the column scratchpad
(``task:addition:digits=12,scratchpad=2``: about 300 tokens per SFT sequence, a realistic load;
plain ``task:addition`` has 14) and plain ``task:addition`` with ``--tiny``. posttrain reads it as
``task:...``; TRL gets the very rows posttrain generates (the task's sft / preference / rl rows, in
posttrain's data order, fed sequentially), as conversational prompt/completion, prompt/chosen/
rejected and prompt/answer datasets.

What runs, each in its own process (so peak memory is its own): posttrain ``sft``, ``dpo`` and ``rl
--algo grpo`` through `posttrain.cli.main`, each with ``--runtime.dtype bf16`` and ``fp32``; an SFT
run of N/2 steps resumed with ``--resume --max-steps N``; ``posttrain eval`` on a small file benchmark
(``--data.path FILE --data.columns question=prompt,solution=answer --data.checker task:SPEC``); TRL's
SFTTrainer, DPOTrainer and GRPOTrainer with the same batch sizes, learning rates, steps and
constant schedule, AdamW, clipping 1.0, bf16 autocast over fp32 weights (posttrain's bf16 is the same
recipe, fp32 master weights and optimizer state, bf16 matmuls, except that it keeps the LM head and
the logits in fp32), gradient checkpointing off in both (TRL 1.x turns it on by default), each
side's own SFT batching (posttrain packs examples into rows, TRL pads, as in `sft_vs_trl.py`), sigmoid DPO with beta 0.1 and a reference computed
once (posttrain's cached reference = TRL's ``precompute_ref_log_probs``), GRPO with PPO clip 0.2,
group-std scaling, per-sequence token mean, no KL term (beta 0) and one update per rollout. On CUDA
each process is a fresh ``python``; on a CPU they are forked from this process after the imports
(each still runs alone, its peak RSS counting the imported libraries it inherits, as a fresh
process would) because importing transformers costs seconds that the CPU test cannot afford 12 times.

Measured (nothing is estimated): from each posttrain run's ``metrics.jsonl``, the per-step rates
(``tokens_per_s`` = real, non-pad tokens of SFT; ``pairs_per_s``; ``completions_per_s`` = sequences
generated and trained per second of rollout + update) combined over the steps after a warm-up as
total units / total step time; for TRL the same from the wall time between its consecutive
``on_step_end`` callbacks (CUDA synchronised) and the real tokens its collator built. Peak memory is
``torch.cuda.max_memory_allocated()`` at the end of each GPU process (``ru_maxrss`` on a CPU), so it
covers the whole run, set-up included; the rates exclude the trainer set-up (tokenization, the
reference log-probs both sides compute once before training) and the first steps (3 on the GPU,
1 with ``--tiny``).

Checks (the script exits non-zero when one fails):

- bf16 vs fp32, per stage, step by step over the steps both ran: |x_bf16 - x_fp32| <= 0.05 |x_fp32|
  + 0.01, with x the train loss for sft and dpo. Why 5% relative: bf16 keeps 8 significant bits (a
  rounding error of at most 2^-9 = 0.2% per value), and posttrain's bf16 rounds only the decoder's
  matmul inputs (weights, optimizer state, logits and loss stay fp32), which moves a step's loss by a
  fraction of a percent; identical init, data and seeds keep the two trajectories close over a few
  tens of steps of a random-init model, whose loss falls steeply from ln(49152) = 10.8 (on the tiny
  CPU model the two differ by about 2e-4 on a loss of 6.5 after 3 steps). 5% is far above that
  rounding and above the slow drift of two SGD trajectories apart, so the check does not trip on
  noise, and it still fails on a broken recipe, which changes the training curve itself: bf16
  master weights round away AdamW updates smaller than half a bf16 step (RMSNorm weights at 1.0 have
  steps of 2^-7 = 0.008, 25 times an update of lr 3e-4), a wrong autocast scope or a dropped loss
  term, overflow to inf / NaN. It is a coarse check by design: an error below about 1% of the loss
  (bf16 logits, say) passes it. The 0.01 absolute floor is for DPO, whose loss starts at ln 2 = 0.69.
  For GRPO the compared quantity is the mean policy entropy of the sampled tokens, not the loss: a
  random-init model never solves an addition, every reward is 0, every advantage is 0, so GRPO's
  loss is exactly 0 in both dtypes (the step is still fully computed: rollout, forward, backward,
  optimizer), while the entropy (about 10.8 nats) comes from the bf16 training forward and shows
  wrong logits. The GRPO rates therefore measure throughput, not learning; the table also shows
  the rollout-vs-training log-prob mismatch (``rollout/logprob_abs_diff``) in each dtype.
- resume: the SFT weights after N straight steps and after N/2 steps + ``--resume --max-steps N`` agree
  to 1e-5 (max absolute difference over all tensors, fp32).
- eval: ``posttrain eval`` exits 0 and its results.json scores every problem with metrics in [0, 1]
  (a random model's accuracy is 0; the check is that the pipeline runs on the device).
- every run exits 0 (a TRL run that fails is a failure; TRL that is not importable is a skip, said so).

On a CPU without native bf16 (posttrain warns: oneDNN then emulates bf16, several times slower than
fp32) the bf16 runs take only the first few steps; the table says so and compares those steps.

Output: one table, ``stage | metric | posttrain bf16 | posttrain fp32 | TRL bf16 | posttrain/TRL`` (the
ratio is posttrain bf16 over TRL bf16: above 1 is faster for rates, below 1 is leaner for memory),
PASS / FAIL / SKIP lines, and the same in ``OUT/gpu_check.json`` and ``OUT/gpu_check.md``; each run's
log in ``OUT/logs/``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))  # the sibling benchmarks (sft_vs_trl, grpo_vs_trl)

REL_TOL, ABS_TOL = 0.05, 0.01  # bf16 vs fp32, per step (see the module docstring)
RESUME_TOL = 1e-5

SMOLLM2_SHAPE = dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                     intermediate_size=1536, vocab_size=49152, max_position_embeddings=8192, rope_theta=100000.0,
                     rms_norm_eps=1e-5, initializer_range=0.041666666666666664)
TINY_SHAPE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=256, vocab_size=1024, max_position_embeddings=512)


@dataclasses.dataclass
class Plan:
    device: str
    tiny: bool
    task: str
    max_length: int
    sft_steps: int
    sft_batch: int
    sft_lr: float
    dpo_steps: int
    dpo_pairs: int
    dpo_lr: float
    grpo_steps: int
    grpo_prompts: int
    grpo_group: int
    grpo_new_tokens: int
    grpo_lr: float
    warmup: int
    eval_problems: int
    eval_n: int
    eval_new_tokens: int
    bf16_steps: dict = dataclasses.field(default_factory=dict)  # stage -> steps of the bf16 run (default: all)
    bf16_note: str = ""

    @property
    def shape(self) -> dict:
        return TINY_SHAPE if self.tiny else SMOLLM2_SHAPE

    def steps(self, stage: str, dtype: str) -> int:
        full = getattr(self, f"{stage}_steps")
        return min(full, self.bf16_steps.get(stage, full)) if dtype == "bf16" else full


def make_plan(args) -> Plan:
    if args.tiny:
        return Plan(device=args.device, tiny=True, task="addition", max_length=128,
                    sft_steps=6, sft_batch=8, sft_lr=1e-3, dpo_steps=4, dpo_pairs=8, dpo_lr=1e-4,
                    grpo_steps=3, grpo_prompts=4, grpo_group=4, grpo_new_tokens=8, grpo_lr=1e-5,
                    warmup=1, eval_problems=8, eval_n=2, eval_new_tokens=8)
    return Plan(device=args.device, tiny=False, task="addition:digits=12,scratchpad=2", max_length=512,
                sft_steps=30, sft_batch=32, sft_lr=3e-4, dpo_steps=20, dpo_pairs=32, dpo_lr=1e-4,
                grpo_steps=10, grpo_prompts=16, grpo_group=8, grpo_new_tokens=128, grpo_lr=1e-6,
                warmup=3, eval_problems=32, eval_n=4, eval_new_tokens=64)


# ------------------------------------------------------------------------------ model and tokenizer
def padded_tokenizer(vocab_size: int):
    """The project's character tokenizer, its vocabulary padded to `vocab_size` with filler tokens
    that the per-character pre-tokenizer never produces (they only decode, as ``<|unusedN|>``)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from posttrain.models.tokenizer import CHAT_TEMPLATE, SPECIAL_TOKENS, build_char_tokenizer

    base = build_char_tokenizer()
    if vocab_size <= len(base):
        return base
    spec = json.loads(base.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    for i in range(len(vocab), vocab_size):
        vocab[f"<|unused{i}|>"] = i
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)), bos_token="<|bos|>", eos_token="<|eos|>",
        unk_token="<|unk|>", pad_token="<|pad|>", additional_special_tokens=SPECIAL_TOKENS[4:])
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"
    return tok


def build_model(job: dict) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from posttrain.models.tokenizer import build_char_tokenizer

    shape = dict(job["shape"])
    tok = padded_tokenizer(shape["vocab_size"])
    assert len(tok) == shape["vocab_size"], (len(tok), shape["vocab_size"])
    config = LlamaConfig(**shape, tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(job["folder"])
    tok.save_pretrained(job["folder"])
    res = {"parameters": sum(p.numel() for p in model.parameters()), "vocab_size": shape["vocab_size"],
           "tokenizer_tokens_in_use": len(build_char_tokenizer()), "torch": torch.__version__}
    if job["device"] == "cpu":
        from posttrain.runtime.device import check_cpu_bf16

        res["cpu_bf16_warning"] = check_cpu_bf16()
    else:
        res["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        res["bf16_supported"] = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    import transformers

    res["transformers"] = transformers.__version__
    return res


# ------------------------------------------------------------------------------------------- data
def task_rows(task: str, kind: str, n: int) -> list[dict]:
    """The rows posttrain generates for ``--data task:TASK --data.train_rows n`` (see
    `posttrain.trainers.common.read_split` and `posttrain.trainers.pairs`), in posttrain's data
    order for the first `n` draws (`DataOrder` with seed 0, as `sft_vs_trl` feeds TRL)."""
    from sft_vs_trl import DataOrder_indices

    from posttrain.tasks import load_task_spec

    t = load_task_spec(task)
    if kind == "sft":
        rows = [{"prompt": r["prompt"], "completion": r["completion"]} for r in t.sft_rows(n)]
    elif kind == "pref":
        rows = [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in t.preference_rows(n, seed=3)]
    else:
        rows = [{"prompt": r["prompt"], "answer": r["answer"]} for r in t.rl_rows(n)]
    return [rows[i] for i in DataOrder_indices(len(rows), n)]


def write_eval_file(task: str, n: int, path: Path) -> int:
    from posttrain.tasks import load_task_spec

    rows = load_task_spec(task).eval_rows(n)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps({"question": r["prompt"][-1]["content"], "solution": r["answer"]}) + "\n")
    return len(rows)


# ------------------------------------------------------------------------------------ TRL workers
def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _timer_callback(device: str):
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.t0, self.ends, self.logs = None, [], []

        def on_train_begin(self, args, state, control, **kw):
            _sync(device)
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            _sync(device)
            self.ends.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kw):
            if logs:
                self.logs.append(dict(logs))

        def step_times(self) -> list[float]:
            starts = [self.t0] + self.ends[:-1]
            return [e - s for s, e in zip(starts, self.ends)]

    return StepTimer()


def _trl_model(job):
    import transformers

    from posttrain.models import load_model_and_tokenizer

    transformers.logging.set_verbosity_error()
    return load_model_and_tokenizer(job["model"], seed=0)  # the model folder, as the existing TRL benchmarks load it


def trl_sft(job: dict) -> dict:
    import trl
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    model, tok = _trl_model(job)
    rows = task_rows(job["task"], "sft", job["rows"])[: job["steps"] * job["batch"]]
    cfg = SFTConfig(
        output_dir=job["out"], report_to="none", save_strategy="no", logging_strategy="no", disable_tqdm=True,
        use_cpu=job["device"] == "cpu", dataloader_num_workers=0, dataloader_pin_memory=False, seed=0, data_seed=0,
        per_device_train_batch_size=job["batch"], gradient_accumulation_steps=1, max_steps=job["steps"],
        learning_rate=job["lr"], lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, adam_beta1=0.9,
        adam_beta2=0.999, adam_epsilon=1e-8, optim="adamw_torch", max_grad_norm=1.0, completion_only_loss=True,
        max_length=job["max_length"], packing=False, shuffle_dataset=False, train_sampling_strategy="sequential",
        dataset_num_proc=None, bf16=job["bf16"], fp16=False, gradient_checkpointing=False,
    )
    timer = _timer_callback(job["device"])
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(rows), processing_class=tok, callbacks=[timer])
    inner, counted, losses = trainer.data_collator, [], []

    def counting_collator(features):  # real (non-pad) tokens of each step's batch, as posttrain counts them
        batch = inner(features)
        counted.append(int(batch["attention_mask"].sum()))
        return batch

    trainer.data_collator = counting_collator
    orig_step = trainer.training_step

    def training_step(model, inputs, num_items_in_batch=None):
        loss = orig_step(model, inputs, num_items_in_batch)
        losses.append(float(loss))
        return loss

    trainer.training_step = training_step
    trainer.train()
    return {"step_s": timer.step_times(), "units": counted[: job["steps"]], "losses": losses, "trl": trl.__version__}


def trl_dpo(job: dict) -> dict:
    import torch
    import trl
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    model, tok = _trl_model(job)
    rows = task_rows(job["task"], "pref", job["rows"])[: job["steps"] * job["pairs"]]
    losses: list[float] = []

    class Recording(DPOTrainer):  # as benchmarks/dpo_vs_trl.py: per-step loss, the rows in order
        def compute_loss(self, *a, **kw):
            out = super().compute_loss(*a, **kw)
            losses.append(float((out[0] if isinstance(out, tuple) else out).detach()))
            return out

        def _get_train_sampler(self, *a, **kw):
            return torch.utils.data.SequentialSampler(self.train_dataset)

    cfg = DPOConfig(
        output_dir=job["out"], per_device_train_batch_size=job["pairs"], gradient_accumulation_steps=1,
        max_steps=job["steps"], learning_rate=job["lr"], lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=1.0, beta=0.1, loss_type=["sigmoid"], precompute_ref_log_probs=True,
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=job["device"] == "cpu", dataloader_num_workers=0,
        seed=0, disable_tqdm=True, max_length=None, bf16=job["bf16"], fp16=False, gradient_checkpointing=False,
    )
    timer = _timer_callback(job["device"])
    trainer = Recording(model=model, ref_model=None, args=cfg, train_dataset=Dataset.from_list(rows), processing_class=tok,
                        callbacks=[timer])
    trainer.train()
    return {"step_s": timer.step_times(), "units": [job["pairs"]] * len(timer.ends), "losses": losses, "trl": trl.__version__}


def trl_grpo(job: dict) -> dict:
    import types

    import trl
    from datasets import Dataset
    from grpo_vs_trl import trl_grpo_config
    from trl import GRPOTrainer

    from posttrain.tasks import load_task_spec

    model, tok = _trl_model(job)
    task = load_task_spec(job["task"])
    rows = task_rows(job["task"], "rl", job["rows"])

    def verifier(prompts, completions, answer, **_):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [float(task.verify(t, a)) for t, a in zip(texts, answer)]

    ns = types.SimpleNamespace(out=job["out"], prompts_per_step=job["prompts"], group=job["group"],
                               max_new_tokens=job["max_new_tokens"], lr=job["lr"], run_seed=0)
    cfg = trl_grpo_config(ns, "trl", job["steps"], logging_steps=1)  # benchmarks/grpo_vs_trl.py's settings (CPU, fp32) ...
    # ... on this device. `replace` runs __post_init__ again, which refuses the generation batch fields it derived the
    # first time: reset them to their defaults so that it derives them again.
    cfg = dataclasses.replace(cfg, use_cpu=job["device"] == "cpu", bf16=job["bf16"], gradient_checkpointing=False,
                              generation_batch_size=None, steps_per_generation=None)
    timer = _timer_callback(job["device"])
    trainer = GRPOTrainer(model=model, reward_funcs=verifier, args=cfg, train_dataset=Dataset.from_list(rows),
                          processing_class=tok, callbacks=[timer])
    trainer.train()
    n = job["prompts"] * job["group"]
    return {"step_s": timer.step_times(), "units": [n] * len(timer.ends),
            "losses": [x["loss"] for x in timer.logs if "loss" in x],
            "entropy": [x["entropy"] for x in timer.logs if "entropy" in x], "trl": trl.__version__}


def compare_weights(job: dict) -> dict:
    from safetensors.torch import load_file

    a, b = load_file(job["a"]), load_file(job["b"])
    if sorted(a) != sorted(b):
        return {"max_abs_diff": None, "error": f"different tensors: {sorted(set(a) ^ set(b))[:5]}"}
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    return {"max_abs_diff": diff, "tensors": len(a), "parameters": sum(v.numel() for v in a.values())}


# ------------------------------------------------------------------------------------ child side
def peak_memory() -> dict:
    import resource

    out = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        out["peak_gpu_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
        out["peak_gpu_reserved_mib"] = torch.cuda.max_memory_reserved() / 2**20
    return out


def child_entry(job: dict) -> int:
    """Run one job in this (child) process; write {"rc", "result", "peak"} to job["result_file"]."""
    rc, result = 1, None
    try:
        if job["kind"] == "posttrain":
            from posttrain.cli import main as posttrain_main

            try:
                rc = posttrain_main(job["argv"]) or 0
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        else:
            fn = {"build": build_model, "compare": compare_weights, "trl-sft": trl_sft, "trl-dpo": trl_dpo,
                  "trl-grpo": trl_grpo}[job["kind"]]
            result, rc = fn(job), 0
    except BaseException:
        traceback.print_exc()
        rc = 1
    sys.stdout.flush()
    sys.stderr.flush()
    Path(job["result_file"]).write_text(json.dumps({"rc": rc, "result": result, "peak": peak_memory()}))
    return rc


# ----------------------------------------------------------------------------------- parent side
class Launcher:
    """Runs jobs one at a time in child processes: fresh interpreters (subprocess) or forks of this
    process taken after the heavy imports (fork: CPU only, CUDA must never be initialised here)."""

    def __init__(self, out: Path, mode: str, deadline: float):
        self.out, self.mode, self.deadline = out, mode, deadline
        (out / "logs").mkdir(parents=True, exist_ok=True)
        (out / "jobs").mkdir(parents=True, exist_ok=True)
        self.t_start = time.perf_counter()
        self.records: dict[str, dict] = {}

    def run(self, name: str, job: dict, min_s: float = 20.0) -> dict:
        left = self.deadline - time.time()
        rec = {"name": name, "kind": job["kind"], "rc": None, "seconds": 0.0, "log": f"logs/{name}.log"}
        if job["kind"] == "posttrain":
            rec["command"] = "posttrain " + " ".join(job["argv"])
        self.records[name] = rec
        if left < min_s:
            rec["skipped"] = f"out of time ({left:.0f} s left of the time budget)"
            self._say(f"{name}: skipped, {rec['skipped']}")
            return rec
        job = {**job, "result_file": str(self.out / "jobs" / f"{name}.result.json")}
        Path(job["result_file"]).unlink(missing_ok=True)
        log = self.out / "logs" / f"{name}.log"
        t0 = time.perf_counter()
        sys.stdout.flush()
        sys.stderr.flush()
        if self.mode == "fork":
            rc = self._fork(job, log, left)
        else:
            rc = self._subprocess(name, job, log, left)
        rec["seconds"] = time.perf_counter() - t0
        try:
            res = json.loads(Path(job["result_file"]).read_text())
            rec.update(rc=res["rc"] if rc == 0 else rc, result=res["result"], peak=res["peak"])
        except (OSError, ValueError):
            rec["rc"] = rc if rc else 1
        if rc == -signal.SIGKILL or rc == 124:
            rec["error"] = "killed: ran past the time budget"
        status = "ok" if rec["rc"] == 0 else f"FAILED (exit {rec['rc']}, see {rec['log']})"
        self._say(f"{name}: {status} in {rec['seconds']:.1f} s")
        if rec["rc"] != 0:
            tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
            for line in tail:
                print(f"    | {line}")
        return rec

    def _say(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.t_start:6.1f} s] {msg}", flush=True)

    def _fork(self, job: dict, log: Path, left: float) -> int:
        pid = os.fork()
        if pid == 0:  # child
            rc = 1
            try:
                fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                os.close(fd)
                rc = child_entry(job)
            finally:
                os._exit(rc if isinstance(rc, int) and 0 <= rc < 256 else 1)
        return self._wait(lambda: _waitpid(pid), lambda: os.kill(pid, signal.SIGKILL), left)

    def _subprocess(self, name: str, job: dict, log: Path, left: float) -> int:
        spec = self.out / "jobs" / f"{name}.json"
        spec.write_text(json.dumps(job))
        with open(log, "w") as f:
            proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", str(spec)],
                                    stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
            return self._wait(proc.poll, lambda: os.killpg(proc.pid, signal.SIGKILL), left, proc.wait)

    @staticmethod
    def _wait(poll, kill, left: float, reap=None) -> int:
        end = time.time() + left
        while True:
            rc = poll()
            if rc is not None:
                return rc
            if time.time() > end:
                kill()
                return reap() if reap else _waitpid_blocking(poll)
            time.sleep(0.05)


def _waitpid(pid: int):
    done, status = os.waitpid(pid, os.WNOHANG)
    return None if done == 0 else os.waitstatus_to_exitcode(status)


def _waitpid_blocking(poll):
    while True:
        rc = poll()
        if rc is not None:
            return rc
        time.sleep(0.05)


def preimport(with_trl: bool) -> None:
    """The imports every forked child needs, done once (no torch computation, no CUDA here)."""
    import posttrain.cli
    import posttrain.eval.harness  # noqa: F401
    import posttrain.trainers.preference  # noqa: F401
    import posttrain.trainers.rl  # noqa: F401
    import posttrain.trainers.sft  # noqa: F401
    from transformers import LlamaForCausalLM  # noqa: F401

    posttrain.cli._load_optional_stages()
    if with_trl:
        import datasets  # noqa: F401
        from trl import DPOTrainer, GRPOTrainer, SFTTrainer  # noqa: F401


def trl_status() -> tuple[str | None, str | None]:
    """(TRL version, None) or (None, why the TRL side is skipped)."""
    try:
        import datasets  # noqa: F401
        import trl
    except Exception as e:  # not installed, or broken against this transformers
        return None, f"{type(e).__name__}: {e}"
    return trl.__version__, None


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def rate(units: list[float], seconds: list[float], warmup: int) -> tuple[float | None, int]:
    """Total units / total seconds over the steps after `warmup` (all steps when there are no more)."""
    w = min(warmup, max(len(units) - 1, 0))
    u, s = sum(units[w:]), sum(seconds[w:])
    return (u / s if s > 0 else None), len(units) - w


def posttrain_series(rows: list[dict], rate_key: str, per_step_units: int | None, unit_key: str | None) -> dict:
    steps = [r for r in rows if rate_key in r]
    units = [float(r[unit_key]) if unit_key else float(per_step_units) for r in steps]
    secs = [u / r[rate_key] for u, r in zip(units, steps)]
    return {"units": units, "step_s": secs, "loss": [r.get("loss") for r in steps], "entropy": [r.get("entropy") for r in steps],
            "logprob_diff": [r.get("rollout/logprob_abs_diff") for r in steps]}


def tol_check(name: str, what: str, bf: list, fp: list) -> dict:
    k = min(len(bf), len(fp))
    if k == 0 or any(x is None for x in bf[:k] + fp[:k]):
        return {"name": name, "status": "FAIL", "detail": f"no {what} to compare (a run failed or logged none)"}
    diffs = [abs(b - f) for b, f in zip(bf[:k], fp[:k])]
    allowed = [REL_TOL * abs(f) + ABS_TOL for f in fp[:k]]
    worst = max(range(k), key=lambda i: diffs[i] / allowed[i])
    ok = all(d <= a for d, a in zip(diffs, allowed))
    return {"name": name, "status": "PASS" if ok else "FAIL", "max_abs_diff": max(diffs), "steps": k,
            "detail": f"{what} over {k} steps: max |bf16 - fp32| = {max(diffs):.4g}; worst step {worst + 1}: "
                      f"|{bf[worst]:.4f} - {fp[worst]:.4f}| = {diffs[worst]:.4g} vs allowed {allowed[worst]:.4g} "
                      f"({REL_TOL:g} x |fp32| + {ABS_TOL:g})"}


def fmt(x, digits: int = 0) -> str:
    if x is None:
        return "—"
    if isinstance(x, str):
        return x
    return f"{x:,.{digits}f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--tiny", action="store_true", help="a tiny model and few steps (the CPU test)")
    p.add_argument("--out", default="runs/gpu_check")
    p.add_argument("--budget-s", type=float, default=540.0, help="stop starting runs after this many seconds")
    p.add_argument("--launcher", default="auto", choices=["auto", "fork", "subprocess"],
                   help="auto: subprocess on cuda, fork on cpu")
    p.add_argument("--skip-trl", action="store_true")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child_entry(json.loads(Path(args.child).read_text()))

    for k, v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                 "TOKENIZERS_PARALLELISM": "false", "WANDB_DISABLED": "true"}.items():
        os.environ.setdefault(k, v)
    t_start = time.time()
    plan = make_plan(args)
    dev = plan.device
    out = Path(args.out).resolve()
    for sub in ("runs", "logs", "jobs", "model", "data"):  # this script's own folders from an earlier run
        shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    mode = args.launcher if args.launcher != "auto" else ("fork" if dev == "cpu" else "subprocess")
    if mode == "fork" and dev != "cpu":
        sys.exit("--launcher fork is for --device cpu only (a forked child cannot use CUDA safely)")
    trl_version, trl_skip = (None, "--skip-trl") if args.skip_trl else trl_status()
    if mode == "fork":
        preimport(trl_version is not None)
    L = Launcher(out, mode, t_start + args.budget_s)
    print(f"gpu_check: device {dev}, {'tiny' if plan.tiny else 'SmolLM2-135M-shaped'} model, task:{plan.task}, "
          f"{mode} launcher, out {out}; TRL {trl_version or 'skipped: ' + trl_skip}", flush=True)

    # -- the model
    model_dir = out / "model"
    build = L.run("build-model", {"kind": "build", "folder": str(model_dir), "shape": plan.shape, "device": dev})
    if build["rc"] != 0:
        why = build.get("skipped") or f"exit {build['rc']}, see {out / build['log']}"
        (out / "gpu_check.json").write_text(json.dumps({"device": dev, "checks": [
            {"name": "build model", "status": "FAIL", "detail": why}], "runs": L.records}, indent=1))
        (out / "gpu_check.md").write_text(f"FAIL: build model: {why}\n")
        print(f"FAIL: build model: {why}")
        return 1
    info = build["result"]
    if dev == "cpu" and info.get("cpu_bf16_warning"):
        plan.bf16_steps = {"sft": 3, "dpo": 3, "grpo": 2}
        plan.bf16_note = ("bf16 runs take only the first steps (sft 3, dpo 3, grpo 2): posttrain warns that bf16 is "
                          "slow on this CPU: " + " ".join(info["cpu_bf16_warning"].split()))
    elif dev == "cuda" and not info.get("bf16_supported"):
        plan.bf16_steps = {"sft": 0, "dpo": 0, "grpo": 0}
        plan.bf16_note = f"bf16 skipped: {info.get('gpu')} has no bf16 support"

    # -- posttrain stages
    rows = {"sft": plan.sft_steps * plan.sft_batch, "dpo": plan.dpo_steps * plan.dpo_pairs,
            "grpo": plan.grpo_steps * plan.grpo_prompts}

    def common(stage: str, dtype: str, run: str, steps: int, lr: float) -> list[str]:
        return ["--model", str(model_dir), "--data", f"task:{plan.task}", "--data.train_rows", str(rows[stage]),
                "--data.eval_rows", "0", "--data.max_length", str(plan.max_length), "--train.seed", "0",
                "--train.progress", "false", "--runtime.device", dev, "--runtime.dtype", dtype,
                "--out", str(out / "runs" / run), "--max-steps", str(steps), "--lr", str(lr),
                "--optim.schedule", "constant", "--optim.warmup_steps", "0", "--optim.max_grad_norm", "1.0"]

    def stage_argv(stage: str, dtype: str, run: str, steps: int) -> list[str]:
        if stage == "sft":
            b = str(plan.sft_batch)
            return ["sft", *common(stage, dtype, run, steps, plan.sft_lr), "--sft.sequences_per_step", b,
                    "--sft.sequences_per_microbatch", b]
        if stage == "dpo":
            b = str(plan.dpo_pairs)
            return ["dpo", *common(stage, dtype, run, steps, plan.dpo_lr), "--loss", "dpo", "--beta", "0.1",
                    "--pref.pairs_per_step", b, "--pref.pairs_per_microbatch", b, "--pref.eval_before", "false"]
        n = plan.grpo_prompts * plan.grpo_group
        return ["rl", "--algo", "grpo", *common(stage, dtype, run, steps, plan.grpo_lr),
                "--rl.prompts_per_step", str(plan.grpo_prompts), "--rl.samples_per_prompt", str(plan.grpo_group),
                "--rl.max_new_tokens", str(plan.grpo_new_tokens), "--rl.temperature", "1.0", "--rl.kl_coef", "0",
                "--rl.sequences_per_microbatch", str(n), "--rl.show_every", "0"]

    dtypes = ("fp32", "bf16")
    for stage in ("sft", "dpo", "grpo"):
        for dtype in dtypes:
            steps = plan.steps(stage, dtype)
            if steps > 0:
                L.run(f"{stage}-{dtype}", {"kind": "posttrain", "argv": stage_argv(stage, dtype, f"{stage}-{dtype}", steps)})

    # -- resume: N/2 steps, then --resume to N; compared with the straight fp32 run
    n_sft, half = plan.sft_steps, plan.sft_steps // 2
    L.run("sft-resume-first-half", {"kind": "posttrain", "argv": stage_argv("sft", "fp32", "sft-resume", half)})
    L.run("sft-resume-second-half", {"kind": "posttrain", "argv": ["sft", "--resume", "--max-steps", str(n_sft),
                                                                   "--out", str(out / "runs" / "sft-resume")]})
    ck = f"checkpoints/step-{n_sft:07d}/model.safetensors"
    straight, resumed = out / "runs" / "sft-fp32" / ck, out / "runs" / "sft-resume" / ck
    if straight.exists() and resumed.exists():
        L.run("resume-compare", {"kind": "compare", "a": str(straight), "b": str(resumed)})

    # -- eval on a small file benchmark, with the straight SFT run's model
    eval_file = out / "data" / "eval_problems.jsonl"
    n_eval = write_eval_file(plan.task, plan.eval_problems, eval_file)
    eval_dtype = "bf16" if dev == "cuda" and info.get("bf16_supported") else "fp32"
    eval_argv = ["eval", "--model", str(out / "runs" / "sft-fp32"), "--benchmark", "file", "--data.path", str(eval_file),
                 "--data.columns", "question=prompt,solution=answer", "--data.checker", f"task:{plan.task}",
                 "--sampling.n", str(plan.eval_n), "--sampling.ks", f"1,{plan.eval_n}", "--sampling.max_new_tokens",
                 str(plan.eval_new_tokens), "--sampling.seed", "0", "--out", str(out / "runs" / "eval"),
                 "--train.progress", "false", "--runtime.device", dev, "--runtime.dtype", eval_dtype]
    L.run("eval", {"kind": "posttrain", "argv": eval_argv})

    # -- TRL
    if trl_version:
        use_bf16 = plan.steps("sft", "bf16") > 0
        base = {"model": str(model_dir), "task": plan.task, "device": dev, "bf16": use_bf16}
        L.run("trl-sft", {**base, "kind": "trl-sft", "out": str(out / "runs" / "trl-sft"), "rows": rows["sft"],
                          "steps": plan.steps("sft", "bf16" if use_bf16 else "fp32"), "batch": plan.sft_batch,
                          "lr": plan.sft_lr, "max_length": plan.max_length})
        L.run("trl-dpo", {**base, "kind": "trl-dpo", "out": str(out / "runs" / "trl-dpo"), "rows": rows["dpo"],
                          "steps": plan.steps("dpo", "bf16" if use_bf16 else "fp32"), "pairs": plan.dpo_pairs,
                          "lr": plan.dpo_lr})
        L.run("trl-grpo", {**base, "kind": "trl-grpo", "out": str(out / "runs" / "trl-grpo"), "rows": rows["grpo"],
                           "steps": plan.steps("grpo", "bf16" if use_bf16 else "fp32"), "prompts": plan.grpo_prompts,
                           "group": plan.grpo_group, "max_new_tokens": plan.grpo_new_tokens, "lr": plan.grpo_lr})

    report = summarize(plan, out, L.records, info, trl_version, trl_skip, n_eval, eval_dtype, mode, time.time() - t_start)
    return 1 if any(c["status"] == "FAIL" for c in report["checks"]) else 0


def summarize(plan, out, recs, info, trl_version, trl_skip, n_eval, eval_dtype, mode, wall_s) -> dict:
    dev = plan.device
    mem_key = "peak_gpu_allocated_mib" if dev == "cuda" else "peak_rss_mib"
    mem_label = "peak GPU memory MiB (max_memory_allocated)" if dev == "cuda" else "peak RSS MiB (ru_maxrss)"
    checks: list[dict] = []
    series: dict[str, dict] = {}
    spec = {"sft": ("tokens_per_s", None, "tokens", "tokens/s"),
            "dpo": ("pairs_per_s", None, "pairs", "pairs/s"),
            "grpo": ("completions_per_s", plan.grpo_prompts * plan.grpo_group, None, "completions/s")}
    for name, rec in recs.items():
        if rec.get("skipped"):
            checks.append({"name": f"run {name}", "status": "SKIP" if name.startswith("trl-") else "FAIL", "detail": rec["skipped"]})
        elif rec["rc"] != 0:
            checks.append({"name": f"run {name}", "status": "FAIL", "detail": f"exit {rec['rc']} ({rec.get('error', 'see ' + rec['log'])})"})

    def cell(stage, which):
        """The per-step series and peak memory of posttrain's `which` (bf16|fp32) run of a stage, or None."""
        key = f"{stage}-{which}"
        if key in series:
            return series[key]
        rec = recs.get(key)
        s = None
        if rec and rec["rc"] == 0:
            rk, per, uk, _ = spec[stage]
            s = posttrain_series(read_metrics(out / "runs" / key), rk, per, uk)
            s["peak"] = rec.get("peak", {})
        series[key] = s
        return s

    table: list[dict] = []
    notes: list[str] = []
    for stage in ("sft", "dpo", "grpo"):
        _, _, _, unit_label = spec[stage]
        cols = {"bf16": cell(stage, "bf16"), "fp32": cell(stage, "fp32"), "trl": None}
        trec = recs.get(f"trl-{stage}")
        if trec and trec["rc"] == 0:
            r = trec["result"]
            cols["trl"] = {"units": r["units"], "step_s": r["step_s"], "loss": r.get("losses", []),
                           "entropy": r.get("entropy", []), "peak": trec.get("peak", {})}
        rates, timed = {}, {}
        for c, s in cols.items():
            rates[c], timed[c] = rate(s["units"], s["step_s"], plan.warmup) if s else (None, 0)
        mems = {c: (s["peak"].get(mem_key) if s else None) for c, s in cols.items()}
        k = plan.steps(stage, "bf16") or plan.steps(stage, "fp32")
        what = "entropy" if stage == "grpo" else "loss"

        def at(s, key, step):
            vals = (s or {}).get(key) or []
            return vals[step - 1] if len(vals) >= step and vals[step - 1] is not None else None

        table.append(_row(stage, unit_label, rates, digits=0 if stage == "sft" else 1))
        table.append(_row(stage, mem_label, mems, digits=0))
        table.append(_row(stage, f"{what} at step {k}", {c: at(s, what, k) for c, s in cols.items()}, digits=4, ratio=False))
        if stage == "grpo":
            table.append(_row(stage, "rollout vs training logprob abs diff (mean, last step)",
                              {"bf16": at(cols["bf16"], "logprob_diff", plan.steps("grpo", "bf16")),
                               "fp32": at(cols["fp32"], "logprob_diff", plan.steps("grpo", "fp32")), "trl": None},
                              digits=6, ratio=False, sci=True))
        if stage == "sft" and cols["trl"] and cols["fp32"]:
            k_t = len(cols["trl"]["units"])
            same = [int(x) for x in cols["trl"]["units"]] == [int(x) for x in cols["fp32"]["units"][:k_t]]
            notes.append(f"sft: real tokens per step identical in posttrain and TRL over {k_t} steps: {same}")
        for c in ("bf16", "fp32", "trl"):
            if cols[c] and timed[c] < 2:
                notes.append(f"{stage} {c}: rate over {timed[c]} timed step(s) only")
        # bf16 vs fp32
        if plan.steps(stage, "bf16") == 0:
            checks.append({"name": f"{stage} bf16 vs fp32 {what}", "status": "SKIP", "detail": plan.bf16_note})
        elif cols["bf16"] is None or cols["fp32"] is None:
            checks.append({"name": f"{stage} bf16 vs fp32 {what}", "status": "FAIL", "detail": "a run failed"})
        else:
            checks.append(tol_check(f"{stage} bf16 vs fp32 {what}", what, cols["bf16"][what], cols["fp32"][what]))
    # resume
    cmp = recs.get("resume-compare")
    if cmp and cmp["rc"] == 0 and cmp["result"].get("max_abs_diff") is not None:
        d = cmp["result"]["max_abs_diff"]
        checks.append({"name": "sft resume", "status": "PASS" if d <= RESUME_TOL else "FAIL", "max_abs_diff": d,
                       "detail": f"{plan.sft_steps} straight steps vs {plan.sft_steps // 2} + --resume --max-steps "
                                 f"{plan.sft_steps}: max |diff| over {cmp['result']['tensors']} tensors = {d:.3g} "
                                 f"(tolerance {RESUME_TOL:g}, fp32)"})
    else:
        why = (cmp or {}).get("result", {}) or {}
        checks.append({"name": "sft resume", "status": "FAIL",
                       "detail": why.get("error") or "a run failed or a checkpoint is missing (see logs/sft-*.log)"})
    # eval
    checks.append(eval_check(out / "runs" / "eval" / "results.json", recs.get("eval"), n_eval, plan.eval_n, eval_dtype))
    if trl_skip:
        checks.append({"name": "TRL side", "status": "SKIP", "detail": f"TRL not importable: {trl_skip}"})
    ev = _eval_metrics(out / "runs" / "eval" / "results.json")
    if ev is not None:
        table.append(_row("eval", "generated tokens/s", {eval_dtype: ev.get("tokens_per_s"), "trl": None}, digits=0, ratio=False))
        ev_mem = (recs.get("eval") or {}).get("peak", {}).get(mem_key)
        table.append(_row("eval", mem_label, {eval_dtype: ev_mem, "trl": None}, digits=0, ratio=False))
    if plan.bf16_note:
        notes.insert(0, plan.bf16_note)
    if trl_version and plan.steps("sft", "bf16") == 0:
        notes.append("TRL ran in fp32 (no bf16 on this device)")
    notes.append("posttrain/TRL = posttrain bf16 / TRL bf16: above 1 is faster for rates, below 1 is leaner for memory")
    if dev == "cpu" and mode == "fork":
        notes.append("runs forked from the checking process after its imports: peak RSS includes those libraries")

    report = {
        "device": dev, "gpu": info.get("gpu"), "model": {"shape": plan.shape, "parameters": info.get("parameters"),
                                                         "tokenizer_tokens_in_use": info.get("tokenizer_tokens_in_use")},
        "versions": {"torch": info.get("torch"), "transformers": info.get("transformers"), "trl": trl_version},
        "plan": dataclasses.asdict(plan), "tolerance": {"rel": REL_TOL, "abs": ABS_TOL, "resume": RESUME_TOL},
        "table": table, "checks": checks, "notes": notes,
        "skipped": {"trl": trl_skip, "bf16": plan.bf16_note or None},
        "runs": {k: {kk: v for kk, v in r.items() if kk != "result" or k.startswith(("trl", "resume", "build"))}
                 for k, r in recs.items()},
        "wall_s": wall_s,
    }
    md = render_md(report)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    (out / "gpu_check.md").write_text(md)
    print()
    print(md)
    return report


def _row(stage, metric, vals: dict, digits: int, ratio: bool = True, sci: bool = False) -> dict:
    b, f, t = vals.get("bf16"), vals.get("fp32"), vals.get("trl")
    r = b / t if ratio and b is not None and t else None

    def show(x):
        return (f"{x:.2e}" if x is not None else "—") if sci else fmt(x, digits)

    return {"stage": stage, "metric": metric, "posttrain_bf16": b, "posttrain_fp32": f, "trl_bf16": t, "ratio": r,
            "text": [stage, metric, show(b), show(f), show(t), f"{r:.2f}x" if r is not None else "—"]}


def _eval_metrics(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text()).get("metrics")
    except (OSError, ValueError):
        return None


def eval_check(path: Path, rec: dict | None, n_eval: int, samples: int, dtype: str) -> dict:
    """posttrain eval exited 0, scored every problem (greedy + `samples` completions each), metrics in [0, 1]."""
    name = "eval"
    if not rec or rec.get("rc") != 0:
        return {"name": name, "status": "FAIL", "detail": "posttrain eval did not exit 0" + (f" (see {rec['log']})" if rec else "")}
    try:
        m = json.loads(path.read_text())["metrics"]
    except (OSError, ValueError, KeyError) as e:
        return {"name": name, "status": "FAIL", "detail": f"no usable results.json: {e}"}
    fractions = {k: v for k, v in m.items() if k == "greedy_acc" or k.startswith(("pass@", "maj@", "mean@"))}
    problems, completions = m.get("num_problems") or 0, m.get("completions") or 0
    ok = (problems == n_eval and completions == n_eval * (samples + 1) and "greedy_acc" in fractions
          and all(isinstance(v, (int, float)) and 0.0 <= v <= 1.0 for v in fractions.values()))
    shown = ", ".join(f"{k} {v:.3f}" for k, v in sorted(fractions.items()))
    return {"name": name, "status": "PASS" if ok else "FAIL",
            "detail": f"{problems:.0f}/{n_eval} problems, {completions:.0f}/{n_eval * (samples + 1)} completions scored "
                      f"({dtype}, checker task:SPEC); {shown or 'no metrics found'}"}


def render_md(rep: dict) -> str:
    head = ["stage", "metric", "posttrain bf16", "posttrain fp32", "TRL bf16", "posttrain/TRL"]
    lines = [f"# GPU check ({rep['device']}{', ' + rep['gpu'] if rep.get('gpu') else ''})", "",
             f"model: Llama {rep['model']['shape']}, {rep['model']['parameters']:,} parameters; "
             f"torch {rep['versions']['torch']}, transformers {rep['versions']['transformers']}, "
             f"TRL {rep['versions']['trl'] or 'skipped'}; task:{rep['plan']['task']}", "",
             "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r["text"]) + " |" for r in rep["table"]]
    lines.append("")
    lines += [f"{c['status']}: {c['name']}: {c.get('detail', '')}" for c in rep["checks"]]
    if rep["notes"]:
        lines.append("")
        lines += [f"note: {n}" for n in rep["notes"]]
    lines.append("")
    lines.append(f"wall time {rep['wall_s']:.0f} s")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
