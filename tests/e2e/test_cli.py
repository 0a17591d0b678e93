import json

from posttrain.cli import main


def test_help_lists_stages(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for stage in ("sft", "demo", "doctor"):
        assert f"  {stage}" in out


def test_unknown_stage_and_key(capsys):
    assert main(["sfft"]) == 2
    assert "did you mean 'sft'" in capsys.readouterr().err
    assert main(["sft", "--max-stepz", "3"]) == 2
    assert "did you mean 'max_steps'" in capsys.readouterr().err


def test_sft_runs_from_cli(tmp_path):
    out = tmp_path / "run"
    rc = main(["sft", "--model", "tiny-llama:d=32,l=2,h=2", "--data", "task:addition", "--data.train_rows", "32",
               "--data.eval_rows", "4", "--max-steps", "3", "--out", str(out), "--sft.sequences_per_step", "8"])
    assert rc == 0
    lines = [json.loads(l) for l in open(out / "metrics.jsonl")]
    assert [l["step"] for l in lines if "loss" in l] == [1, 2, 3]
    assert "eval/accuracy" in lines[-1]
    assert (out / "checkpoints" / "step-0000003" / "model.safetensors").exists()
