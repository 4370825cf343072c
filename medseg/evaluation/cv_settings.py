"""The settings a cross-validation run was made with, kept in its ``cv.json`` to check a rerun.

The settings are everything that changes what the folds train and score: the pipeline's config
(plan, preprocessing, sampler, architecture, loss, training and inference settings) without its
history and split, the fit options (epochs, iterations per epoch, time limit), the number of
folds, the seed, and how cases are grouped into subjects. Settings that change nothing in the
results (data loader workers, windows per forward pass) are left out, so a rerun may change them.

Example:
    >>> settings = run_settings(pipe, folds=5, seed=0, groups=True, fit={"epochs": 10})  # doctest: +SKIP
    >>> check_settings(stored, settings, Path("runs/cv/cv.json"))  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .tables import to_json

if TYPE_CHECKING:
    from ..pipeline import Pipeline

__all__ = ["check_settings", "differences", "run_settings", "settings_digest"]

_RUNTIME_ONLY = (("training", "workers"), ("inference", "sw_batch_size"))
_SHOWN = 8  # differences named in an error message


def _digest(data: Any) -> str:
    text = json.dumps(to_json(data), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def run_settings(pipe: Pipeline, *, folds: int, seed: int, groups: bool, fit: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of one cross-validation call, as plain JSON data."""
    config = {key: value for key, value in pipe.config().items() if key not in ("history", "split", "format")}
    for section, key in _RUNTIME_ONLY:
        if isinstance(config.get(section), dict):
            config[section] = {k: v for k, v in config[section].items() if k != key}
    data = pipe.data
    subjects = {case: data.group_of(case) for case in data.case_ids} if groups and data is not None else {}
    grouping = {"subjects": len(set(subjects.values())), "digest": _digest(sorted(subjects.items()))[:16]}
    settings = {"folds": folds, "seed": seed, "groups": grouping if groups else False, "fit": dict(fit), **config}
    return json.loads(json.dumps(to_json(settings)))


def settings_digest(settings: Mapping[str, Any]) -> str:
    """SHA-256 of the settings (key order does not matter)."""
    return _digest(settings)


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, Mapping) and data:
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data}


def differences(stored: Mapping[str, Any], asked: Mapping[str, Any]) -> list[str]:
    """``"plan.patch_size: [48, 48] in cv.json, [32, 32] now"`` for each setting that differs."""
    old, new = _flatten(stored), _flatten(asked)
    missing = object()
    lines = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key, missing), new.get(key, missing)
        if before != after:
            show = [("(not set)" if value is missing else json.dumps(value)) for value in (before, after)]
            lines.append(f"{key}: {show[0]} in cv.json, {show[1]} now")
    return lines


def check_settings(stored: Mapping[str, Any], asked: Mapping[str, Any], path: Path) -> bool:
    """Whether ``cv.json``'s record ``stored`` needs ``asked`` written into it.

    Raises:
        ValueError: naming each setting that differs, when ``stored`` kept other settings.

    A record without settings (written before medseg kept them) warns and returns ``True``.
    """
    if "settings_digest" not in stored:
        warnings.warn(
            f"{path} was written before cross-validation kept its settings: resuming it with this call's "
            f"settings, which cannot be checked against those the finished folds used.", stacklevel=3)
        return True
    if stored["settings_digest"] == settings_digest(asked):
        return False
    found = differences(stored.get("settings", {}), asked)
    shown = "; ".join(found[:_SHOWN]) + (f"; and {len(found) - _SHOWN} more" if len(found) > _SHOWN else "")
    raise ValueError(
        f"{path} holds a cross-validation made with other settings ({shown or 'settings digest differs'}); "
        f"rerun with the settings it was made with to resume it, or choose a new output folder (or delete "
        f"that one) to start another."
    )
