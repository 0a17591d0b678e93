"""The engine protocol takes weights, not a module; completions carry a token mask and the policy version."""
import pytest
import torch

from posttrain.models import load_model_and_tokenizer
from posttrain.rollout import Completion, HFEngine, PolicyWeights, SamplingParams

pytestmark = pytest.mark.usefixtures("one_thread")


def _pair():
    a, tok = load_model_and_tokenizer("tiny-llama:d=32,l=2,h=2", seed=0)
    b, _ = load_model_and_tokenizer("tiny-llama:d=32,l=2,h=2", seed=1)
    return a, b, tok


def test_weights_load_by_name_and_the_version_reaches_every_completion():
    policy, other, tok = _pair()
    engine = HFEngine(other, tok)
    prompt = [tok("12+34")["input_ids"]]
    greedy = SamplingParams(n=2, temperature=0.0, max_new_tokens=6)
    want = HFEngine(policy, tok).generate(prompt, greedy)[0][0]
    assert engine.generate(prompt, greedy)[0][0].logprobs != want.logprobs  # another init: other logprobs
    engine.update_weights(PolicyWeights(policy), 7)
    outs = engine.generate(prompt, greedy)[0]
    assert outs[0].token_ids == want.token_ids and outs[0].logprobs == want.logprobs
    assert [o.policy_version for o in outs] == [7, 7]
    assert outs[0].token_mask == [1] * len(outs[0].token_ids)
    for (k, v), (k2, v2) in zip(policy.state_dict().items(), other.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert engine.model is other  # loaded into its own module, not swapped for the trainer's


def test_colocated_engine_skips_the_copy_and_bad_weights_are_named():
    policy, other, tok = _pair()
    engine = HFEngine(policy, tok)

    class Spy(PolicyWeights):
        def __iter__(self):
            raise AssertionError("a colocated engine must not materialize the weights")

    engine.update_weights(Spy(policy), 3)
    assert engine.version == 3
    with pytest.raises(ValueError, match="missing"):
        HFEngine(other, tok).update_weights([("model.embed_tokens.weight", policy.model.embed_tokens.weight)], 1)


def test_mask_round_trips_and_is_checked():
    c = Completion([5, 6, 7], [0.0] * 3, "stop", token_mask=[1, 0, 1], policy_version=2)
    assert c.mask() == [1, 0, 1] and c.policy_version == 2
    assert Completion([5, 6], [0.0, 0.0], "stop").mask() == [1, 1]
    with pytest.raises(ValueError, match="2 entries for 3 tokens"):
        Completion([5, 6, 7], [0.0] * 3, "stop", token_mask=[1, 0]).mask()


def test_rl_rollouts_carry_the_number_of_updates_behind_them(tmp_path):
    from posttrain.trainers.rl import RLConfig, RLOptions, RLTrainer
    from posttrain.trainers.common import DataConfig, ModelConfig, TrainConfig

    cfg = RLConfig(model=ModelConfig(name="tiny-llama:d=32,l=2,h=2"), data=DataConfig(path="task:addition", train_rows=16, eval_rows=0),
                   train=TrainConfig(out=str(tmp_path / "rl"), max_steps=3, progress=False),
                   rl=RLOptions(prompts_per_step=2, samples_per_prompt=2, max_new_tokens=4, show_every=0))
    tr = RLTrainer(cfg)
    seen = []
    gen = tr.engine.generate

    def spy(prompts, params):
        out = gen(prompts, params)
        seen.append({c.policy_version for cs in out for c in cs})
        return out

    tr.engine.generate = spy
    for _ in range(3):
        tr.step()
    assert seen == [{0}, {1}, {2}]
