"""Data: benchmark builders (TFDS), the grain pipeline with SPT's prompts, a synthetic set.

Entry points:
  pipeline.make_pipeline(config) -> DataPipeline   batches for training or evaluation
  pipeline.DataConfig                               its configuration
  builders.build(name, manual_dir, data_dir)        build a benchmark's TFDS files
  synthetic.ensure_synthetic_dataset(directory)     the embedded generated set
"""
