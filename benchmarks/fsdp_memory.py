"""Per-rank peak memory of data-parallel SFT on SmolLM2-135M: one process vs 2 ranks of ddp vs fsdp2.

Each configuration runs `posttrain sft` as a user does (one process, or `torchrun --nproc_per_node 2`
with `--runtime.parallel ddp|fsdp2`, gloo on this CPU) on the same rows, global batch and steps. A
watcher samples the resident set size (RSS) of every worker process every 50 ms (`/proc/PID/status`
VmRSS and, at exit, the kernel's own high-water mark VmHWM) and reports each rank's peak. With FSDP2,
each rank keeps 1/N of the parameters, gradients and AdamW moments (fp32: 4 + 4 + 8 bytes per
parameter, so 16 x 134.5M = 2.15 GB in one process), plus one decoder layer's gathered parameters and
the activations of its micro-batch; DDP keeps all of it on every rank.

    python benchmarks/fsdp_memory.py [--steps 3] [--batch 4] [--max-length 256]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GSM8K = "../shared/data/gsm8k/train.jsonl"  # run from the repository root


def _status(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, ValueError):
        pass
    return 0


def _children(pid: int) -> list[int]:
    out = []
    try:
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            out.append(int(child))
            out += _children(int(child))
    except FileNotFoundError:
        pass
    return out


def run(cmd: list[str], env: dict) -> tuple[int, dict[int, int], float]:
    """(exit code, peak RSS in bytes per python worker pid, wall seconds)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peaks: dict[int, int] = {}
    while proc.poll() is None:
        for pid in [proc.pid] + _children(proc.pid):
            peaks[pid] = max(peaks.get(pid, 0), _status(pid, "VmHWM"), _status(pid, "VmRSS"))
        time.sleep(0.05)
    err = proc.stderr.read()
    if proc.returncode:
        print(err[-3000:], file=sys.stderr)
    return proc.returncode, peaks, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=4, help="global sequences per step")
    p.add_argument("--micro", type=int, default=2, help="sequences per micro-batch (per rank)")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--data", default=GSM8K)
    args = p.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["sft", "--model", args.model, "--data", args.data, "--data.columns", "question=prompt,answer=completion",
              "--data.train_rows", str(args.batch * args.steps), "--data.eval_rows", "0", "--data.max_length", str(args.max_length),
              "--max-steps", str(args.steps), "--sft.sequences_per_step", str(args.batch),
              "--sft.sequences_per_microbatch", str(args.micro), "--train.progress", "false", "--train.save_every", "0"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "posttrain"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, cmd in (("one process", [sys.executable, "-m", "posttrain", *common]),
                          ("2 ranks, ddp", [*torchrun, *common, "--runtime.parallel", "ddp"]),
                          ("2 ranks, fsdp2", [*torchrun, *common, "--runtime.parallel", "fsdp2"])):
            rc, peaks, wall = run([*cmd, "--out", str(Path(tmp) / name.replace(" ", "_").replace(",", ""))], env)
            # the workers: the python processes that ran posttrain (torchrun's launcher is far smaller)
            workers = sorted(peaks.values(), reverse=True)[: 1 if name == "one process" else 2]
            rows.append((name, rc, workers, wall))
            print(f"{name}: exit {rc}, peak RSS per worker {[round(w / 2**30, 2) for w in workers]} GiB, {wall:.0f} s", flush=True)
    base = rows[0][2][0]
    print("\n| run | peak RSS per rank (GiB) | vs one process | wall (s) |\n|---|---|---|---|")
    for name, rc, workers, wall in rows:
        ranks = ", ".join(f"{w / 2**30:.2f}" for w in workers)
        print(f"| {name} | {ranks} | {max(workers) / base:.2f}x | {wall:.0f} |" + ("" if rc == 0 else f" (exit {rc})"))


if __name__ == "__main__":
    main()
