"""Trainers on accelerate."""
