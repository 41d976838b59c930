"""Diffusion schedules, parameterisation wrappers and samplers (pure functions)."""
