"""hf-to-jax streams: peak host memory stays near the size of the output, never a whole model more."""

import json
import subprocess
import sys

from tests.helpers import llama31_hf_config, save_random_hf_llama

# Anonymous memory (RssAnon), sampled: file pages that safetensors maps while reading are page cache,
# not memory the conversion holds, and plain RSS counts them or not depending on the cache's state.
MEASURE = """
import json, sys, threading, time
import jax, orbax.checkpoint, safetensors  # imported before the baseline: only the conversion counts
from oie_jax.convert import hf_to_jax

def anon_mb():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("RssAnon")) / 1024

jax.devices()
base, peak, done = anon_mb(), [0.0], threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], anon_mb())
        time.sleep(0.002)
sampler = threading.Thread(target=sample)
sampler.start()
hf_to_jax.convert(sys.argv[1], sys.argv[2])
done.set()
sampler.join()
print(json.dumps({"base": base, "peak": peak[0]}))
"""


def test_peak_memory_of_conversion(tmp_path):
    config = llama31_hf_config(vocab_size=32000, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                               num_attention_heads=8, num_key_value_heads=2, head_dim=64)
    model = save_random_hf_llama(tmp_path / "src", config, max_shard_size="40MB")
    output_mb = sum(p.numel() for p in model.parameters()) * 4 / 2**20
    del model
    result = subprocess.run([sys.executable, "-c", MEASURE, str(tmp_path / "src"), str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=300, check=True)
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    growth = measured["peak"] - measured["base"]
    print(f"peak anonymous memory growth {growth:.0f} MB for a {output_mb:.0f} MB model")
    # The filled tree, one source tensor at a time, and nothing more: Orbax writes without a copy.
    assert growth < 1.3 * output_mb, (growth, output_mb)
