"""The command line from a working directory with relative paths, as `make train` runs it: convert,
train, eval and export (jax-to-hf: tests/test_convert.py). Orbax takes absolute paths only, and a
relative `model.init` must mean the same when the run is exported from elsewhere."""

from oie_jax import cli as oie_jax_cli
from oie_jax.models.checkpoint import load_config
from tests.helpers import llama31_hf_config, save_random_hf_llama, save_word_tokenizer
from tests.test_train_loop import ROOT, TINY


def test_every_command_takes_relative_paths(tmp_path, monkeypatch):
    work = tmp_path / "work"
    (work / "src").mkdir(parents=True)
    save_random_hf_llama(work / "src", llama31_hf_config())
    save_word_tokenizer(work / "src", 320)

    def cli(*args, cwd=work):  # in this process: what matters is the working directory, not a new interpreter
        monkeypatch.chdir(cwd)
        assert oie_jax_cli.main(list(map(str, args))) == 0

    cli("convert", "hf-to-jax", "src", "ours")
    cli("train", "--config", TINY, "--workdir", "run", "--config.model.init=ours", "--config.model.preset=",
        "--config.model.tokenizer=", "--config.train.steps=2", "--config.checkpoint.every=2",
        "--config.eval.every=2", "--config.export.model=True")
    cli("eval", "--model", "run/model", "--data", ROOT / "oie_jax" / "data" / "sample" / "test.jsonl", "--limit", "2",
        "--max-new-tokens", "4", "--no-progress", "--out", "eval")
    # From another directory: the run's relative model.init ("ours") was resolved when the run read its config.
    cli("export", "work/run", "exported", "--from", "latest", cwd=tmp_path)
    assert load_config(tmp_path / "exported").hidden_size == 64
    assert (tmp_path / "exported" / "tokenizer.json").is_file()
    for path in ("ours/oie_model.json", "run/model/tokenizer.json", "eval/report.md"):
        assert (work / path).is_file(), path
