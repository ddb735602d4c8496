"""The sample store's split: a place per sample that never moves when other samples join (later rounds)."""

from __future__ import annotations

from kit.distill.sample_store import probe_ids, split_ids


def test_validation_and_probe_bands_are_stable_and_disjoint():
    first = [f"{n:016x}" for n in range(200)]
    later = first + [f"{n:016x}" for n in range(200, 400)]
    validation, more_validation = split_ids(first, 0.1, 0), split_ids(later, 0.1, 0)
    assert validation == more_validation & set(first)  # a later round's samples never move earlier ones
    probes = probe_ids(first, 0.1, 0.25, 0)
    assert not probes & validation and 30 < len(probes) < 70 and 8 < len(validation) < 35
    assert probe_ids(first, 0.1, 0.0, 0) == set()
    assert len(split_ids(["a", "b"], 0.01, 0)) == 1  # two or more samples always give a validation row
