"""EvalOptions refuse bad values with a MedsslError naming the value."""

from __future__ import annotations

import pytest

from medssl.errors import MedsslError
from medssl.evaluate.run import EvalOptions


@pytest.mark.parametrize("field, value, expect", [
    ("protocols", ("linear", "magic"), "magic"),
    ("fractions", (0.0,), "--fractions"),
    ("seeds", 0, "--seeds 0"),
    ("baseline", "imagenet", "'imagenet'"),
    ("finetune_head", "zeros", "--finetune-head 'zeros'"),
    ("finetune_steps", 0, "--finetune-steps 0"),
    ("finetune_patience", 0, "--finetune-patience 0"),
    ("finetune_lr", -1.0, "--finetune-lr -1.0"),
    ("segment_lr", 0.0, "--segment-lr 0.0"),
    ("finetune_epochs", 3, "one of --finetune-steps and --finetune-epochs"),  # both set: steps default 300
])
def test_bad_options_name_the_value(field, value, expect):
    with pytest.raises(MedsslError, match=expect):
        EvalOptions(checkpoint="run", **{field: value}).validate()


def test_defaults_are_valid():
    opts = EvalOptions(checkpoint="run").validate()
    assert opts.finetune_head == "probe" and opts.fractions == (0.01, 0.1, 1.0)
