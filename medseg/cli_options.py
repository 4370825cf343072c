"""The command line's options: value parsers, the flags ``train`` and ``cv`` share, and the
settings (pipeline.json's sections, see :mod:`medseg.config`) the flags given ask for."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["Parser", "add_fold_flags", "add_part_flags", "add_settings_flags", "flag_of", "parse_classes", "parse_names",
           "settings_from_args"]

# argparse dest -> (settings section, key); the sections are pipeline.json's (see medseg.config)
_SETTING_FLAGS = {
    "epochs": ("training", "epochs"), "iterations_per_epoch": ("training", "iterations_per_epoch"),
    "time_limit": ("training", "time_limit"), "optimizer": ("training", "optimizer"),
    "lr": ("training", "learning_rate"), "amp": ("training", "amp"), "seed": ("training", "seed"),
    "workers": ("training", "workers"), "patch_size": ("plan", "patch_size"),
    "batch_size": ("plan", "batch_size"), "spatial_dims": ("plan", "spatial_dims"),
    "architecture": ("architecture", None), "loss": ("loss", None),
}
# --- values on the command line -------------------------------------------------------------------


def _sizes(text: str) -> tuple[int, ...]:
    """``"32,48,32"`` -> ``(32, 48, 32)``, every size a positive integer."""
    try:
        sizes = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive integers separated by commas, e.g. 32,48,32") from None
    if any(size < 1 for size in sizes):
        raise argparse.ArgumentTypeError(f"{text!r}: sizes must be positive")
    return sizes


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r}: must be > 0")
        return value

    parse.__name__ = kind.__name__
    return parse


def parse_names(text: str) -> tuple[str, ...]:
    """``"T1,T2"`` -> ``("T1", "T2")``: one name per image channel."""
    names = tuple(part.strip() for part in text.split(","))
    if not all(names):
        raise argparse.ArgumentTypeError(f"{text!r}: give one name per channel, separated by commas, e.g. T1,T2")
    return names


def parse_classes(text: str) -> dict[int, str]:
    """``"1=liver,2=tumour"`` (or ``"0,1,2"``) -> ``{0: "background", 1: "liver", 2: "tumour"}``."""
    classes: dict[int, str] = {}
    for part in text.split(","):
        value, _, name = part.partition("=")
        try:
            key = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{part!r}: give VALUE=NAME pairs of the label files' values, e.g. 1=liver,2=tumour") from None
        if key in classes:
            raise argparse.ArgumentTypeError(f"label value {key} is given twice")
        classes[key] = name.strip() or ("background" if key == 0 else f"class_{key}")
    return {0: "background", **classes} if 0 not in classes else classes


# --- settings: file < flags; on --resume the saved run < file < flags ------------------------------


def settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the call asks for: ``--config``'s file, then the flags given."""
    from .config import merge_settings, read_settings

    flags: dict[str, Any] = {}
    for dest, (section, key) in _SETTING_FLAGS.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if key is None:
            flags[section] = value
        else:
            flags.setdefault(section, {})[key] = list(value) if isinstance(value, tuple) else value
    return merge_settings(read_settings(args.config) if args.config else {}, flags)


def flag_of(key: str) -> str:
    """The flag that sets a dotted settings key (``plan.patch_size`` -> ``--patch-size``)."""
    if key.startswith("--"):
        return key
    for dest, (section, name) in _SETTING_FLAGS.items():
        if key == (section if name is None else f"{section}.{name}"):
            return "--" + dest.replace("_", "-")
    return f"{key} (--config)"


class Parser(argparse.ArgumentParser):
    """argparse, with its errors in medseg's one-line form."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_settings_flags(parser: argparse.ArgumentParser, *, per_fold: bool = False) -> None:
    """The flags ``train`` and ``cv`` share; unset ones come from --config, the saved run or the plan."""
    parser.add_argument("data", help="the dataset folder")
    parser.add_argument("--format", default=None, help="dataset layout: voc, cityscapes, camvid, coco (default: detected)")
    parser.add_argument("--config", default=None, help="YAML/JSON settings (pipeline.json's sections); flags win")
    parser.add_argument("--print-config", action="store_true", help="print the resolved settings and exit")
    parser.add_argument("--epochs", type=_positive(int), default=None)
    parser.add_argument("--iterations-per-epoch", type=_positive(int), default=None)
    parser.add_argument("--time-limit", type=_positive(float), default=None,
                        help="seconds of training" + (" per fold" if per_fold else ""))
    parser.add_argument("--spatial-dims", type=int, choices=(2, 3), default=None)
    parser.add_argument("--architecture", default=None, help="unet, deeplabv3plus, fastfcn, gatedscnn, ...")
    parser.add_argument("--loss", default=None, help="e.g. dice+ce, dice+boundary, focal")
    parser.add_argument("--patch-size", type=_sizes, default=None, help="e.g. 32,48,32 (default: planned)")
    parser.add_argument("--batch-size", type=_positive(int), default=None, help="patches per step (default: planned)")
    parser.add_argument("--lr", type=_positive(float), default=None, help="initial learning rate")
    parser.add_argument("--optimizer", default=None, choices=("adamw", "sgd"))
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="mixed precision (default: on): float16 on a GPU, bfloat16 on a CPU with native bfloat16 "
                             "(AVX512-BF16 or AMX), else float32")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--workers", type=int, default=None, help="data loader processes (default 1)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--cache-dir", default=None, help="preprocessed cases (default: $MEDSEG_CACHE or ~/.cache/medseg)")
    parser.add_argument("--modality", type=parse_names, default=None, help="one name per channel: CT, or T1,T2")
    parser.add_argument("--classes", type=parse_classes, default=None,
                        help="label values and names: 1=liver,2=tumour (0 is the background)")
    parser.add_argument("--group-pattern", default=None,
                        help=r"regex whose group 1 is a case's subject, kept on one side of splits (e.g. '^(\d+)_')")
    from .cli_instances import add_task_flags

    add_task_flags(parser)  # --task instance, --instances MODE


def add_fold_flags(parser: argparse.ArgumentParser) -> None:
    """``medseg cv``'s flags for folds in separate processes: ``--fold K``, ``--report``."""
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--fold", type=int, default=None,
                       help="train and score fold K only (0..folds-1), e.g. one per GPU or node at once")
    which.add_argument("--report", action="store_true", help="build the report once every fold is done")


def add_part_flags(parser: argparse.ArgumentParser) -> None:
    """``medseg predict``'s ``--part K --parts N``: this process predicts every N-th case from K."""
    parser.add_argument("--part", type=int, default=None, help="predict part K (0..N-1) of the cases (with --parts)")
    parser.add_argument("--parts", type=int, default=None, help="split the cases into N parts (e.g. one per machine)")
