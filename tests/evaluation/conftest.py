"""Fixtures of the evaluation tests."""

import pytest

from tests.evaluation.fabricate import build_tiny_run


@pytest.fixture
def tiny_run():
    return build_tiny_run()
