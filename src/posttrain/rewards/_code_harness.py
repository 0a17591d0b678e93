"""The two programs `posttrain.rewards.code` runs in the sandbox, and the parsing of what they print.

- ``candidate_program(nonce, calls)``: loads the untrusted ``solution.py`` and makes the calls
  ``[[name, encoded args, encoded kwargs], ...]``, printing one record per call. Everything it prints
  is **untrusted data**: the program shares its process and can forge any record, which only lets it
  claim return values it could have returned anyway.
- ``replay_program(nonce, steps, bind, table)``: the test code (trusted dataset code) with the names
  in ``bind`` replaced by proxies that answer from ``table`` (the decoded plain values the program
  returned). No program code runs in this process, so its verdicts are trusted. An unknown call is
  recorded and answered with a permissive placeholder so that one round collects as many calls as
  possible; every case run after a placeholder is "undecided" and is run again next round.

Data reaches them as Python literals written by `to_literal` (never text that could become code)
and leaves as JSON lines after a per-run nonce, parsed with `json.loads` in the parent.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from posttrain.rewards._code_codec import to_literal

__all__ = ["candidate_program", "replay_program", "parse_records", "CODEC_SOURCE"]

CODEC_SOURCE = Path(__file__).with_name("_code_codec.py").read_text(encoding="utf-8")
RECORD_MAX_CHARS = 8000  # one call's record; bigger results are refused (the stream is capped at 64 KiB)
NEW_CALLS_MAX_CHARS = 40000  # calls a replay round may ask for; the rest wait for the next round

_PRELUDE = r'''
import os as _os
_OUT = _os.dup(1)
_NULL = _os.open("/dev/null", _os.O_RDWR)
_os.dup2(_NULL, 1)
_os.dup2(_NULL, 2)
__NONCE__ = @NONCE@

def _emit(rec):
    _os.write(_OUT, ("\n" + __NONCE__ + " " + to_json(rec) + "\n").encode("utf-8", "replace"))

def _describe(e):
    try:
        msg = str(e)[:300]
    except BaseException:
        msg = "?"
    return [type(e).__name__, msg]
'''

_CANDIDATE = r'''
__CALLS__ = @CALLS@
_g = {"__name__": "solution", "__builtins__": __builtins__}
try:
    with open("solution.py", encoding="utf-8") as _f:
        _src = _f.read()
    exec(compile(_src, "solution.py", "exec"), _g)
except BaseException as _e:
    _emit({"load": _describe(_e)})
    _os._exit(0)
_emit({"load": None})

def _resolve(name):
    if name in _g:
        return _g[name]
    if isinstance(_g.get("Solution"), type):  # LeetCode style: a method of class Solution
        return getattr(_g["Solution"](), name)
    raise NameError("the program defines no " + repr(name))

for _i, (_name, _a, _k) in enumerate(__CALLS__):
    try:
        _r = _resolve(_name)(*decode(_a), **decode(_k))
        _rec = {"i": _i, "ok": encode(_r)}
        if len(to_json(_rec)) > @MAXREC@:
            _rec = {"i": _i, "err": ["ResultTooLarge", "the result is too large to check"]}
    except BaseException as _e:
        _rec = {"i": _i, "err": _describe(_e)}
    _emit(_rec)
_os._exit(0)
'''

_REPLAY = r'''
import builtins as _builtins
__STEPS__ = @STEPS@
__BIND__ = @BIND@
__TABLE__ = @TABLE@
_state = {"wild": False, "case": -1, "timeout": False, "ops": 0, "new_chars": 0, "calls": 0}
_new, _asked = [], set()

class CandidateError(Exception):
    pass

class _Exhausted(BaseException):
    pass

def _tick():
    _state["ops"] += 1
    if _state["ops"] > 10000:
        raise _Exhausted("placeholder used too often")

class _Wild:
    """A pending call's value: equal to anything, so the case runs on and its later calls get recorded."""
    def __repr__(self):
        _tick()
        return "<pending>"
    __str__ = __repr__
    def __format__(self, spec):
        return self.__repr__()
    def __bool__(self):
        _tick()
        return False
    def __eq__(self, other):
        _tick()
        return True
    __lt__ = __le__ = __gt__ = __ge__ = __eq__
    def __ne__(self, other):
        _tick()
        return False
    def __hash__(self):
        return 0
    def __len__(self):
        _tick()
        return 0
    def __iter__(self):
        _tick()
        return iter(())
    def __contains__(self, item):
        _tick()
        return False
    def __getitem__(self, key):
        _tick()
        return self
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        _tick()
        return self
    def __call__(self, *a, **k):
        _tick()
        return self
    def __int__(self):
        return 0
    __index__ = __int__
    def __float__(self):
        return 0.0
    def __round__(self, n=None):
        return self

def _same(self, *other):
    _tick()
    return self
for _op in ("add sub mul truediv floordiv mod pow lshift rshift and or xor matmul divmod "
            "radd rsub rmul rtruediv rfloordiv rmod rpow rlshift rrshift rand ror rxor rmatmul rdivmod "
            "neg pos abs invert").split():
    setattr(_Wild, "__" + _op + "__", _same)
_WILD = _Wild()

def _has_wild(x, depth=0):
    if isinstance(x, _Wild):
        return True
    if depth > 50:
        return False
    if type(x) in (list, tuple, set, frozenset):
        return any(_has_wild(e, depth + 1) for e in x)
    if type(x) is dict:
        return any(_has_wild(k, depth + 1) or _has_wild(v, depth + 1) for k, v in x.items())
    return False

def _exception(err):
    name, msg = (list(err) + ["", ""])[:2]
    cls = getattr(_builtins, str(name), None)
    if isinstance(cls, type) and issubclass(cls, Exception) and cls is not CandidateError:
        try:
            return cls(msg)
        except BaseException:
            pass
    return CandidateError(str(name) + ": " + str(msg))

class _Proxy:
    __slots__ = ("_name",)
    def __init__(self, name):
        self._name = name
    def __repr__(self):
        return "<function " + self._name + ">"
    def __call__(self, *args, **kwargs):
        _state["calls"] += 1
        if _has_wild(args) or _has_wild(kwargs):
            _state["wild"] = True
            return _WILD
        try:
            a, k = encode(list(args)), encode(dict(kwargs))
        except (TypeError, ValueError) as e:
            raise CandidateError("cannot send the arguments to the program: " + str(e))
        key = to_json([self._name, a, k])
        rec = __TABLE__.get(key)
        if rec is None:
            _state["wild"] = True
            size = len(key)
            if key not in _asked and _state["new_chars"] + size <= @MAXNEW@:
                _asked.add(key)
                _state["new_chars"] += size
                _new.append([_state["case"], key, self._name, a, k])
            return _WILD
        if "ok" in rec:
            return decode(rec["ok"])
        if "timeout" in rec:
            _state["timeout"] = True
            raise TimeoutError("the program ran out of time on this call")
        if "err" in rec:
            raise _exception(rec["err"])
        raise CandidateError(str(rec.get("missing") or "no result"))

_ns = {"__name__": "__test__", "__builtins__": _builtins}
for _t, _p in __BIND__.items():
    _ns[_t] = _Proxy(_p)
_cases, _dead, _broken = [], None, None
import random as _random  # the test code's own random inputs (HumanEval/53): the same in every round
_random.seed(0)
for _idx, (_kind, _src) in enumerate(__STEPS__):
    _state["case"], _state["timeout"], _state["ops"] = _idx, False, 0
    if _dead is not None:
        if _kind == "case":
            _cases.append({"v": "undecided" if _state["wild"] else "fail", "why": _dead, "timeout": False})
        continue
    _err = None
    try:
        exec(compile(_src, "<test step " + str(_idx) + ">", "exec"), _ns)
    except BaseException as _e:
        _err = ": ".join(_describe(_e))
    if _kind == "case":
        _v = "undecided" if _state["wild"] else ("pass" if _err is None else "fail")
        _cases.append({"v": _v, "why": _err, "timeout": _state["timeout"]})
    elif _err is not None:
        _dead = "test set-up failed: " + _err
        if _state["calls"] == 0:  # before any call of the program: the test code fails on its own
            _broken = _err
_emit({"cases": _cases, "new": _new, "broken": _broken})
_os._exit(0)
'''


def _fill(template: str, **values) -> str:
    """One pass over the template: substituted text (which may hold program output) is never rescanned."""
    return re.sub(r"@([A-Z]+)@", lambda m: values[m.group(1)], template)


def candidate_program(nonce: str, calls: list) -> str:
    body = _fill(_CANDIDATE, CALLS=to_literal(calls), MAXREC=str(RECORD_MAX_CHARS))
    return _fill(_PRELUDE, NONCE=repr(nonce)) + CODEC_SOURCE + body


def replay_program(nonce: str, steps: list, bind: dict, table: dict) -> str:
    body = _fill(_REPLAY, STEPS=to_literal(steps), BIND=to_literal(bind), TABLE=to_literal(table),
                 MAXNEW=str(NEW_CALLS_MAX_CHARS))
    return _fill(_PRELUDE, NONCE=repr(nonce)) + CODEC_SOURCE + body


def parse_records(stdout: str, nonce: str) -> list[dict]:
    """The JSON records on lines that start with ``nonce``; other lines (and broken records) are ignored."""
    out, prefix = [], nonce + " "
    for line in stdout.splitlines():
        if line.startswith(prefix):
            try:
                rec = json.loads(line[len(prefix):])
            except ValueError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
    return out
