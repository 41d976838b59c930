"""Checkpoint loading: safe file reading, official key maps, `convert`, shipped configs."""
