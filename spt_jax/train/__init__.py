"""Training: what is trainable, the optimizer, the jit-compiled step, the loop, checkpoints."""
