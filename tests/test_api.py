"""`import posttrain`: the version, lazy (torch-free) exports of the trainers and configs, docstrings."""
import importlib.metadata
import inspect
import subprocess
import sys

import posttrain


def test_version_is_the_installed_distributions():
    assert posttrain.__version__ == importlib.metadata.version("posttrain")
    assert posttrain.__version__[0].isdigit()


def test_import_and_configs_do_not_import_torch():
    code = ("import sys, posttrain; cfg = posttrain.SFTConfig(); algos = posttrain.RL_ALGOS; "
            "print('torch' in sys.modules, 'transformers' in sys.modules, cfg.train.out, 'grpo' in algos)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False", "runs/sft", "True"]


def test_every_exported_name_resolves_to_the_object_of_its_module():
    from posttrain.eval.harness import evaluate
    from posttrain.trainers.preference import PreferenceTrainer
    from posttrain.trainers.rl import RLTrainer
    from posttrain.trainers.sft import SFTTrainer

    for name in posttrain.__all__:
        assert getattr(posttrain, name) is not None, name
    assert posttrain.SFTTrainer is SFTTrainer and posttrain.RLTrainer is RLTrainer
    assert posttrain.DPOTrainer is posttrain.PreferenceTrainer is PreferenceTrainer
    assert posttrain.evaluate is evaluate  # the harness function, not the eval package
    assert callable(posttrain.mcts) and callable(posttrain.compute_optimal)  # functions, not their modules
    assert posttrain.RL_ALGOS == ("grpo", "dr_grpo", "dapo", "rloo", "reinforce_pp", "remax", "ppo", "online_dpo")
    assert {"SFTTrainer", "RLConfig", "load_model_and_tokenizer", "load_benchmark", "load_examples"} <= set(dir(posttrain))


def test_unknown_name_is_an_attribute_error():
    try:
        posttrain.NoSuchTrainer
    except AttributeError as e:
        assert "NoSuchTrainer" in str(e)
    else:
        raise AssertionError("posttrain.NoSuchTrainer did not raise")


def test_public_classes_and_trainer_methods_have_docstrings():
    missing = [n for n in posttrain.__all__ if n != "__version__" and inspect.isclass(getattr(posttrain, n))
               and not inspect.getdoc(getattr(posttrain, n))]
    assert not missing, missing
    methods = {posttrain.RLTrainer: ("train", "step", "collect", "update", "evaluate", "save", "describe"),
               posttrain.PRMTrainer: ("train", "train_step", "evaluate", "save", "scorer")}
    for cls in (posttrain.SFTTrainer, posttrain.PreferenceTrainer, posttrain.RewardTrainer):
        methods[cls] = ("train", "train_step", "evaluate", "save", "describe")
    for cls, names in methods.items():
        for method in names:
            assert inspect.getdoc(getattr(cls, method)), f"{cls.__name__}.{method}"
        params = inspect.signature(cls).parameters
        assert params["train_data"].kind is inspect.Parameter.KEYWORD_ONLY, cls.__name__
        assert params["eval_data"].kind is inspect.Parameter.KEYWORD_ONLY, cls.__name__
