"""Generation engines behind one protocol (`RolloutEngine`): Hugging Face and vLLM."""
from posttrain.rollout.base import Completion, PolicyWeights, RolloutEngine, SamplingParams
from posttrain.rollout.hf import HFEngine

__all__ = ["Completion", "HFEngine", "PolicyWeights", "RolloutEngine", "SamplingParams"]
