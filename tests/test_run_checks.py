"""What a run checks before it reads data or compiles: every config field, mixed precision, the dev set
held out of the training files, and the rows each process feeds."""

import json
import subprocess
import sys

import jax
import pytest
from ml_collections import ConfigDict

from oie_jax import sharding
from oie_jax.errors import UserError
from oie_jax.train import build
from oie_jax.train.defaults import MMM_DEV, base_config, paper_recipe
from oie_jax.train.loop import Run
from oie_jax.train.plan import plan
from tests.test_train_loop import ROOT, TINY, tiny


@pytest.mark.parametrize("field, value, message", [
    ("log.every", 0, "config field log.every = 0: needs >= 1"),
    ("train.micro_batches", 0, "config field train.micro_batches = 0: needs >= 1"),
    ("train.micro_batches", 3, "train.micro_batches = 3 does not divide data.batch_size = 8"),
    ("data.seq_len", 1, "config field data.seq_len = 1: needs >= 2"),
    ("train.warmup_fraction", 1.5, "train.warmup_fraction = 1.5: needs between 0 and 1"),
    ("train.decay", "cosin", "train.decay = 'cosin': needs cosine, linear or constant"),
    ("train.lr", 0.0, "train.lr = 0.0: needs > 0"),
    ("data.dev", "holdout:0", "data.dev: dev spec 'holdout:0': expected holdout:N with N >= 1"),
    ("mesh.dcn_shape", (1, 0, 1), "mesh.dcn_shape = \\(1, 0, 1\\): needs 3 positive sizes"),
    ("checkpoint.keep", 0, "checkpoint.keep = 0: needs >= 1"),
    ("eval.max_new_tokens", -1, "eval.max_new_tokens = -1: needs >= 0 \\(0 = from the data\\)"),
    ("model.remat", "some", "model.remat = 'some': needs one of"),
    ("data.source", "csv", "config field data.source = 'csv': needs auto or one of records, mmm, stockmark"),
    ("train.steps", True, "config field train.steps = True: needs an int, not a bool"),
    ("multimodal.images_per_row", 0, "config field multimodal.images_per_row = 0: needs >= 1"),
])
def test_every_field_is_checked_before_anything_runs(tmp_path, field, value, message):
    with pytest.raises(UserError, match=message):
        Run(tiny(**{field: value}), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing was written
    with pytest.raises(UserError, match=message):
        plan(tiny(**{field: value}))


def test_sections_built_anew_are_checked_field_by_field(tmp_path):
    config = tiny()
    config.data = ConfigDict({**config.data.to_dict(), "pack": 1})  # ConfigDict's own checks pass this
    with pytest.raises(UserError, match="config field data.pack = 1: needs a bool, not an int"):
        Run(config, tmp_path / "run")
    del config.data["pack"]
    with pytest.raises(UserError, match="config field data.pack is missing"):
        plan(config)


def test_a_mesh_that_does_not_fit_the_devices_is_reported_before_the_data_is_read(tmp_path):
    config = tiny(**{"mesh.shape": (1, 3, 1), "data.train": str(tmp_path / "absent.jsonl")})
    with pytest.raises(UserError, match=f"needs 3 devices, there are {jax.device_count()}"):
        Run(config, tmp_path / "run")


def test_a_bad_field_is_one_line_from_the_command(tmp_path):
    result = subprocess.run([sys.executable, "-m", "oie_jax.cli", "train", "--config", str(TINY), "--workdir",
                             str(tmp_path), "--config.train.micro_batches=0"], capture_output=True, text=True,
                            cwd=ROOT, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "config field train.micro_batches = 0: needs >= 1" in result.stderr.strip().splitlines()[-1]


def test_float16_needs_a_loss_scale_and_bfloat16_weights_with_a_small_lr_warn(tmp_path, capsys):
    with pytest.raises(UserError, match="model.dtype float16 needs train.loss_scale"):
        Run(tiny(**{"model.dtype": "float16"}), tmp_path / "a")
    Run(tiny(**{"model.param_dtype": "bfloat16", "train.lr": 1e-5}), tmp_path / "b")
    assert "WARNING: bfloat16 master weights (model.param_dtype) with train.lr 1e-05" in capsys.readouterr().out
    assert "WARNING: bfloat16 master weights" in plan(tiny(**{"model.param_dtype": "bfloat16", "train.lr": 1e-5}))
    assert "WARNING" not in plan(tiny(**{"model.param_dtype": "bfloat16", "train.lr": 1e-3}))


def write_mmm(path, texts):
    path.write_text(json.dumps([{"input": f"{text} met Kazan./NER", "output": "History/NER/:Person;Kazan"}
                                for text in texts]))


def test_the_mmm_recipe_selects_on_records_held_out_of_train_never_on_test(tmp_path):
    write_mmm(tmp_path / "Train_En_0_SCNM_dataset.json", [f"Ann{i}" for i in range(30)])
    write_mmm(tmp_path / "Train_Ja_0_SCNM_dataset.json", [f"Bob{i}" for i in range(11)])
    write_mmm(tmp_path / "test_En_0_SCNM_dataset.json", [f"Test{i}" for i in range(5)])
    config = paper_recipe(base_config(), init="unused", preset="tiny")
    assert config.data.dev == MMM_DEV == "holdout:100"
    config.data.train = str(tmp_path / "Train_*.json")
    data = build.read_data(config.data, say=lambda *_: None)
    ids = {r.id for r in data.dev}
    assert all(i.startswith("Train_") for i in ids)  # never a test record
    assert not ids & {r.id for r in data.train} and len(data.train) + len(data.dev) == 41
    # At most half of each (subset, language) group: 15 of 30 English, 5 of 11 Japanese.
    assert sorted(r.language for r in data.dev) == ["en"] * 15 + ["ja"] * 5
    assert "20 records held out of the training data" in data.dev_origin
    assert {r.id for r in build.read_data(config.data, say=lambda *_: None).dev} == ids  # deterministic
    config.data.seed = 1
    assert {r.id for r in build.read_data(config.data, say=lambda *_: None).dev} != ids  # and seeded


def test_each_process_feeds_one_block_of_rows_and_rows_are_never_replicated_across_hosts():
    mesh = sharding.make_mesh((2, 2, 2))  # data, fsdp, tensor over the 8 virtual devices, in id order
    rows = sharding.batch_sharding(mesh)
    assert [d.id for d in mesh.devices.flat] == list(range(8))
    # Two hosts along the data axis: each holds half of the rows, in process order.
    assert sharding.process_row_blocks(rows, 8, process_of=lambda d: d.id // 4) == {0: slice(0, 4), 1: slice(4, 8)}
    # Hosts along the tensor axis would each need every row.
    with pytest.raises(UserError, match="replicates rows across hosts"):
        sharding.process_row_blocks(rows, 8, process_of=lambda d: d.id % 2)
    # Hosts along fsdp inside data: a host's rows in two pieces.
    with pytest.raises(UserError, match=r"process 0 holds rows \[0, 1, 4, 5\] of the batch, not one block"):
        sharding.process_row_blocks(rows, 8, process_of=lambda d: (d.id // 2) % 2)
    assert sharding.process_row_blocks(rows, 8) == {jax.process_index(): slice(0, 8)}

