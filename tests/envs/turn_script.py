"""A scripted rollout engine for environment tests (imported by the test modules of this folder)."""
from posttrain.rollout import Completion


class TurnScript:
    """An engine that answers every live episode's turn t with script[t] (+ EOS), `logprob` per token."""

    def __init__(self, tok, script, logprob: float = -0.5):
        self.tok, self.script, self.turn, self.logprob = tok, script, 0, logprob

    def generate(self, prompts, params):
        ids = self.tok(self.script[self.turn], add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]
        self.turn += 1
        return [[Completion(list(ids), [self.logprob] * len(ids), "stop", token_mask=[1] * len(ids))] for _ in prompts]

    def update_weights(self, named_weights, version):
        pass
