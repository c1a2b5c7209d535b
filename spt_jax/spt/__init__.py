"""Self-Perception Tuning: LoRA, VRA-Adapter, SDT (draft then refine), losses."""
