"""Trainers on accelerate (https://arxiv.org/abs/2305.07015): StableSR stage 1 and CFW.

config            frozen dataclasses filled from YAML / --section.option flags (no torch import)
loop              the shared accelerate loop: accumulation, EMA, logging, checkpoints, exact resume
stablesr_trainer  stage 1: time-aware encoder + SFT on a frozen SD UNet (`train_stablesr`)
cfw_data          LR / GT / latent triplets sampled by the stage-1 model (`generate_cfw_data`)
cfw_trainer       CFW fusion layers with L1 + LPIPS + PatchGAN (`train_cfw`)
init, stream, checkpoints, ema, logger, previews, discriminator: their building blocks

Kept import-free so `stablesr train -h` stays instant; import the submodules directly.
"""
