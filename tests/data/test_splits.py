"""Patient-level splits and label fractions: no leakage, nesting, stratification, reproducibility."""

import random
from collections import Counter

import pytest

from medssl.data.records import Record
from medssl.data.splits import (
    assert_no_patient_overlap,
    assign_splits,
    by_split,
    label_fraction,
    split_by_patient,
)
from medssl.errors import LeakageError, MedsslError


def _records(n_patients=400, seed=0):
    """Patients with 1-4 images each; 10 % have the rare class 'nodule', the rest 'normal' or 'effusion'."""
    rng = random.Random(seed)
    recs = []
    for p in range(n_patients):
        label = "nodule" if p % 10 == 0 else rng.choice(["normal", "effusion"])
        for i in range(rng.randint(1, 4)):
            recs.append(Record(f"img/{p}_{i}.png", f"P{p:04d}", labels=(label,)))
    return recs


def test_split_puts_every_record_in_one_part_and_no_patient_in_two():
    recs = _records()
    parts = split_by_patient(recs, (0.7, 0.1, 0.2), seed=3)
    keys = [r.key for part in parts for r in part]
    assert sorted(keys) == sorted(r.key for r in recs)  # each record exactly once
    patients = [{r.patient_id for r in part} for part in parts]
    assert not (patients[0] & patients[1]) and not (patients[0] & patients[2]) and not (patients[1] & patients[2])


def test_split_is_stratified_and_near_the_fractions():
    recs = _records()
    parts = split_by_patient(recs, (0.7, 0.1, 0.2), seed=0)
    n_pat = [len({r.patient_id for r in p}) for p in parts]
    assert n_pat == pytest.approx([280, 40, 80], abs=3)
    # the rare class: 40 patients -> 28 / 4 / 8 per part exactly (cut at cumulative fractions within the stratum)
    rare = [len({r.patient_id for r in p if "nodule" in r.labels}) for p in parts]
    assert rare == [28, 4, 8]


def test_split_ignores_record_order_and_depends_on_seed():
    recs = _records()
    shuffled = recs[:]
    random.Random(1).shuffle(shuffled)
    a = [{r.key for r in p} for p in split_by_patient(recs, (0.7, 0.1, 0.2), seed=5)]
    b = [{r.key for r in p} for p in split_by_patient(shuffled, (0.7, 0.1, 0.2), seed=5)]
    c = [{r.key for r in p} for p in split_by_patient(recs, (0.7, 0.1, 0.2), seed=6)]
    assert a == b and a != c


def test_label_fractions_are_nested_stratified_patient_level_and_reproducible():
    train = _records(1000)
    f1 = label_fraction(train, 0.01, seed=0)
    f10 = label_fraction(train, 0.1, seed=0)
    f100 = label_fraction(train, 1.0, seed=0)
    assert {r.key for r in f1} <= {r.key for r in f10} <= {r.key for r in f100} == {r.key for r in train}
    # patient level: a chosen patient comes with all of their images
    per_patient = Counter(r.patient_id for r in train)
    for r in f10:
        assert sum(x.patient_id == r.patient_id for x in f10) == per_patient[r.patient_id]
    # stratified within one sample: every class present at 1 %, and shares at 10 % match the full set's
    assert {n for r in f1 for n in r.labels} == {"nodule", "normal", "effusion"}
    pats = lambda rs, lab: len({r.patient_id for r in rs if lab in r.labels})  # noqa: E731
    assert pats(f10, "nodule") == round(0.1 * pats(train, "nodule"))
    assert label_fraction(train, 0.1, seed=0) == f10  # the same for every method given the seed
    assert {r.key for r in label_fraction(train, 0.1, seed=1)} != {r.key for r in f10}


def test_guard_raises_on_leakage_and_by_split_uses_it():
    a = [Record("a.png", "P1"), Record("b.png", "P2")]
    b = [Record("c.png", "P2")]
    with pytest.raises(LeakageError, match="'P2' appears in both train and test"):
        assert_no_patient_overlap(a, b, names=["train", "test"])
    leaky = [Record("a.png", "P1", split="train"), Record("b.png", "P1", split="val")]
    with pytest.raises(LeakageError):
        by_split(leaky)


def test_assign_splits_keeps_order_and_sets_split():
    recs = _records(50)
    out = assign_splits(recs, (0.6, 0.2, 0.2), seed=0)
    assert [r.key for r in out] == [r.key for r in recs]
    assert {r.split for r in out} == {"train", "val", "test"}


@pytest.mark.parametrize("fracs", [(0.5, 0.6, 0.1), (1.2, -0.1, -0.1), ()])
def test_bad_split_fractions(fracs):
    with pytest.raises(MedsslError, match="split fractions"):
        split_by_patient(_records(10), fracs)


@pytest.mark.parametrize("frac", [0, -0.1, 1.5])
def test_bad_label_fraction(frac):
    with pytest.raises(MedsslError, match="label fraction"):
        label_fraction(_records(10), frac)
