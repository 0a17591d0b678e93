"""Test-time scaling on the demo's task and policy, with a PRM trained on automatic labels.

1. SFT: the demo's run (`posttrain.demo`: tiny Llama d=128,l=4 from scratch on
   `addition:scratchpad=2`, same config and seed), stopped at the same 95% target. Held-out greedy
   accuracy is checked every 50 steps as in the demo, and every --fine-every steps once it passes
   10%; each checked model is saved (`sft/step-N`).
2. Weak policy: the saved step whose greedy accuracy is closest to --weak-acc (the policy to scale);
   strong model: the end of the run.
3. `posttrain prm`: a PRM initialised from the strong model, trained on Math-Shepherd automatic
   labels (Wang et al. 2024): the weak policy samples the solutions (`--prm.solution_policy`), and
   the strong model, as the completer (`--prm.policy`), rolls out from each step prefix. The head
   reads the separator's hidden state and the step's and prefix's log-likelihoods under the
   backbone (`--prm.likelihood_features`); the backbone is frozen (`--prm.freeze_backbone`).
   `--prm-plain` trains the plain head instead (hidden state only, backbone fine-tuned).
4. `posttrain.eval.scaling.scaling_table` with the weak policy: greedy vs maj@k vs PRM best-of-k vs
   PRM-weighted vote vs PRM beam search, accuracy and generated tokens, on --problems held-out
   problems drawn with --problem-seed (not the 200 used to pick the weak step), plus a PNG.

    python benchmarks/scaling_task.py --out runs/bench_scaling
    python benchmarks/scaling_task.py --out runs/bench_scaling --problems 1000 --beams --scaling-dir scaling_1000

Stages are cached in --out (delete a stage's folder or file to redo it); the second command reuses
the SFT run and the PRM, and compares greedy, maj@k and the PRM's best-of-k on more problems.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from posttrain.cli import main as cli_main
from posttrain.demo import DemoConfig, _sft_config
from posttrain.eval.scaling import paired_comparison, scaling_markdown, scaling_table
from posttrain.models import load_model_and_tokenizer
from posttrain.models.prm import PRMScorer, load_prm
from posttrain.trainers.sft import SFTTrainer


def sft_run(out: Path, args, demo: DemoConfig) -> dict:
    """The demo's SFT run, saving every checked step; returns {step: greedy accuracy} (also in sft/evals.json)."""
    done = out / "sft" / "evals.json"
    if done.exists():
        return {int(k): v for k, v in json.loads(done.read_text()).items()}
    cfg = _sft_config(demo, out)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, eval_every=0, progress=False))
    tr = SFTTrainer(cfg)
    evals: dict[int, float] = {}
    t0 = time.perf_counter()
    while tr.step < cfg.train.max_steps:
        m = tr.train_step()
        every = args.fine_every if evals and max(evals.values()) >= 0.1 else demo.sft_eval_every
        if tr.step % every == 0:
            acc = tr.evaluate()["eval/accuracy"]
            evals[tr.step] = acc
            tr.model.save_pretrained(out / "sft" / f"step-{tr.step}")
            tr.tokenizer.save_pretrained(out / "sft" / f"step-{tr.step}")
            print(f"sft step {tr.step}: loss {m['loss']:.3f} held-out greedy {acc:.3f} ({time.perf_counter() - t0:.0f}s)", flush=True)
            if acc >= demo.sft_target_accuracy:
                break
    done.write_text(json.dumps(evals))
    return evals


def train_prm(out: Path, weak: Path, strong: Path, args, task: str) -> Path:
    if not (out / "prm" / "checkpoints" / "latest").exists():
        rc = cli_main([
            "prm", "--model", str(strong), "--prm.policy", str(strong), "--prm.solution_policy", str(weak),
            "--data", f"task:{task}", "--out", str(out / "prm"), "--max-steps", str(args.prm_steps),
            "--lr", str(args.prm_lr), "--optim.warmup_steps", "20", "--prm.label_problems", str(args.label_problems),
            "--prm.solutions_per_problem", str(args.solutions), "--prm.rollouts_per_step", str(args.rollouts),
            "--prm.labels", args.labels, "--prm.label_temperature", str(args.label_temperature),
            "--prm.label_max_new_tokens", "64", "--prm.sequences_per_step", "32", "--prm.sequences_per_microbatch", "32",
            "--train.progress", "false", "--train.eval_every", "100",
            "--prm.likelihood_features", str(not args.prm_plain), "--prm.freeze_backbone", str(not args.prm_plain),
        ])
        if rc:
            raise SystemExit(f"posttrain prm failed ({rc})")
    return out / "prm"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/bench_scaling")
    ap.add_argument("--task", default=None, help="task spec (default: the demo's)")
    ap.add_argument("--sft-steps", type=int, default=None, help="SFT schedule length (default: the demo's)")
    ap.add_argument("--strong", default=None, help="a model folder to use as the PRM's backbone and completer "
                    "instead of the SFT run's last step (e.g. a longer run of the same recipe)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--fine-every", type=int, default=10)
    ap.add_argument("--weak-acc", type=float, default=0.3)
    ap.add_argument("--label-problems", type=int, default=1500)
    ap.add_argument("--solutions", type=int, default=2)
    ap.add_argument("--rollouts", type=int, default=2)
    ap.add_argument("--labels", default="soft")
    ap.add_argument("--label-temperature", type=float, default=0.5)
    ap.add_argument("--prm-plain", action="store_true", help="no likelihood features; fine-tune the backbone")
    ap.add_argument("--prm-steps", type=int, default=300)
    ap.add_argument("--prm-lr", type=float, default=1e-2)
    ap.add_argument("--temperature", type=float, default=0.5)
    ap.add_argument("--problems", type=int, default=300)
    ap.add_argument("--problem-seed", type=int, default=7)
    ap.add_argument("--k", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--beams", nargs="*", default=["2x2", "4x4"], help="NUM_BEAMSxEXPANSIONS")
    ap.add_argument("--scaling-dir", default="scaling", help="folder under --out for the table, plot and paired stats")
    ap.add_argument("--stop-after", choices=["sft", "prm", "scaling"], default="scaling")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    demo = DemoConfig()
    demo = dataclasses.replace(demo, task=args.task or demo.task, sft_steps=args.sft_steps or demo.sft_steps)
    t0 = time.perf_counter()
    evals = sft_run(out, args, demo)
    strong_step = max(evals)
    weak_step = min((s for s in evals if s != strong_step), key=lambda s: (abs(evals[s] - args.weak_acc), s))
    weak, strong = out / "sft" / f"step-{weak_step}", Path(args.strong or out / "sft" / f"step-{strong_step}")
    print(f"weak policy: step {weak_step} (greedy {evals[weak_step]:.3f}); strong: "
          f"{args.strong or f'step {strong_step} (greedy {evals[strong_step]:.3f})'} ({time.perf_counter() - t0:.0f}s)", flush=True)
    if args.stop_after == "sft":
        return
    prm_dir = train_prm(out, weak, strong, args, demo.task)
    print(f"prm: {prm_dir} ({time.perf_counter() - t0:.0f}s)", flush=True)
    if args.stop_after == "prm":
        return
    model, tok = load_model_and_tokenizer(str(weak))
    prm, prm_tok = load_prm(prm_dir)
    beams = tuple(tuple(int(x) for x in b.split("x")) for b in args.beams)
    rows, png = scaling_table(model, tok, PRMScorer(prm, prm_tok, batch_size=64), demo.task, args.problems,
                              out_dir=out / args.scaling_dir, ks=tuple(args.k), beams=beams, max_new_tokens=64,
                              temperature=args.temperature, seed=0, problem_seed=args.problem_seed)
    (out / args.scaling_dir / "setup.json").write_text(json.dumps({
        "weak_step": weak_step, "weak_greedy_200": evals[weak_step], "strong_step": strong_step, "strong": str(strong),
        "strong_greedy_200": evals[strong_step], "args": vars(args)}, indent=1))
    print(scaling_markdown(rows))
    by = {(r["method"], r["budget"]): r for r in rows}
    K = max(args.k)
    pairs = [(("maj@k", K), ("greedy", 1)), (("prm_best_of_k", K), ("maj@k", K))]
    pairs += [(("prm_beam_search", nb * ex), ("maj@k", K)) for nb, ex in beams if nb * ex == K]
    stats = {}
    for a, b in pairs:
        c = paired_comparison(by[a], by[b])
        stats[f"{a[0]}@{a[1]} - {b[0]}@{b[1]}"] = c
        print(f"{a[0]}@{a[1]} - {b[0]}@{b[1]}: {c['difference']:+.3f} (95% CI {c['ci95'][0]:+.3f}..{c['ci95'][1]:+.3f}; "
              f"solved only by the first {c['only_a']}, only by the second {c['only_b']})")
    (out / args.scaling_dir / "paired.json").write_text(json.dumps(stats, indent=1))
    print(f"plot: {png}; total {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
