"""The README's CLI examples, run one after the other in a fresh folder (shrunk to a few steps on a
tiny model), all succeed and never overwrite one another's runs."""
import hashlib
import re
import shlex
from pathlib import Path

import pytest

from posttrain.cli import main

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
TINY = "tiny-llama:d=32,l=1,h=2"
SHRINK = {  # appended to each stage's commands (later options win)
    "sft": ["--data.train_rows", "32", "--data.eval_rows", "4", "--data.max_length", "1024", "--sft.sequences_per_step", "4", "--sft.eval_max_new_tokens", "8"],
    "dpo": ["--data.train_rows", "16", "--data.eval_rows", "4", "--pref.pairs_per_step", "4", "--pref.self_generated", "2",
            "--pref.eval_max_new_tokens", "8"],
    "rm": ["--data.train_rows", "16", "--data.eval_rows", "4", "--rm.pairs_per_step", "4", "--data.max_length", "128"],
    "rl": ["--data.train_rows", "16", "--data.eval_rows", "4", "--rl.prompts_per_step", "2", "--rl.samples_per_prompt", "2",
           "--rl.max_new_tokens", "8"],
    "prm": ["--data.train_rows", "8", "--prm.label_problems", "4", "--prm.solutions_per_problem", "2",
            "--prm.rollouts_per_step", "1", "--prm.sequences_per_step", "4", "--prm.label_max_new_tokens", "16"],
    "eval": ["--data.limit", "2", "--sampling.n", "2", "--sampling.ks", "1,2", "--sampling.max_new_tokens", "8"],
    "data": ["--data.limit", "8", "--passrate.k", "2", "--passrate.max_new_tokens", "8"],
    "demo": ["--model", TINY, "--sft_steps", "2", "--sequences_per_step", "4", "--eval_problems", "2", "--stages", "sft"],
}


def readme_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- cli-examples", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    block = block.replace("\\\n", " ")
    cmds = []
    for line in block.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            words = shlex.split(line)
            assert words[0] == "posttrain", line
            cmds.append(words[1:])
    return cmds


def _shrunk(words: list[str]) -> list[str]:
    out, i = [], 0
    while i < len(words):
        w = words[i]
        if w == "--max-steps":
            out += [w, "3" if "--resume" in words else "2"]
            i += 2
            continue
        if w == "--model" and words[i + 1] in ("tiny-llama", "smollm2-135m-instruct"):
            out += [w, TINY]
            i += 2
            continue
        out.append(w.replace("../shared/data", str(SHARED)))
        i += 1
    if "--max-steps" not in out and out[0] in ("sft", "dpo", "rm", "rl", "prm"):
        out += ["--max-steps", "2"]
    if out[0] == "eval" and "gsm8k" in out:
        out += ["--data.path", str(SHARED / "gsm8k" / "test.jsonl")]
    if out[0] == "data" and "--benchmark" in out:  # the default data root is ../shared/data from the CWD
        out += ["--data.root", str(SHARED)]
    quiet = {"export": [], "demo": ["--progress", "false"], "data": ["--progress", "false"]}.get(out[0], ["--train.progress", "false"])
    return out + SHRINK.get(out[0], []) + quiet


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_readme_examples_run_in_sequence_without_overwriting(tmp_path, monkeypatch):
    cmds = readme_commands()
    assert [c[0] for c in cmds][:7] == ["sft", "sft", "dpo", "rm", "rl", "prm", "eval"]
    monkeypatch.chdir(tmp_path)
    seen: dict[str, dict] = {}
    fresh_outs = []
    for words in cmds:
        args = _shrunk(words)
        if any(str(SHARED) in a for a in args) and not SHARED.exists():
            pytest.skip(f"{SHARED} is not here (needed by: posttrain {' '.join(words)})")
        rc = main(args)
        assert rc == 0, f"posttrain {' '.join(args)} exited {rc}"
        out = Path(args[args.index("--out") + 1]) if "--out" in args else Path(f"runs/{args[0]}")
        if "--resume" not in args:
            fresh_outs.append(str(out))
        for prev, snap in seen.items():
            now = _snapshot(Path(prev))
            if Path(prev) == out and "--resume" in args:  # the run it continues: checkpoints kept, metrics extended
                assert all(now[n] == d for n, d in snap.items() if n.startswith("checkpoints/step-") and n in now), args
                continue
            assert now == snap, f"posttrain {' '.join(args)} changed {prev}"
        seen[str(out)] = _snapshot(out)
    assert len(fresh_outs) == len(set(fresh_outs)), fresh_outs  # each new run has a folder of its own
    assert re.search(r"step-0000003", " ".join(seen["runs/sft"]))  # the resumed run reached its new max-steps
