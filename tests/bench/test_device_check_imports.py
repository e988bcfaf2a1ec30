"""The GPU check (bench/device_check.sh) runs where the image has jax, flax, optax, orbax and torch but no grain or
clu: everything its scripts import must import without them. A lazy import of the data pipeline into the train step
once cost a GPU session its speed table (the H200 check of 2026-12-04: `ModuleNotFoundError: No module named
'grain'`); this catches the next one here, in about 10 s."""
import ast
import re
import subprocess
import sys

from tests.conftest import REPO

MISSING_THERE = ("grain", "clu")


def _imports(path) -> set[str]:
  """The modules `path` imports anywhere (function bodies included), as `import` would name them."""
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      out.add(node.module)
  return out


def test_the_gpu_checks_scripts_import_without_grain_or_clu():
  script = (REPO / "bench" / "device_check.sh").read_text()
  scripts = sorted(set(re.findall(r"bench/(\w+)\.py", script)))
  assert scripts == ["generator_parity", "speed"], scripts  # what it runs: update this test with it
  local = {p.stem for p in (REPO / "bench").glob("*.py")}
  modules, todo = set(), list(scripts)
  while todo:  # the scripts and the bench modules they import, and every spade_jax module named on the way
    name = todo.pop()
    for m in _imports(REPO / "bench" / f"{name}.py"):
      if m in local and m not in modules:
        todo.append(m)
      if m in local or m.split(".")[0] == "spade_jax":
        modules.add(m)
  modules -= {"spade_jax.testing.torch_reference"}  # needs torch, which the image has and CI's venv may not
  assert "spade_jax.training.state" in modules, modules
  code = (f"import sys\nsys.path.insert(0, {str(REPO / 'bench')!r})\n"
          + "".join(f"sys.modules[{m!r}] = None\n" for m in MISSING_THERE)
          + "".join(f"import {m}\n" for m in sorted(modules)))
  r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                     env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
  assert r.returncode == 0, f"a module the GPU check imports needs {' or '.join(MISSING_THERE)}:\n{r.stderr[-3000:]}"
