import json

import torch

from posttrain.cli import main


def test_demo_writes_report_plots_and_summary_for_every_stage(tmp_path):
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "--model", "tiny-llama:d=32,l=2,h=2", "--sft_steps", "4",
               "--sequences_per_step", "8", "--eval_problems", "4", "--dpo_steps", "1", "--dpo_problems", "8",
               "--rl_steps", "1", "--scaling_label_problems", "2", "--scaling_solutions", "2", "--scaling_rollouts", "1",
               "--scaling_prm_steps", "1", "--scaling_problems", "2", "--scaling_k", "1,2", "--scaling_beams", "1x2",
               "--scaling_beam_max_steps", "2",
               "--progress", "false"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["stages"]) == ["sft", "dpo", "rl", "scaling"]
    assert summary["stages"]["sft"]["steps"] == 4
    for stage in summary["stages"].values():
        assert 0.0 <= stage["accuracy"] <= 1.0 and stage["before"] is not None
    report = (out / "report.md").read_text()
    assert "| sft |" in report and "| dpo |" in report and "| rl |" in report and "| scaling |" in report
    assert (out / "curves.png").stat().st_size > 1000 and (out / "rl_curves.png").stat().st_size > 1000
    assert [json.loads(l)["step"] for l in open(out / "sft" / "metrics.jsonl") if '"loss"' in l] == [1, 2, 3, 4]
    scaling = summary["stages"]["scaling"]
    assert scaling["weak_step"] == 4  # no evaluation reached the target: the last one is the closest
    assert [(r["method"], r["budget"]) for r in scaling["rows"]] == [
        ("greedy", 1), *[(m, k) for k in (1, 2) for m in ("maj@k", "prm_best_of_k", "prm_weighted_vote")], ("prm_beam_search", 2)]
    assert list(scaling["paired"]) == ["maj@k@2 - greedy@1", "prm_best_of_k@2 - maj@k@2", "prm_beam_search@2 - maj@k@2"]
    assert "## Test-time scaling" in report and "| prm_beam_search | 2 |" in report and "scaling/scaling.png" in report
    assert (out / "scaling" / "scaling.png").stat().st_size > 1000 and (out / "scaling" / "prm" / "labels.jsonl").exists()


def test_demo_weak_snapshot_is_the_step_closest_to_the_target(tmp_path, monkeypatch):
    """Snapshots every 2 steps between the last evaluation below the target (0.5) and the first above
    it; the step in between that was not evaluated is evaluated at the end, and the model keeps its weights."""
    import dataclasses

    import posttrain.trainers.common as common
    from posttrain.demo import DemoConfig, _sft_config, _SnapshotSFT
    from posttrain.trainers.sft import SFTTrainer

    scripted = {0: 0.0, 4: 0.1, 8: 0.9, 12: 0.95}
    monkeypatch.setattr(SFTTrainer, "evaluate", lambda self: {"eval/accuracy": scripted[self.step]})
    cfg = DemoConfig(out=str(tmp_path), model="tiny-llama:d=32,l=1,h=2", sft_steps=12, sft_eval_every=4,
                     sft_target_accuracy=0.0, sequences_per_step=2, eval_problems=4, progress=False)
    sft_cfg = _sft_config(cfg, tmp_path)
    sft_cfg = dataclasses.replace(sft_cfg, data=dataclasses.replace(sft_cfg.data, train_rows=200))
    tr = _SnapshotSFT(sft_cfg, True, 2, 0.5)
    evaluated = []

    def fake_eval(model, *a, **k):
        step = next(s for s, w in tr.snapshots.items() if all(torch.equal(w[n], v) for n, v in model.state_dict().items()))
        evaluated.append(step)
        return {"accuracy": 0.45}

    monkeypatch.setattr(common, "exact_match_eval", fake_eval)
    tr.evaluate()
    tr.train()
    assert sorted(tr.snapshots) == [4, 6, 8]
    final = {n: v.clone() for n, v in tr.model.state_dict().items()}
    step, acc, state = tr.weak_snapshot()
    assert (step, acc, evaluated) == (6, 0.45, [6])
    assert all(torch.equal(final[n], v) for n, v in tr.model.state_dict().items())
    assert not torch.equal(state["lm_head.weight"], final["lm_head.weight"])
