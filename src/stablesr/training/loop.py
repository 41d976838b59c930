"""The training loop shared by every stage: a small loop on `accelerate.Accelerator`.

One `Trainer.train()` call runs optimizer steps until `run.max_steps`. Each step is
`gradient_accumulation_steps` micro-batches inside `accelerator.accumulate(...)`, so the same code
runs on a CPU, one GPU, and under `accelerate launch --multi_gpu` (DDP; multi-node likewise).
A stage subclass supplies the models, the dataset and `train_micro_step`; the loop owns data
order, randomness, LR warm-up, EMA, logging, checkpoints, exact resume, validation and export.

Randomness of micro-batch k of step s on process r comes from a generator seeded by
(seed, s, k, r), and the data order from (seed, epoch); a checkpoint therefore only needs the
weights, the optimizer states and the step for the continued run to be bit-identical.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn

from stablesr.data.records import to_record
from stablesr.errors import StableSRError
from stablesr.training import checkpoints as ckpt
from stablesr.training.config import RunSettings, save_config_json
from stablesr.training.ema import EMA
from stablesr.training.logger import TrainingLogger
from stablesr.training.run_folder import check_run_folder, clear_previous_run, left_out_message
from stablesr.training.stream import batch_stream, step_generator
from stablesr.weights.folders import MANIFEST, apply_umask


def warmup_factor(warmup_steps: int):
    """LR multiplier: linear warm-up over `warmup_steps` optimizer steps, then constant (the official run: none)."""
    return lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


def check_run_settings(run: RunSettings, batch_size: int) -> None:
    if run.max_steps < 1 or run.gradient_accumulation_steps < 1 or batch_size < 1:
        raise StableSRError("max_steps, gradient_accumulation_steps and batch_size must all be >= 1")
    if run.ema_decay and not 0.0 < run.ema_decay < 1.0:
        raise StableSRError(f"run.ema_decay must be 0 (off) or in (0, 1), got {run.ema_decay}")
    check_run_folder(run)


class Trainer:
    """Base class. Subclasses set in `build()`: `self.trainable` (the module whose requires_grad
    parameters train; EMA follows it), `self.optimizers` (name -> prepared optimizer),
    `self.accumulate_modules` (prepared modules for `accelerator.accumulate`), `self.dataset`."""

    batch_size: int
    num_workers: int

    def __init__(self, config) -> None:
        self.config = config
        self.run = run = config.run
        check_run_settings(run, self.batch_size)
        # Without an accelerator, accelerate only turns torchrun ranks into CPU DDP (gloo) when told cpu=True.
        no_accelerator = not (torch.cuda.is_available() or torch.backends.mps.is_available())
        self.accelerator = Accelerator(mixed_precision=run.mixed_precision, cpu=run.cpu or no_accelerator,
                                       gradient_accumulation_steps=run.gradient_accumulation_steps)
        self.output_dir = Path(run.output_dir)
        torch.manual_seed(run.seed)  # identical fresh initialisations on every process
        self.trainable: nn.Module
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.accumulate_modules: list[nn.Module] = []
        self.build()
        self.schedulers = {name: torch.optim.lr_scheduler.LambdaLR(opt, warmup_factor(config.optimizer.warmup_steps))
                           for name, opt in self.optimizers.items()}
        self.ema = EMA(self.trainable, decay=run.ema_decay) if run.ema_decay else None
        self.step = 0
        self.resume()

    # ------------------------------------------------------------------ stage hooks
    def build(self) -> None:
        raise NotImplementedError

    def train_micro_step(self, batch: dict, generator: torch.Generator) -> dict[str, float]:
        """Forward, backward and (when gradients sync) optimizer step for one micro-batch; returns metrics."""
        raise NotImplementedError

    def trainable_weights(self) -> dict[str, dict[str, torch.Tensor]]:
        """File stem -> state dict of everything that trains (saved in checkpoints)."""
        raise NotImplementedError

    def load_trainable_weights(self, weights: dict[str, dict[str, torch.Tensor]]) -> None:
        raise NotImplementedError

    def export(self, folder: Path) -> Path:
        """Write a pipeline folder that `StableSRPipeline.from_pretrained` loads."""
        raise NotImplementedError

    def validate(self) -> None:
        """Main process only; default: nothing."""

    def rank_state(self) -> dict | None:
        """Per-process state that must survive a resume (e.g. the degradation queue)."""
        return None

    def load_rank_state(self, state: dict | None) -> None:
        pass

    # ------------------------------------------------------------------ the loop
    def train(self) -> Path:
        """Run to `max_steps`, then export the pipeline into the output folder; returns that folder."""
        run, accelerator = self.run, self.accelerator
        if accelerator.is_main_process:
            if run.overwrite:  # only now that the config, the data and the model have all been checked
                clear_previous_run(self.output_dir)
            self.output_dir.mkdir(parents=True, exist_ok=True)
            save_config_json(self.config, self.output_dir / "training_config.json")
            print(f"training on {accelerator.num_processes} process(es) ({accelerator.distributed_type.value}), "
                  f"device {accelerator.device}", flush=True)
            if (message := left_out_message(self.dataset)) is not None:
                print(message, flush=True)
        batches = batch_stream(self.dataset, batch_size=self.batch_size, seed=run.seed,
                               rank=accelerator.process_index, world=accelerator.num_processes,
                               start_item=self.step * run.gradient_accumulation_steps * self.batch_size,
                               num_workers=self.num_workers)
        logger = TrainingLogger(self.output_dir, start_step=self.step, max_steps=run.max_steps,
                                enabled=accelerator.is_main_process, progress=run.progress)
        while self.step < run.max_steps:
            self._one_step(batches, logger)
            self._after_step(logger)
        logger.close()
        return self.export_readable(self.output_dir)

    def export_readable(self, folder: str | Path) -> Path:
        """`export`, then the umask's permissions on the folder's files (safetensors writes them 0600)."""
        if self.accelerator.is_main_process:  # a manifest of what was there before would no longer match
            (Path(folder) / MANIFEST).unlink(missing_ok=True)
        folder = self.export(Path(folder))
        if self.accelerator.is_main_process:
            apply_umask(folder)
        return folder

    def _one_step(self, batches, logger: TrainingLogger) -> None:
        rank = self.accelerator.process_index
        for micro in range(self.run.gradient_accumulation_steps):
            batch = next(batches)
            generator = step_generator(self.accelerator.device, self.run.seed, self.step, micro, rank)
            with self.accelerator.accumulate(*self.accumulate_modules):
                logger.add(self.train_micro_step(batch, generator))
        self.step += 1
        with warnings.catch_warnings():  # an optimizer that has not stepped yet (CFW's D before disc_start)
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
            for scheduler in self.schedulers.values():
                scheduler.step()
        if self.ema is not None:
            self.ema.update(self.trainable)

    def _after_step(self, logger: TrainingLogger) -> None:
        run, step, last = self.run, self.step, self.step == self.run.max_steps
        logger.step(step)
        if step % run.log_every == 0 or last:
            logger.write(step, lr=next(iter(self.schedulers.values())).get_last_lr()[0])
        if step % run.checkpoint_every == 0 or last:
            self.save_checkpoint()
        if run.validation_images and run.validate_every and step % run.validate_every == 0:
            if self.accelerator.is_main_process:
                self.validate()
            self.accelerator.wait_for_everyone()

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        accelerator = self.accelerator
        folder = ckpt.checkpoint_path(self.output_dir, self.step)
        temporary = folder.with_name(folder.name + ".tmp")
        if accelerator.is_main_process:
            temporary.mkdir(parents=True, exist_ok=True)
        accelerator.wait_for_everyone()
        rank_state = self.rank_state()
        if rank_state is not None:
            torch.save(rank_state, temporary / f"rank{accelerator.process_index}.pt")
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            weights = self.trainable_weights()
            if self.ema is not None:
                weights["ema"] = self.ema.state_dict()
            ckpt.write_main_files(temporary, step=self.step, weights=weights, states=self._states(),
                                  config_record=to_record(self.config), num_processes=accelerator.num_processes)
            ckpt.finalize(temporary)
            ckpt.prune_checkpoints(self.output_dir, self.run.keep_checkpoints)
        accelerator.wait_for_everyone()
        return folder

    def _states(self) -> dict:
        scaler = self.accelerator.scaler
        return {"optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
                "schedulers": {name: sched.state_dict() for name, sched in self.schedulers.items()},
                "scaler": scaler.state_dict() if scaler is not None else None}

    def resume(self) -> None:
        folder = ckpt.resolve_resume(self.output_dir, self.run.resume)
        if folder is None:
            return
        stems = ["trainable", "discriminator"]
        weights = {stem: w for stem in [*stems, "ema"] if (w := ckpt.read_weights(folder, stem)) is not None}
        model_weights = {**self.trainable_weights(), **({"ema": self.ema.state_dict()} if self.ema is not None else {})}
        ckpt.check_resume(folder, to_record(self.config), self.accelerator.num_processes, weights, model_weights)
        self.load_trainable_weights({stem: weights[stem] for stem in stems if stem in weights})
        states = ckpt.read_states(folder)
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(states["optimizers"][name])
        for name, scheduler in self.schedulers.items():
            scheduler.load_state_dict(states["schedulers"][name])
        if states["scaler"] is not None and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(states["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(weights["ema"])
        ckpt.restore_rng(ckpt.read_rng(folder))
        self.load_rank_state(ckpt.read_rank_state(folder, self.accelerator.process_index))
        self.step = ckpt.read_step(folder)
        self.accelerator.print(f"resumed from {folder} at step {self.step}")
