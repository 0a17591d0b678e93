"""Generation engines behind one protocol (`RolloutEngine`): Hugging Face and vLLM."""
from posttrain.rollout.base import Completion, RolloutEngine, SamplingParams
from posttrain.rollout.hf import HFEngine

__all__ = ["Completion", "HFEngine", "RolloutEngine", "SamplingParams"]
