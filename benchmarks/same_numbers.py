"""The single-process path gives the same numbers as an earlier commit: every logged metric of short
sft, dpo, rm and rl (grpo, ppo, rloo, reinforce_pp) runs on a tiny model, this tree against a
`git worktree` of `--commit`, compared value by value (timings and rates excluded).

    python benchmarks/same_numbers.py --commit 91cc729

Each run is a subprocess with one thread (`OMP_NUM_THREADS=1`) and ``PYTHONPATH`` pointing at the tree
it measures, started from an empty folder, so nothing but the code differs. Prints the largest
absolute difference per run; exits 1 if any run differs by more than --atol (default 0: bit-identical).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = ["--model", "tiny-llama:d=32,l=2,h=2", "--train.progress", "false", "--lr", "1e-3"]
OFFLINE = ["--data", "task:addition", "--data.train_rows", "64", "--data.eval_rows", "8", "--max-steps", "4"]
# a length-shaped reward (the overlong penalty, stop strings) gives RL groups reward spread on a random model
ONLINE = ["--data", "task:addition:digits=1", "--data.train_rows", "64", "--data.eval_rows", "8", "--max-steps", "3",
          "--rl.prompts_per_step", "4", "--rl.samples_per_prompt", "8", "--rl.max_new_tokens", "6", "--rl.overlong_buffer", "5",
          "--rl.stop", "1,7", "--rl.temperature", "1.5"]
RUNS = {"sft": ["sft", *MODEL, *OFFLINE], "dpo": ["dpo", *MODEL, *OFFLINE], "rm": ["rm", *MODEL, *OFFLINE],
        **{f"rl-{a}": ["rl", "--algo", a, *MODEL, *ONLINE] for a in ("grpo", "ppo", "rloo", "reinforce_pp")}}


def run_all(src: Path, out: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(src / "src"), "OMP_NUM_THREADS": "1"}
    for name, args in RUNS.items():
        r = subprocess.run([sys.executable, "-m", "posttrain", *args, "--out", str(out / name)], env=env, cwd=out,
                           capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(f"{src}: {name} failed:\n{r.stderr[-2000:]}")


def metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--commit", required=True)
    p.add_argument("--atol", type=float, default=0.0)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        old, a, b = Path(tmp) / "old", Path(tmp) / "a", Path(tmp) / "b"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(old), args.commit], check=True,
                       capture_output=True)
        try:
            a.mkdir(), b.mkdir()
            run_all(old, a)
            run_all(ROOT, b)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], capture_output=True)
        worst_all = 0.0
        for name in RUNS:
            ma, mb = metrics(a / name / "metrics.jsonl"), metrics(b / name / "metrics.jsonl")
            worst, missing = 0.0, set()
            for x, y in zip(ma, mb):
                for k, v in x.items():
                    if k == "time" or k.startswith("time/") or k.endswith("_per_s") or not isinstance(v, (int, float)):
                        continue
                    if k not in y:
                        missing.add(k)
                        continue
                    worst = max(worst, abs(v - y[k]))
            worst_all = max(worst_all, worst)
            print(f"{name:16s} {len(ma)} / {len(mb)} logged steps, largest difference {worst:.3g}"
                  + (f", keys only in {args.commit}: {sorted(missing)}" if missing else ""))
    raise SystemExit(0 if worst_all <= args.atol and all(True for _ in RUNS) else 1)


if __name__ == "__main__":
    main()
