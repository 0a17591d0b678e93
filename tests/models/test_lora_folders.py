"""LoRA checkpoints are usable later: they load as a model anywhere a model is accepted (merged), they
export to a plain Hugging Face folder, they survive the run folder moving, and a from-config base is
saved once per run (`posttrain.models.lora`)."""
import json
import shutil

import pytest
import torch

from posttrain.cli import main
from posttrain.models import ModelLoadError, load_model_and_tokenizer
from posttrain.models.lora import ADAPTER_CONFIG, ADAPTER_META, merge_adapter_folder, save_model

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = "tiny-llama:d=32,l=1,h=2"
SMALL_SFT = ["--data.train_rows", "32", "--data.eval_rows", "4", "--sft.sequences_per_step", "8"]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A LoRA SFT run from a from-config tiny model, 2 steps through the CLI."""
    run = tmp_path_factory.mktemp("lora") / "run"
    assert main(["sft", "--model", TINY, "--lora", "4", "--max-steps", "2", "--out", str(run), *SMALL_SFT]) == 0
    return run


def _adapter(run):
    return run / "checkpoints" / "step-0000002"


def _ids(tok):
    return torch.tensor([tok.encode("12+34=46")])


@torch.no_grad()
def _logits(model, ids):
    return model.eval()(input_ids=ids).logits


@torch.no_grad()
def _trained_peft_logits(adapter, ids):
    """The trained policy rebuilt by hand: the seed-0 tiny model with the checkpoint's adapter (unmerged)."""
    from peft import PeftModel

    base, _ = load_model_and_tokenizer(TINY, seed=0)
    plain = _logits(base, ids)
    return _logits(PeftModel.from_pretrained(base, adapter), ids), plain


def test_lora_checkpoint_saves_its_from_config_base_once_and_records_it_relative(lora_run):
    base = lora_run / "base"
    assert (base / "config.json").exists() and (base / "model.safetensors").exists()
    assert (base / "tokenizer.json").exists()  # the base folder loads on its own too
    conf = json.loads((_adapter(lora_run) / ADAPTER_CONFIG).read_text())
    assert conf["base_model_name_or_path"] == "../../base"
    meta = json.loads((_adapter(lora_run) / ADAPTER_META).read_text())
    assert meta["base_model"] == TINY and meta["base_saved"] and meta["base_seed"] == 0
    from safetensors.torch import load_file

    saved, (orig, _) = load_file(base / "model.safetensors"), load_model_and_tokenizer(TINY, seed=0)
    assert not any("lora" in k or "base_layer" in k for k in saved)
    assert all(torch.equal(saved[k], v) for k, v in orig.state_dict().items() if k in saved)


def test_adapter_folder_loads_as_the_merged_trained_model(lora_run):
    model, tok = load_model_and_tokenizer(str(_adapter(lora_run)))
    assert not hasattr(model, "peft_config")  # a plain model: a trainer's --lora adds a fresh adapter
    assert all(p.requires_grad for p in model.parameters())
    ids = _ids(tok)
    want, untrained = _trained_peft_logits(_adapter(lora_run), ids)
    got = _logits(model, ids)
    assert (got - untrained).abs().max() > 1e-4  # the adapter moved the model, so the comparison means something
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    run_model, _ = load_model_and_tokenizer(str(lora_run))  # a run folder: its latest checkpoint
    torch.testing.assert_close(_logits(run_model, ids), want, atol=1e-5, rtol=0)


def test_load_weights_into_a_live_peft_model_still_loads_the_adapter(lora_run):
    from posttrain.trainers.common import ModelConfig, apply_lora
    from posttrain.trainers.weights import load_weights_into

    base, tok = load_model_and_tokenizer(TINY, seed=0)
    peft_model = apply_lora(base, ModelConfig(name=TINY, lora_rank=4))
    load_weights_into(peft_model, _adapter(lora_run))
    want, _ = _trained_peft_logits(_adapter(lora_run), _ids(tok))
    torch.testing.assert_close(_logits(peft_model, _ids(tok)), want, atol=1e-5, rtol=0)


def test_eval_cli_accepts_an_adapter_folder(lora_run, tmp_path):
    out = tmp_path / "eval"
    rc = main(["eval", "--model", str(_adapter(lora_run)), "--benchmark", "task:addition", "--data.limit", "2",
               "--sampling.n", "1", "--sampling.ks", "1", "--sampling.max_new_tokens", "8", "--out", str(out)])
    assert rc == 0
    assert json.loads((out / "results.json").read_text())["metrics"]["num_problems"] == 2


def test_export_merge_writes_a_plain_folder_transformers_loads_with_the_same_logits(lora_run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "exported"
    assert main(["export", "--model", str(lora_run), "--out", str(out), "--merge"]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= names
    assert not names & {ADAPTER_CONFIG, "adapter_model.safetensors", "trainer_state.pt"}
    model = AutoModelForCausalLM.from_pretrained(out)  # no peft, no posttrain attention registered
    tok = AutoTokenizer.from_pretrained(out)
    want, _ = _trained_peft_logits(_adapter(lora_run), _ids(tok))
    torch.testing.assert_close(_logits(model, _ids(tok)), want, atol=1e-5, rtol=0)
    assert main(["export", "--model", str(_adapter(lora_run)), "--out", str(out)]) == 2  # non-empty --out
    assert main(["export", "--model", str(_adapter(lora_run)), "--out", str(out), "--overwrite", "true"]) == 0


def test_export_without_merge_copies_a_self_contained_adapter(lora_run, tmp_path):
    out = tmp_path / "adapter"
    assert main(["export", "--model", str(_adapter(lora_run)), "--out", str(out), "--merge", "false"]) == 0
    assert (out / "base" / "config.json").exists() and not (out / "trainer_state.pt").exists()
    moved = tmp_path / "elsewhere" / "adapter"
    shutil.move(str(out), str(moved))
    model, tok = load_model_and_tokenizer(str(moved))
    want, _ = _trained_peft_logits(_adapter(lora_run), _ids(tok))
    torch.testing.assert_close(_logits(model, _ids(tok)), want, atol=1e-5, rtol=0)


def test_a_moved_run_folder_still_loads(lora_run, tmp_path):
    copy, moved = tmp_path / "a" / "run", tmp_path / "b" / "c" / "run"
    shutil.copytree(lora_run, copy)
    moved.parent.mkdir(parents=True)
    shutil.move(str(copy), str(moved))  # nothing is left at the path the checkpoint was written under
    model, tok = load_model_and_tokenizer(str(moved / "checkpoints" / "step-0000002"))
    want, _ = _trained_peft_logits(_adapter(lora_run), _ids(tok))
    torch.testing.assert_close(_logits(model, _ids(tok)), want, atol=1e-5, rtol=0)
    merged = merge_adapter_folder(moved / "checkpoints" / "step-0000002", tmp_path / "m")
    assert (merged / "config.json").exists()


def test_an_adapter_whose_base_is_gone_is_a_one_line_error_naming_it(lora_run, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(lora_run, broken)
    shutil.rmtree(broken / "base")
    adapter = broken / "checkpoints" / "step-0000002"
    with pytest.raises(ModelLoadError, match="base"):
        load_model_and_tokenizer(str(adapter))
    capsys.readouterr()
    rc = main(["eval", "--model", str(adapter), "--benchmark", "task:addition", "--data.limit", "2",
               "--sampling.n", "1", "--sampling.ks", "1", "--out", str(tmp_path / "e")])
    assert rc == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("posttrain eval:")]
    assert len(lines) == 1 and "Traceback" not in err
    assert str(adapter) in lines[0] and str(broken / "base") in lines[0]


@pytest.mark.parametrize("lora", [0, 4])
def test_dpo_starts_from_an_adapter_folder(lora_run, tmp_path, lora):
    out = tmp_path / "dpo"
    rc = main(["dpo", "--model", str(_adapter(lora_run)), "--data", "task:addition:digits=2", "--max-steps", "1",
               "--out", str(out), "--lora", str(lora), "--data.train_rows", "16", "--data.eval_rows", "4",
               "--pref.pairs_per_step", "4", "--pref.pairs_per_microbatch", "4", "--pref.eval_before", "false",
               "--pref.eval_max_new_tokens", "4"])
    assert rc == 0
    steps = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [s for s in steps if s.get("step") == 1 and s.get("grad_norm", 0) > 0]
    ck = out / "checkpoints" / "step-0000001"
    # a LoRA DPO run on the merged SFT model saves that merged base in its own run folder
    assert (out / "base" / "config.json").exists() == bool(lora) == (ck / ADAPTER_CONFIG).exists()
    load_model_and_tokenizer(str(ck))


def test_save_model_keeps_one_base_per_distinct_base_weights(tmp_path):
    from posttrain.trainers.common import ModelConfig, apply_lora

    run = tmp_path / "run"
    plain, tok = load_model_and_tokenizer(TINY, seed=0)
    save_model(plain, tmp_path / "plain", run)
    assert (tmp_path / "plain" / "config.json").exists() and not run.exists()  # a plain model: as before
    logits = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        base, tok = load_model_and_tokenizer(TINY, seed=seed)
        peft_model = apply_lora(base, ModelConfig(name=TINY, lora_rank=4))
        with torch.no_grad():
            for n, p in peft_model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.1)  # a non-zero adapter, so merging matters
        logits[name] = _logits(peft_model, _ids(tok))
        save_model(peft_model, run / "checkpoints" / name, run)
    bases = sorted(p.name for p in run.iterdir() if p.name.startswith("base"))
    assert len(bases) == 2 and bases[0] == "base"  # a and b share one base; seed 1 gets its own
    for name in logits:
        model, _ = load_model_and_tokenizer(str(run / "checkpoints" / name))
        torch.testing.assert_close(_logits(model, _ids(tok)), logits[name], atol=1e-5, rtol=0)
    alone = tmp_path / "alone"
    save_model(peft_model, alone)  # no run folder: the base goes inside the adapter folder
    assert json.loads((alone / ADAPTER_CONFIG).read_text())["base_model_name_or_path"] == "base"
    torch.testing.assert_close(_logits(load_model_and_tokenizer(str(alone))[0], _ids(tok)), logits["c"], atol=1e-5, rtol=0)


def test_reward_model_lora_checkpoint_reloads_as_the_exported_reward_model(tmp_path):
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "rm"
    assert main(["rm", "--model", TINY, "--lora", "4", "--data", "task:addition:digits=2", "--max-steps", "1",
                 "--out", str(out), "--data.train_rows", "16", "--data.eval_rows", "4",
                 "--rm.pairs_per_step", "4", "--rm.pairs_per_microbatch", "4"]) == 0
    model, tok = load_model_and_tokenizer(str(out / "checkpoints" / "step-0000001"))
    assert type(model).__name__.endswith("ForSequenceClassification")
    ref = AutoModelForSequenceClassification.from_pretrained(out / "model")
    torch.testing.assert_close(_logits(model, _ids(tok)), _logits(ref, _ids(tok)), atol=1e-5, rtol=0)
