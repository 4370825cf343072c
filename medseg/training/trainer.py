"""The training loop: AdamW or SGD with a poly schedule, a checkpoint every epoch, resume,
a time limit, mixed precision on GPU, and a progress bar that says how long is left."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import look_up_option
from .checkpoint import load_checkpoint, save_checkpoint

__all__ = ["TrainingConfig", "train"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingConfig:
    """Settings of one training run.

    Args:
        epochs: epochs to train.
        iterations_per_epoch: optimiser steps per epoch.
        time_limit: seconds; training stops (with the schedule finished) when they are spent.
        optimizer: ``"adamw"`` or ``"sgd"`` (Nesterov, momentum 0.99, as nnU-Net).
        learning_rate: initial learning rate (default 2e-3 for AdamW, 1e-2 for SGD).
        weight_decay: decoupled (AdamW) or L2 (SGD) weight decay.
        seed: seeds the network initialisation and the patch stream.
        amp: float16 autocast where a GPU is used.
        workers: data loader processes.
        augmentation: augmentation preset: ``"auto"`` (``"2d"`` or ``"3d"`` by the network),
            ``"2d"``, ``"3d"`` or ``"none"``.
    """

    epochs: int = 50
    iterations_per_epoch: int = 100
    time_limit: float | None = None
    optimizer: str = "adamw"
    learning_rate: float | None = None
    weight_decay: float = 3e-5
    seed: int = 0
    amp: bool = True
    workers: int = 1
    augmentation: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "optimizer", look_up_option(self.optimizer, ("adamw", "sgd"), argument="optimizer"))
        if self.epochs < 1 or self.iterations_per_epoch < 1:
            raise ValueError(f"epochs ({self.epochs}) and iterations_per_epoch ({self.iterations_per_epoch}) must be >= 1.")
        if self.time_limit is not None and self.time_limit <= 0:
            raise ValueError(f"time_limit={self.time_limit}: give seconds > 0, or None.")

    @property
    def lr(self) -> float:
        return self.learning_rate or (2e-3 if self.optimizer == "adamw" else 1e-2)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _optimizer(network: nn.Module, config: TrainingConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(network.parameters(), lr=config.lr, momentum=0.99, nesterov=True,
                               weight_decay=config.weight_decay)
    return torch.optim.AdamW(network.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def _step_loss(network: nn.Module, loss: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    image, target = batch["image"], batch["label"]
    extras = {k: v for k, v in batch.items() if k not in ("image", "label")}
    outputs = network(image)
    if hasattr(network, "training_loss"):
        return network.training_loss(outputs, target, loss, **extras)
    if isinstance(outputs, (tuple, list)):
        outputs = outputs[0]
    return loss(outputs, target, **extras)


def train(
    network: nn.Module,
    loss: nn.Module,
    batches: Iterator[dict[str, torch.Tensor]],
    *,
    config: TrainingConfig,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    validate: Callable[[], float] | None = None,
    device: torch.device | str = "cpu",
) -> list[dict[str, float]]:
    """Train ``network`` on ``batches`` and return the history (one dict per epoch).

    Each record has ``epoch``, ``loss`` (mean of the epoch's steps), ``steps`` and ``time`` (wall
    seconds since the run began, at the end of the epoch's steps, earlier validations included);
    with ``validate``, also ``val_dice`` and ``val_seconds`` (how long that validation took).

    Args:
        network: the model (moved to ``device``).
        loss: ``loss(logits, target, **extras)``.
        batches: an endless iterator of ``{"image", "label", **extras}`` batches.
        config: the run's settings.
        checkpoint: file written after every epoch (and read when ``resume``).
        resume: continue from ``checkpoint`` if it exists: a kill loses at most one epoch.
        validate: returns the validation Dice, called after each epoch.
        device: ``"cpu"`` or ``"cuda"``.
    """
    device = torch.device(device)
    network.to(device)
    optimizer = _optimizer(network, config)
    use_amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    history: list[dict[str, float]] = []
    start_epoch, spent = 0, 0.0
    if resume and checkpoint is not None and Path(checkpoint).is_file():
        state = load_checkpoint(checkpoint, map_location=device)
        network.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, spent, history = int(state["epoch"]), float(state["elapsed"]), list(state["history"])
        log.info("resuming from %s at epoch %d", checkpoint, start_epoch)
    total_steps = config.epochs * config.iterations_per_epoch
    began = time.monotonic() - spent

    def progress(step: int) -> float:
        by_time = (time.monotonic() - began) / config.time_limit if config.time_limit else 0.0
        return min(1.0, max(step / total_steps, by_time))

    # the bar shows the share of the run done, by steps or by the time limit, whichever ends it
    bar = tqdm(total=100, initial=round(100 * progress(start_epoch * config.iterations_per_epoch)), desc="training",
               bar_format="{l_bar}{bar}| {elapsed}{postfix}", dynamic_ncols=True)
    for epoch in range(start_epoch, config.epochs):
        if progress(epoch * config.iterations_per_epoch) >= 1.0:
            break
        if hasattr(loss, "set_epoch"):
            loss.set_epoch(epoch)
        network.train()
        running = torch.zeros((), device=device)
        steps = 0
        for i in range(config.iterations_per_epoch):
            done = progress(epoch * config.iterations_per_epoch + i)
            if done >= 1.0:
                break
            for group in optimizer.param_groups:
                group["lr"] = config.lr * (1 - done) ** 0.9
            batch = {k: v.to(device, non_blocking=True) for k, v in next(batches).items()}
            batch["label"] = batch["label"].long()
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                value = _step_loss(network, loss, batch)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(value).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(network.parameters(), 12.0)
            scaler.step(optimizer)
            scaler.update()
            running += value.detach()
            steps += 1
        record = {"epoch": epoch + 1, "loss": float(running) / max(steps, 1), "steps": steps,
                  "time": time.monotonic() - began}
        if validate is not None:
            checked = time.monotonic()
            record["val_dice"] = float(validate())
            record["val_seconds"] = time.monotonic() - checked  # later epochs' "time" includes it
        history.append(record)
        if not math.isfinite(record["loss"]):
            raise FloatingPointError(f"training diverged at epoch {epoch + 1} (loss {record['loss']}); lower the learning rate.")
        if checkpoint is not None:
            save_checkpoint({"model": network.state_dict(), "optimizer": optimizer.state_dict(),
                             "epoch": epoch + 1, "elapsed": record["time"], "history": history}, checkpoint)
        left = _time_left(record["time"], epoch + 1 - start_epoch, config, start_epoch, spent)
        bar.set_postfix(epoch=epoch + 1, loss=f"{record['loss']:.4f}", val_dice=f"{record.get('val_dice', float('nan')):.4f}", left=left)
        bar.update(round(100 * progress((epoch + 1) * config.iterations_per_epoch)) - bar.n)
    bar.close()
    return history


def _time_left(elapsed: float, epochs_done: int, config: TrainingConfig, start_epoch: int, spent: float) -> str:
    per_epoch = (elapsed - spent) / max(epochs_done, 1)
    left = per_epoch * (config.epochs - start_epoch - epochs_done)
    if config.time_limit:
        left = min(left, max(0.0, config.time_limit - elapsed))
    return f"{int(left // 60)}m{int(left % 60):02d}s"
