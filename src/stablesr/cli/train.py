"""`stablesr train STAGE --config FILE.yaml [--section.option VALUE ...]`: run a training stage.

Every field of the stage's config dataclass (`stablesr.training.config`) is also a command-line
option; values are parsed as YAML (`--run.max_steps 100`, `--data.hr_folders "[a, b]"`). The same
command runs on a CPU, one GPU, or many under `accelerate launch` (see docs/training.md).
"""

from __future__ import annotations

import argparse

STAGE_HELP = {
    "stablesr": "stage 1: time-aware encoder + SFT layers on a frozen SD UNet",
    "cfw": "CFW: the autoencoder's fusion layers on generated triplets",
    "vae": "a KL autoencoder (4 latent channels) from scratch on HR crops",
    "prior": "a latent diffusion UNet prior from scratch (null context) in a trained VAE's latent space",
    "ccsr-stage1": "CCSR stage 1: the control module (v1 or v2, by the model) for truncated sampling",
    "ccsr-stage2": "CCSR stage 2: the VAE decoder on the frozen stage-1 trajectory (L1 + LPIPS + GAN)",
    "deedsr-degradation": "DeeDSR stage 1: the ResNet degradation learner by MoCo contrastive learning",
    "deedsr": "DeeDSR stage 2: degradation-aware adapter, modulation and cross-attention key/value projections",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from stablesr.training.config import STAGES, option_names

    stages = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for stage, help_text in STAGE_HELP.items():
        sub = stages.add_parser(stage, help=help_text, description=help_text)
        sub.add_argument("--config", metavar="FILE.yaml", help="YAML file filling the config (options below win)")
        sub.add_argument("--export", metavar="FOLDER",
                         help="also write the trained pipeline here (the run's output folder always gets one)")
        sub.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
        sub.add_argument("--overwrite", action="store_true",
                         help="start afresh in an output_dir that holds an earlier run (its checkpoints, logs and "
                              "previews are removed); without it such a folder is refused unless resuming")
        options = sub.add_argument_group("config options (override the YAML; values parsed as YAML)")
        for name, type_text in option_names(STAGES[stage]):
            options.add_argument(f"--{name}", dest=f"option:{name}", default=argparse.SUPPRESS, metavar="VALUE",
                                 help=type_text)


def run(args: argparse.Namespace) -> int:
    import json

    from stablesr.cli.common import fail
    from stablesr.data.records import to_record
    from stablesr.training.config import load_config

    overrides = {key.split(":", 1)[1]: value for key, value in vars(args).items() if key.startswith("option:")}
    if args.overwrite:
        overrides["run.overwrite"] = True
    try:
        config = load_config(args.stage, args.config, overrides)
    except (ValueError, TypeError, OSError) as error:
        return fail(f"bad training config: {error}")
    if args.print_config:
        print(json.dumps(to_record(config), indent=2))
        return 0
    try:
        trainer = make_trainer(args.stage, config)
    except ValueError as error:  # the data the config names: missing or empty folders, images too small
        return fail(f"cannot start training: {error}")
    try:
        folder = trainer.train()
        if args.export:
            trainer.export_readable(args.export)
    except OSError as error:  # a full disk or a vanished folder mid-run: the finished checkpoints are kept
        return fail(f"training stopped at step {trainer.step}: {error} (resume with --run.resume latest)", code=1)
    if hasattr(trainer, "close"):
        trainer.close()
    trainer.accelerator.print(f"trained {config.run.max_steps} steps; pipeline folder: {folder}"
                              + (f" and {args.export}" if args.export else ""))
    return 0


def make_trainer(stage: str, config):
    if stage == "stablesr":
        from stablesr.training.stablesr_trainer import StableSRTrainer

        return StableSRTrainer(config)
    if stage == "ccsr-stage1":
        from stablesr.training.ccsr_trainer import CCSRStage1Trainer

        return CCSRStage1Trainer(config)
    if stage == "ccsr-stage2":
        from stablesr.training.ccsr_trainer import CCSRStage2Trainer

        return CCSRStage2Trainer(config)
    if stage == "deedsr":
        from stablesr.training.deedsr_trainer import DeeDSRTrainer

        return DeeDSRTrainer(config)
    if stage == "deedsr-degradation":
        from stablesr.training.degradation_trainer import DegradationTrainer

        return DegradationTrainer(config)
    if stage == "vae":
        from stablesr.training.vae_trainer import VAETrainer

        return VAETrainer(config)
    if stage == "prior":
        from stablesr.training.prior_trainer import PriorTrainer

        return PriorTrainer(config)
    from stablesr.training.cfw_trainer import CFWTrainer

    return CFWTrainer(config)
