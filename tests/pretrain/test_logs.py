"""pretrain.logs: durations in human units (what `launch status` and the CPU check print)."""

from __future__ import annotations

import pytest

from pretrain.logs import human_duration


@pytest.mark.parametrize("seconds, text", [
    (0, "< 1 min"), (10, "< 1 min"), (29, "< 1 min"), (31, "1 min"), (12 * 60, "12 min"),
    (3 * 3600 + 5 * 60, "3 h 5 min"), (2 * 3600, "2 h"), (3 * 86400 + 4 * 3600, "3 d 4 h")])
def test_eta_is_said_in_human_units(seconds, text):
    assert human_duration(seconds) == text
