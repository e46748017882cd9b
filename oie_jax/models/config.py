"""LLaMA model configuration: presets and the round trip with Hugging Face `config.json`."""

import dataclasses
import json
from typing import Any

from oie_jax.errors import UserError
from oie_jax.models.policies import DTYPES, check_policies

SUPPORTED_ARCHITECTURE = "LlamaForCausalLM"
ATTENTION = ("auto", "xla", "cudnn", "splash")  # see attention.py
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")  # the projections an adapter can sit on


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters (LoRA): each target weight W is used as W + (alpha / rank) A B, with A (in, rank)
    and B (rank, out) trained and W frozen. B starts at zero, so training starts from the base model."""

    rank: int
    alpha: float
    targets: tuple[str, ...] = LORA_TARGETS
    dropout: float = 0.0  # on the adapter's input, in training only

    def __post_init__(self):
        object.__setattr__(self, "targets", tuple(self.targets))
        if not isinstance(self.rank, int) or self.rank < 1:
            raise UserError(f"lora rank {self.rank!r} must be a positive integer")
        if not self.alpha > 0:
            raise UserError(f"lora alpha {self.alpha!r} must be positive")
        if not 0 <= self.dropout < 1:
            raise UserError(f"lora dropout {self.dropout!r} must be in [0, 1)")
        unknown = sorted(set(self.targets) - set(LORA_TARGETS))
        if unknown or not self.targets:
            raise UserError(f"lora targets {list(self.targets)}: choose one or more of {LORA_TARGETS}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int | None = None  # hidden_size // num_heads when None
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    # Llama 3 scaling: {"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
    # "original_max_position_embeddings"}; None for plain RoPE.
    rope_scaling: dict | None = None
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | tuple[int, ...] | None = 2
    pad_token_id: int | None = None
    param_dtype: str = "float32"  # storage dtype of the weights (the master copy in training)
    dtype: str = "float32"  # compute dtype of matmuls; norms, softmax and logits stay float32
    remat: str = "none"  # rematerialisation policy of each block, one of REMAT_POLICIES
    attention: str = "auto"  # kernel, one of ATTENTION (oie_jax/models/attention.py): auto picks by platform
    lora: LoraConfig | None = None  # adapters on the projections (models/lora.py); None for a plain model

    def __post_init__(self):
        if isinstance(self.lora, dict):
            object.__setattr__(self, "lora", LoraConfig(**self.lora))
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        if self.num_heads % self.num_kv_heads:
            raise UserError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        check_policies(self)
        if self.attention not in ATTENTION:
            raise UserError(f"attention={self.attention!r} is not one of {ATTENTION}")
        if self.rope_scaling is not None and self.rope_scaling.get("rope_type", "llama3") != "llama3":
            raise UserError(f"rope_scaling type {self.rope_scaling.get('rope_type')!r} is not supported (only llama3)")

    def __hash__(self):  # rope_scaling is a dict; modules keep the config as static data
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        if self.eos_token_id is None:
            return ()
        return self.eos_token_id if isinstance(self.eos_token_id, tuple) else (self.eos_token_id,)

    def replace(self, **changes) -> "LlamaConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "LlamaConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"unknown config fields {unknown}")
        return cls(**values)

    def num_params(self) -> int:
        attn = self.hidden_size * self.head_dim * (2 * self.num_heads + 2 * self.num_kv_heads)
        mlp = 3 * self.hidden_size * self.intermediate_size
        block = attn + mlp + 2 * self.hidden_size
        embed = self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * block + embed + self.hidden_size

    # ---- Hugging Face config.json -------------------------------------------------------------

    @classmethod
    def from_hf_config(cls, hf: dict[str, Any], **overrides) -> "LlamaConfig":
        architectures = hf.get("architectures") or []
        model_type = hf.get("model_type")
        if model_type != "llama" or (architectures and SUPPORTED_ARCHITECTURE not in architectures):
            raise UserError(
                f"unsupported architecture {architectures or model_type!r}: oie-jax reads {SUPPORTED_ARCHITECTURE} "
                "(model_type 'llama') only"
            )
        if hf.get("hidden_act", "silu") != "silu":
            raise UserError(f"unsupported hidden_act {hf['hidden_act']!r} (LLaMA uses silu)")
        if hf.get("attention_bias") or hf.get("mlp_bias"):
            raise UserError("attention_bias/mlp_bias are not supported (LLaMA has no biases)")
        torch_dtype = hf.get("torch_dtype") or hf.get("dtype") or "float32"
        torch_dtype = torch_dtype if torch_dtype in DTYPES else "float32"
        missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                               "num_attention_heads") if not isinstance(hf.get(k), int)]
        if missing:
            raise UserError(f"config.json lacks integer fields {missing}")
        values = dict(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"],
            num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
            head_dim=hf.get("head_dim"),
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_theta=float(_rope_parameters(hf).get("rope_theta", hf.get("rope_theta", 10000.0))),
            rope_scaling=_rope_scaling(hf),
            # Defaults as in transformers' LlamaConfig, for files that leave them out.
            max_position_embeddings=hf.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            bos_token_id=hf.get("bos_token_id", 1),
            eos_token_id=hf.get("eos_token_id", 2),
            pad_token_id=hf.get("pad_token_id"),
            param_dtype=torch_dtype,
            dtype=torch_dtype,  # bfloat16 weights compute in bfloat16; override for float32 compute
        )
        values.update(overrides)
        return cls(**values)

    def to_hf_config(self, torch_dtype: str | None = None) -> dict[str, Any]:
        eos = list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id
        return {
            "architectures": [SUPPORTED_ARCHITECTURE],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": dict(self.rope_scaling) if self.rope_scaling else None,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": False,
            "attention_dropout": 0.0,
            "mlp_bias": False,
            "initializer_range": 0.02,
            "pretraining_tp": 1,
            "use_cache": True,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": torch_dtype or self.param_dtype,
        }


def _rope_parameters(hf: dict) -> dict:
    # transformers >= 5 writes RoPE settings under "rope_parameters"; older files use top-level keys.
    return hf.get("rope_parameters") or {}


def _rope_scaling(hf: dict) -> dict | None:
    scaling = hf.get("rope_scaling") or _rope_parameters(hf)
    kind = scaling.get("rope_type", scaling.get("type")) if scaling else None
    if kind in (None, "default"):
        return None
    keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    missing = [k for k in keys if k not in scaling]
    if kind != "llama3" or missing:
        raise UserError(f"unsupported rope_scaling {scaling!r}: only rope_type 'llama3' with {keys} is supported")
    return {"rope_type": "llama3", **{k: scaling[k] for k in keys}}


_LLAMA3_SCALING = dict(rope_type="llama3", low_freq_factor=1.0, high_freq_factor=4.0,
                       original_max_position_embeddings=8192)
_LLAMA3 = dict(vocab_size=128256, rope_theta=500000.0, rms_norm_eps=1e-5, bos_token_id=128000,
               eos_token_id=128001, max_position_embeddings=8192)

PRESETS: dict[str, LlamaConfig] = {
    # A random model for tests: 2:1 grouped-query heads (the kv heads split over tensor=2), two layers.
    "tiny": LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                        num_kv_heads=2, rope_theta=10000.0, max_position_embeddings=512, bos_token_id=1,
                        eos_token_id=2),
    "smollm2-135m": LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
                                num_heads=9, num_kv_heads=3, rope_theta=100000.0, rms_norm_eps=1e-5,
                                max_position_embeddings=8192, tie_word_embeddings=True, bos_token_id=1,
                                eos_token_id=2, pad_token_id=2),
    "llama3-8b": LlamaConfig(hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32, num_kv_heads=8,
                             param_dtype="bfloat16", dtype="bfloat16", **_LLAMA3),
    "llama3.1-8b": LlamaConfig(hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32,
                               num_kv_heads=8, param_dtype="bfloat16", dtype="bfloat16",
                               rope_scaling=dict(_LLAMA3_SCALING, factor=8.0),
                               **dict(_LLAMA3, max_position_embeddings=131072)),
    "llama3.2-1b": LlamaConfig(hidden_size=2048, intermediate_size=8192, num_layers=16, num_heads=32, num_kv_heads=8,
                               tie_word_embeddings=True, param_dtype="bfloat16", dtype="bfloat16",
                               rope_scaling=dict(_LLAMA3_SCALING, factor=32.0),
                               **dict(_LLAMA3, max_position_embeddings=131072)),
    "llama3-70b": LlamaConfig(hidden_size=8192, intermediate_size=28672, num_layers=80, num_heads=64, num_kv_heads=8,
                              param_dtype="bfloat16", dtype="bfloat16", **_LLAMA3),
    # The backbone of the 13B OIELLM; its tokenizer is SentencePiece.
    "llama2-13b": LlamaConfig(vocab_size=32000, hidden_size=5120, intermediate_size=13824, num_layers=40,
                              num_heads=40, num_kv_heads=40, rope_theta=10000.0, rms_norm_eps=1e-5,
                              max_position_embeddings=4096, bos_token_id=1, eos_token_id=2,
                              param_dtype="bfloat16", dtype="bfloat16"),
}


def preset(name: str, **overrides) -> LlamaConfig:
    if name not in PRESETS:
        raise UserError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides)
