"""The architecture, held by the imports. The library is built in floors; a module imports its own floor
and those below, never one above, and no import circle closes anywhere (imports inside functions count:
a lazy import is still a dependency). Checked twice: on the source (every import statement, so nothing
that runs only on some path escapes) and in fresh interpreters (what importing a floor really loads)."""

import ast
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import oie_jax

PACKAGE = Path(oie_jax.__file__).parent
LIBRARY = sorted(m.name for m in pkgutil.walk_packages(oie_jax.__path__, "oie_jax.")
                 if not m.name.startswith("oie_jax.cli"))

# Lowest first. `oie_jax` itself is the facade (`oie_jax.extract`), above the library, below the command line.
FLOORS = (
    ("base", ("oie_jax.errors", "oie_jax.files", "oie_jax.assets", "oie_jax.host_memory", "oie_jax.sharding")),
    ("models", ("oie_jax.models",)),
    ("data", ("oie_jax.data",)),
    ("convert and infer", ("oie_jax.convert", "oie_jax.infer")),
    ("eval", ("oie_jax.eval",)),
    ("train and translate", ("oie_jax.train", "oie_jax.translate")),
    ("facade", ()),
    ("cli", ("oie_jax.cli",)),
)
# The vision side (encoders, their directories, images, their conversion) stands without the LLaMA.
VISION = ("oie_jax.models.vision", "oie_jax.models.mobilenet", "oie_jax.models.encoders", "oie_jax.data.images",
          "oie_jax.convert.vision")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = PACKAGE.parent / name.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_of(path: Path) -> set[str]:
    """The oie_jax modules a source file imports anywhere in it. `from P import m` of a submodule m is an
    import of P.m alone (P's __init__ runs too, but names nothing the file uses)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).rstrip(".")
            names = [f"{base}.{alias.name}" for alias in node.names]
            submodules = {n for n in names if is_module(n)}
            found.update(submodules)
            if len(submodules) < len(names):  # names the module itself defines
                found.add(base)
    return {m for m in found if m == "oie_jax" or m.startswith("oie_jax.")}


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    return {module_name(path): imports_of(path) - {module_name(path)} for path in sorted(root.rglob("*.py"))}


def floor_of(module: str) -> int:
    if module == "oie_jax":
        return [name for name, _ in FLOORS].index("facade")
    for index, (_, prefixes) in enumerate(FLOORS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{module} is on no floor: add it to FLOORS in {__file__}")


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return [f"{a} ({FLOORS[floor_of(a)][0]}) imports {b} ({FLOORS[floor_of(b)][0]})"
            for a, targets in sorted(graph.items()) for b in sorted(targets) if floor_of(b) > floor_of(a)]


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each a circle of imports."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def reachable(graph: dict[str, set[str]], starts) -> set[str]:
    seen, todo = set(), list(starts)
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return seen


def imported_after(modules: list[str]) -> set[str]:
    """The modules loaded by importing `modules` in a fresh interpreter."""
    code = "import importlib, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules) + \
           "print('\\n'.join(sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    return set(result.stdout.split())


def test_no_module_imports_a_floor_above_its_own():
    graph = import_graph()
    assert {"oie_jax.models.llama", "oie_jax.train.runs", "oie_jax.cli.train"} <= graph.keys()
    assert "oie_jax.train.loop" in graph["oie_jax.train.runs"]  # the graph sees imports
    assert upward_imports(graph) == []


def test_no_import_circle_anywhere():
    assert circles(import_graph()) == []


def test_the_vision_side_never_reaches_the_llama_not_even_lazily():
    graph = import_graph()
    assert "oie_jax.models.vision" in reachable(graph, VISION)
    assert not {m for m in reachable(graph, VISION) if m.startswith("oie_jax.models.llama")}


def test_the_checks_catch_an_upward_import_and_a_circle():
    """The rules on a copy of the library with one rule broken each way."""
    graph = import_graph()
    broken = {**graph, "oie_jax.models.vision": graph["oie_jax.models.vision"] | {"oie_jax.models.llama"}}
    assert "oie_jax.models.llama" in reachable(broken, VISION)
    up = {**graph, "oie_jax.data.format": graph["oie_jax.data.format"] | {"oie_jax.eval.metrics"}}
    assert upward_imports(up) == ["oie_jax.data.format (data) imports oie_jax.eval.metrics (eval)"]
    # The circle this project had: the text run handing a grounding config to its own subclass.
    circle = {**graph, "oie_jax.train.loop": graph["oie_jax.train.loop"] | {"oie_jax.train.grounding.run"}}
    assert circles(circle) == [["oie_jax.train.grounding.run", "oie_jax.train.loop"]]


@pytest.mark.parametrize("floor", [name for name, prefixes in FLOORS[:-2]])
def test_importing_a_floor_loads_nothing_above_it(floor):
    level = [name for name, _ in FLOORS].index(floor)
    modules = [m for m in LIBRARY if floor_of(m) == level]
    loaded = {m for m in imported_after(modules) if m.startswith("oie_jax.")}
    assert set(modules) <= loaded
    assert not {m for m in loaded if floor_of(m) > level}


def test_importing_the_vision_side_loads_no_llama():
    loaded = imported_after(list(VISION))
    assert set(VISION) <= loaded
    assert not {m for m in loaded if m.startswith(("oie_jax.models.llama", "oie_jax.models.checkpoint"))}


def test_the_library_never_imports_the_command_line_nor_tfds():
    loaded = imported_after(LIBRARY)
    assert "oie_jax.train.runs" in loaded and "oie_jax.eval.metrics" in loaded
    assert not any(name.startswith("oie_jax.cli") for name in loaded)
    assert "tensorflow_datasets" not in loaded


def test_only_training_loads_tensorflow():
    """Its import takes ~3 s of every process: commands that generate, score, serve, translate or convert
    never need it (tf.data feeds training only)."""
    assert "tensorflow" not in imported_after([m for m in LIBRARY if not m.startswith("oie_jax.train")])


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in /proc (Linux)")
@pytest.mark.parametrize("asked, inherited", [
    ({"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}, None),
    ({"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}, "4"),
    ({"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}, "20"),
    ({"XLA_FLAGS": "", "JAX_NUM_CPU_DEVICES": "8"}, None),
])
def test_virtual_cpu_devices_get_two_threads_each(asked, inherited):
    """With one thread per virtual device, a device waiting in two collectives at once starved another and the
    run hung until XLA aborted it (oie_jax/__init__.py): XLA's pool holds twice as many threads as devices,
    also when a smaller PJRT_NPROC is inherited; a larger one is kept."""
    code = ("import oie_jax, jax, os\njax.devices()\nprint(sum(open(f'/proc/self/task/{t}/comm').read().strip()"
            ".endswith('XLAEigen') for t in os.listdir('/proc/self/task')))")
    env = dict(os.environ, JAX_PLATFORMS="cpu", **asked)
    env.pop("PJRT_NPROC", None)  # the one tests/conftest.py set by importing oie_jax
    if inherited is not None:
        env["PJRT_NPROC"] = inherited
    threads = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert int(threads) == max(len(os.sched_getaffinity(0)), 16, int(inherited or 0))


@pytest.mark.parametrize("first", ["numpy, oie_jax", "oie_jax, numpy"])
def test_numpy_asks_for_no_huge_pages_unless_the_user_says_so(first):
    """Huge-page advice made every first touch of a large array slow on a host that compacts memory at the
    fault (oie_jax/__init__.py), whether NumPy was imported before oie_jax or after; a child process
    inherits the setting, and a user's own NUMPY_MADVISE_HUGEPAGE is left alone."""
    def advised(setting: str | None, child: bool = False) -> str:
        code = f"import {first}\nfrom numpy._core.multiarray import _set_madvise_hugepage\n"
        if child:  # a process it starts, which does not import oie_jax
            code += ("import subprocess, sys\nprint(subprocess.run([sys.executable, '-c', 'from numpy._core.multiarray "
                     "import _set_madvise_hugepage as s; print(s(True))'], capture_output=True, text=True).stdout)")
        else:
            code += "print(_set_madvise_hugepage(True))"  # returns the setting it replaces
        env = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}
        if setting is not None:
            env["NUMPY_MADVISE_HUGEPAGE"] = setting
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env=env).stdout.strip()

    assert advised(None) == "False" and advised(None, child=True) == "False"
    assert advised("1") == "True"
