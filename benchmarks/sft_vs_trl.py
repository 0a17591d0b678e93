"""SFT throughput and peak memory: posttrain's SFTTrainer against TRL's SFTTrainer, side by side.

Both frameworks train the same model (same initial weights, same tokenizer and chat template) on the
same conversational prompt/completion rows, in the same order (TRL with a sequential sampler over the
rows in posttrain's order), with the same batch, AdamW, lr, cosine-to-10% schedule, clipping and a
completion-only token-mean loss. Each framework runs in its own subprocess (clean peak RSS), and the
subprocesses are interleaved (posttrain, TRL, TRL, posttrain, ...) so machine noise hits both.

Measured per run: real (non-pad) tokens per second of training-step wall time with the warm-up steps
excluded; peak RSS (ru_maxrss) and its increase over the RSS just before training; the train loss of
every step; and a held-out completion loss after training, computed by the same code for both.

    python benchmarks/sft_vs_trl.py                       # tiny-llama on the addition task
    python benchmarks/sft_vs_trl.py --model smollm2-135m-instruct --batch 8 --steps 8 --max-length 256
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

PEAK_FLOPS = 175e9  # measured fp32 matmul peak of this machine (DESIGN.md)
GSM8K = "../shared/data/gsm8k/train.jsonl"  # run from the repository root


# ----------------------------------------------------------------------------------------- data
def train_rows(args) -> list[dict]:
    """Conversational prompt/completion rows (the same for both frameworks)."""
    n = (args.warmup + args.steps) * args.batch
    if args.model.startswith("tiny"):
        from posttrain.tasks import load_task_spec

        rows = load_task_spec("addition").sft_rows(n)
    else:
        rows = []
        with open(GSM8K) as f:
            for line in f:
                r = json.loads(line)
                rows.append({"prompt": [{"role": "user", "content": r["question"]}],
                             "completion": [{"role": "assistant", "content": r["answer"]}]})
                if len(rows) == n + args.eval_rows:
                    break
        rows = rows[:n]
    return [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows]


def eval_rows(args) -> list[dict]:
    if args.model.startswith("tiny"):
        from posttrain.tasks import load_task_spec

        rows = load_task_spec("addition").sft_rows(args.eval_rows, seed=12345)
    else:
        rows = []
        with open(GSM8K) as f:
            for line in list(f)[-args.eval_rows:]:
                r = json.loads(line)
                rows.append({"prompt": [{"role": "user", "content": r["question"]}],
                             "completion": [{"role": "assistant", "content": r["answer"]}]})
    return [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows]


def heldout_loss(model, tok, rows, max_length) -> float:
    """Token-mean completion NLL on held-out rows (same code for both frameworks)."""
    import torch

    from posttrain.data import load_examples, pad_batch, tokenize_sft
    from posttrain.ops import token_logprobs

    exs, _ = load_examples(rows)
    tex = [tokenize_sft(tok, e, max_length) for e in exs]
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(tex), 16):
            b = pad_batch(tex[i : i + 16], tok.pad_token_id)
            logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False).logits
            m = b.labels != -100
            total += float(-(token_logprobs(logits, b.labels) * m).sum())
            count += int(m.sum())
    return total / count


def rss_now_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# -------------------------------------------------------------------------------------- workers
def run_posttrain(args) -> dict:

    from posttrain.models import load_model_and_tokenizer
    from posttrain.trainers.common import DataConfig, ModelConfig, OptimConfig, TrainConfig
    from posttrain.trainers.sft import SFTConfig, SFTOptions, SFTTrainer

    total_steps = args.warmup + args.steps
    model, tok = load_model_and_tokenizer(args.model, seed=0)
    rows = train_rows(args)
    data_file = os.path.join(tempfile.mkdtemp(prefix="bench-sft-data-"), "train.jsonl")
    with open(data_file, "w") as f:  # the very rows TRL gets, in conversational prompt/completion form
        f.writelines(json.dumps(r) + "\n" for r in rows)
    cfg = SFTConfig(
        model=ModelConfig(name=args.model, gradient_checkpointing=args.gradient_checkpointing),
        data=DataConfig(path=data_file, max_length=args.max_length, train_rows=len(rows)),
        optim=OptimConfig(lr=args.lr, schedule="cosine", min_lr_ratio=0.1, warmup_steps=0, max_grad_norm=1.0),
        train=TrainConfig(out=tempfile.mkdtemp(prefix="bench-sft-"), max_steps=total_steps, seed=0,
                          loggers=(), progress=False),
        sft=SFTOptions(sequences_per_step=args.batch, sequences_per_microbatch=args.micro or args.batch),
    )
    tr = SFTTrainer(cfg, model=model, tokenizer=tok)
    rss0 = rss_now_mb()
    losses, tokens, ends = [], [], []
    t_prev = time.perf_counter()
    for _ in range(total_steps):
        m = tr.train_step()
        ends.append(time.perf_counter())
        losses.append(m["loss"])
        tokens.append(m["tokens"])
    starts = [t_prev] + ends[:-1]
    return finish(args, "posttrain", tr.model, tok, losses, tokens, starts, ends, rss0, {})


def DataOrder_indices(n: int, k: int) -> list[int]:
    from posttrain.trainers.common import DataOrder

    return DataOrder(n, 0).take(k)


def run_trl(args) -> dict:
    import torch
    import transformers
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from posttrain.models import load_model_and_tokenizer

    transformers.logging.set_verbosity_error()
    total_steps = args.warmup + args.steps
    model, tok = load_model_and_tokenizer(args.model, seed=0)
    rows = train_rows(args)
    order = DataOrder_indices(len(rows), total_steps * args.batch)  # posttrain's order, fed sequentially
    ds = Dataset.from_list([rows[i] for i in order])
    out = tempfile.mkdtemp(prefix="bench-trl-")
    targs = SFTConfig(
        output_dir=out, report_to="none", save_strategy="no", logging_strategy="no", disable_tqdm=True,
        use_cpu=True, dataloader_num_workers=0, dataloader_pin_memory=False, seed=0, data_seed=0,
        per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=args.batch // (args.micro or args.batch),
        max_steps=total_steps, learning_rate=args.lr, lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": 0.1}, warmup_steps=0, weight_decay=0.0, adam_beta1=0.9,
        adam_beta2=0.999, adam_epsilon=1e-8, optim="adamw_torch", max_grad_norm=1.0,
        completion_only_loss=True, max_length=args.max_length, packing=False,
        train_sampling_strategy="sequential", dataset_num_proc=None,
        bf16=args.trl_bf16, fp16=False,  # TRL defaults to bf16 autocast; posttrain trains in fp32
        # TRL 1.x defaults to gradient checkpointing on, posttrain to off: set both the same way
        gradient_checkpointing=args.gradient_checkpointing,
    )
    if args.micro:
        targs.per_device_train_batch_size = args.micro
    counted: list[int] = []

    class Timer(TrainerCallback):
        def __init__(self):
            self.ends, self.losses = [], []

        def on_train_begin(self, *a, **k):
            self.rss0 = rss_now_mb()
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.ends.append(time.perf_counter())

    timer = Timer()
    trainer = SFTTrainer(model=model, args=targs, train_dataset=ds, processing_class=tok, callbacks=[timer])
    inner_collator = trainer.data_collator

    def counting_collator(features):
        batch = inner_collator(features)
        counted.append(int(batch["attention_mask"].sum()))
        return batch

    trainer.data_collator = counting_collator
    # per-step loss: wrap training_step (returns the micro-batch loss, already divided by the step's tokens)
    orig_step = trainer.training_step
    micro_losses: list[float] = []

    def training_step(model, inputs, num_items_in_batch=None):
        loss = orig_step(model, inputs, num_items_in_batch)
        micro_losses.append(float(loss))
        return loss

    trainer.training_step = training_step
    trainer.train()
    per = (args.batch // (args.micro or args.batch))
    losses = [sum(micro_losses[i * per : (i + 1) * per]) for i in range(total_steps)]
    tokens = [sum(counted[i * per : (i + 1) * per]) for i in range(total_steps)]
    starts = [timer.t0] + timer.ends[:-1]
    return finish(args, "trl", trainer.model, tok, losses, tokens, starts, timer.ends, timer.rss0,
                  {"version": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__})


def finish(args, name, model, tok, losses, tokens, starts, ends, rss0, extra) -> dict:
    import torch

    w = args.warmup
    step_time = sum(e - s for s, e in zip(starts[w:], ends[w:]))
    tok_measured = sum(tokens[w:])
    n_params = sum(p.numel() for p in model.parameters())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res = {
        "framework": name, "tokens_per_s": tok_measured / step_time, "step_s": step_time / args.steps,
        "tokens_measured": tok_measured, "params": n_params, "threads": torch.get_num_threads(),
        "mfu": 6 * n_params * tok_measured / step_time / PEAK_FLOPS,
        "peak_rss_mb": peak, "rss_before_train_mb": rss0, "train_rss_increase_mb": peak - rss0,
        "losses": losses, "tokens_per_step": tokens,
        "heldout_loss": heldout_loss(model, tok, eval_rows(args), args.max_length),
        **extra,
    }
    return res


# ----------------------------------------------------------------------------------------- main
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-llama", help="tiny-llama (addition task) or smollm2-135m-instruct (GSM8K)")
    p.add_argument("--steps", type=int, default=30, help="measured steps (after the warm-up)")
    p.add_argument("--warmup", type=int, default=3, help="steps run first and excluded from timing")
    p.add_argument("--batch", type=int, default=64, help="sequences per optimizer step")
    p.add_argument("--micro", type=int, default=0, help="sequences per micro-batch (0 = the whole batch)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--eval-rows", type=int, default=256)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads in both workers (0 = torch's default)")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute activations in both frameworks (TRL's own default; posttrain's is off)")
    p.add_argument("--trl-bf16", action="store_true", help="let TRL use its default bf16 autocast (posttrain stays fp32)")
    p.add_argument("--rounds", type=int, default=2, help="subprocess pairs, interleaved p,t / t,p")
    p.add_argument("--only", choices=["posttrain", "trl"], help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.only:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        res = run_posttrain(args) if args.only == "posttrain" else run_trl(args)
        print("RESULT " + json.dumps(res))
        return

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "WANDB_DISABLED": "true", "POSTTRAIN_QUIET": "1"}
    base = [sys.executable, os.path.abspath(__file__), "--model", args.model, "--steps", str(args.steps),
            "--warmup", str(args.warmup), "--batch", str(args.batch), "--micro", str(args.micro),
            "--lr", str(args.lr), "--max-length", str(args.max_length), "--eval-rows", str(args.eval_rows), "--threads", str(args.threads)] + (["--trl-bf16"] if args.trl_bf16 else []) + (["--gradient-checkpointing"] if args.gradient_checkpointing else [])
    results: dict[str, list[dict]] = {"posttrain": [], "trl": []}
    for r in range(args.rounds):
        for fw in (("posttrain", "trl") if r % 2 == 0 else ("trl", "posttrain")):
            proc = subprocess.run(base + ["--only", fw], env=env, capture_output=True, text=True)
            line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
                raise SystemExit(f"{fw} run failed (exit {proc.returncode})")
            res = json.loads(line[len("RESULT "):])
            results[fw].append(res)
            print(f"round {r + 1} {fw:9s}: {res['tokens_per_s']:9.0f} tok/s  peak RSS {res['peak_rss_mb']:7.0f} MB  "
                  f"final loss {res['losses'][-1]:.4f}  held-out {res['heldout_loss']:.4f}", flush=True)

    def med(fw, key):
        return statistics.median(r[key] for r in results[fw])

    pt, tr = results["posttrain"][0], results["trl"][0]
    print()
    print(f"model {args.model} ({pt['params'] / 1e6:.2f}M params), {args.batch} sequences/step"
          f"{f' in micro-batches of {args.micro}' if args.micro else ''}, {args.steps} measured steps after "
          f"{args.warmup} warm-up, lr {args.lr} cosine->10%, {pt['threads']} torch threads; "
          f"gradient checkpointing {'on' if args.gradient_checkpointing else 'off'} in both; "
          f"TRL {'bf16 autocast' if args.trl_bf16 else 'fp32'} {tr['version']} (transformers {tr['transformers']}, torch {tr['torch']}); medians of {args.rounds} runs each")
    same_tokens = pt["tokens_per_step"] == tr["tokens_per_step"]
    print(f"identical real tokens per step in both: {same_tokens} ({sum(pt['tokens_per_step'])} tokens in all)")
    hdr = f"{'framework':10s} {'tokens/s':>10s} {'s/step':>8s} {'MFU':>7s} {'peak RSS MB':>12s} {'train +RSS MB':>14s} {'loss step1':>11s} {'final loss':>11s} {'last5 mean':>11s} {'held-out':>9s}"
    print(hdr)
    print("-" * len(hdr))
    for fw in ("posttrain", "trl"):
        r0 = results[fw][0]
        last5 = statistics.mean(statistics.median(r["losses"][i] for r in results[fw]) for i in range(-5, 0))
        print(f"{fw:10s} {med(fw, 'tokens_per_s'):10.0f} {med(fw, 'step_s'):8.3f} {med(fw, 'mfu') * 100:6.2f}% "
              f"{med(fw, 'peak_rss_mb'):12.0f} {med(fw, 'train_rss_increase_mb'):14.0f} {r0['losses'][0]:11.4f} "
              f"{statistics.median(r['losses'][-1] for r in results[fw]):11.4f} "
              f"{last5:11.4f} {med(fw, 'heldout_loss'):9.4f}")
    ratios = [a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(results["posttrain"], results["trl"])]
    print(f"per-round speed-ups: {', '.join(f'{x:.2f}x' for x in ratios)}")
    print(f"memory: posttrain peak RSS {med('posttrain', 'peak_rss_mb') / med('trl', 'peak_rss_mb'):.2f}x TRL's")
    print(f"speed-up vs TRL: {statistics.median(ratios):.1f}x")


if __name__ == "__main__":
    main()
