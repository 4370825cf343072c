"""Run settings: the sections of ``pipeline.json``, read from a YAML or JSON file, layered
(defaults < saved run < settings file < command line) and checked before a run is resumed.

A settings file holds any of the sections a saved pipeline holds::

    plan:          {patch_size: [32, 48, 32], batch_size: 2}    # any Plan field
    training:      {epochs: 20, learning_rate: 0.001, amp: false}  # any TrainingConfig field
    inference:     {mirror: true}                              # any InferenceConfig field
    sampler:       {foreground_ratio: 0.5}                     # PatchSampler arguments
    architecture:  unet                                        # a name, or {name: ..., **arguments}
    loss:          dice+ce                                     # a name, or a recipe {name: ..., **arguments}
    preprocessing: [{name: zscore}, ...]                       # create_step arguments, in order

so a run's own ``pipeline.json`` serves as a settings file too (its ``format``, ``split`` and
``history`` are records, not settings, and are left out).

Example:
    >>> settings = read_settings("settings.yaml")  # doctest: +SKIP
    >>> merge_settings({"training": {"epochs": 5}}, {"training": {"seed": 1}})
    {'training': {'epochs': 5, 'seed': 1}}
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .errors import DataError
from .inference import InferenceConfig
from .planning import Plan
from .sampling import PatchSampler
from .training import TrainingConfig

__all__ = ["SECTIONS", "merge_settings", "read_settings", "resume_conflicts", "validate_settings"]

SECTIONS = ("plan", "preprocessing", "sampler", "architecture", "loss", "training", "inference")
_RECORDS = ("format", "split", "history")  # in pipeline.json, but not settings
_KEYED = {
    "plan": {f.name for f in dataclasses.fields(Plan)},
    "training": {f.name for f in dataclasses.fields(TrainingConfig)},
    "inference": {f.name for f in dataclasses.fields(InferenceConfig)},
    "sampler": set(inspect.signature(PatchSampler.__init__).parameters) - {"self"},
}
# What a resumed run cannot change: the network, its loss, the data it sees, the optimiser state,
# and what places it on its patch stream and schedule (seed, steps per epoch, augmentation).
_FROZEN_TRAINING = ("optimizer", "seed", "iterations_per_epoch", "augmentation", "ema")
_FROZEN_SAMPLER = ("patch_size",)


def read_settings(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a YAML or JSON settings file (see the module docstring)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DataError(f"{path}: settings file not found.") from None
    except OSError as error:
        raise DataError(f"{path}: settings file unreadable ({error.strerror}).") from error
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as error:
        detail = " ".join(str(error).split())
        raise DataError(f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'} ({detail}).") from error
    if data is None:
        return {}
    return validate_settings(data, source=str(path))


def validate_settings(settings: Any, *, source: str = "settings") -> dict[str, Any]:
    """``settings`` without the record keys, after checking every section and key is known.

    Raises:
        ValueError: naming the unknown sections or keys and listing the valid ones.
    """
    if not isinstance(settings, Mapping):
        raise ValueError(f"{source}: expected a mapping of sections ({', '.join(SECTIONS)}), got {type(settings).__name__}.")
    unknown = sorted(set(settings) - set(SECTIONS) - set(_RECORDS))
    if unknown:
        raise ValueError(f"{source}: unknown section(s) {unknown}; valid sections: {', '.join(SECTIONS)}.")
    checked = {key: value for key, value in settings.items() if key in SECTIONS and value is not None}
    for section, valid in _KEYED.items():
        value = checked.get(section)
        if value is None:
            continue
        if not isinstance(value, Mapping):
            raise ValueError(f"{source}: section {section!r} must be a mapping of settings, got {value!r}.")
        wrong = sorted(set(value) - valid)
        if wrong:
            raise ValueError(f"{source}: unknown {section} setting(s) {wrong}; valid: {', '.join(sorted(valid))}.")
    _check_named(checked, source)
    return checked


def _check_named(settings: Mapping[str, Any], source: str) -> None:
    architecture = settings.get("architecture")
    if architecture is not None and not (isinstance(architecture, str) or (isinstance(architecture, Mapping) and "name" in architecture)):
        raise ValueError(f"{source}: architecture must be a name or a mapping with a 'name', got {architecture!r}.")
    loss = settings.get("loss")
    if loss is not None and not (isinstance(loss, str) or (isinstance(loss, Mapping) and isinstance(loss.get("name"), str))):
        raise ValueError(f"{source}: loss must be a name such as 'dice+ce' or a recipe with a 'name' (as pipeline.json "
                         f"saves it), got {loss!r}.")
    steps = settings.get("preprocessing")
    if steps is not None and not (isinstance(steps, list) and all(isinstance(s, Mapping) and "name" in s for s in steps)):
        raise ValueError(f"{source}: preprocessing must be a list of steps, each a mapping with a 'name'.")


def merge_settings(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Later layers win: keyed sections merge key by key, the others are replaced whole."""
    merged: dict[str, Any] = {}
    for layer in layers:
        for section, value in layer.items():
            if section in _KEYED and isinstance(merged.get(section), Mapping):
                merged[section] = {**merged[section], **value}
            else:
                merged[section] = dict(value) if isinstance(value, Mapping) else value
    return merged


def _plain(value: Any) -> Any:
    """JSON's view of a value (tuples as lists), names compared without case or spaces."""
    value = json.loads(json.dumps(value, default=str))
    return "".join(value.lower().split()) if isinstance(value, str) else value


def _architecture_differs(saved: Any, asked: Any) -> bool:
    if isinstance(saved, Mapping):
        if isinstance(asked, str):
            return _plain(asked) != _plain(saved.get("name"))
        return any(_plain(v) != _plain(saved.get(k)) for k, v in asked.items())
    return _plain(asked) != _plain(saved)


def resume_conflicts(saved: Mapping[str, Any], asked: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """The settings ``asked`` would change but a resumed run cannot: ``(key, saved, asked)``.

    Keys are dotted (``"plan.patch_size"``, ``"loss"``): every plan field, the architecture,
    the loss, the preprocessing, the sampler's patch size, the optimiser, the seed, the steps per
    epoch, the augmentation and the weight average.
    """
    conflicts = []
    for key, value in asked.get("plan", {}).items():
        if _plain(value) != _plain(saved.get("plan", {}).get(key)):
            conflicts.append((f"plan.{key}", saved.get("plan", {}).get(key), value))
    for section, keys in (("training", _FROZEN_TRAINING), ("sampler", _FROZEN_SAMPLER)):
        for key in keys:
            if key in asked.get(section, {}) and _plain(asked[section][key]) != _plain(saved.get(section, {}).get(key)):
                conflicts.append((f"{section}.{key}", saved.get(section, {}).get(key), asked[section][key]))
    if "architecture" in asked and _architecture_differs(saved.get("architecture"), asked["architecture"]):
        conflicts.append(("architecture", saved.get("architecture"), asked["architecture"]))
    for key in ("loss", "preprocessing"):
        if key in asked and _plain(asked[key]) != _plain(saved.get(key)):
            conflicts.append((key, saved.get(key), asked[key]))
    return conflicts
