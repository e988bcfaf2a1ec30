"""Imports in spade_jax only run downward: a module imports its own layer or the layers below, never above.

The layer order is written down here (and mirrored in the README's layout section); a module must belong to one
layer. Function-level (lazy) imports count like module-level ones: a lazy upward import is still a cycle waiting
to happen, and it makes the lower layer unusable without the upper one.
"""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "spade_jax"

# Lowest first. A name covers the module and, for a package, everything in it.
LAYERS = (
    ("base", ("spade_jax.errors", "spade_jax.launch", "spade_jax.parallel", "spade_jax.platforms",
              "spade_jax.semantics", "spade_jax.progress", "spade_jax.config")),
    ("data", ("spade_jax.data",)),
    ("images", ("spade_jax.colormap", "spade_jax.images", "spade_jax.writer")),
    ("models", ("spade_jax.models",)),
    ("weights", ("spade_jax.weights",)),
    ("losses", ("spade_jax.losses",)),
    ("networks", ("spade_jax.networks",)),
    ("checkpoints", ("spade_jax.checkpoints",)),
    ("inference", ("spade_jax.inference", "spade_jax.synthesize")),
    ("evaluation", ("spade_jax.evaluation",)),
    ("training", ("spade_jax.training",)),
    # `spade_jax` itself: the lazy `load`
    ("apps", ("spade_jax.convert", "spade_jax.serve", "spade_jax.aot", "spade_jax")),
    # what the tests and benchmarks share (the PyTorch oracle; needs torch): nothing below may import it
    ("testing", ("spade_jax.testing",)),
)

# Inference, evaluation and training sit side by side on what is below them: the only ways between them are the
# loop's periodic evaluation, and the notebook API's users (the package's lazy `load`, the synthesis CLI, and the
# evaluation of a checkpoint).
ONLY_IMPORTERS = {"spade_jax.evaluation": {"spade_jax.training.loop"},
                  "spade_jax.inference": {"spade_jax", "spade_jax.synthesize", "spade_jax.evaluation.run"}}


def layer_of(module: str) -> int:
  """Index into LAYERS of the most specific name covering `module`."""
  best, index = "", None
  for i, (_, names) in enumerate(LAYERS):
    for name in names:
      if (module == name or module.startswith(name + ".")) and len(name) > len(best):
        best, index = name, i
  if index is None:
    raise LookupError(f"{module} is in no layer: add it to LAYERS in tests/test_layering.py (and the README)")
  return index


def module_name(path: pathlib.Path, root: pathlib.Path = PACKAGE) -> str:
  parts = (root.name,) + path.relative_to(root).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str, root: pathlib.Path) -> bool:
  rel = pathlib.Path(*name.split(".")[1:])
  return (root / rel).with_suffix(".py").is_file() or (root / rel / "__init__.py").is_file()


def imports_of(source: str, module: str, is_package: bool, root: pathlib.Path = PACKAGE) -> list[tuple[int, str]]:
  """(line, imported spade_jax module) for every import statement anywhere in `source`, function bodies included.
  `from a import b` counts as importing a.b when that is a module, else as importing a."""
  package = module if is_package else module.rpartition(".")[0]
  out = []
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == root.name]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(anchor + ([base] if base else []))
      if base.split(".")[0] != root.name:
        continue
      for alias in node.names:
        sub = f"{base}.{alias.name}"
        out.append((node.lineno, sub if _is_module(sub, root) else base))
  return sorted(set(out))


def violations(root: pathlib.Path = PACKAGE) -> list[str]:
  found = []
  for path in sorted(root.rglob("*.py")):
    module = module_name(path, root)
    mine = layer_of(module)
    for line, target in imports_of(path.read_text(), module, path.name == "__init__.py", root):
      theirs = layer_of(target)
      where = f"{path.relative_to(root.parent)}:{line}"
      if theirs > mine:
        found.append(f"{where}: {module} ({LAYERS[mine][0]}) imports {target} ({LAYERS[theirs][0]}), a layer above")
      for guarded, allowed in ONLY_IMPORTERS.items():
        inside = lambda m, g=guarded: m == g or m.startswith(g + ".")
        if inside(target) and not inside(module) and module not in allowed:
          found.append(f"{where}: {module} imports {target}; only {sorted(allowed)} may")
  return found


def test_imports_only_run_downward():
  assert violations() == []


def test_every_module_has_a_layer():
  for path in PACKAGE.rglob("*.py"):
    layer_of(module_name(path))


def test_the_check_sees_an_upward_import(tmp_path):
  """A synthetic package whose model code lazily imports the trainer, whose evaluation imports training, and whose
  training imports the notebook API."""
  root = tmp_path / "spade_jax"
  (root / "models").mkdir(parents=True)
  (root / "training").mkdir()
  (root / "evaluation").mkdir()
  for d in (root, root / "models", root / "training", root / "evaluation"):
    (d / "__init__.py").write_text("")
  (root / "semantics.py").write_text("import numpy\n")
  (root / "training" / "step.py").write_text("from spade_jax import semantics\nfrom spade_jax.models import gen\n")
  (root / "training" / "loop.py").write_text("from spade_jax.inference import tensor2im\n")
  (root / "inference.py").write_text("")
  (root / "models" / "gen.py").write_text(
      "from . import other\n\ndef f():\n  from spade_jax.training.step import x  # noqa: PLC0415\n  return x\n")
  (root / "models" / "other.py").write_text("")
  (root / "evaluation" / "protocol.py").write_text("from ..training import step\n")
  found = violations(root)
  assert len(found) == 3, found
  assert found[0].startswith("spade_jax/evaluation/protocol.py:1: spade_jax.evaluation.protocol (evaluation) imports "
                             "spade_jax.training.step (training), a layer above")
  assert found[1].startswith("spade_jax/models/gen.py:4: spade_jax.models.gen (models) imports spade_jax.training.step")
  assert found[2] == ("spade_jax/training/loop.py:1: spade_jax.training.loop imports spade_jax.inference; only "
                      "['spade_jax', 'spade_jax.evaluation.run', 'spade_jax.synthesize'] may")


def test_a_module_outside_the_layers_is_an_error():
  with pytest.raises(LookupError, match="add it to LAYERS"):
    layer_of("spade_jax_other.thing")
