"""`scripts/gpu_check.sh --cpu`: the GPU check script end to end on a tiny model on the CPU (posttrain's
sft / dpo / GRPO in fp32 and bf16, the resume check, eval, and TRL's side when trl is importable)."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_cpu(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",  # python3 = this interpreter
           "POSTTRAIN_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", "--cpu"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert (tmp_path / "out" / "gpu_check.md").exists()
    rows = {(r["stage"], r["metric"]): r for r in report["table"]}
    rates = {"sft": "tokens/s", "dpo": "pairs/s", "grpo": "completions/s"}
    for stage, metric in rates.items():
        row = rows[(stage, metric)]
        assert row["posttrain_fp32"] > 0
        if report["skipped"]["bf16"] and "skipped" in report["skipped"]["bf16"]:
            assert row["posttrain_bf16"] is None  # skipped, and the report says why
        else:
            assert row["posttrain_bf16"] > 0
        if report["skipped"]["trl"] is None:
            assert row["trl_bf16"] > 0 and row["ratio"] > 0
        else:
            assert row["trl_bf16"] is None and "TRL" in proc.stdout
    checks = {c["name"]: c["status"] for c in report["checks"]}
    assert checks["sft resume"] == "PASS"
    assert checks["eval"] == "PASS"
    for stage, what in (("sft", "loss"), ("dpo", "loss"), ("grpo", "entropy")):
        assert checks[f"{stage} bf16 vs fp32 {what}"] in ("PASS", "SKIP")
    assert "stage | metric | posttrain bf16 | posttrain fp32 | TRL bf16 | posttrain/TRL" in proc.stdout
