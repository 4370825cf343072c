"""Case-level validation splits: k-fold, a single hold-out split and leave-one-out.

Splits work on case ids, never on patches or slices, so no case leaks between training and
validation. ``groups`` (e.g. the subject or patient of each case) keep all cases of one group
on the same side of every split. Results depend only on the set of cases, the groups and the
seed, not on the order in which case ids are given; each returned list keeps the input order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Mapping, Sequence

import numpy as np

__all__ = ["kfold_splits", "leave_one_out", "split_validation"]

Split = tuple[list[str], list[str]]
Groups = Sequence[Hashable] | Mapping[str, Hashable] | None


def _group_cases(case_ids: Sequence[str], groups: Groups) -> list[list[str]]:
    """Cases bundled by group, groups ordered by their smallest case id (order-independent)."""
    case_ids = list(case_ids)
    if not case_ids:
        raise ValueError("case_ids is empty; pass the ids of the cases to split.")
    duplicates = sorted(c for c, n in Counter(case_ids).items() if n > 1)
    if duplicates:
        raise ValueError(f"case_ids must be unique, got duplicates {duplicates[:5]}.")
    if groups is None:
        keys: list[Hashable] = list(case_ids)
    elif isinstance(groups, Mapping):
        missing = [c for c in case_ids if c not in groups]
        if missing:
            raise ValueError(f"groups has no entry for cases {missing[:5]}; map every case id.")
        keys = [groups[c] for c in case_ids]
    else:
        keys = list(groups)
        if len(keys) != len(case_ids):
            raise ValueError(
                f"groups must give one group per case: got {len(keys)} groups for "
                f"{len(case_ids)} case ids."
            )
    bundles: dict[Hashable, list[str]] = {}
    for case, key in zip(case_ids, keys, strict=True):
        bundles.setdefault(key, []).append(case)
    return sorted((sorted(cases) for cases in bundles.values()), key=lambda cases: cases[0])


def _in_input_order(case_ids: Sequence[str], chosen: set[str]) -> Split:
    train = [c for c in case_ids if c not in chosen]
    return train, [c for c in case_ids if c in chosen]


def _check_seed(seed: int) -> np.random.Generator:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    return np.random.default_rng(int(seed))


def kfold_splits(
    case_ids: Sequence[str], folds: int = 5, seed: int = 0, groups: Groups = None
) -> list[Split]:
    """Split cases into ``folds`` (train, validation) pairs; each case is validated exactly once.

    Groups are shuffled with ``seed``, then dealt largest first to the fold holding the fewest
    cases, so fold sizes differ by at most one case without groups and stay as even as the group
    sizes allow with them.

    Args:
        case_ids: unique case ids.
        folds: number of folds, at least 2 and at most the number of groups.
        seed: seed of the shuffle; the same inputs and seed give the same folds.
        groups: optional group of each case, as a sequence aligned with ``case_ids`` or a
            mapping ``case id -> group``; a group never straddles training and validation.

    Returns:
        ``folds`` pairs ``(train_ids, validation_ids)``, each list in the order of ``case_ids``.

    Example:
        >>> [len(val) for _, val in kfold_splits([f"c{i}" for i in range(7)], folds=3)]
        [3, 2, 2]
    """
    bundles = _group_cases(case_ids, groups)
    if isinstance(folds, bool) or not isinstance(folds, int | np.integer) or folds < 2:
        raise ValueError(f"folds must be an integer >= 2, got {folds!r}.")
    if folds > len(bundles):
        raise ValueError(
            f"folds={folds} is more than the {len(bundles)} groups of cases; "
            f"use at most {len(bundles)} folds (or leave_one_out)."
        )
    order = _check_seed(seed).permutation(len(bundles))
    # Stable sort by size after the shuffle: ties between equal-sized groups stay random.
    dealt = sorted((bundles[i] for i in order), key=len, reverse=True)
    members: list[set[str]] = [set() for _ in range(folds)]
    for cases in dealt:
        smallest = min(range(folds), key=lambda k: len(members[k]))
        members[smallest].update(cases)
    return [_in_input_order(case_ids, chosen) for chosen in members]


def split_validation(
    case_ids: Sequence[str], fraction: float = 0.2, seed: int = 0, groups: Groups = None
) -> Split:
    """Hold out about ``fraction`` of the cases (whole groups) for validation.

    The validation set takes shuffled groups until its size is the closest possible to
    ``round(fraction * n_cases)``; both sides always keep at least one group.

    Args:
        case_ids: unique case ids.
        fraction: target share of cases in validation, strictly between 0 and 1.
        seed: seed of the shuffle.
        groups: optional group of each case (see :func:`kfold_splits`).

    Returns:
        ``(train_ids, validation_ids)``, each in the order of ``case_ids``.

    Example:
        >>> train, val = split_validation([f"c{i}" for i in range(10)], fraction=0.3)
        >>> len(train), len(val)
        (7, 3)
    """
    bundles = _group_cases(case_ids, groups)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be strictly between 0 and 1, got {fraction!r}.")
    if len(bundles) < 2:
        raise ValueError(
            f"need at least 2 groups of cases to split, got {len(bundles)}; add cases or groups."
        )
    target = round(fraction * sum(len(cases) for cases in bundles))
    shuffled = [bundles[i] for i in _check_seed(seed).permutation(len(bundles))]
    sizes = np.cumsum([len(cases) for cases in shuffled])[:-1]  # keep one group for training
    take = int(np.argmin(np.abs(sizes - target))) + 1  # first prefix closest to the target
    chosen = {case for cases in shuffled[:take] for case in cases}
    return _in_input_order(case_ids, chosen)


def leave_one_out(case_ids: Sequence[str], groups: Groups = None) -> list[Split]:
    """One split per group (per case without groups) validating on that group alone.

    Args:
        case_ids: unique case ids.
        groups: optional group of each case (see :func:`kfold_splits`); leave-one-subject-out.

    Returns:
        One ``(train_ids, validation_ids)`` pair per group, ordered by the group's smallest
        case id; lists in the order of ``case_ids``.

    Example:
        >>> leave_one_out(["b", "a", "c"], groups=["s1", "s1", "s2"])
        [(['c'], ['b', 'a']), (['b', 'a'], ['c'])]
    """
    bundles = _group_cases(case_ids, groups)
    if len(bundles) < 2:
        raise ValueError(f"leave_one_out needs at least 2 groups of cases, got {len(bundles)}.")
    return [_in_input_order(case_ids, set(cases)) for cases in bundles]
