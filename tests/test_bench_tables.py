"""The tables of real learning curves that bench/sampler_quality.py judges samplers and
early-termination policies by (built by bench/build_table.py): each holds every point of its
grid once with a curve of the table's epochs, and a sweep over it runs through the controller's
own decisions."""
from __future__ import annotations

import itertools
import json
import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import build_table  # noqa: E402
import sampler_quality  # noqa: E402
from sweep_quality import sweep  # noqa: E402


@pytest.mark.parametrize("name", list(build_table.GRIDS))
def test_a_table_holds_its_whole_grid_once(name):
    table = json.loads(sampler_quality.TABLES[name].read_text())
    grid = build_table.GRIDS[name]
    assert table["epochs"] == grid.epochs and table["fixed"] == grid.fixed
    points = [dict(zip(grid.grid, values)) for values in itertools.product(*grid.grid.values())]
    assert sorted(json.dumps(r["params"], sort_keys=True) for r in table["runs"]) == \
        sorted(json.dumps(p, sort_keys=True) for p in points)
    for run in table["runs"]:
        assert all(0.0 <= a <= 1.0 for a in run["accuracy"])
        assert len(run["accuracy"]) == grid.epochs if run["status"] == "completed" else run["status"] == "failed"


@pytest.mark.parametrize("name", list(build_table.GRIDS))
def test_a_sweep_over_a_table_finds_what_the_table_holds(name):
    table = sampler_quality.Table(sampler_quality.TABLES[name])
    sampler, spec = sampler_quality.make("random", table.space, 0, sampler_quality.POLICIES["median_stopping"],
                                         table.epochs)
    bests, epochs = sweep(spec, table.curve, sampler)
    assert len(bests) == sampler_quality.TRIALS and max(bests) <= table.best
    assert epochs < sampler_quality.TRIALS * table.epochs   # the policy stopped some trials early
