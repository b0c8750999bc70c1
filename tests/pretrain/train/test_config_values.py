"""Values the typed config refuses before anything starts (issue 19 item 6): no float setting is
infinite or NaN, the seed fits what torch and numpy take."""

from __future__ import annotations

import pytest
from helpers.dist import REPO

from pretrain.configlib import ConfigError
from pretrain.train.preflight import check_run

GPT_TINY = REPO / "configs" / "gpt-tiny.yaml"


@pytest.mark.parametrize("override, message", [
    ("optim.lr=.inf", "optim.lr: Input should be a finite number"),
    ("optim.lr=inf", "optim.lr: Input should be a finite number"),
    ("train.sync_every_seconds=.nan", "train.sync_every_seconds: Input should be a finite number"),
    ("seed=100000000000000000000000", "seed: Input should be less than 9223372036854775808"),
    ("seed=-1", "seed: Input should be greater than or equal to 0"),
])
def test_values_that_would_fail_later_are_refused_up_front(tiny_data, tmp_path, override,
                                                            message):
    """Issue 19 item 6: an infinite lr failed at step 2, a 1e23 seed crashed the ranks with an
    overflow traceback."""
    with pytest.raises(ConfigError) as err:
        check_run(GPT_TINY, [f"data.path={tiny_data}", override], world_size=2)
    assert message in str(err.value)
