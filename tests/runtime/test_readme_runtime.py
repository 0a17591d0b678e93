"""The README's GPU / multi-process commands, run as written on this CPU machine: `cuda` becomes `cpu`,
8 processes per node become 2 (1 per node for the two-node line, whose two launches run side by
side on localhost), the SmolLM2 model becomes a tiny one, and each run is shrunk to 2 steps."""
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(sys.platform == "win32", reason="torchrun with gloo on Linux/macOS only")]

ROOT = Path(__file__).resolve().parents[2]
SHRINK = {
    "sft": ["--data.train_rows", "16", "--data.eval_rows", "0", "--sft.sequences_per_step", "4", "--max-steps", "2"],
    "rl": ["--data.train_rows", "16", "--data.eval_rows", "0", "--rl.prompts_per_step", "2", "--rl.samples_per_prompt", "2",
           "--rl.max_new_tokens", "4", "--max-steps", "2"],
}


def readme_runtime_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- runtime-examples", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line) for line in block.splitlines() if line.strip() and not line.startswith("#")]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _local(words: list[str], tmp: Path, port: int) -> list[str]:
    out, i = [], 0
    while i < len(words):
        w, nxt = words[i], words[i + 1] if i + 1 < len(words) else None
        if w == "torchrun":
            out += [sys.executable, "-m", "torch.distributed.run"]
        elif w == "--nproc_per_node":
            out += [w, "1" if "--nnodes" in words else "2"]
            i += 1
        elif w == "--master_addr":
            out += [w, "127.0.0.1"]
            i += 1
        elif w == "--master_port":
            out += [w, str(port)]
            i += 1
        elif w == "--model" and nxt == "smollm2-135m-instruct":
            out += [w, "tiny-llama:d=32,l=1,h=2"]
            i += 1
        elif w == "--runtime.device":
            out += [w, "cpu"]
            i += 1
        elif w == "--out":
            out += [w, str(tmp / nxt)]
            i += 1
        else:
            out.append(w)
        i += 1
    stage = next(w for w in out if w in SHRINK)
    return out + SHRINK[stage] + ["--train.progress", "false"]


def test_readme_runtime_commands_run_on_cpu(tmp_path):
    cmds = readme_runtime_commands()
    assert [c[0] for c in cmds] == ["posttrain", "torchrun", "torchrun", "torchrun"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for words in cmds:
        if words[0] == "posttrain":
            words = [sys.executable, "-m", "posttrain", *words[1:]]
        port = _free_port()
        if "--nnodes" in words:  # node 0 as written, node 1 the same command with its rank
            runs = [_local(words, tmp_path, port)]
            second = list(runs[0])
            second[second.index("--node_rank") + 1] = "1"
            runs.append(second)
        else:
            runs = [_local(words, tmp_path, port)]
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
                 for cmd in runs]
        for proc, cmd in zip(procs, runs):
            _, err = proc.communicate(timeout=180)
            assert proc.returncode == 0, (shlex.join(cmd), err[-2500:])
        out = Path(runs[0][runs[0].index("--out") + 1])
        assert (out / "checkpoints" / "step-0000002").is_dir(), out
        lines = (out / "metrics.jsonl").read_text().splitlines()
        assert len([line for line in lines if re.search(r'"step": 2\b', line)]) >= 1  # rank 0 logged alone, once per step
