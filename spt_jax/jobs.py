"""What `spt_jax.main` runs: config checks, then train / evaluate / predict.

`check_config` runs every check that needs no compilation (data blocks, model base,
prediction inputs), so a mistake is reported at once, not after minutes of compiling.
"""

import os

import jax

from spt_jax import config as config_lib
from spt_jax import parallel
from spt_jax.data import builders
from spt_jax.data.pipeline import folder_options
from spt_jax.errors import SptUserError
from spt_jax.evaluate import prompt_free
from spt_jax.models.image_encoder import remat_policy
from spt_jax.parallel import cpu_compiler
from spt_jax.pretrained import load_spec
from spt_jax.train.model_setup import setup_model, spec_for, zero_shot_setup


def model_image_size(config) -> int:
  """Input size of the configured model: its base directory's spec, else model.type."""
  if config.model.base:
    return load_spec(config.model.base)[0].image_size
  return spec_for(config.model.type).image_size


def _check_dataset_source(block_name: str, data) -> None:
  """The data set's files or its built TFDS copy exist (synthetic is generated)."""
  if data.dataset == "synthetic":
    return
  folder = None
  if data.dataset == builders.FolderDataset.name:
    folder = folder_options(data)
    try:
      builders.folder_config(folder)
    except SptUserError as error:
      raise SptUserError(f"data.{block_name}.folder: {error}") from None
  if data.manual_dir:
    if not os.path.isdir(os.path.expanduser(data.manual_dir)):
      what = ("the folder holding your images" if folder is not None
              else f"the extracted {data.dataset} data set")
      raise SptUserError(f"data.{block_name}.manual_dir {data.manual_dir}: no such folder "
                         f"(expected {what})")
    return
  try:
    builders.load(data.dataset, data.data_dir, folder)
  except SptUserError as error:
    raise SptUserError(f"data.{block_name}: give manual_dir (the extracted {data.dataset} "
                       f"folder) or a data_dir where it is built; {error}") from None


def check_config(config, mode: str) -> None:
  """Raises SptUserError naming the first inconsistent field; compiles nothing."""
  if mode not in config_lib.MODES:
    raise SptUserError(f"mode {mode!r}: expected one of {config_lib.MODES}")
  parallel.MeshSpec.from_config(config.mesh).check()
  cpu_compiler.resolve(config.model.cpu_scheduler, training=True)
  remat_policy(config.model.remat)
  if not config.model.base and config.model.type != "tiny":
    raise SptUserError(
        f"model.base is empty: a {config.model.type} model needs Meta's weights; convert "
        "them with `python -m weights_conversion.convert_sam` and pass "
        "--config.model.base=<output dir>")
  image_size = model_image_size(config)
  if mode in ("train_and_eval", "train"):
    train_data = config_lib.to_data_config(config.data.train, image_size,
                                           num_epochs=None).check()
    _check_dataset_source("train", train_data)
  if mode in ("train_and_eval", "eval"):
    eval_data = config_lib.to_data_config(config.data.eval, image_size, num_epochs=1).check()
    _check_dataset_source("eval", eval_data)
    if config.eval.prompts not in config_lib.EVAL_PROMPTS:
      raise SptUserError(f"eval.prompts={config.eval.prompts!r}: expected one of "
                         f"{config_lib.EVAL_PROMPTS}")
    if config.eval.prompts != "ground_truth":
      prompt_free.detector_spec(config)  # raises on a bad eval.auto field
      if jax.process_count() > 1:
        raise SptUserError("eval.prompts='auto'/'both': the prompt-free evaluation runs in "
                           "one process; evaluate the trained workdir with --mode=eval "
                           "on one host")
  if mode == "predict":
    if not config.predict.images_dir:
      raise SptUserError("--mode=predict needs predict.images_dir")
    if not os.path.isdir(config.predict.images_dir):
      raise SptUserError(f"predict.images_dir {config.predict.images_dir}: no such folder")
    if config.predict.prompts_file and not os.path.isfile(config.predict.prompts_file):
      raise SptUserError(f"predict.prompts_file {config.predict.prompts_file}: no such file")
    if not config.predict.prompts_file:
      prompt_free.detector_spec(config)
      if config.predict.good_dir and not os.path.isdir(config.predict.good_dir):
        raise SptUserError(f"predict.good_dir {config.predict.good_dir}: no such folder")


def run(config, workdir: str, mode: str) -> None:
  """Runs `mode` in `workdir` (see spt_jax.main)."""
  # pylint: disable=g-import-not-at-top
  from spt_jax.evaluate import reports
  from spt_jax.evaluate.evaluator import Evaluator
  from spt_jax.export import export_model
  from spt_jax.inspection.folder import inspect_folder
  from spt_jax.predict_folder import predict_folder
  from spt_jax.train.loop import train
  # pylint: enable=g-import-not-at-top
  mesh_spec = parallel.MeshSpec.from_config(config.mesh)
  setup = setup_model(config, jax.random.PRNGKey(config.train.seed))
  evaluates = mode in ("train_and_eval", "eval")
  with_ground_truth = evaluates and config.eval.prompts != "auto"
  baseline = zero_shot_setup(setup, config)
  zero_shot = None
  if with_ground_truth and config.eval.zero_shot_first:
    print("evaluating SAM as it is (zero-shot) on the evaluation data", flush=True)
    zero_shot = Evaluator(config, baseline.model, os.path.join(workdir, "zero_shot"),
                          mesh_spec).run(
        baseline.variables)
  evaluator = (Evaluator(config, setup.model, workdir, mesh_spec) if with_ground_truth
               else None)
  step, results = None, None  # the trained step evaluated, its evaluation

  def final_evaluation(trained_variables, trained_step):
    nonlocal results
    results = evaluator.run(trained_variables, write_reports=True, step=trained_step)
    return reports.flat_means(results)

  if mode in ("train_and_eval", "train") and config.trainable:
    trained = train(config, workdir, setup, mesh_spec,
                    evaluate=evaluator.metrics_at_step if evaluator else None,
                    final_evaluate=final_evaluation if evaluator else None)
    variables, step = trained.variables, trained.steps
  elif mode in ("train_and_eval", "train"):
    print(f"method {config.method}: nothing trains", flush=True)
    variables, step = setup.variables, 0
  else:
    variables = _trained_variables(config, workdir, setup)
  if evaluator is not None:
    if results is None:
      results = evaluator.run(variables, write_reports=True, step=step)
    if zero_shot is not None and jax.process_index() == 0:
      title = f"zero-shot SAM vs {config.method}"
      table = reports.comparison_table({"zero-shot SAM": zero_shot, config.method: results})
      print(f"\n{title}:\n{table}", flush=True)
      with open(os.path.join(workdir, "results.md"), "a") as f:
        f.write(f"\n# {title[0].upper() + title[1:]}\n\n{table}")
  if evaluates and config.eval.prompts != "ground_truth":
    models = {"zero-shot SAM": (baseline.model, baseline.variables)} if (
        config.eval.zero_shot_first) else {}
    models[config.method] = (setup.model, variables)
    prompt_free.PromptFreeEvaluator(config, (baseline.model, baseline.variables),
                                    workdir).run(models)
  if mode == "predict":
    output_dir = config.predict.output_dir or os.path.join(workdir, "predictions")
    if config.predict.prompts_file:
      predict_folder(config, setup.model, variables, output_dir)
    else:
      inspect_folder(config, setup.model, variables, baseline.model, baseline.variables,
                     prompt_free.detector_spec(config), workdir, output_dir)
  if mode == "export":
    export_model(setup.model, variables, config.export.output_dir or
                 os.path.join(workdir, "export"), platforms=config.export.platforms,
                 batch_sizes=config.export.batch_sizes or (config.data.eval.batch_size,),
                 prompt_kinds=config.export.prompts,
                 prompt_buckets=config.export.prompt_buckets,
                 metadata={"source": os.path.abspath(workdir), "base": setup.base})


def _trained_variables(config, workdir, setup):
  """The workdir's trained leaves over the base, or the base with fresh adapters."""
  # pylint: disable=g-import-not-at-top
  from spt_jax.train import checkpoints
  from spt_jax.train.trainable import merge, partition
  # pylint: enable=g-import-not-at-top
  restored = checkpoints.restore_trainable(workdir, config.eval.checkpoint)
  if restored is None:
    print(f"no checkpoint in {workdir}: using the base weights with fresh adapters",
          flush=True)
    return setup.variables
  trained, meta = restored
  if meta["base"]["sha256"] != setup.base["sha256"]:
    raise SptUserError(f"{workdir} was trained on base {meta['base']['path']}, not on "
                       f"model.base {setup.base['path']}")
  print(f"using the {config.eval.checkpoint} checkpoint of {workdir}", flush=True)
  return merge(trained, partition(setup.variables, config.trainable)[1])
