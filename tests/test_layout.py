"""Dependencies point one way: schemes import jaximus's island primitives; jaximus reaches schemes only
through the registry, from the build step."""
import ast

from conftest import ROOT


def imported_modules(path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    return names | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}


def test_only_the_build_step_reaches_the_schemes():
    reaching = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "jaximus").rglob("*.py")
                      if any(m.split(".")[0] == "outer_optimizers" for m in imported_modules(p)))
    assert reaching == ["jaximus/build.py"]
    registry = {m for m in imported_modules(ROOT / "jaximus" / "build.py") if m.startswith("outer_optimizers")}
    assert registry == {"outer_optimizers"}  # the registry, not a scheme's module


# what a scheme may build on: island collectives, the plan and the clocks it plans from, its state, its keys,
# compression, and the optimizers of jaximus/optim; never the loop, the step, the build or the data
SHARED = {"jaximus", "jaximus.islands", "jaximus.plan", "jaximus.clock", "jaximus.asynchrony", "jaximus.state",
          "jaximus.schema", "jaximus.compress"}


def test_schemes_use_only_the_shared_primitives_of_jaximus():
    used = {m for p in (ROOT / "outer_optimizers").glob("*.py") for m in imported_modules(p) if m.startswith("jaximus")}
    outside = {m for m in used if m not in SHARED and not m.startswith("jaximus.optim.")}
    assert not outside, outside
