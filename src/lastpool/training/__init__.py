"""Training loop (Accelerate) and inference helpers."""
