"""The package's shape stays what the README's layout section says: no module-level import cycle,
the library never imports the experiments, small modules and functions, old commands still run."""

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "lottery_kd"
MAX_MODULE_LINES = 420  # "about 400"
MAX_FUNCTION_LINES = 65  # "about 60"


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _top_level_imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """lottery_kd modules imported at module level (not inside functions: those run later)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            submodules = {f"{base}.{alias.name}" for alias in node.names}
            if not submodules <= set(modules):  # names from the package itself, not submodules
                found.add(base)
            found.update(submodules)
    return {m for m in found if m in modules and m != name}


def test_no_module_level_import_cycle():
    modules = _modules()
    graph = {name: _top_level_imports(path, name, modules) for name, path in modules.items()}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])


def test_the_readme_package_table_names_every_package_and_module():
    """A newcomer reads the architecture from the README's table: each package of lottery_kd
    has its row, and the row names every module in it (the top level too)."""
    import re
    readme = (REPO / "README.md").read_text()
    rows = dict(re.findall(r"^\| (`\w+/`|top level) \| (.*) \|$", readme, re.M))
    missing = []
    for folder in [PACKAGE] + sorted(p for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()):
        key = "top level" if folder == PACKAGE else f"`{folder.name}/`"
        named = set(re.findall(r"`(\w+)`", rows.get(key, "")))
        missing += [f"{key}: {'no row' if key not in rows else module.stem}"
                    for module in sorted(folder.glob("*.py"))
                    if module.stem != "__init__" and (key not in rows or module.stem not in named)]
    assert not missing, f"README's package table lacks {sorted(set(missing))}"


def test_the_library_never_imports_experiments_or_tests():
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert name.split(".")[0] not in ("experiments", "tests", "benchmarks"), \
                    f"{path.relative_to(REPO)} imports {name}"


def test_modules_and_functions_stay_small():
    """The package, and the scripts people read beside it: benchmarks, experiments and the
    result pages' table scripts."""
    too_long = []
    scripts = [REPO / folder for folder in ("benchmarks", "experiments", "docs")]
    for path in sorted(p for folder in [PACKAGE, *scripts] for p in folder.rglob("*.py")):
        text = path.read_text()
        lines = text.count("\n")
        if lines > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(REPO)}: {lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: "
                                    f"{length} lines")
    assert not too_long, "over the size limits:\n  " + "\n  ".join(too_long)


def test_the_old_command_paths_still_run():
    for command in ("status", "report", "lmc", "bootstrap"):
        done = subprocess.run([sys.executable, "-m", f"lottery_kd.{command}", "--help"],
                              capture_output=True, text=True, cwd=REPO, timeout=120)
        assert done.returncode == 0 and "usage:" in done.stdout, (command, done.stderr[-500:])


def test_the_public_api_is_reexported_lazily():
    code = ("import sys, lottery_kd; assert 'jax' not in sys.modules; "
            "from lottery_kd import pruning, variants, protocols, Workdir, run, get_model; "
            "assert callable(pruning.register) and callable(variants.register_weight_source); "
            "assert Workdir('w').results.name == 'results.jsonl'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-1000:]


def test_the_design_contracts_module_names_resolve():
    """The design card's contracts (../shared/DESIGN.md) name lottery_kd.masks, .pruning and
    .losses: they still resolve."""
    import lottery_kd
    assert all(callable(getattr(lottery_kd.masks, name))
               for name in ("create", "apply", "sparsity", "layer_counts"))
    assert callable(lottery_kd.pruning.register) and callable(lottery_kd.pruning.get)
    assert callable(lottery_kd.losses.kd_loss)


def test_every_command_names_itself_as_it_is_run():
    """argparse's default prog is the file name (prepare.py), which a `python -m` user cannot
    type back; every parser sets prog to the command the README gives."""
    unnamed = []
    for folder in ("lottery_kd", "benchmarks", "experiments", "docs"):
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == \
                        "ArgumentParser" and not any(k.arg == "prog" for k in node.keywords):
                    unnamed.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not unnamed, unnamed


def test_public_functions_have_type_hints():
    """The style's rule, kept: every public function and method of the package, the benchmarks,
    the experiments and the docs' scripts annotates its parameters and its return."""
    unhinted = []
    scripts = [REPO / folder for folder in ("benchmarks", "experiments", "docs")]
    for path in sorted(p for folder in [PACKAGE, *scripts] for p in folder.rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            functions = [n for n in node.body if isinstance(n, ast.FunctionDef)] \
                if isinstance(node, ast.ClassDef) else [node]
            for function in functions:
                if not isinstance(function, ast.FunctionDef) or function.name.startswith("_"):
                    continue
                arguments = [a for a in function.args.args + function.args.kwonlyargs
                             if a.arg not in ("self", "cls")]
                if function.returns is None or any(a.annotation is None for a in arguments):
                    unhinted.append(f"{path.relative_to(REPO)}:{function.lineno} "
                                    f"{function.name}")
    assert not unhinted, unhinted
