"""A run whose stdout is a file prints plain progress lines (no bar): step/total, loss, lr, throughput,
the latest eval metric and the ETA, on the cadence `train.log_every` / `train.progress_every_s` set."""
import io
import os
import re
import subprocess
import sys

from posttrain.logging import ProgressBar

LINE = re.compile(r"^sft step (\d+)/12 \((\d+)%\) \| loss ([\d.]+) \| tok/s \d+ \| lr ([\d.e-]+) \| steps/s [\d.e+]+"
                  r"(?: \| (eval/\w+) ([\d.]+) @(\d+))? \| elapsed \d+:\d\d:\d\d(?: \| eta (\d+):(\d\d):(\d\d))?$")


def test_sft_with_stdout_in_a_file_prints_progress_lines(tmp_path):
    log = tmp_path / "run.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "posttrain", "sft", "--model", "tiny-llama:d=32,l=2,h=2", "--data", "task:addition:digits=1",
           "--data.train_rows", "64", "--data.eval_rows", "8", "--max-steps", "12", "--train.log_every", "4",
           "--train.progress_every_s", "0", "--train.eval_every", "6", "--sft.sequences_per_step", "8",
           "--sft.sequences_per_microbatch", "8", "--sft.eval_max_new_tokens", "2", "--out", str(tmp_path / "sft")]
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln for ln in log.read_text().splitlines() if ln.startswith("sft step")]
    parsed = [LINE.match(ln) for ln in lines]
    assert all(parsed), lines
    steps = [int(m.group(1)) for m in parsed]
    assert steps == [1, 4, 6, 8, 12]  # the first step, every log_every=4 steps, the eval at 6, the last
    assert [int(m.group(2)) for m in parsed] == [round(100 * s / 12) for s in steps]
    assert parsed[0].group(5) is None and parsed[2].group(5) == "eval/accuracy" and parsed[2].group(7) == "6"
    assert parsed[-1].group(7) == "6"  # the latest eval is carried on later lines
    assert parsed[-1].group(8) is None and all(m.group(8) is not None for m in parsed[:-1])  # no ETA once done
    lrs = [float(m.group(4)) for m in parsed]
    assert lrs[0] == 1e-3 and lrs == sorted(lrs, reverse=True)  # cosine schedule from the default lr 1e-3
    assert "━" not in log.read_text()  # no progress bar in the log


def test_line_cadence_by_seconds_and_disabled(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("posttrain.logging.time.perf_counter", lambda: clock[0])
    out = io.StringIO()
    bar = ProgressBar(100, "rl/grpo", True, every=1, every_s=30.0, stream=out)
    for step in range(1, 101):
        clock[0] += 1.0  # one step per second
        bar.update(step, metrics={"lr": 1e-5, **({"eval/accuracy": 0.5} if step == 45 else {})}, reward=0.25)
    steps = [int(re.match(r"rl/grpo step (\d+)/100", ln).group(1)) for ln in out.getvalue().splitlines()]
    assert steps == [1, 31, 45, 75, 100]  # >= 30 s apart, plus the eval step and the last
    last = out.getvalue().splitlines()[-1]
    assert "reward 0.25" in last and "lr 1e-05" in last and "eval/accuracy 0.5 @45" in last
    assert "eta" in out.getvalue().splitlines()[1] and "eta 0:01:09" in out.getvalue().splitlines()[1]
    quiet = io.StringIO()
    off = ProgressBar(10, "sft", False, stream=quiet)
    off.update(10, loss=1.0)
    assert quiet.getvalue() == ""


RL_LINE = re.compile(r"^rl/grpo step (\d+)/6 \((\d+)%\) \| reward ([\d.e+-]+|nan) \| kl ([\d.e+-]+) \| lr ([\d.e-]+)"
                     r" \| steps/s [\d.e+]+(?: \| (eval/\w+) ([\d.]+) @(\d+))? \| elapsed \d+:\d\d:\d\d"
                     r"(?: \| eta \d+:\d\d:\d\d)?$")


def test_rl_with_stdout_in_a_file_prints_progress_lines_with_lr_and_eval(tmp_path):
    log = tmp_path / "run.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "posttrain", "rl", "--model", "tiny-llama:d=32,l=2,h=2", "--data", "task:addition:digits=1",
           "--data.train_rows", "32", "--data.eval_rows", "4", "--max-steps", "6", "--train.log_every", "2",
           "--train.progress_every_s", "0", "--train.eval_every", "3", "--rl.prompts_per_step", "4",
           "--rl.samples_per_prompt", "2", "--rl.max_new_tokens", "4", "--out", str(tmp_path / "rl")]
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln for ln in log.read_text().splitlines() if ln.startswith("rl/grpo step")]
    parsed = [RL_LINE.match(ln) for ln in lines]
    assert all(parsed), lines
    steps = [int(m.group(1)) for m in parsed]
    assert steps == [1, 2, 3, 4, 6]  # the first step, every log_every=2 steps, the eval at 3, the last
    assert parsed[0].group(6) is None and parsed[2].group(6) == "eval/accuracy" and parsed[2].group(8) == "3"
    assert parsed[-1].group(8) == "3"  # the latest eval is carried on later lines
    assert all(float(m.group(5)) > 0 for m in parsed)  # the step's learning rate
    assert "━" not in log.read_text()
