r"""Pretrain the tiny SAM on generated shapes, save it, evaluate it.

    python -m spt_jax.pretrain --output DIR [--steps 2000 --batch 8 --targets 4 \
        --seed 0 --lr 1e-3 --warmup 100 ...]

Trains `spt_jax.train.model_setup.TINY_SPEC` from random init (`spt_jax.pretrain.train`;
`--steps 0` saves and evaluates the random init, the baseline), writes DIR with
`save_pretrained` in the plain SAM layout (so `SamPredictor.from_pretrained(DIR)` and
`--config.model.base=DIR` take it), then evaluates it (`spt_jax.pretrain.evaluate`),
prints the numbers and writes them to DIR/evaluation.json. Mistakes in the options exit
with code 2 and one line naming the option.
"""

import argparse
import dataclasses
import json
import os
import sys
from typing import Sequence

from spt_jax import host_memory
from spt_jax.errors import SptUserError, exit_code
from spt_jax.models.config import SamSpec
from spt_jax.models.sam import Sam
from spt_jax.pretrain import evaluate as evaluate_lib
from spt_jax.pretrain import shapes
from spt_jax.pretrain.train import PretrainSpec, check_output, pretrain
from spt_jax.pretrained import MULTIMASK_TRAINED, save_pretrained
from spt_jax.train.model_setup import TINY_SPEC

EVALUATION_FILE = "evaluation.json"


def run(output: str, model_spec: SamSpec, spec: PretrainSpec, eval_examples: int = 256,
        eval_per_defect: int = 6, command: str = "") -> dict:
  """Pretrains, saves to `output`, evaluates; returns the evaluation.json document."""
  check_output(output)
  for name, value in (("--eval-examples", eval_examples),
                      ("--eval-per-defect", eval_per_defect)):
    if value < 1:
      raise SptUserError(f"{name}={value}: expected >= 1")
  data = shapes.ShapesConfig(image_size=model_spec.image_size)
  variables, summary = pretrain(model_spec, spec, data)
  save_pretrained(output, model_spec, variables, metadata={
      "model": "sam", "source": "spt_jax.pretrain", "pretrain": summary,
      MULTIMASK_TRAINED: False,  # only the single-mask output trains (RECIPE.md)
      "shapes": dataclasses.asdict(data)})
  print(f"saved to {output}; evaluating", flush=True)
  document = {"command": command, "training": summary,
              **evaluate_lib.evaluate(Sam(model_spec), variables, eval_examples,
                                      eval_per_defect)}
  with open(os.path.join(output, EVALUATION_FILE), "w") as f:
    json.dump(document, f, indent=2)
  print(json.dumps({k: document[k] for k in ("held_out_shapes", "anomaly_zero_shot")},
                   indent=2), flush=True)
  return document


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  defaults = PretrainSpec()
  parser = argparse.ArgumentParser(prog="python -m spt_jax.pretrain",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--output", required=True, help="directory for the model (new)")
  parser.add_argument("--steps", type=int, default=defaults.steps)
  parser.add_argument("--batch", type=int, default=defaults.batch_size, help="images/step")
  parser.add_argument("--targets", type=int, default=defaults.num_targets,
                      help="prompted objects per image (half boxes, half points)")
  parser.add_argument("--max-points", type=int, default=defaults.max_points)
  parser.add_argument("--seed", type=int, default=defaults.seed)
  parser.add_argument("--lr", type=float, default=defaults.learning_rate)
  parser.add_argument("--warmup", type=int, default=defaults.warmup_steps)
  parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
  parser.add_argument("--balanced-steps", type=int, default=defaults.balanced_steps,
                      help="steps over which class-balanced BCE fades into plain BCE")
  parser.add_argument("--log-every", type=int, default=defaults.log_every)
  parser.add_argument("--eval-examples", type=int, default=256,
                      help="held-out shapes to evaluate on")
  parser.add_argument("--eval-per-defect", type=int, default=6,
                      help="anomaly test images per category and defect type")
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parse_args(argv)
  spec = PretrainSpec(steps=args.steps, batch_size=args.batch, num_targets=args.targets,
                      max_points=args.max_points, seed=args.seed, learning_rate=args.lr,
                      warmup_steps=args.warmup, weight_decay=args.weight_decay,
                      balanced_steps=args.balanced_steps, log_every=args.log_every)
  command = " ".join(["python -m spt_jax.pretrain"] + argv)
  return (exit_code(host_memory.keep_freed_memory)  # before JAX starts its backend
          or exit_code(run, args.output, TINY_SPEC, spec, args.eval_examples,
                       args.eval_per_defect, command))
