"""A multimodal run: the training loop of `loop.Run` (steps, checkpoints, resume, dev loss and F1, best/,
signals, logs) over the parts of an OIELLM that sees the picture (`models/multimodal.py`): the LLaMA of
`model`, the encoder of `vision` and a new projector, as the grounding run holds its parts
(`grounding/parts.py`: the parts in `trainable` are the train state, the others frozen arrays). Batches
are records with their images, up to `multimodal.images_per_row` packed to a row, the image
placeholders after each BOS (`data/image_rows.py`); the objective is the LLaMA's next-token loss on the
targets. Chosen by `multimodal.enabled` (`train/runs.py`); exported as a multimodal model directory
(`models/multimodal_dir.py`).
"""

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from oie_jax import sharding
from oie_jax.data.image_rows import ImageRowsPipeline
from oie_jax.data.images import ImageSource
from oie_jax.data.labels import copy_label_sets
from oie_jax.data.pipeline import PipelineConfig
from oie_jax.data.tokenizer import copy_tokenizer_files
from oie_jax.errors import UserError
from oie_jax.files import location
from oie_jax.infer.budget import copy_budget
from oie_jax.models import encoders
from oie_jax.models.config import LlamaConfig
from oie_jax.models.llama import Llama
from oie_jax.models.multimodal import MultimodalConfig, MultimodalLlama, Projector
from oie_jax.models.multimodal_dir import model_from_params, save_multimodal
from oie_jax.train import build
from oie_jax.train.grounding.run import GroundingRun
from oie_jax.train.loop import Run
from oie_jax.train.loss import chunked_token_losses

PARTS = ("llama", "vision", "projector")


@dataclasses.dataclass(frozen=True)
class MultimodalSetup:
    llama: LlamaConfig
    vision: Any  # ViTConfig or MobileNetV2Config
    multimodal: MultimodalConfig
    trainable: tuple[str, ...] = ("projector",)
    loss_chunk: int = 0

    parts = PARTS

    def __post_init__(self):
        if "projector" not in self.trainable or not set(self.trainable) <= set(PARTS):
            raise UserError(f"trainable parts {self.trainable}: the projector and any of {PARTS}")

    def modules(self) -> dict:
        width = encoders.vision_width(self.vision)
        return {"llama": lambda rngs: Llama(self.llama, rngs=rngs),
                "vision": lambda rngs: encoders.build(self.vision, rngs),
                "projector": lambda rngs: Projector(width, self.llama.hidden_size, self.multimodal, rngs=rngs)}

    def model(self, params: dict) -> MultimodalLlama:
        """The model of a parameter tree {"llama", "vision", "projector"}."""
        return model_from_params(self.llama, self.vision, self.multimodal, params)

    def objective(self, params: dict, batch: dict) -> tuple[jax.Array, dict]:
        """The mean next-token loss of the targets, each row's prompt seeing its image."""
        model = self.model(params)
        hidden, _ = model.hidden_states(batch["tokens"], batch["image"], batch["positions"], batch["segment_ids"])
        sums = chunked_token_losses(hidden, model.llama.logits, batch["tokens"], batch["loss_mask"],
                                    chunk=self.loss_chunk)
        loss = sums.cross_entropy / jnp.maximum(sums.tokens, 1)
        return loss, {"loss": loss, "z_loss": jnp.float32(0), "target_tokens": sums.tokens,
                      "tokens": (batch["segment_ids"] > 0).sum()}


class MultimodalRun(GroundingRun):
    def make_pipelines(self, records, mine: slice):
        config, m = self.config, self.config.multimodal
        self.prepare_vision()
        trainable = ("projector",) + (("vision",) if config.vision.trainable else ()) + (
            ("llama",) if m.llama in ("full", "lora") else ())
        token = m.image_token_id if m.image_token_id >= 0 else self.cfg.vocab_size - 1
        multimodal = MultimodalConfig(token, m.feature_layer, m.pool, self.cfg.param_dtype, self.cfg.dtype)
        self.setup = MultimodalSetup(self.cfg, self.vision_cfg, multimodal, trainable, config.train.loss_chunk)
        self.placeholders = (token, multimodal.image_tokens(self.vision_cfg, self.preprocess.size))
        self.images = ImageSource(location(m.images), self.preprocess, strict=config.data.strict)
        self.proposals = None
        data = config.data

        def pipeline(records, cfg):
            return ImageRowsPipeline(records, self.tokenizer, self.images, cfg, self.placeholders, m.images_per_row,
                                     mine)

        dev = None
        if records.dev:
            dev = pipeline(records.dev, PipelineConfig.for_evaluation(data.seq_len, data.batch_size))
        return pipeline(records.train, build.pipeline_config(data)), dev

    def caching(self) -> bool:
        return False

    def dev_f1(self, step: int) -> dict:
        """Greedy generation on the dev records with their images, scored as `oie-jax eval` scores."""
        from oie_jax.eval.evaluate import evaluate

        cfg, params = self.full_params(self.state.params)
        model = dataclasses.replace(self.setup, llama=cfg).model(params)
        records, images = self.f1_records_and_images
        with sharding.activation_rules(self.rules):
            _, scores = evaluate(model, self.tokenizer, records, batch_size=self.config.eval.batch_size,
                                 max_new_tokens=self.max_new_tokens, progress=False,
                                 log=lambda line: self.write(f"step {step}: {line}"),
                                 labels=self.label_sets if self.config.eval.constrained else None, images=images)
        return scores.metrics()

    @functools.cached_property
    def f1_records_and_images(self):
        """The dev records dev F1 reads and their prepared images: read once, for every evaluation."""
        from oie_jax.infer.predict import record_images

        records = self.dev_records[: self.config.eval.f1_examples or None]
        return records, record_images(records, self.images)

    f1_decoding = Run.f1_decoding

    def export(self) -> None:
        """WORKDIR/model: a multimodal model directory of best/, else the final step, with the tokenizer in
        llama/ and the label sets and generation budget beside oie_multimodal.json."""
        params, step, origin = self.exported_params()
        out = self.workdir / "model"
        cfg, full = self.full_params(params)
        save_multimodal(out, cfg, self.vision_cfg, self.preprocess, self.setup.multimodal, full)
        if self.primary:
            copy_tokenizer_files(build.tokenizer_source(self.config.model, self.init), out / "llama")
            copy_label_sets(self.workdir, out)
            copy_budget(self.workdir, out)
        self.outcome.exported_step = step
        self.say(f"wrote the multimodal model of step {step} ({origin}) to {out}")

    def summary_lines(self) -> list[str]:
        lines = Run.summary_lines(self)
        size = encoders.num_params(self.vision_cfg) / 1e6
        token, count = self.placeholders
        lines[-1:-1] = [
            f"vision   {size:,.1f}M-parameter {encoders.architecture_of(self.vision_cfg)} at "
            f"{self.preprocess.size[0]}x{self.preprocess.size[1]} "
            + (f"from {self.vision_init}" if self.vision_init else f"(random init of {self.config.vision.preset!r})")
            + f"; {count} image tokens (id {token}) after each BOS, up to {self.config.multimodal.images_per_row} "
            f"records with their images per row; trained: {', '.join(self.setup.trainable)}",
            f"images   {self.images.directory}",
        ]
        return lines
