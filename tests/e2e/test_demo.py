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
    start = summary["start"]  # no evaluation reached mid_accuracy: the last SFT step is where dpo and rl start
    assert start["step"] == 4 and 0.0 <= start["accuracy"] <= 1.0
    for name in ("dpo", "rl"):
        s = summary["stages"][name]
        assert s["start_step"] == 4 and s["before"] == start["accuracy"] and s["gain"] == s["accuracy"] - s["before"]
        c = s["control"]  # continued SFT from the same snapshot for the stage's wall time
        assert c["steps"] >= 1 and c["seconds"] >= s["seconds"] and c["gain"] == c["accuracy"] - start["accuracy"]
    report = (out / "report.md").read_text()
    assert report.splitlines()[2] == "![held-out accuracy by stage](accuracy_by_stage.png)"
    assert "| sft |" in report and "| dpo |" in report and "| rl |" in report and "| scaling |" in report
    assert "steps) |" in report  # the control column
    for png in ("accuracy_by_stage.png", "curves.png", "rl_curves.png"):
        assert (out / png).stat().st_size > 1000
    assert [json.loads(l)["step"] for l in open(out / "sft" / "metrics.jsonl") if '"loss"' in l] == [1, 2, 3, 4]
    scaling = summary["stages"]["scaling"]
    assert scaling["weak_step"] == 4  # no evaluation reached the target: the last one is the closest
    assert [(r["method"], r["budget"]) for r in scaling["rows"]] == [
        ("greedy", 1), *[(m, k) for k in (1, 2) for m in ("maj@k", "prm_best_of_k", "prm_weighted_vote")], ("prm_beam_search", 2)]
    assert list(scaling["paired"]) == ["maj@k@2 - greedy@1", "prm_best_of_k@2 - maj@k@2", "prm_beam_search@2 - maj@k@2"]
    assert "## Test-time scaling" in report and "| prm_beam_search | 2 |" in report and "scaling/scaling.png" in report
    assert (out / "scaling" / "scaling.png").stat().st_size > 1000 and (out / "scaling" / "prm" / "labels.jsonl").exists()


def _scripted_trainer(tmp_path, monkeypatch, scripted, targets, every=2):
    import dataclasses

    from posttrain.demo import DemoConfig, _sft_config, _SnapshotSFT
    from posttrain.trainers.sft import SFTTrainer

    monkeypatch.setattr(SFTTrainer, "evaluate", lambda self: {"eval/accuracy": scripted[self.step]})
    cfg = DemoConfig(out=str(tmp_path), model="tiny-llama:d=32,l=1,h=2", sft_steps=12, sft_eval_every=4,
                     sft_target_accuracy=0.0, sequences_per_step=2, eval_problems=4, progress=False)
    sft_cfg = _sft_config(cfg, tmp_path)
    sft_cfg = dataclasses.replace(sft_cfg, data=dataclasses.replace(sft_cfg.data, train_rows=200))
    return _SnapshotSFT(sft_cfg, targets, every)


def test_demo_snapshots_are_the_steps_closest_to_each_target(tmp_path, monkeypatch):
    """Snapshots every 2 steps between the last evaluation below each target and the first at or above
    it; a kept step that was not evaluated is evaluated when picked, and the model keeps its weights."""
    import posttrain.trainers.common as common

    tr = _scripted_trainer(tmp_path, monkeypatch, {0: 0.0, 4: 0.1, 8: 0.9, 12: 0.95}, {"weak": 0.5, "high": 0.92})
    evaluated = []

    def fake_eval(model, *a, **k):
        step = next(s for s, w in tr.snapshots.items() if all(torch.equal(w["model"][n], v) for n, v in model.state_dict().items()))
        evaluated.append(step)
        return {"accuracy": {6: 0.45, 10: 0.93}[step]}

    monkeypatch.setattr(common, "exact_match_eval", fake_eval)
    tr.evaluate()
    tr.train()
    assert sorted(tr.snapshots) == [4, 6, 8, 10, 12] and tr.windows == {"weak": [4, 8], "high": [8, 12]}
    final = {n: v.clone() for n, v in tr.model.state_dict().items()}
    step, acc, state = tr.snapshot("weak")
    assert (step, acc, evaluated) == (6, 0.45, [6])
    assert tr.snapshot("high")[:2] == (10, 0.93) and evaluated == [6, 10]  # the last step (12) is not a candidate
    assert all(torch.equal(final[n], v) for n, v in tr.model.state_dict().items())
    assert not torch.equal(state["model"]["lm_head.weight"], final["lm_head.weight"]) and state["step"] == 6


def test_demo_control_continues_the_sft_run_from_the_snapshot_and_restores_the_trainer(tmp_path, monkeypatch):
    """Continued SFT from the step-4 snapshot for 2 and 4 (fake) seconds of one step each reproduces the
    run's own steps 6 and 8 (weights, optimizer and data position were kept), then the trainer is back at step 12."""
    import posttrain.demo as demo
    import posttrain.trainers.common as common

    tr = _scripted_trainer(tmp_path, monkeypatch, {0: 0.0, 4: 0.1, 8: 0.9, 12: 0.95}, {"mid": 0.5})
    tr.evaluate()
    tr.train()
    assert sorted(tr.snapshots) == [4, 6, 8]
    final, order = {n: v.clone() for n, v in tr.model.state_dict().items()}, tr.order.state()
    seen = []

    def fake_eval(model, *a, **k):
        seen.append(next((s for s, w in tr.snapshots.items()
                          if all(torch.equal(w["model"][n], v) for n, v in model.state_dict().items())), None))
        return {"accuracy": 0.5}

    class Clock:  # every call one second later: one training step per second
        t = 0.0

        @classmethod
        def perf_counter(cls):
            cls.t += 1.0
            return cls.t

    monkeypatch.setattr(common, "exact_match_eval", fake_eval)
    monkeypatch.setattr(demo, "time", Clock)
    out = tr.continue_from(tr.snapshots[4], {"rl": 4.0, "dpo": 2.0})
    assert seen == [6, 8]
    assert {n: (c["steps"], c["seconds"], c["accuracy"]) for n, c in out.items()} == {"dpo": (2, 2.0, 0.5), "rl": (4, 4.0, 0.5)}
    assert tr.step == 12 and tr.order.state() == order
    assert all(torch.equal(final[n], v) for n, v in tr.model.state_dict().items())


def test_demo_agent_stage_reports_success_before_and_after_grpo(tmp_path):
    """`--stages sft,agent`: the agent recipe on its own model, its held-out success in the summary and report."""
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "--model", "tiny-llama:d=32,l=2,h=2", "--sft_steps", "2",
               "--sequences_per_step", "8", "--eval_problems", "6", "--stages", "sft,agent",
               "--agent_model", "tiny-llama:d=32,l=2,h=2", "--agent_sft_steps", "2", "--agent_grpo_steps", "1", "--agent_prompts", "2",
               "--progress", "false"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    agent = summary["stages"]["agent"]
    inner = json.loads((out / "agent" / "summary.json").read_text())
    assert agent["before"] == inner["success_sft"] and agent["accuracy"] == inner["success_grpo"]
    assert inner["sft_steps"] == 2 and inner["grpo_steps"] == 1 and inner["eval_rows"] == 6
    assert sorted(int(k) for k in inner["held_out_curve"]) == [0, 1]  # the SFT start and the one checkpoint
    assert 0 < inner["transcripts"]["kept"] < inner["transcripts"]["rows"] == 300  # the won games only
    report = (out / "report.md").read_text()
    assert "| agent | SFT on transcripts |" in report and "Agent (guess:high=7,max_guesses=3)" in report
