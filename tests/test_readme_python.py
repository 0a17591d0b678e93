"""The README's Python examples run as written, each in a fresh folder, and produce what they claim:
a run folder with metrics for every step and a saved model that loads."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = "<!-- python-examples:"


def python_blocks() -> list[str]:
    text = README.read_text()
    section = text[text.index(MARKER):]
    section = section[: section.index("\n## ")]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def _run(block: str, cwd: Path) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", block], cwd=cwd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _check_run(folder: Path, steps: int) -> None:
    metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m or "reward_mean" in m] == list(range(1, steps + 1))
    ck = folder / "checkpoints" / f"step-{steps:07d}"
    assert (ck / "config.json").exists() and (ck / "model.safetensors").exists()
    from posttrain.models import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(str(folder))  # a run folder loads as its latest checkpoint
    assert model.config.hidden_size == 32 and tok("1+1=")["input_ids"]


def test_readme_has_the_three_python_examples():
    blocks = python_blocks()
    assert len(blocks) == 3
    assert "SFTTrainer" in blocks[0] and "train_data=rows" in blocks[0]
    assert "PreferenceTrainer" in blocks[1] and 'loss="dpo"' in blocks[1]
    assert "RLTrainer" in blocks[2] and "def exact_sum(completions, target, **kwargs)" in blocks[2]


@pytest.mark.parametrize("index, folder, steps, printed", [
    (0, "runs/sft", 20, r"held-out loss \d+\.\d{3}, saved runs/sft/checkpoints/step-0000020"),
    (1, "runs/dpo", 10, r"held-out preference accuracy \d\.\d\d, saved runs/dpo/checkpoints/step-0000010"),
    (2, "runs/grpo", 3, r"mean reward \d\.\d\d, saved runs/grpo/checkpoints/step-0000003"),
])
def test_readme_python_example_runs(tmp_path, index, folder, steps, printed):
    out = _run(python_blocks()[index], tmp_path)
    assert re.search(printed, out), out[-2000:]
    _check_run(tmp_path / folder, steps)
    saved = (tmp_path / folder / "config.yaml").read_text()
    assert ("python:train_data" in saved) == (index < 2)  # rows from Python are recorded as such
