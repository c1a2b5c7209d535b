r"""Run several methods on the same data and write one comparison table and bar chart.

    python -m spt_jax.compare --config=configs/default.py \
        --methods=zero_shot,decoder,lora,adapter,vpt,sdt,vra,spt --workdir=runs/compare

Each method trains and evaluates in `<workdir>/<method>` (a rerun resumes or reuses
it), with the config file's variant set to the method (plus `--variant` parts, e.g.
`quick`). Writes `<workdir>/comparison.md` (final-step IoU / BIoU / Dice / AUROC /
AUPRO per method, with wall times) and `<workdir>/comparison.png`.
"""

import json
import os
import sys
import time

from absl import app
from absl import flags

from spt_jax import compile_notices
from spt_jax import config as config_lib
from spt_jax import host_memory
from spt_jax import jobs
from spt_jax.errors import SptUserError, exit_code
from spt_jax.evaluate import reports
from spt_jax.log_setup import set_up_logging

_CONFIG = flags.DEFINE_string("config", "configs/default.py",
                              "Config file whose variant selects the method.")
_METHODS = flags.DEFINE_list("methods", list(config_lib.METHODS), "Methods to compare.")
_VARIANT = flags.DEFINE_string("variant", "", "Extra variant parts, e.g. 'quick'.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/compare", "Output directory.")


def compare(config_file: str, methods: list[str], extra_variant: str, workdir: str) -> None:
  unknown = sorted(set(methods) - set(config_lib.METHODS))
  if unknown:
    raise SptUserError(f"--methods {unknown}: expected some of {sorted(config_lib.METHODS)}")
  configs = {}
  for method in methods:
    variant = ",".join(filter(None, [method, extra_variant]))
    configs[method] = config_lib.load_config_file(f"{config_file}:{variant}")
    with configs[method].unlocked():
      configs[method].eval.zero_shot_first = False
    jobs.check_config(configs[method], "train_and_eval")
  runs, wall = {}, {}
  for index, (method, config) in enumerate(configs.items()):
    print(f"\n=== [{index + 1}/{len(configs)}] {method} ===", flush=True)
    start = time.perf_counter()
    jobs.run(config, os.path.join(workdir, method), "train_and_eval")
    wall[method] = time.perf_counter() - start
    with open(os.path.join(workdir, method, "results.json")) as f:
      runs[method] = json.load(f)
  table = reports.comparison_table(runs)
  times = "\n".join(f"- {m}: {wall[m]:.0f} s" for m in runs)
  with open(os.path.join(workdir, "comparison.md"), "w") as f:
    f.write(f"{table}\nWall time per method (train + evaluate, this machine):\n{times}\n")
  reports.comparison_chart(runs, os.path.join(workdir, "comparison.png"))
  print(f"\n{table}\n{times}\nwritten: {workdir}/comparison.md, comparison.png", flush=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  set_up_logging()
  compile_notices.install()
  sys.exit(exit_code(host_memory.keep_freed_memory)  # before JAX starts its backend
           or exit_code(compare, _CONFIG.value, _METHODS.value, _VARIANT.value,
                        _WORKDIR.value))


if __name__ == "__main__":
  app.run(main)
