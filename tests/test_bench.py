"""``diffviews bench --quick`` on the tiny data: every section runs and the result has its keys.

A smoke test only: it checks the shape of the results, never a timing.
"""

from __future__ import annotations

import json

import pytest

from diffviews.bench.report import REQUIRED_KEYS, lookup, markdown
from diffviews.cli import main

pytestmark = pytest.mark.slow  # a whole (quick) bench run


@pytest.fixture(scope="module")
def quick_run(tiny_data_dir, tmp_path_factory):
    """(exit code, results, markdown table, the data folder's files before and after) of one quick run."""
    out = tmp_path_factory.mktemp("bench")
    before = sorted(p.relative_to(tiny_data_dir) for p in tiny_data_dir.rglob("*"))
    code = main(["bench", "--quick", "--data-dir", str(tiny_data_dir), "--json", str(out / "bench.json"),
                 "--markdown", str(out / "bench.md"), "-q"])
    after = sorted(p.relative_to(tiny_data_dir) for p in tiny_data_dir.rglob("*"))
    return code, json.loads((out / "bench.json").read_text()), (out / "bench.md").read_text(), (before, after)


def test_quick_bench_has_every_key(quick_run):
    code, results, _, _ = quick_run
    assert code == 0, results["meta"]["failed_sections"]
    for key in REQUIRED_KEYS:
        lookup(results, key)  # raises naming the missing key
    for name in ("hover", "click", "knn", "knn_activations", "class_filter"):
        entry = results["callbacks"][name]
        assert entry["calls"] == 20 and 0 <= entry["p50_ms"] <= entry["p95_ms"]
    fit = results["map_fit"]
    assert fit["n_points"] == 180 and fit["baseline_cold_s"] > 0 and fit["ours_cold_s"] > 0
    assert 0 < fit["ours_knn_preservation"] <= 1 and fit["ours_deterministic"] is True
    switch = results["layer_switch"]
    assert switch["layer"] != switch["from_layer"]
    assert switch["plain_cold_s"] > 0
    assert switch["speedup_vs_plain"] == pytest.approx(switch["plain_cold_s"] / switch["miss_s"], abs=0.01)
    assert 0 <= switch["miss_knn_preservation"] <= 1 and 0 <= switch["plain_knn_preservation"] <= 1
    assert len(results["memory"]["rss_after_cycle_mib"]) == 2 and results["memory"]["loads"]
    assert results["scale"]["10000"]["points"] == 10_000 and results["scale"]["10000"]["payload_bytes"] > 0
    assert results["generation"]["steps"] == 10 and results["generation"]["projection_method"] == "reducer"
    assert "skipped" in results["cuml"] or "cuml_warm_s" in results["cuml"]
    env = results["environment"]
    assert env["versions"]["umap-learn"] and env["backend"]["umap"] in ("umap-learn", "cuml")


def test_quick_bench_writes_the_table_and_leaves_the_data_alone(quick_run):
    _, results, table, (before, after) = quick_run
    assert table.startswith("Command: `diffviews bench --quick")
    assert "| Measurement | Result |" in table and "Map fit, cold" in table and "Scale, 10,000" in table
    assert "error" not in table and table == markdown(results)
    assert before == after  # the cache-miss layer switch wrote into a scratch copy


def test_bench_on_a_folder_without_models_is_a_clear_error(tmp_path, capsys):
    assert main(["bench", "--quick", "--data-dir", str(tmp_path), "-q"]) == 2
    assert "no models found" in capsys.readouterr().err
