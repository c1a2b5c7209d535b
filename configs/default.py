r"""The embedded default: SPT on the generated anomaly set, a small model, a laptop CPU.

    python -m spt_jax.main                       # this config, a temporary workdir
    python -m spt_jax.main --config=configs/default.py --workdir=runs/default

Trains on the defect images of some generated categories and evaluates on the held-out
ones. Variants: `:quick` (a few steps, for smoke tests).
"""

from spt_jax import config as config_lib
from spt_jax.errors import SptUserError

TRAIN_CATEGORIES = ("woven", "brushed_metal", "wood", "granular", "printed", "washer")
HELD_OUT_CATEGORIES = ("wire_mesh", "plate", "capsule")


def get_config(arg: str = ""):
  config = config_lib.base_config()
  config.model.type = "tiny"
  config.model.relation_impl = "xla"
  synthetic = dict(image_size=256, num_train=2, num_test_good=2, num_test_per_defect=6,
                   seed=0)
  for block, categories in ((config.data.train, TRAIN_CATEGORIES),
                            (config.data.eval, HELD_OUT_CATEGORIES)):
    block.dataset = "synthetic"
    block.dataset_options = synthetic
    block.categories = categories
  config.data.train.batch_size = 4
  config.data.eval.batch_size = 8
  config.data.eval.original_canvas = 256
  config.loss.num_points = 64 * 64
  config.optimizer.decay_epochs = (10,)
  config.train.num_epochs = 16
  config.train.log_every_steps = 10
  config.train.checkpoint_every_steps = 50
  config.eval.num_overlays = 8
  if arg == "quick":
    config.train.num_steps = 4
    config.train.log_every_steps = 1
    config.eval.num_overlays = 2
  elif arg:
    raise SptUserError(f"configs/default.py: unknown variant {arg!r}; expected '' or 'quick'")
  return config_lib.lock(config)
