r"""SPT evaluated on btad (test split), trained on mvtec_ad (test split, defect images).

    python -m spt_jax.main --config=configs/btad.py:vit_b --workdir=runs/btad_b \
        --config.model.base=converted/sam_vit_b \
        --config.data.eval.manual_dir=/data/btad --config.data.train.manual_dir=/data/mvtec_ad

Variants: vit_b (default), vit_l, vit_h. The paper's recipe: lr 1e-3, x0.1 at epoch 10
of 16, 1024 input, LoRA r = 8, VRA in every two-way block, SDT draft -> refine.
"""

from spt_jax import config as config_lib


def get_config(arg: str = ""):
  return config_lib.benchmark_config("btad", arg, train_dataset="mvtec_ad")
