"""Tests of medseg.evaluation.splits: exact partition properties, grouping, determinism, errors."""

from __future__ import annotations

import random

import pytest

from medseg.evaluation.splits import kfold_splits, leave_one_out, split_validation

CASES = [f"case_{i:03d}" for i in range(23)]
SUBJECTS = [f"s{i // 3}" if i < 15 else f"s{i}" for i in range(23)]  # groups of 3, then singles


def group_of(case: str) -> str:
    return SUBJECTS[CASES.index(case)]


def assert_partition(splits, cases):
    validated = [c for _, val in splits for c in val]
    assert sorted(validated) == sorted(cases)  # every case validated exactly once
    for train, val in splits:
        assert val and train
        assert set(train) | set(val) == set(cases) and not set(train) & set(val)
        assert train == [c for c in cases if c in set(train)]  # input order kept
        assert val == [c for c in cases if c in set(val)]


@pytest.mark.parametrize(("n", "folds"), [(23, 5), (10, 2), (7, 7), (12, 3)])
def test_kfold_partitions_and_balances(n, folds):
    cases = CASES[:n]
    splits = kfold_splits(cases, folds=folds, seed=3)
    assert len(splits) == folds
    assert_partition(splits, cases)
    sizes = sorted(len(val) for _, val in splits)
    assert sizes[-1] - sizes[0] <= 1
    assert sum(sizes) == n


def test_kfold_is_deterministic_and_seeded_and_order_independent():
    first = kfold_splits(CASES, folds=5, seed=0)
    assert kfold_splits(CASES, folds=5, seed=0) == first
    assert kfold_splits(CASES, folds=5, seed=1) != first
    shuffled = CASES[:]
    random.Random(0).shuffle(shuffled)
    again = kfold_splits(shuffled, folds=5, seed=0)
    assert [sorted(val) for _, val in again] == [sorted(val) for _, val in first]


@pytest.mark.parametrize("as_mapping", [False, True])
def test_kfold_keeps_groups_together(as_mapping):
    groups = dict(zip(CASES, SUBJECTS, strict=True)) if as_mapping else SUBJECTS
    splits = kfold_splits(CASES, folds=4, seed=7, groups=groups)
    assert_partition(splits, CASES)
    for train, val in splits:
        assert not {group_of(c) for c in train} & {group_of(c) for c in val}
    sizes = sorted(len(val) for _, val in splits)
    assert sizes[-1] - sizes[0] <= 3  # at most one group (of 3) apart
    assert kfold_splits(CASES, folds=4, seed=7, groups=groups) == splits


def test_kfold_with_unequal_groups_balances_by_cases():
    cases = [f"c{i}" for i in range(10)]
    groups = ["big"] * 5 + ["a", "a", "b", "c", "d"]
    splits = kfold_splits(cases, folds=2, seed=0, groups=groups)
    assert sorted(len(val) for _, val in splits) == [5, 5]


def test_split_validation_fraction_groups_and_determinism():
    train, val = split_validation(CASES, fraction=0.2, seed=0)
    assert len(val) == round(0.2 * 23) == 5 and len(train) == 18
    assert sorted(train + val) == sorted(CASES)
    assert split_validation(CASES, fraction=0.2, seed=0) == (train, val)
    assert split_validation(CASES, fraction=0.2, seed=1) != (train, val)
    train, val = split_validation(CASES, fraction=0.3, seed=2, groups=SUBJECTS)
    assert not {group_of(c) for c in train} & {group_of(c) for c in val}
    assert abs(len(val) - round(0.3 * 23)) <= 1  # closest reachable with groups of 3 and 1
    assert split_validation(["a", "b"], fraction=0.01) in ((["a"], ["b"]), (["b"], ["a"]))
    assert len(split_validation(["a", "b", "c"], fraction=0.99)[0]) == 1


def test_leave_one_out():
    splits = leave_one_out(["b", "a", "c"])
    assert splits == [(["b", "c"], ["a"]), (["a", "c"], ["b"]), (["b", "a"], ["c"])]
    grouped = leave_one_out(CASES, groups=SUBJECTS)
    assert len(grouped) == len(set(SUBJECTS)) == 13
    assert_partition(grouped, CASES)
    for _, val in grouped:
        assert len({group_of(c) for c in val}) == 1


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: kfold_splits(CASES[:4], folds=5), "folds=5 is more than the 4 groups"),
        (lambda: kfold_splits(CASES, folds=3, groups=["g"] * 23), "more than the 1 groups"),
        (lambda: kfold_splits(CASES, folds=1), "folds must be an integer >= 2"),
        (lambda: kfold_splits(CASES, folds=2.5), "folds must be an integer"),
        (lambda: kfold_splits(["a", "b", "a"], folds=2), "unique.*'a'"),
        (lambda: kfold_splits([], folds=2), "case_ids is empty"),
        (lambda: kfold_splits(CASES, groups=SUBJECTS[:5]), "5 groups for 23 case ids"),
        (lambda: kfold_splits(CASES, groups={"case_000": 1}), "no entry for cases"),
        (lambda: kfold_splits(CASES, seed=-1), "seed must be"),
        (lambda: split_validation(CASES, fraction=1.0), "fraction must be strictly"),
        (lambda: split_validation(["a"]), "at least 2 groups"),
        (lambda: leave_one_out(["a", "b"], groups=[0, 0]), "at least 2 groups"),
    ],
)
def test_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
