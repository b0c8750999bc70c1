"""pyproject.toml reads without setuptools warnings (issue 18 item 10: the table form of
`license` printed a deprecation banner at every install)."""

from __future__ import annotations

import warnings

import pytest
from helpers.dist import REPO


def test_setuptools_reads_the_project_without_a_warning():
    pytest.importorskip("setuptools", minversion="77")  # what the build-system table asks for
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dist = apply_configuration(Distribution(), REPO / "pyproject.toml")
    assert dist.metadata.license_expression == "Apache-2.0"
