"""prepare_manifest's checks (its workers and its main-process-only preparation under a launch are
tested in tests/cli/test_scale_out.py, where they run)."""

from dataclasses import replace

import pytest

from mambacontrol.atlas import load_atlas
from mambacontrol.data import Manifest
from mambacontrol.errors import ConfigError
from mambacontrol.pipeline.prepare import prepare_manifest


def test_zero_workers_are_refused(tiny_cohort, tmp_path):
    manifest = Manifest.from_csv(tiny_cohort)
    visits = [replace(v, segm_path=None) for v in manifest.visits[:1]]
    with pytest.raises(ConfigError, match="--workers 0 must be at least 1"):
        prepare_manifest(Manifest(visits, manifest.path), load_atlas(grid="4mm"),
                         tmp_path / "p", workers=0)
