"""Degradation synthesis and datasets."""
