"""A grounding run: the training loop of `loop.Run` (steps, checkpoints, resume, dev evaluation, best/,
signals, logs) over the grounding parts (`parts.py`): the LLaMA of `model`, the encoder of `vision`, a
new head, and batches of tweets with their images. Chosen by `grounding.enabled` (`train/runs.py`)."""

import dataclasses

import jax

from oie_jax import sharding
from oie_jax.data.grounding import GroundingPipeline
from oie_jax.data.images import ImageSource
from oie_jax.data.pipeline import PipelineConfig, to_global
from oie_jax.data.proposals import read_proposals
from oie_jax.data.tokenizer import copy_tokenizer_files
from oie_jax.files import location
from oie_jax.models import encoders, lora
from oie_jax.models.checkpoint import load_params, model_from_params
from oie_jax.models.grounder import PARTS_DIRS, save_grounder
from oie_jax.models.grounding import GroundingConfig
from oie_jax.train import build
from oie_jax.train.grounding import parts
from oie_jax.train.loop import Run
from oie_jax.train.step import jit_on_mesh


class GroundingRun(Run):
    def prepare_vision(self) -> None:
        """The encoder's config and init directory, and how images are prepared for it (`vision.*`)."""
        vision = self.config.vision
        self.vision_cfg, self.vision_init = build.vision_config(vision)
        self.preprocess = encoders.preprocess_for(self.vision_cfg, self.vision_init)
        if vision.resize:
            self.preprocess = dataclasses.replace(self.preprocess, resize=vision.resize)
        if vision.image_size:
            self.preprocess = dataclasses.replace(self.preprocess, size=(vision.image_size,) * 2)

    def make_pipelines(self, records, mine: slice):
        config = self.config
        self.prepare_vision()
        g = config.grounding
        trainable = ("head",) + (("vision",) if config.vision.trainable else ()) + (
            ("llama",) if g.llama in ("full", "lora") else ())
        head = GroundingConfig(query_size=self.cfg.hidden_size, vision_size=encoders.vision_width(self.vision_cfg),
                               size=g.size, cells=g.cells, param_dtype=self.cfg.param_dtype, dtype=self.cfg.dtype)
        self.setup = parts.GroundingSetup(self.cfg, self.vision_cfg, head, trainable, g.lm_weight, g.l1_weight,
                                          g.giou_weight)
        self.images = ImageSource(location(g.images), self.preprocess, strict=config.data.strict)
        self.proposals = None
        if g.proposals:
            self.proposals = read_proposals(g.proposals, strict=config.data.strict)
            self.proposals.check_ids(self.images.directory)
            self.say(self.proposals.summary())
        data = config.data
        pipeline = GroundingPipeline(records.train, self.tokenizer, self.images, build.pipeline_config(data), mine,
                                     self.proposals)
        dev = None
        if records.dev:
            dev = GroundingPipeline(records.dev, self.tokenizer, self.images,
                                    PipelineConfig.for_evaluation(data.seq_len, data.batch_size), mine, self.proposals)
        return pipeline, dev

    def make_shardings(self):
        self.part_shardings = parts.part_shardings(self.setup, self.mesh, self.rules)
        self.frozen_shardings = parts.split(self.setup, self.part_shardings)[1]
        return parts.state_shardings(self.setup, self.optimizer, self.mesh, self.rules, self.part_shardings)

    def abstract_state(self):
        return parts.abstract_train_state(self.setup, self.optimizer, self.shardings)

    def load_part(self, part: str) -> dict:
        """A part's parameters from its init directory, else a random init (seeded per part), placed; of a
        LoRA LLaMA, new adapters (its base is `lora_base`)."""
        placed = self.part_shardings[part]
        seed = self.config.train.seed + self.setup.parts.index(part)
        if part == "llama" and self.cfg.lora is not None:
            adapters = lambda: lora.split(parts.init_part(self.setup, part, seed))[0]  # noqa: E731
            return jax.jit(adapters, out_shardings=lora.split(placed)[0])()
        if part == "llama" and self.init is not None:
            return load_params(self.init, self.cfg, placed)
        if part == "vision" and self.vision_init is not None:
            return encoders.load_vision_params(self.vision_init, self.vision_cfg, placed)
        return jax.jit(lambda: parts.init_part(self.setup, part, seed), out_shardings=placed)()

    def load_frozen(self) -> dict:
        frozen = {part: self.load_part(part) for part in self.setup.parts if part not in self.setup.trainable}
        if self.cfg.lora is not None:
            frozen["llama"] = self.lora_base(self.frozen_shardings["llama"])
        return frozen

    def initial_state(self):
        trainable = {part: self.load_part(part) for part in self.setup.trainable}
        return parts.create_state(self.optimizer, self.shardings, trainable)

    def full_params(self, params: dict) -> tuple:
        """(the LLaMA's plain config, every part's parameters) with `params` trained: a LoRA LLaMA's
        adapters are merged into its base."""
        joined = lora.join(self.frozen, params)
        cfg, joined["llama"] = lora.merge(self.cfg, joined["llama"])
        return cfg, joined

    def make_steps(self):
        frozen = self.frozen_shardings
        train = jit_on_mesh(parts.make_train_step(self.setup, self.optimizer), self.mesh, self.rules,
                            in_shardings=(self.shardings, frozen, self.rows), out_shardings=(self.shardings, None),
                            donate_argnums=0)
        evaluate = jit_on_mesh(parts.make_eval_step(self.setup), self.mesh, self.rules,
                               in_shardings=(self.shardings.params, frozen, self.rows))
        if self.caching():
            featurize = jit_on_mesh(parts.make_feature_step(self.setup), self.mesh, self.rules,
                                    in_shardings=(frozen, self.rows))
            for pipeline in (self.pipeline, self.dev):
                if pipeline is not None:
                    pipeline.cache_features(lambda batch: jax.device_get(featurize(self.frozen,
                                                                                   to_global(batch, self.rows))),
                                            progress=self.primary)
        return (lambda state, batch: train(state, self.frozen, batch),
                lambda params, batch: evaluate(params, self.frozen, batch))

    def caching(self) -> bool:
        """Whether the frozen parts' features are computed once: asked for, nothing before the head trains,
        and one process (each would need the features of rows that other processes hold)."""
        return (self.config.grounding.cache_features and self.setup.trainable == ("head",)
                and jax.process_count() == 1)

    def dev_f1(self, step: int) -> dict:
        """GMNER / MNER / EEG on the dev tweets: generation, then grounding, as `oie-jax eval-gmner` does."""
        from oie_jax.eval.grounded import evaluate
        from oie_jax.infer.ground import Grounder

        cfg, params = self.full_params(self.state.params)
        vision, head = (parts.merged(self.setup, part, params[part]) for part in ("vision", "head"))
        grounder = Grounder(model_from_params(cfg, params["llama"]), vision, head, self.preprocess, self.tokenizer)
        records = self.dev_records[: self.config.eval.f1_examples or None]
        with sharding.activation_rules(self.rules):
            _, scores, _ = evaluate(grounder, records, self.images, self.config.eval.batch_size,
                                    self.max_new_tokens, progress=False, proposals=self.proposals)
        return scores.metrics()

    def f1_decoding(self) -> str:
        return "free, as `oie-jax eval-gmner`"

    def export(self) -> None:
        """WORKDIR/model: a grounding model directory (`models/grounder.py`) of best/, else the final step."""
        params, step, origin = self.exported_params()
        out = self.workdir / "model"
        source = build.tokenizer_source(self.config.model, self.init)
        tokenizer = "bytes" if source == "bytes" else PARTS_DIRS["llama"]
        cfg, full = self.full_params(params)
        save_grounder(out, full, cfg, self.vision_cfg, self.preprocess, self.setup.head, tokenizer)
        if self.primary:
            copy_tokenizer_files(source, out / PARTS_DIRS["llama"])
        self.outcome.exported_step = step
        self.say(f"wrote the grounding model of step {step} ({origin}) to {out}")
        if self.proposals is not None and self.proposals.problems:  # boxes cut while batches were made
            self.say(self.proposals.summary())

    def summary_lines(self) -> list[str]:
        lines = super().summary_lines()
        head_bytes = sharding.bytes_per_device(self.state.params["head"], self.shardings.params["head"])
        size = encoders.num_params(self.vision_cfg) / 1e6
        vision = f"{size:,.1f}M-parameter {encoders.architecture_of(self.vision_cfg)}"
        lines[-1:-1] = [
            f"grounding {vision} encoder at {self.preprocess.size[0]}x{self.preprocess.size[1]} "
            + (f"from {self.vision_init}" if self.vision_init else f"(random init of {self.config.vision.preset!r})")
            + f"; head of {head_bytes / 2**20:.1f} MiB; trained: {', '.join(self.setup.trainable)}"
            + ("; frozen features computed once" if self.caching() else ""),
            f"images   {self.images.directory}",
        ]
        return lines
