import json

from posttrain.cli import main


def test_demo_writes_report_plots_and_summary_for_every_stage(tmp_path):
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "--model", "tiny-llama:d=32,l=2,h=2", "--sft_steps", "4",
               "--sequences_per_step", "8", "--eval_problems", "4", "--dpo_steps", "1", "--dpo_problems", "8",
               "--rl_steps", "1", "--progress", "false"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["stages"]) == ["sft", "dpo", "rl"]
    assert summary["stages"]["sft"]["steps"] == 4
    for stage in summary["stages"].values():
        assert 0.0 <= stage["accuracy"] <= 1.0 and stage["before"] is not None
    report = (out / "report.md").read_text()
    assert "| sft |" in report and "| dpo |" in report and "| rl |" in report
    assert (out / "curves.png").stat().st_size > 1000 and (out / "rl_curves.png").stat().st_size > 1000
    assert [json.loads(l)["step"] for l in open(out / "sft" / "metrics.jsonl") if '"loss"' in l] == [1, 2, 3, 4]
