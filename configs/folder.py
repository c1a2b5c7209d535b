r"""SPT on your own images: a folder of normal images, one of defective images, one of masks.

    python -m spt_jax.main --config=configs/folder.py:/data/my_line --workdir=runs/my_line
    python -m spt_jax.main --config=configs/folder.py:/data/my_line,vit_b \
        --config.model.base=converted/sam_vit_b --workdir=runs/my_line_b

The folder holds good/ (normal images), defect/ (defective images) and masks/ (one mask
per defective image: the same file name, <stem>.png or <stem>_mask.png); other names
with --config.data.train.folder.normal_dir=... (and data.eval.folder.*), every option in
spt_jax/data/builders/folder.py. By a stable hash of each file's path, 70% of the images
train and 30% evaluate (folder.test_fraction; train reads split 'train', evaluation
'test'); SPT trains on the defective images of its share.

Variant: '<folder>' trains the embedded base with its measured recipe (configs/default.py:
LoRA alpha = rank, loss on the draft); '<folder>,vit_b' (vit_l, vit_h) a converted SAM
with the paper's recipe (give --config.model.base).
"""

from configs import default
from spt_jax import config as config_lib
from spt_jax.errors import SptUserError

NORMAL_DIR, ABNORMAL_DIR, MASK_DIR = "good", "defect", "masks"
TEST_FRACTION = 0.3


def get_config(arg: str = ""):
  root, _, variant = arg.partition(",")
  if not root:
    raise SptUserError("configs/folder.py needs the data folder as its variant: "
                       "--config=configs/folder.py:/path/to/folder[,vit_b]")
  if variant:
    config = config_lib.paper_config(variant)
  else:
    config = default.get_config()
    config.unlock()
    config.eval.zero_shot_first = False
  for block, split in ((config.data.train, "train"), (config.data.eval, "test")):
    block.dataset = "folder"
    block.manual_dir = root
    block.dataset_options = {}
    block.categories = ()
    block.split = split
    block.folder.normal_dir = NORMAL_DIR
    block.folder.abnormal_dir = ABNORMAL_DIR
    block.folder.mask_dir = MASK_DIR
    block.folder.test_fraction = TEST_FRACTION
  config.data.eval.original_canvas = 0  # the largest image side of the evaluated images
  return config_lib.lock(config)
