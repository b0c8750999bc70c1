"""The trained-run fixtures of tests/pretrain/train/conftest.py (tiny_data, straight_run, runs)
for the commands' tests that read a real run. Interim: once the shared fixtures move into
tests/conftest.py (issue 17 item 6), delete this file — until then a session that runs both
folders builds tiny_data and each straight_run stage twice (once per conftest)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_PATH = Path(__file__).resolve().parents[2] / "pretrain" / "train" / "conftest.py"
_spec = importlib.util.spec_from_file_location("tests_pretrain_train_conftest", _PATH)
_train = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_train)

tiny_data, straight_run, runs = _train.tiny_data, _train.straight_run, _train.runs
