"""Reading the test formats of `posttrain.rewards.code` (see its docstring), and planning assert-style
tests: which statements are cases, which names the proxies stand for. Parsing only: nothing here runs."""
from __future__ import annotations

import ast
import builtins
import json

__all__ = ["compiles", "normalize_tests", "assert_plan"]


def compiles(text: str) -> bool:
    try:
        compile(text, "solution.py", "exec", dont_inherit=True)  # compiled, never executed
    except (SyntaxError, ValueError, OverflowError, RecursionError, MemoryError):
        return False
    return True


def _top_level_names(tree: ast.Module) -> set[str]:
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names if a.name != "*")
        else:
            names.update(n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store))
    return names


def _loads_maybe(v):
    return json.loads(v) if isinstance(v, str) else v


def _text(v) -> str:
    return "\n".join(map(str, v)) if isinstance(v, list) else str(v)


def normalize_tests(tests: dict) -> dict:
    """-> {"kind": "assert", "steps", "bind"} | {"kind": "io", "cases": [(mode, input, expected)], "fn"}."""
    if not isinstance(tests, dict):
        raise ValueError(f"tests must be a dict, got {type(tests).__name__}")
    if tests.get("test"):
        prompt = tests.get("prompt")  # HumanEval's column: the signature, docstring and helpers (trusted code)
        return {"kind": "assert", "source": str(tests["test"]), "entry": tests.get("entry_point"), "mbpp": False,
                "prompt": prompt if isinstance(prompt, str) and compiles(prompt) else None}
    if tests.get("test_list"):
        setup = list(tests.get("test_imports") or []) + ([tests["test_setup_code"]] if tests.get("test_setup_code") else [])
        return {"kind": "assert", "mbpp": True, "setup": setup, "cases": list(_loads_maybe(tests["test_list"])),
                "entry": tests.get("entry_point")}
    fn = tests.get("fn_name") or tests.get("func_name")
    if tests.get("input_output"):
        io = _loads_maybe(tests["input_output"])
        return _io_cases(io.get("inputs", []), io.get("outputs", []), io.get("fn_name") or fn)
    if "inputs" in tests and "outputs" in tests:
        return _io_cases(tests["inputs"], tests["outputs"], fn)
    if tests.get("test_cases"):
        cases = []
        for c in _loads_maybe(tests["test_cases"]):
            if c.get("testtype", "stdin") == "functional":
                args = [json.loads(line) for line in str(c["input"]).split("\n") if line.strip()]
                cases.append(("call", args, json.loads(c["output"])))
            else:
                cases.append(("stdin", str(c["input"]), str(c["output"])))
        return {"kind": "io", "cases": cases, "fn": fn}
    raise ValueError("no tests found: expected 'test' (+ 'entry_point'), 'test_list', 'input_output', "
                     "'inputs'/'outputs' or 'test_cases'")


def _io_cases(inputs, outputs, fn) -> dict:
    if len(inputs) != len(outputs):
        raise ValueError(f"{len(inputs)} test inputs for {len(outputs)} outputs")
    if fn:
        return {"kind": "io", "fn": fn, "cases": [("call", list(i) if isinstance(i, list) else [i], o)
                                                  for i, o in zip(inputs, outputs)]}
    return {"kind": "io", "fn": None, "cases": [("stdin", _text(i), _text(o)) for i, o in zip(inputs, outputs)]}


def _has_assert(node) -> bool:
    return any(isinstance(n, ast.Assert) for n in ast.walk(node))


def _needs_function(body) -> bool:
    """A check body that only works as a function body (return / yield / global / nonlocal / await)."""
    bad = (ast.Return, ast.Yield, ast.YieldFrom, ast.Global, ast.Nonlocal, ast.Await)

    def visit(node):
        if isinstance(node, bad):
            return True
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            return False
        return any(visit(c) for c in ast.iter_child_nodes(node))

    return any(visit(s) for s in body)


def _program_imports(program_tree: ast.Module, names: set[str]) -> list[str]:
    """The program's top-level imports of `names`, as statements the test runs itself: the test gets the
    real (stdlib) module or function, not a proxy into the program. Relative imports are left out."""
    out = []
    for node in program_tree.body:
        if isinstance(node, ast.Import):
            keep = [a for a in node.names if (a.asname or a.name).split(".")[0] in names]
            if keep:
                out.append(ast.unparse(ast.Import(names=keep)))
        elif isinstance(node, ast.ImportFrom) and not node.level:
            keep = [a for a in node.names if a.name != "*" and (a.asname or a.name) in names]
            if keep:
                out.append(ast.unparse(ast.ImportFrom(module=node.module, names=keep, level=0)))
    return out


def assert_plan(spec: dict, program_tree: ast.Module, max_tests: int):
    """-> (steps [[kind, source]], bind {test name: program name}); raises SyntaxError on bad test code."""
    bind = {}
    if spec["mbpp"]:
        steps = [["setup", s] for s in spec["setup"]] + [["case", str(c)] for c in spec["cases"]]
        test_tree = ast.parse("\n".join(s for _, s in steps if compiles(s)))
    else:
        test_tree = ast.parse(spec["source"])
        checks = [n for n in test_tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
        rest = [n for n in test_tree.body if not (checks and n is checks[-1])
                and not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Call)
                         and getattr(n.value.func, "id", None) == "check")]
        steps = [["setup", ast.unparse(n)] for n in rest]
        if checks:
            check = checks[-1]
            param = check.args.args[0].arg if check.args.args else "candidate"
            if spec["entry"]:
                bind[param] = str(spec["entry"])
            if _needs_function(check.body):
                steps += [["setup", ast.unparse(check)], ["case", f"check({param})"]]
            else:
                steps += [["case" if _has_assert(s) else "setup", ast.unparse(s)] for s in check.body]
        else:
            steps = [["case" if _has_assert(n) else "setup", ast.unparse(n)] for n in test_tree.body]
        if spec.get("prompt"):  # its helpers (HumanEval/32's poly) are then the test's, never the program's
            steps = [["setup", spec["prompt"]]] + steps
            test_tree = ast.Module(body=ast.parse(spec["prompt"]).body + test_tree.body, type_ignores=[])
    star = any(isinstance(n, ast.ImportFrom) and any(a.name == "*" for a in n.names) for n in ast.walk(test_tree))
    if not star:
        used = {n.id for n in ast.walk(test_tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        defined = _top_level_names(test_tree) | {n.id for n in ast.walk(test_tree)
                                                 if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        wanted = (used & _top_level_names(program_tree)) - defined - set(dir(builtins)) - set(bind)
        imports = _program_imports(program_tree, wanted)  # MBPP tests lean on the program's `import math`
        if imports:
            steps = [["setup", src] for src in imports] + steps
        for name in wanted - {n for src in imports for n in _top_level_names(ast.parse(src))}:
            bind[name] = name
    if spec.get("entry") and spec["mbpp"] and spec["entry"] not in bind and spec["entry"] not in dir(builtins):
        bind[spec["entry"]] = spec["entry"]
    cut, seen = len(steps), 0
    for i, (kind, _) in enumerate(steps):
        seen += kind == "case"
        if kind == "case" and seen == max_tests:
            cut = i + 1
            break
    return steps[:cut], bind
