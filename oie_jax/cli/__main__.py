import sys

from oie_jax.cli import entry

sys.exit(entry())
