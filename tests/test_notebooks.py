"""The notebooks of `notebooks/`: committed without outputs, with a Colab link and a setup cell that
installs only on Colab; and (marked `notebooks`: `make notebooks`, which CI runs after `make test`)
each executed top to bottom by a real kernel at a small scale, its parameter cell replaced."""

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
NAMES = [p.name for p in NOTEBOOKS]

# Each notebook's parameter cell at test scale; BASE is SmolLM2 converted once for the session.
SMALL = {
    "01_quickstart.ipynb": "BASE = {base!r}\nMAX_NEW_TOKENS = 24\nSAMPLE_RECORDS = 4",
    "02_finetune_your_data.ipynb": "BASE = {base!r}\nWORKDIR = 'runs/finetune'\nSTEPS = 2\nSEQ_LEN = 64\n"
                                   "BATCH_SIZE = 4",
    "03_tpu_colab.ipynb": "CONFIG_8B = 'configs/llama3_8b_mmm_tpu.py'\nSTEPS = 4",
    "04_grounding.ipynb": "BASE = {base!r}\nCORPUS = 'runs/synth'\nTWEETS = 40\nTEXT_STEPS = 2\nHEAD_EPOCHS = 2\n"
                          "IMAGE_SIZE = 224",
}


def cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def source(cell: dict) -> str:
    return "".join(cell["source"])


def test_notebooks_have_no_outputs_a_colab_link_and_a_colab_only_setup():
    assert NAMES == sorted(SMALL), NAMES
    for path in NOTEBOOKS:
        found = cells(path)
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in found if c["cell_type"] == "code")
        assert f"colab.research.google.com/github/oie-jax/oie-jax/blob/main/notebooks/{path.name}" in source(found[0])
        setup = next(c for c in found if c["cell_type"] == "code")
        assert 'if "google.colab" in sys.modules:' in source(setup) and "pip" in source(setup)
        assert sum("parameters" in c["metadata"].get("tags", []) for c in found) == 1, path.name


@pytest.mark.notebooks
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_top_to_bottom(name, smollm2_dir, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    project = tmp_path / "project"  # the notebook's working directory: configs/ beside, runs/ written here
    project.mkdir()
    (project / "configs").symlink_to(ROOT / "configs")
    notebook = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    (parameters,) = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    parameters.source = SMALL[name].format(base=str(smollm2_dir))
    monkeypatch.setenv("XLA_FLAGS", "")  # the kernel's own device count (conftest asks for 8 in this process)
    NotebookClient(notebook, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(project)}}).execute()
    printed = "".join(output.get("text", "") for c in notebook.cells if c.cell_type == "code" for output in c.outputs)
    expected = {"01_quickstart.ipynb": "items:", "02_finetune_your_data.ipynb": "largest logit difference:",
                "03_tpu_colab.ipynb": "steps; losses:", "04_grounding.ipynb": "gmner/f1 ="}[name]
    assert expected in printed, printed[-3000:]
    if name == "02_finetune_your_data.ipynb":
        difference = float(printed.split("largest logit difference:")[1].split()[0])
        assert difference < 1e-3, difference
    if name == "03_tpu_colab.ipynb":
        assert "'fsdp': 8" in printed or "fsdp=8" in printed, printed[-3000:]
