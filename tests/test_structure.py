"""The layering the design asks for, checked on the imports: the command line is a package the library
never imports, models know nothing of the data layer, and training input has one path (our readers and
tf.data; no TFDS builder beside them)."""

import pkgutil
import subprocess
import sys

import oie_jax

LIBRARY = sorted(m.name for m in pkgutil.walk_packages(oie_jax.__path__, "oie_jax.")
                 if not m.name.startswith("oie_jax.cli"))


def imported_after(modules: list[str]) -> set[str]:
    """The modules loaded by importing `modules` in a fresh interpreter."""
    code = "import importlib, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules) + \
           "print('\\n'.join(sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    return set(result.stdout.split())


def test_the_library_never_imports_the_command_line_nor_tfds():
    loaded = imported_after(LIBRARY)
    assert "oie_jax.train.loop" in loaded and "oie_jax.eval.metrics" in loaded
    assert not any(name.startswith("oie_jax.cli") for name in loaded)
    assert "tensorflow_datasets" not in loaded


def test_models_know_nothing_of_data_training_or_evaluation():
    loaded = imported_after([m for m in LIBRARY if m.startswith("oie_jax.models")])
    assert not {name for name in loaded if name.startswith(("oie_jax.data", "oie_jax.train", "oie_jax.eval"))}
