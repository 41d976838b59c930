"""Diffusion schedules, samplers (pure functions) and aggregation tiling."""
