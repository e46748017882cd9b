"""Bad input gives one line naming the file and the problem, exit code 2, no traceback."""

import json
import subprocess
import sys

import pytest

from oie_jax import cli
from tests.helpers import llama31_hf_config, save_random_hf_llama


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hf")
    save_random_hf_llama(directory, llama31_hf_config())
    return directory


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = cli.main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    err = [line for line in err if "%|" not in line]  # progress bars
    assert len(err) == 1, err
    return code, err[0]


def copy_with(tmp_path, hf_dir, config_changes=None, weights: bytes | None = None):
    directory = tmp_path / "variant"
    directory.mkdir()
    config = json.loads((hf_dir / "config.json").read_text())
    config.update(config_changes or {})
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "model.safetensors").write_bytes(weights or (hf_dir / "model.safetensors").read_bytes())
    return directory


def test_missing_directory(tmp_path, capsys):
    code, err = run_cli(capsys, "convert", "hf-to-jax", str(tmp_path / "nope"), str(tmp_path / "out"))
    assert code == 2 and "nope" in err and "no such directory" in err


def test_shapes_that_do_not_fit_the_config(tmp_path, hf_dir, capsys):
    variant = copy_with(tmp_path, hf_dir, {"intermediate_size": 200})
    code, err = run_cli(capsys, "convert", "hf-to-jax", str(variant), str(tmp_path / "out"))
    assert code == 2 and "model.safetensors" in err and "mlp" in err and "does not fit the config" in err


def test_unsupported_architecture(tmp_path, hf_dir, capsys):
    variant = copy_with(tmp_path, hf_dir, {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
                                           "num_local_experts": 8})
    code, err = run_cli(capsys, "convert", "hf-to-jax", str(variant), str(tmp_path / "out"))
    assert code == 2 and "MixtralForCausalLM" in err and "unsupported architecture" in err


def test_corrupt_safetensors(tmp_path, hf_dir, capsys):
    variant = copy_with(tmp_path, hf_dir, weights=b"\x00" * 7 + b"garbage" * 50)
    code, err = run_cli(capsys, "convert", "hf-to-jax", str(variant), str(tmp_path / "out"))
    assert code == 2 and "model.safetensors" in err and "corrupt" in err


def test_truncated_safetensors(tmp_path, hf_dir, capsys):
    data = (hf_dir / "model.safetensors").read_bytes()
    variant = copy_with(tmp_path, hf_dir, weights=data[: len(data) // 2])
    code, err = run_cli(capsys, "convert", "hf-to-jax", str(variant), str(tmp_path / "out"))
    assert code == 2 and "model.safetensors" in err


def test_not_a_model_directory(tmp_path, hf_dir, capsys):
    code, err = run_cli(capsys, "convert", "jax-to-hf", str(hf_dir), str(tmp_path / "out"))
    assert code == 2 and "not an oie-jax model directory" in err
    code, err = run_cli(capsys, "generate", "--model", str(tmp_path / "missing"), "--prompt", "hi")
    assert code == 2 and "missing" in err


def test_config_without_required_fields(tmp_path, hf_dir, capsys):
    variant = copy_with(tmp_path, hf_dir)
    config = json.loads((variant / "config.json").read_text())
    del config["vocab_size"]
    (variant / "config.json").write_text(json.dumps(config))
    code, err = run_cli(capsys, "convert", "hf-to-jax", str(variant), str(tmp_path / "out"))
    assert code == 2 and "vocab_size" in err


def test_heads_that_do_not_fit_the_weights(tmp_path, hf_dir, capsys):
    variant = copy_with(tmp_path, hf_dir, {"num_attention_heads": 2, "head_dim": 32, "num_key_value_heads": 1})
    code, err = run_cli(capsys, "convert", "hf-to-jax", str(variant), str(tmp_path / "out"))
    assert code == 2 and "_proj.weight" in err and "does not fit the config" in err


def test_non_empty_output_needs_overwrite(tmp_path, hf_dir, capsys):
    out = tmp_path / "out"
    assert cli.main(["convert", "hf-to-jax", str(hf_dir), str(out)]) == 0
    capsys.readouterr()
    code, err = run_cli(capsys, "convert", "hf-to-jax", str(hf_dir), str(out))
    assert code == 2 and "not empty" in err and "--overwrite" in err
    exported = tmp_path / "exported"
    assert cli.main(["convert", "jax-to-hf", str(out), str(exported), "--max-shard-gb", "0.00005"]) == 0
    assert (exported / "model.safetensors.index.json").is_file()
    assert cli.main(["convert", "jax-to-hf", str(out), str(exported), "--overwrite"]) == 0
    # No shard or index of the first export is left to shadow the new single file.
    assert sorted(p.name for p in exported.glob("*.safetensors*")) == ["model.safetensors"]


def test_real_process_prints_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "oie_jax.cli", "convert", "hf-to-jax", str(tmp_path / "nope"),
                             str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and result.stderr.strip().startswith("oie-jax: error:")
