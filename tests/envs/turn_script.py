"""A scripted rollout engine for environment tests (imported by the test modules of this folder)."""
from posttrain.rollout import Completion


class TurnScript:
    """An engine that answers every live episode's turn t with script[t] (+ EOS), logprob -0.5 per token."""

    def __init__(self, tok, script):
        self.tok, self.script, self.turn = tok, script, 0

    def generate(self, prompts, params):
        ids = self.tok(self.script[self.turn], add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]
        self.turn += 1
        return [[Completion(list(ids), [-0.5] * len(ids), "stop")] for _ in prompts]
