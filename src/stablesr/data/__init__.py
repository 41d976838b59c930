"""Degradation synthesis and datasets.

degradations: presets and the entry points (`preset_settings`, `degrade`, `apply_degradation`);
realesrgan / bsrgan: the two pipelines; kernels / ops: their building blocks; records: JSON round
trip; datasets / batch_degrader: HR-folder and paired datasets, GPU batches with a shuffle queue.
"""
