"""`python -m spt_jax.pretrain`: see `spt_jax.pretrain.cli`."""

import sys

from spt_jax.pretrain.cli import main

sys.exit(main())
