"""Import/export of PyTorch SAM and SPT checkpoints (Meta's and the SPT authors' layouts)."""
