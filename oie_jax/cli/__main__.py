import sys

from oie_jax.cli import main

sys.exit(main())
