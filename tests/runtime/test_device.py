"""The runtime seam in one process: helpers that are no-ops alone, device and option checks, bf16
(fp32 logits, a clear warning where bf16 is slow), the refusal of stages not wired yet, `--help`."""
import copy

import pytest
import torch

from posttrain.cli import main
from posttrain.config import ConfigError, load_config
from posttrain.configs import DemoConfig, EvalConfig, PRMConfig, RLConfig, RuntimeConfig, SFTConfig
from posttrain.runtime import device as rdev
from posttrain.runtime.device import Runtime, init_runtime, resolve_device, rng_state, set_rng_state
from posttrain.runtime.parallel import keep_fp32, output_head, place_model
from posttrain.runtime.support import check_runtime

pytestmark = pytest.mark.usefixtures("one_thread")


def test_single_process_runtime_is_the_cpu_default():
    rt = init_runtime(RuntimeConfig(device="cpu", parallel="ddp"))  # no torchrun: one rank, nothing wrapped
    assert (rt.rank, rt.world_size, rt.parallel, rt.is_main, rt.distributed) == (0, 1, "none", True, False)
    assert rt.device == torch.device("cpu") and rt.compute_dtype == rt.param_dtype == torch.float32
    t = torch.ones(3)
    assert rt.all_reduce_sum(t) is t and rt.all_reduce_sum(2.5) == 2.5
    assert rt.shard([1, 2, 3]) == [1, 2, 3] and rt.gather_object("x") == ["x"] and rt.on_main(lambda: 7) == 7
    rt.barrier()
    rt.destroy()


def test_shard_contiguous_and_strided():
    items = list(range(8))
    shares = [Runtime(rank=r, world_size=2).shard(items) for r in range(2)]
    assert shares == [[0, 1, 2, 3], [4, 5, 6, 7]] and sum(shares, []) == items  # rank order = global order
    assert [Runtime(rank=r, world_size=3).shard(items, "strided") for r in range(3)] == [[0, 3, 6], [1, 4, 7], [2, 5]]
    with pytest.raises(ValueError, match="evenly"):
        Runtime(rank=0, world_size=3).shard(items)


def test_device_options(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda:0")
    with pytest.raises(ConfigError, match="expected auto, cpu, cuda or cuda:N"):
        resolve_device("tpu")


def test_torchrun_env_without_parallel_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ConfigError, match="rank 1 of 2 .*--runtime.parallel ddp or fsdp2"):
        init_runtime(RuntimeConfig())


def test_rng_state_roundtrip():
    state = rng_state()
    a = (torch.rand(2), __import__("random").random(), __import__("numpy").random.rand())
    set_rng_state(state)
    b = (torch.rand(2), __import__("random").random(), __import__("numpy").random.rand())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


def test_slow_cpu_bf16_warns(monkeypatch, capsys):
    monkeypatch.setattr(rdev, "cpu_bf16_slowdown", lambda: 9.0)
    msg = rdev.check_cpu_bf16()
    assert "9.0x as long as fp32" in msg and "--runtime.dtype fp32" in msg
    monkeypatch.setattr(rdev, "cpu_bf16_slowdown", lambda: 0.8)
    assert rdev.check_cpu_bf16() is None
    assert rdev.cpu_bf16_slowdown.__name__  # the probe itself is exercised by the bf16 test below


def test_bf16_keeps_logits_fp32_and_the_state_dict(tiny):
    model, _ = tiny
    names = list(model.state_dict())
    rt = Runtime(compute_dtype=torch.bfloat16)
    place_model(model, rt)
    assert type(output_head(model)).__name__.startswith("Fp32")
    assert list(model.state_dict()) == names and type(copy.deepcopy(model).lm_head) is type(model.lm_head)
    seen = {}
    model.model.layers[0].mlp.down_proj.register_forward_hook(lambda m, i, o: seen.update(mlp=o.dtype))
    with rt.autocast():
        logits = model(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert logits.dtype == torch.float32 and seen["mlp"] == torch.bfloat16
    assert model.lm_head.weight.dtype == torch.float32  # fp32 master weights
    assert keep_fp32(model.lm_head) is model.lm_head  # idempotent


def test_sft_bf16_trains(tmp_path):
    from posttrain.configs import DataConfig, ModelConfig, SFTOptions, TrainConfig
    from posttrain.trainers.sft import SFTTrainer

    cfg = SFTConfig(model=ModelConfig(name="tiny-llama:d=32,l=2,h=2"), data=DataConfig(path="task:addition", train_rows=32, eval_rows=0),
                    train=TrainConfig(out=str(tmp_path / "b"), max_steps=2, progress=False),
                    sft=SFTOptions(sequences_per_step=8, sequences_per_microbatch=4), runtime=RuntimeConfig(device="cpu", dtype="bf16"))
    t = SFTTrainer(cfg)
    m = t.train_step()
    assert torch.isfinite(torch.tensor(m["loss"])) and m["loss"] > 0
    assert all(p.dtype == torch.float32 for p in t.model.parameters())


def test_every_stage_takes_its_runtime_options():
    for cls, stage in ((SFTConfig, "sft"), (RLConfig, "rl"), (PRMConfig, "prm")):
        check_runtime(load_config(cls, None, {"runtime.parallel": "fsdp2", "runtime.dtype": "bf16"}), stage)
    for cls, stage in ((EvalConfig, "eval"), (DemoConfig, "demo")):  # device and dtype, one process
        check_runtime(load_config(cls, None, {"runtime.dtype": "bf16", "runtime.device": "cpu"}), stage)
        with pytest.raises(ConfigError, match=f"posttrain {stage} runs as one process: runtime.parallel=ddp"):
            check_runtime(load_config(cls, None, {"runtime.parallel": "ddp"}), stage)


def test_cli_refuses_parallel_for_a_one_process_stage_and_lists_runtime_in_help(capsys):
    assert main(["demo", "--runtime.parallel", "ddp"]) == 2
    assert "posttrain demo runs as one process" in capsys.readouterr().err
    for stage in ("sft", "rm", "dpo", "rl", "prm", "eval", "search", "demo"):
        assert main([stage, "--help"]) == 0
        out = capsys.readouterr().out
        for key in ("--runtime.device", "--runtime.dtype", "--runtime.parallel", "--runtime.timeout_s"):
            assert key in out, (stage, key)
    assert main(["sft", "--runtime.parallel", "fdsp2"]) == 2
    assert "did you mean 'fsdp2'" in capsys.readouterr().err


@pytest.mark.parametrize("rc", [0, 1])
def test_cli_leaves_the_process_group_before_exit(tmp_path, monkeypatch, rc):
    """Under torchrun the CLI ends a run by leaving the gloo group (a rank that exited with it alive
    sometimes aborted in teardown): a clean run waits at a barrier first, a failed one does not."""
    import torch.distributed as dist

    from posttrain import cli

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    barriers = []
    real_barrier = dist.barrier
    monkeypatch.setattr(dist, "barrier", lambda *a, **k: (barriers.append(1), real_barrier(*a, **k)))
    monkeypatch.setitem(cli.STAGES, "fake", ("a stage that only returns", lambda args: rc))
    try:
        assert cli.main(["fake"]) == rc
        assert not dist.is_initialized()
        assert barriers == ([1] if rc == 0 else [])
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
