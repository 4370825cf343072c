"""The training loop: AdamW or SGD with a poly schedule, a checkpoint every epoch, resume that
continues the very same run, a time limit, mixed precision on GPU, steps with a non-finite loss
skipped, an optional moving average of the weights, run logs, and a progress bar that says how
long is left; under ``torchrun``,
DistributedDataParallel (see :mod:`medseg.training.distributed`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from ..errors import look_up_option
from . import distributed
from .checkpoint import load_checkpoint, random_states, save_checkpoint, set_random_states
from .kernels import fast_weight_gradients
from .logs import RunLog
from .precision import training_precision

__all__ = ["Batches", "TrainingConfig", "train"]

Batch = dict[str, torch.Tensor]
Batches = Iterator[Batch] | Callable[[int], Iterator[Batch]]
"""Endless batches, or a function ``start -> batches`` that begins at batch ``start``."""

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
        amp: mixed precision: float16 autocast with a gradient scaler on a GPU; bfloat16
            autocast on a CPU that runs bfloat16 natively (AVX512-BF16 or AMX, see
            :func:`~medseg.training.precision.cpu_bfloat16`; 2 to 2.5x per step there), float32 on
            other CPUs. The weights and the optimiser stay float32. A resumed run keeps the
            precision it began with.
        workers: data loader processes.
        augmentation: augmentation preset: ``"auto"`` (``"2d"`` or ``"3d"`` by the network),
            ``"2d"``, ``"3d"``, ``"natural"`` or ``"none"``; or ``{"preset": name, **fields}``
            changing fields of :class:`~medseg.sampling.Augmentation` (e.g. ``{"p_flip": 0.0}``).
        ema: decay of an exponential moving average of the weights, updated after every step
            (0.99 weighs about the last 100 steps); validation, ``model_best.pt`` and the trained
            network use the average, the optimiser the raw weights. 0 (default): the last weights.
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
    augmentation: str | dict[str, Any] = "auto"
    ema: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "optimizer", look_up_option(self.optimizer, ("adamw", "sgd"), argument="optimizer"))
        if self.epochs < 1 or self.iterations_per_epoch < 1:
            raise ValueError(f"epochs ({self.epochs}) and iterations_per_epoch ({self.iterations_per_epoch}) must be >= 1.")
        if self.time_limit is not None and self.time_limit <= 0:
            raise ValueError(f"time_limit={self.time_limit}: give seconds > 0, or None.")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema={self.ema}: give a decay in [0, 1) (0.99 averages about the last 100 steps; 0 is off).")

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


def _step_loss(model: nn.Module, network: nn.Module, loss: nn.Module, batch: Batch) -> torch.Tensor:
    image, target = batch["image"], batch["label"]
    extras = {k: v for k, v in batch.items() if k not in ("image", "label")}
    outputs = model(image)  # the network, or its DDP wrapper
    if hasattr(network, "training_loss"):
        return network.training_loss(outputs, target, loss, **extras)
    if isinstance(outputs, (tuple, list)):
        outputs = outputs[0]
    return loss(outputs, target, **extras)


class _Steps:
    """One optimiser step at a time; a step whose loss is not finite changes no weight. With
    ``config.ema`` the steps also keep a moving average of the weights (``torch.optim.swa_utils``)."""

    def __init__(self, network: nn.Module, loss: nn.Module, config: TrainingConfig, device: torch.device) -> None:
        self.network, self.loss, self.device = network, loss, device
        self.model = _distributed_model(network, device)
        self.optimizer = _optimizer(network, config)
        self._use_precision(training_precision(device, config.amp))
        self.average = (AveragedModel(network, multi_avg_fn=get_ema_multi_avg_fn(config.ema), use_buffers=True)
                        if config.ema else None)

    def __call__(self, batch: Batch, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Train on ``batch``; returns the loss and whether it is finite (tensors: no sync)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        batch["label"] = batch["label"].long()
        with fast_weight_gradients(self.device.type == "cpu"):  # declines convolutions under autocast
            with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
                value = _step_loss(self.model, self.network, self.loss, batch)
            finite = distributed.all_true(torch.isfinite(value.detach()))  # all ranks step, or none
            self.optimizer.zero_grad(set_to_none=True)
            # with AMP the scaler skips a step whose gradients are not finite (its step syncs anyway);
            # without, the check is on the CPU or costs one sync
            if self.amp or bool(finite):
                self.scaler.scale(value).backward()
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12.0)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                if self.average is not None:
                    self.average.update_parameters(self.network)
        return value.detach().float(), finite

    @contextmanager
    def averaged(self) -> Iterator[None]:
        """Inside, the network holds the averaged weights (without an average, its own)."""
        if self.average is None or not int(self.average.n_averaged):  # no step averaged yet
            yield
            return
        last = {k: v.detach().clone() for k, v in self.network.state_dict().items()}
        self.network.load_state_dict(self.average.module.state_dict())
        try:
            yield
        finally:
            self.network.load_state_dict(last)

    def keep_average(self) -> None:
        """The network takes the averaged weights for good (the run's result)."""
        if self.average is not None and int(self.average.n_averaged):
            self.network.load_state_dict(self.average.module.state_dict())

    def _use_precision(self, precision: str) -> None:
        self.precision = precision
        self.dtype = None if precision == "float32" else getattr(torch, precision)
        self.amp = precision == "float16" and self.device.type == "cuda"  # a gradient scaler
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)

    def state(self) -> dict[str, Any]:
        state = {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                 "precision": self.precision}
        if self.average is not None:
            state["ema"] = self.average.state_dict()
        return state

    def load(self, state: dict[str, Any]) -> None:
        # checkpoints from before "precision" was saved: float16 where a scaler was kept, else float32
        saved = state.get("precision") or ("float16" if state.get("scaler") else "float32")
        if saved != self.precision:
            log.warning("resuming in %s, the precision the run began with (a new run here would train in %s)",
                        saved, self.precision)
            self._use_precision(saved)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.average is not None and "ema" in state:  # else it starts again at the next step
            self.average.load_state_dict(state["ema"])
        if self.amp and state.get("scaler"):  # empty when the run that saved it had no AMP
            self.scaler.load_state_dict(state["scaler"])


def _distributed_model(network: nn.Module, device: torch.device) -> nn.Module:
    """DDP over the process group this process joined (batch norm synchronised on GPUs), else
    the network itself."""
    if not distributed.joined():
        return network
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in network.modules()):
        if device.type == "cuda":  # converts the layers in place: the caller's network trains
            nn.SyncBatchNorm.convert_sync_batchnorm(network)
        else:
            log.warning("batch norm statistics stay per process on CPU (SyncBatchNorm needs GPUs)")
    return DistributedDataParallel(network, device_ids=[device] if device.type == "cuda" else None)


@contextmanager
def _cudnn_benchmark(enabled: bool) -> Iterator[None]:
    """cuDNN times its kernels for the first batch's shape and keeps the fastest (fixed patches)."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = before or enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def train(
    network: nn.Module,
    loss: nn.Module,
    batches: Batches,
    *,
    config: TrainingConfig,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    validate: Callable[[], float] | None = None,
    device: torch.device | str = "cpu",
    first_batch: int = 0,
    fixed_shapes: bool = False,
) -> list[dict[str, float]]:
    """Train ``network`` on ``batches`` and return the history (one dict per epoch).

    Each record has ``epoch``, ``loss`` (mean of the epoch's finite step losses), ``steps``,
    ``nonfinite_steps`` (steps skipped for a non-finite loss), ``lr`` (of the epoch's last step),
    ``time`` (wall seconds since the run began, at the end of the epoch's steps, earlier
    validations included) and ``seconds`` (the epoch's wall time, its validation included); with
    ``validate``, also ``val_dice`` and ``val_seconds`` (how long that validation took). With
    ``config.ema`` validation scores the averaged weights, ``model_best.pt`` holds them and the
    network ends the run with them (the checkpoint keeps both, to resume).

    A resumed run restores the weights, the optimiser and AMP scaler states, the random states
    of torch, NumPy and Python and the position in the batch stream (when ``batches`` is a
    function of the start batch), so it goes on exactly as the run that was stopped. Beside the
    checkpoint it keeps ``log.csv``, ``model_best.pt`` and TensorBoard scalars (see
    :class:`~medseg.training.logs.RunLog`).

    Under ``torchrun`` (a process group set up by :func:`~medseg.training.distributed.setup`)
    every process runs this with its own ``batches`` (its share of the global batch) and the
    network trains as DistributedDataParallel: only rank 0 writes the checkpoint, the logs and
    the progress bar, every rank resumes from the checkpoint, rank 0's clock decides when the
    time limit ends the run, and a failed or silent peer ends it with a
    :class:`~medseg.training.distributed.DistributedError` within the collective timeout.

    Args:
        network: the model (moved to ``device``).
        loss: ``loss(logits, target, **extras)``.
        batches: endless ``{"image", "label", **extras}`` batches, or a function
            ``start -> batches`` beginning at batch ``start`` (needed to resume the stream).
        config: the run's settings.
        checkpoint: file written after every epoch (and read when ``resume``).
        resume: continue from ``checkpoint`` if it exists: a kill loses at most one epoch.
        validate: returns the validation Dice, called after each epoch.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        first_batch: the stream position a new (not resumed) run starts at.
        fixed_shapes: every batch has one shape (patches): on CUDA, cuDNN benchmarks its kernels.

    Raises:
        FloatingPointError: most steps of an epoch had a non-finite loss.
    """
    device, world = torch.device(device), distributed.current_world()
    network.to(device)
    if distributed.joined():  # batch Dice over the global batch
        for part in loss.modules():
            if getattr(part, "batch", False) is True and hasattr(part, "sync"):
                part.sync = True
    steps = _Steps(network, loss, config, device)
    history: list[dict[str, float]] = []
    start_epoch, spent, position = 0, 0.0, int(first_batch)
    resuming = resume and checkpoint is not None and Path(checkpoint).is_file()
    state = load_checkpoint(checkpoint, map_location=device) if resuming else None
    if state is not None:
        network.load_state_dict(state["model"])
        steps.load(state)
        start_epoch, spent, history = int(state["epoch"]), float(state["elapsed"]), list(state["history"])
        position = int(state.get("batch", position + sum(int(h["steps"]) for h in history)))
        log.info("resuming from %s at epoch %d (batch %d)", checkpoint, start_epoch, position)
    stream = batches(position) if callable(batches) else batches
    if state is not None and "random" in state:  # after the stream drew its own seeds
        set_random_states(state["random"])
    if world.distributed:  # rank 0's saved states would give every rank the same draws
        distributed.seed_process(config.seed, world, position)
    writes = checkpoint is not None and world.is_main
    run_log = RunLog(Path(checkpoint).parent, history) if writes else None
    clock = _Clock(config, spent)
    bar = tqdm(total=100, initial=round(100 * clock.progress(start_epoch * config.iterations_per_epoch)), desc="training",
               bar_format="{l_bar}{bar}| {elapsed}{postfix}", dynamic_ncols=True, disable=not world.is_main)
    try:
        with _cudnn_benchmark(fixed_shapes and device.type == "cuda"):
            for epoch in range(start_epoch, config.epochs):
                if clock.progress(epoch * config.iterations_per_epoch) >= 1.0:
                    break
                record = _epoch(epoch, steps, stream, config, clock, validate)
                position += record["steps"]
                history.append(record)
                if run_log is not None:  # model_best.pt before the checkpoint: a kill between redoes the epoch
                    with steps.averaged():
                        run_log.epoch_done(history, network)
                if writes:
                    save_checkpoint({"model": network.state_dict(), **steps.state(), "epoch": epoch + 1,
                                     "elapsed": clock.elapsed(), "history": history, "batch": position,  # validation included
                                     "random": random_states()}, checkpoint)
                left = _time_left(record["time"], epoch + 1 - start_epoch, config, start_epoch, spent)
                bar.set_postfix(epoch=epoch + 1, loss=f"{record['loss']:.4f}", val_dice=f"{record.get('val_dice', float('nan')):.4f}", left=left)
                bar.update(round(100 * clock.progress((epoch + 1) * config.iterations_per_epoch)) - bar.n)
        steps.keep_average()
    except Exception as error:
        if world.distributed and distributed.is_communication_error(error):
            raise distributed.failure(error) from error
        raise
    finally:
        bar.close()
        if run_log is not None:
            run_log.close()
    return history


class _Clock:
    """The share of the run done, by steps or by the time limit, whichever ends it first."""

    def __init__(self, config: TrainingConfig, spent: float) -> None:
        self.config, self.began = config, time.monotonic() - spent

    def elapsed(self) -> float:
        return time.monotonic() - self.began

    def progress(self, step: int) -> float:
        config = self.config  # under torchrun rank 0's clock: every rank stops at the same step
        by_time = distributed.decided(self.elapsed()) / config.time_limit if config.time_limit else 0.0
        return min(1.0, max(step / (config.epochs * config.iterations_per_epoch), by_time))


def _epoch(
    epoch: int,
    steps: _Steps,
    stream: Iterator[Batch],
    config: TrainingConfig,
    clock: _Clock,
    validate: Callable[[], float] | None,
) -> dict[str, float]:
    """Run one epoch's steps (and validation); its history record."""
    began = time.monotonic()
    if hasattr(steps.loss, "set_epoch"):
        steps.loss.set_epoch(epoch)
    steps.model.train()
    running = torch.zeros((), device=steps.device)
    nonfinite = torch.zeros((), dtype=torch.long, device=steps.device)
    done, lr = 0, config.lr
    for i in range(config.iterations_per_epoch):
        share = clock.progress(epoch * config.iterations_per_epoch + i)
        if share >= 1.0:
            break
        lr = config.lr * (1 - share) ** 0.9
        value, finite = steps(next(stream), lr)
        running += torch.where(finite, value, 0.0)
        nonfinite += ~finite
        done += 1
    skipped = int(nonfinite)  # the same on every rank (a step is skipped by all or none)
    total, finite_steps = distributed.sum_values(float(running), done - skipped)  # one process: as they are
    if 2 * skipped > done:
        raise FloatingPointError(
            f"training diverged at epoch {epoch + 1}: {skipped} of {done} steps had a non-finite loss "
            "(those steps were skipped); lower the learning rate or check the data.")
    if skipped:
        log.warning("epoch %d: skipped %d of %d steps with a non-finite loss", epoch + 1, skipped, done)
    record = {"epoch": epoch + 1, "loss": total / max(int(finite_steps), 1), "steps": done,
              "nonfinite_steps": skipped, "lr": lr, "time": clock.elapsed()}
    if validate is not None:
        checked = time.monotonic()
        with steps.averaged():
            record["val_dice"] = float(validate())
        record["val_seconds"] = time.monotonic() - checked  # later epochs' "time" includes it
    record["seconds"] = time.monotonic() - began
    return record


def _time_left(elapsed: float, epochs_done: int, config: TrainingConfig, start_epoch: int, spent: float) -> str:
    per_epoch = (elapsed - spent) / max(epochs_done, 1)
    left = per_epoch * (config.epochs - start_epoch - epochs_done)
    if config.time_limit:
        left = min(left, max(0.0, config.time_limit - elapsed))
    return f"{int(left // 60)}m{int(left % 60):02d}s"
