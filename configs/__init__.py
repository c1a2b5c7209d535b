"""Config files for `python -m spt_jax.main --config=configs/<name>.py[:variant]`."""

import os

CONFIG_DIR = os.path.dirname(os.path.abspath(__file__))
