"""Prompt-free inspection: anomaly proposals from normal images, then SPT masks."""
