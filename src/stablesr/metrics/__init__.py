"""Image quality metrics and evaluation."""
