"""Wordle (game style, registered ``wordle``): guess a secret 5-letter word in ``max_guesses`` tries
from per-letter feedback.

Offline and seeded: ``reset(seed)`` draws the secret with ``random.Random(seed)`` from `WORDS`, 486
common English 5-letter words embedded here; a guess must be one of them (``strict=0``: any five
letters). Each model turn is one guess: ``[crane]`` in brackets (as TextArena's Wordle asks), else
the last listed word in the reply (a reply without one is an invalid guess). The feedback is one mark per letter,
``G`` green (right letter, right place), ``Y`` yellow (in the word elsewhere) and ``X`` gray (not in
the word, or no copies of it left), with the standard rule for repeated letters (`score_guess`):
greens first, then yellows from left to right, each taking one of the secret's unused copies, so
secret "abbey", guess "babes" scores ``YYGGX`` and secret "those", guess "geese" ``XXXGG``.

An invalid guess (no word, not 5 letters, not in the list) is told to the model and uses a guess
(as a typo costs a row on paper; it also bounds an episode of unreadable replies), and is counted
(``info["counts"]["invalid_actions"]``, in the episode's counts). Reward 1 at the turn that solves
it within ``max_guesses``; else 0, or with ``partial_credit`` = c > 0 (off by default) c times the best
guess's share of the letters, (greens + yellows / 2) / 5, paid at the last guess.

TextArena (Guertler et al., 2025, ``textarena`` 0.7.4 on PyPI) was checked first: it installs (18 s,
with nltk, openai, chess, websockets), but ``textarena.make("Wordle-v0")`` fails offline. Its Wordle
module downloads NLTK's ``words`` and ``averaged_perceptron_tagger_eng`` corpora at import (from
raw.githubusercontent.com) and builds its secret list by POS-tagging them, so without network it
raises ``LookupError: Resource 'words' not found``. It also draws the secret with the global
``random`` module. Departures from it: a fixed embedded list (no corpus, no download), the secret from
a per-episode RNG, no ``[word]`` required, no repeated-guess rule, an invalid guess uses a turn (in
TextArena the first invalid move is a warning and the next ends the game), and its default reward
on a loss is a partial credit of the last guess (here 0 unless ``partial_credit``).

``demonstrate()`` is a scripted player for SFT transcripts (`posttrain.envs.transcripts`): a random
listed word consistent with all the feedback so far (it solves most games within 6 guesses).
"""
from __future__ import annotations

import random
import re

from posttrain.envs.base import register_env

WORDS: tuple[str, ...] = tuple("""
    about above abuse actor acute admit adopt adult after again agent agree ahead alarm album
    alert alike alive allow alone along alter among anger angle angry apart apple apply arena
    argue arise array aside asset audio avoid award aware badly baker basic basis beach began
    begin being below bench birth black blade blame blank blast blind block blood board boost
    booth bound brain brand bread break breed brief bring broad broke brown build built buyer
    cabin cable candy carry catch cause chain chair chart chase cheap check chest chief child
    chose civil claim class clean clear climb clock close cloud coach coast could count court
    cover craft crane crash cream crime cross crowd crown curve cycle daily dance dated dealt
    death debut delay depth doing doubt dozen draft drama drawn dream dress drink drive drove
    dying eager early earth eight elite empty enemy enjoy enter entry equal error event every
    exact exist extra faith false fault fence field fifth fifty fight final first flash fleet
    floor fluid focus force forth forty forum found frame frank fraud fresh front fruit fully
    funny giant given glass globe going grace grade grand grant grass great green gross group
    grown guard guess guest guide happy heart heavy hence horse hotel house human ideal image
    index inner input issue joint judge juice knife known label large laser later laugh layer
    learn lease least leave legal lemon level light limit local logic loose lucky lunch magic
    major maker march match maybe mayor meant media metal might minor minus mixed model money
    month moral motor mount mouse mouth movie music needs never newly night noise north noted
    novel nurse occur ocean offer often order other ought outer owner paint panel paper party
    peace phase phone photo piano piece pilot pitch place plain plane plant plate point pound
    power press price pride prime print prior prize proof proud prove queen quick quiet quite
    radio raise range rapid ratio reach react ready refer right river robot rough round route
    royal rural salad scale scene scope score sense serve seven shade shall shape share sharp
    sheet shelf shell shift shirt shock shoot short shown sight since sixth sixty skill slate
    sleep slide small smart smile smoke solid solve sorry sound south space spare speak speed
    spend spent split spoke sport staff stage stake stand start state steam steel stick still
    stock stone stood store storm story strip stuck study stuff style sugar suite sunny super
    sweet table taken taste teach teeth thank theme there thick thing think third those three
    threw throw tight timer tired title today topic total touch tough tower track trade train
    treat trend trial tribe trick tried truck truly trust truth twice uncle under union unity
    until upper upset urban usage usual valid value video virus visit vital voice waste watch
    water wheel where which while white whole whose woman world worry worse worst worth would
    wound write wrong wrote young youth
""".split())
WORD_SET = frozenset(WORDS)
_BRACKET = re.compile(r"\[\s*([A-Za-z]+)\s*\]")
_WORD = re.compile(r"[A-Za-z]+")


def score_guess(secret: str, guess: str) -> str:
    """One mark per letter of `guess` against `secret`: G (right place), Y (elsewhere, an unused copy
    left), X (none left). Greens take their copies first; yellows then go left to right."""
    if len(secret) != len(guess):
        raise ValueError(f"score_guess: {guess!r} and {secret!r} differ in length")
    marks = ["X"] * len(guess)
    left: dict[str, int] = {}
    for i, (s, g) in enumerate(zip(secret, guess)):
        if s == g:
            marks[i] = "G"
        else:
            left[s] = left.get(s, 0) + 1
    for i, g in enumerate(guess):
        if marks[i] != "G" and left.get(g, 0) > 0:
            marks[i] = "Y"
            left[g] -= 1
    return "".join(marks)


def read_guess(text: str, strict: bool = True) -> tuple[str | None, str]:
    """(guess, "") or (None, why not) for a model's reply (see the module docstring)."""
    bracketed = _BRACKET.findall(text)
    words = [w.lower() for w in (bracketed[-1:] if bracketed else _WORD.findall(text))]
    if not words:
        return None, "I found no word in your reply."
    listed = [w for w in words if len(w) == 5 and (w in WORD_SET or not strict)]
    if listed:
        return listed[-1], ""
    five = [w for w in words if len(w) == 5]
    if five:
        return None, f"'{five[-1]}' is not in my word list."
    return None, f"'{words[-1]}' is not a 5-letter word."


@register_env("wordle", "Wordle: guess a 5-letter word from green / yellow / gray letter feedback (reward 1 on success)")
class WordleEnv:
    def __init__(self, max_guesses: int = 6, partial_credit: float = 0.0, strict: bool = True):
        if int(max_guesses) < 1 or not 0.0 <= float(partial_credit) <= 1.0:
            raise ValueError("wordle: max_guesses must be >= 1 and partial_credit in [0, 1]")
        self.max_guesses, self.partial_credit = int(max_guesses), float(partial_credit)
        self.strict = strict not in (0, False, "0", "false")
        self.secret, self.guesses, self.best, self._seed = WORDS[0], 0, 0.0, None
        self.history: list[tuple[str, str]] = []

    def reset(self, seed: int | None = None, options: dict | None = None):
        self.secret = random.Random(seed).choice(WORDS)
        self.guesses, self.best, self.history, self._seed = 0, 0.0, [], seed
        obs = (f"Wordle: guess my secret 5-letter English word in {self.max_guesses} tries. Reply with one word, "
               "e.g. [crane]. After each guess I mark its letters: G green (right place), Y yellow (in the word, "
               "elsewhere), X gray (not in the word).")
        return obs, {}

    def step(self, action: str):
        self.guesses += 1
        left = self.max_guesses - self.guesses
        word, why = read_guess(action, self.strict)
        if word is None:
            info = {"counts": {"invalid_actions": 1}}
            if left <= 0:
                return self._lost(f"{why} "), self._consolation(), False, True, info
            return f"{why} That used a guess ({left} left).", 0.0, False, False, info
        marks = score_guess(self.secret, word)
        self.history.append((word, marks))
        line = f"{word.upper()} {' '.join(marks)}"
        if word == self.secret:
            return f"{line} Solved in {self.guesses}!", 1.0, True, False, {"guesses": self.guesses}
        self.best = max(self.best, (marks.count("G") + marks.count("Y") / 2) / len(marks))
        if left <= 0:
            return self._lost(f"{line} "), self._consolation(), False, True, {}
        return f"{line} ({left} left)", 0.0, False, False, {}

    def _lost(self, prefix: str) -> str:
        return f"{prefix}Out of guesses: the word was {self.secret}."

    def _consolation(self) -> float:
        return self.partial_credit * self.best

    def demonstrate(self) -> str:
        """A scripted guess for SFT transcripts (`posttrain.envs.transcripts`): a word of the list
        consistent with every mark so far, drawn from the episode's seed and the guess count (the
        same guess however often it is asked before the next step)."""
        fits = [w for w in WORDS if all(score_guess(w, g) == m for g, m in self.history)] or list(WORDS)
        return f"[{random.Random(f'demonstrate:{self._seed}:{len(self.history)}').choice(fits)}]"
