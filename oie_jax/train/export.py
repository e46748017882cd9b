"""`oie-jax export`: an oie-jax model directory, or a Hugging Face one, from any step of a run: the
best parameters (best/), the latest checkpoint, or a step number; of a LoRA run, also its adapters
alone in peft's layout. The parameters are read into host
memory, so exporting a model larger than one accelerator needs none."""

import jax
import orbax.checkpoint as ocp
from etils import epath
from ml_collections import ConfigDict

from oie_jax.data.labels import copy_label_sets
from oie_jax.data.tokenizer import copy_tokenizer_files
from oie_jax.errors import UserError
from oie_jax.files import location, prepare_output_dir
from oie_jax.infer.budget import copy_budget
from oie_jax.models import lora
from oie_jax.models.checkpoint import abstract_params, save_model
from oie_jax.models.config import LlamaConfig
from oie_jax.train.build import lora_base, tokenizer_source
from oie_jax.train.checkpointing import read_run_config, restore_params
from oie_jax.train.step import trainable


def locate(workdir: epath.Path, which: str) -> tuple[epath.Path, int, str]:
    """(checkpoint directory, step, item) of "best", "latest" or a step number."""
    best, latest = workdir / "best", workdir / "checkpoints"
    best_steps = ocp.CheckpointManager(best).all_steps() if best.is_dir() else []
    latest_steps = ocp.CheckpointManager(latest).all_steps() if latest.is_dir() else []
    if which == "best":
        if not best_steps:
            raise UserError("no best/ checkpoint in this run (checkpoint.best_metric was off, or no evaluation ran); "
                            "export --from latest", workdir)
        return best, max(best_steps), "params"
    if which == "latest":
        if not latest_steps:
            raise UserError("no checkpoint in this run directory", latest)
        return latest, max(latest_steps), "state"
    if not which.isdigit():
        raise UserError(f"--from {which!r}: expected best, latest or a step number")
    step = int(which)
    if step in best_steps:
        return best, step, "params"
    if step in latest_steps:
        return latest, step, "state"
    raise UserError(f"no step {step} in this run (checkpoints: {sorted(latest_steps)}, best: {sorted(best_steps)})",
                    workdir)


FORMATS = ("oie", "hf", "peft")


def export(workdir, out, which: str = "best", format: str = "oie", dtype: str | None = None,
           overwrite: bool = False, max_shard_bytes: int | None = None) -> tuple[epath.Path, int, str]:
    """Writes the parameters of `which` to `out` as an oie-jax model ("oie"), a Hugging Face one ("hf"),
    or, of a LoRA run, the adapters alone in peft's layout ("peft"); a LoRA run's adapters are merged into
    their base for the first two. Returns (out, step, where they came from)."""
    from oie_jax.convert import jax_to_hf, peft
    from oie_jax.convert.tensors import NUMPY_DTYPES

    workdir = location(workdir)
    jax_to_hf.check_dtype(dtype)
    if format not in FORMATS:
        raise UserError(f"export format {format!r}: choose one of {FORMATS}")
    directory, step, item = locate(workdir, which)
    run = read_run_config(directory, step)
    cfg = LlamaConfig.from_dict(run["model"])
    if format == "peft" and cfg.lora is None:
        raise UserError("--format peft writes LoRA adapters, and this run fine-tuned the whole model (train.lora.rank "
                        "0); export --format hf", workdir)
    params = restore_params(directory, step, item, trainable(cfg, abstract_params(cfg)))
    out = prepare_output_dir(out, overwrite)
    model = ConfigDict(run["config"]["model"])
    if format == "peft":
        peft.write(out, cfg, params, model.init, dtype)
        return out, step, f"{directory.name}/{step}"
    if cfg.lora is not None:  # the base as the run read or drew it, into host memory
        base = lora_base(cfg, model.init, run["config"]["train"]["seed"])
        cfg, params = lora.merge(cfg, lora.join(base, params))
    if format == "hf":
        jax_to_hf.write(out, cfg, params, dtype, max_shard_bytes or jax_to_hf.DEFAULT_MAX_SHARD_BYTES)
    else:
        if dtype:
            cfg = cfg.replace(param_dtype=dtype)
            params = jax.tree.map(lambda a: a.astype(NUMPY_DTYPES[dtype]), params)
        save_model(out, cfg, params)
    copy_tokenizer_files(tokenizer_source(model, model.init or None), out)
    copy_label_sets(workdir, out)
    copy_budget(workdir, out)
    return out, step, f"{directory.name}/{step}"
