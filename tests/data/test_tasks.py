"""Task inference and target shapes for binary, multi-class and multi-label labels."""

import numpy as np
import pytest

from medssl.data.records import Record
from medssl.errors import MedsslError
from medssl.data.tasks import make_task, targets


def _recs(*labels):
    return [Record(f"{i}.png", f"P{i}", labels=tuple(lab)) for i, lab in enumerate(labels)]


def test_binary_puts_the_negative_class_first_whatever_the_names_sort_to():
    recs = _recs(["pneumonia"], ["normal"], ["pneumonia"])
    task = make_task(recs)
    assert (task.kind, task.classes, task.n_outputs) == ("binary", ("normal", "pneumonia"), 1)
    np.testing.assert_array_equal(targets(recs, task), [1, 0, 1])
    task = make_task(_recs(["b"], ["a"]))
    assert task.classes == ("a", "b")  # no negative name: sorted order, the second is positive


def test_multiclass_and_multilabel():
    task = make_task(_recs(["2"], ["0"], ["1"], ["10"]))
    assert task.kind == "multiclass" and task.classes == ("0", "1", "2", "10") and task.n_outputs == 4
    recs = _recs(["nodule", "pleural_effusion"], ["no_finding"], ["nodule"])
    task = make_task(recs)
    assert task.kind == "multilabel" and task.classes == ("nodule", "pleural_effusion") and task.n_outputs == 2
    np.testing.assert_array_equal(targets(recs, task), [[1, 1], [0, 0], [1, 0]])  # (N, C); scores are (N, K) too


def test_errors_name_the_problem():
    with pytest.raises(MedsslError, match="no labelled images"):
        make_task(_recs([], []))
    with pytest.raises(MedsslError, match="only one class"):
        make_task(_recs(["a"], ["a"]))
    with pytest.raises(MedsslError, match="one label per image"):
        make_task(_recs(["a", "b"], ["a"]), kind="multiclass")
    task = make_task(_recs(["a"], ["b"]))
    with pytest.raises(MedsslError, match=r"3.png: labels \['c'\]"):
        targets(_recs(["a"], ["b"], ["a"], ["c"]), task)
