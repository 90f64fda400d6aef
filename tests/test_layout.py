"""The package's shape: every module imports on its own, and no modules import each other in a circle.

`python -m pytest tests/test_layout.py` is the check; the import graph counts function-local imports too, since a
circle hidden inside a function is still one for a reader.
"""
import ast
import concurrent.futures
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "copper_jax"


def package_modules() -> dict:
  """{dotted module name: path} of every module in copper_jax (a package's __init__ under the package's name)."""
  modules = {}
  for path in sorted(PACKAGE.rglob("*.py")):
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
      parts = parts[:-1]
    modules[".".join(parts)] = path
  return modules


def imported_modules(name: str, path: pathlib.Path, known: dict) -> set:
  """The package modules `name` imports anywhere in its file, resolved to the longest known module name."""
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  found = set()
  for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
    if isinstance(node, ast.Import):
      candidates = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(anchor + ([node.module] if node.module else []))
      # `from X import y` names module X.y where there is one, else a name defined in X.
      candidates = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
    else:
      continue
    for candidate in candidates:
      while candidate and candidate not in known:
        candidate = candidate.rpartition(".")[0]
      # A module's own enclosing packages run first anyway; an edge to them is no circle of the module's making.
      if candidate and candidate != name and not name.startswith(candidate + "."):
        found.add(candidate)
  return found


def import_graph() -> dict:
  known = package_modules()
  return {name: imported_modules(name, path, known) for name, path in known.items()}


def find_circle(graph: dict) -> list | None:
  """One import circle as [a, b, ..., a], or None (depth-first search for a back edge)."""
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph[node]):
      if state.get(nxt) == "open":
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        circle = visit(nxt)
        if circle:
          return circle
    stack.pop()
    state[node] = "done"
    return None

  for node in sorted(graph):
    if node not in state:
      circle = visit(node)
      if circle:
        return circle
  return None


def test_the_circle_finder_finds_a_circle():
  assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
  assert find_circle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_graph_sees_function_local_and_relative_imports(tmp_path):
  known = {"pkg.a": tmp_path / "a.py", "pkg.b": tmp_path / "b.py", "pkg.sub": tmp_path / "sub" / "__init__.py",
           "pkg.sub.c": tmp_path / "c.py"}
  (tmp_path / "a.py").write_text("def f():\n  from pkg import b\n  from .sub import c\n")
  assert imported_modules("pkg.a", known["pkg.a"], known) == {"pkg.b", "pkg.sub.c"}


def test_no_import_circle_in_the_package():
  graph = import_graph()
  assert len(graph) > 30
  assert find_circle(graph) is None, " -> ".join(find_circle(graph))


def test_the_library_never_imports_the_launchers_tests_or_benchmarks():
  for name, targets in import_graph().items():
    source = package_modules()[name].read_text(encoding="utf-8")
    tree = ast.parse(source)
    roots = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names}
    roots |= {(node.module or "").split(".")[0] for node in ast.walk(tree)
              if isinstance(node, ast.ImportFrom) and not node.level}
    assert not roots & {"launch", "tests", "benchmarks", "configs"}, name


@pytest.mark.slow
def test_every_module_imports_on_its_own():
  """Each module in a fresh interpreter: an import that only works after some other module ran is caught."""
  def load(name):
    run = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    return name, run.returncode, run.stderr.strip().splitlines()[-1:] if run.returncode else []

  with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
    failed = [(name, err) for name, code, err in pool.map(load, sorted(package_modules())) if code]
  assert failed == []
