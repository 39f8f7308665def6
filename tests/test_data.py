"""The data pipeline: build a model folder, validate every part, skip and rebuild, the CLI."""

from __future__ import annotations

import logging
import shutil
import sys
import types

import numpy as np
import pytest

from diffviews.cli import COMMANDS, main
from diffviews.core.extraction import extract_activations
from diffviews.data.activations import list_layers, load_activations, read_sidecar, save_activations
from diffviews.data.build import build_model_data, stratified_subset, torch_threads
from diffviews.data.layers import EXTRACT_BATCH
from diffviews.data.layout import REQUIRED_CONFIG_KEYS, load_adapter, load_config, model_paths
from diffviews.data.maps import load_embedding
from diffviews.data.metadata import COLUMNS, load_metadata, load_sample_images, make_metadata, write_metadata
from diffviews.demo.datasets import load_dataset

MODEL = "digits"


@pytest.fixture(scope="module")
def paths(tiny_data_dir):
    return model_paths(tiny_data_dir, MODEL)


@pytest.fixture(scope="module")
def adapter(paths):
    return load_adapter(paths)


@pytest.fixture
def copy_dir(tiny_data_dir, tmp_path):
    """A private copy of the tiny data dir (timestamps kept) for tests that change it."""
    shutil.copytree(tiny_data_dir, tmp_path / "data")
    return tmp_path / "data"


def _mtimes(root):
    return {p.relative_to(root): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


# ---- what a build writes ------------------------------------------------------------------

def test_build_writes_every_part_with_consistent_sizes(paths, tiny_build_kwargs):
    config = load_config(paths)
    assert set(REQUIRED_CONFIG_KEYS) <= set(config)
    assert config["adapter"] == "edm-demo"
    assert config["checkpoint"] == "package:demo/weights/digits.safetensors"
    assert config["noise_levels"] == tiny_build_kwargs["noise_levels"]
    assert (config["num_samples"], config["resolution"], config["channels"]) == (60, 16, 1)
    assert config["class_names"] == [str(i) for i in range(10)]

    md = load_metadata(paths)
    n = 60 * 3
    assert len(md) == n
    assert len(list(paths.images.glob("*.png"))) == 60
    acts = load_activations(paths, "mid", expected_rows=len(md))
    assert acts.shape == (n, 64 * 4 * 4) and acts.dtype == np.float32
    side = read_sidecar(paths, "mid")
    assert (side["layer"], side["shape"], side["dtype"], side["N"], side["D"]) == ("mid", [64, 4, 4], "float32", n,
                                                                                  1024)
    assert side["noise_levels"] == tiny_build_kwargs["noise_levels"] and side["seed"] == 0
    emb, emb_meta = load_embedding(paths, "mid")
    assert emb.shape == (n, 2) and np.isfinite(emb).all()
    assert emb_meta["source"]["checkpoint_sha256"] == side["checkpoint_sha256"]
    assert list_layers(paths) == ["mid"]
    assert not list(paths.root.rglob("*.tmp"))


def test_metadata_is_noise_level_major_with_native_sigmas(paths, adapter):
    md = load_metadata(paths)
    s = md.num_samples
    assert md.noise_levels == [80.0, 50.0, 20.0]
    np.testing.assert_array_equal(md.noise_level, np.repeat([80.0, 50.0, 20.0], s))
    np.testing.assert_array_equal(md.sample_id, np.tile(md.sample_id[:s], 3))
    np.testing.assert_allclose(md.sigma, adapter.noise_level_to_native(md.noise_level), rtol=1e-12)
    assert all((paths.root / p).is_file() for p in md.image)
    assert all(p == f"images/{sid:06d}.png" for p, sid in zip(md.image, md.sample_id))
    np.testing.assert_array_equal(md.class_name, md.class_label.astype(str))
    assert set(md.class_label) == set(range(10))  # stratified: every class is there


def test_sample_images_round_trip_the_dataset_exactly(paths):
    md = load_metadata(paths)
    images, labels = load_sample_images(paths, md)
    ds = load_dataset(MODEL)
    ids = md.sample_id[: md.num_samples]
    np.testing.assert_array_equal(images, ds.as_model_input()[ids])
    np.testing.assert_array_equal(labels, ds.labels[ids])
    assert images.dtype == np.float32 and images.min() >= -1 and images.max() <= 1


def test_activations_come_from_really_noised_inputs(paths, adapter):
    md = load_metadata(paths)
    acts = np.asarray(load_activations(paths, "mid"))
    s = md.num_samples
    # the same sample at different noise levels gives clearly different activations
    for j, k in ((0, 1), (1, 2)):
        diff = np.linalg.norm(acts[j * s:(j + 1) * s] - acts[k * s:(k + 1) * s], axis=1)
        assert np.all(diff > 1e-3 * np.linalg.norm(acts[j * s:(j + 1) * s], axis=1))
    # they are exactly x + sigma * eps with the recorded seed (the first level's eps is drawn
    # first, so extracting that level alone reproduces its rows); another seed's eps changes them
    images, labels = load_sample_images(paths, md)
    with torch_threads(1):
        again = extract_activations(adapter, images, labels, md.noise_levels[:1], ["mid"], seed=0,
                                    batch_size=EXTRACT_BATCH)["mid"]
        other = extract_activations(adapter, images, labels, md.noise_levels[:1], ["mid"], seed=1,
                                    batch_size=EXTRACT_BATCH)["mid"]
    np.testing.assert_array_equal(again, acts[:s])
    assert not np.allclose(other, acts[:s], atol=1e-3)


def test_stratified_subset_is_proportional_and_deterministic():
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    idx = stratified_subset(labels, 10, seed=0)
    assert len(idx) == 10 and np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(np.bincount(labels[idx]), [5, 3, 2])
    np.testing.assert_array_equal(idx, stratified_subset(labels, 10, seed=0))
    assert not np.array_equal(idx, stratified_subset(labels, 10, seed=1))
    np.testing.assert_array_equal(stratified_subset(labels, 1000), np.arange(100))
    with pytest.raises(ValueError, match="num_samples must be a positive integer, got 0"):
        stratified_subset(labels, 0)


def test_activations_and_metadata_round_trip(tmp_path):
    p = model_paths(tmp_path, "m")
    arr = np.random.default_rng(0).normal(size=(6, 12)).astype(np.float64)
    save_activations(p, "enc", arr, {"seed": 3}, shape=(3, 2, 2))
    out = load_activations(p, "enc", expected_rows=6, mmap=False)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, arr.astype(np.float32))
    assert read_sidecar(p, "enc")["seed"] == 3
    with pytest.raises(ValueError, match=r"shape \(4, 2, 2\) has 16 values but the activations have D = 12"):
        save_activations(p, "enc", arr, shape=(4, 2, 2))

    md = make_metadata([7, 3], [1, 0], ["zero", "one"], [90.0, 10.0], [20.5, 0.01],
                       ["images/000007.png", "images/000003.png"])
    write_metadata(p, md)
    back = load_metadata(p)
    assert back.equals(md) and len(back) == 4
    assert back.class_name.tolist() == ["one", "zero", "one", "zero"]
    assert p.metadata.read_text().splitlines()[0] == ",".join(COLUMNS)


# ---- re-runs: skip what is valid, rebuild what is not -------------------------------------

def test_rerun_skips_every_valid_part(tiny_data_dir, paths, tiny_build_kwargs, caplog):
    before = _mtimes(tiny_data_dir)
    with caplog.at_level(logging.INFO, logger="diffviews"):
        build_model_data(tiny_data_dir, MODEL, **tiny_build_kwargs)
    assert _mtimes(tiny_data_dir) == before
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    for part in ("config.json", "images/", "metadata.csv", "activations/mid.npy", "embeddings/mid.csv"):
        assert any(part in m for m in skipped), (part, skipped)


def test_truncated_npy_is_rebuilt_without_touching_valid_parts(copy_dir, paths, tiny_build_kwargs):
    p = model_paths(copy_dir, MODEL)
    original = np.asarray(load_activations(paths, "mid"))
    keep = [p.config, p.metadata, *p.images.glob("*.png")]
    before = {f: f.stat().st_mtime_ns for f in keep}
    with open(p.activations("mid"), "r+b") as f:
        f.truncate(p.activations("mid").stat().st_size // 2)
    # a variant map of the same layer (as the aligned 3-D view writes) is stale too
    p.embedding("mid", "_aligned").write_text("x,y,z\n")
    p.embedding_meta("mid", "_aligned").write_text('{"layer": "mid", "suffix": "_aligned"}')
    build_model_data(copy_dir, MODEL, **tiny_build_kwargs)
    assert not p.embedding("mid", "_aligned").exists() and not p.embedding_meta("mid", "_aligned").exists()
    np.testing.assert_array_equal(load_activations(p, "mid", expected_rows=len(original)), original)
    assert {f: f.stat().st_mtime_ns for f in keep} == before
    # the map of the rebuilt activations was refitted (removed first, so never stale)
    assert p.embedding("mid").stat().st_mtime_ns > p.activations("mid").stat().st_mtime_ns
    assert load_embedding(p, "mid")[0].shape == (len(original), 2)


def test_corrupt_embedding_is_refitted_from_the_kept_activations(copy_dir, tiny_build_kwargs):
    p = model_paths(copy_dir, MODEL)
    npy_mtime = p.activations("mid").stat().st_mtime_ns
    p.embedding("mid").write_text("x,y\n1.0,2.0\nnot,numbers\n")
    build_model_data(copy_dir, MODEL, **tiny_build_kwargs)
    assert p.activations("mid").stat().st_mtime_ns == npy_mtime
    assert load_embedding(p, "mid")[0].shape == (180, 2)


def test_changed_sample_count_rebuilds_metadata_and_drops_stale_layers(copy_dir, tiny_build_kwargs):
    p = model_paths(copy_dir, MODEL)
    save_activations(p, "enc_4x4", np.zeros((180, 1024), np.float32), shape=(64, 4, 4))  # an extra, older layer
    kw = {**tiny_build_kwargs, "num_samples": 30, "noise_levels": [80.0, 20.0]}
    build_model_data(copy_dir, MODEL, **kw, umap_params={"n_neighbors": 5})
    assert len(load_metadata(p)) == 60 and len(list(p.images.glob("*.png"))) == 30
    assert load_activations(p, "mid", expected_rows=60).shape == (60, 1024)
    assert list_layers(p) == ["mid"]  # enc_4x4 followed the old row order: removed
    emb, meta = load_embedding(p, "mid")
    assert emb.shape == (60, 2) and meta["params"]["n_neighbors"] == 5
    assert load_config(p)["num_samples"] == 30


# ---- the command line -------------------------------------------------------------------

def test_cli_build_demo_rerun_skips(tiny_data_dir, capsys):
    rc = main(["build-demo", "--data-dir", str(tiny_data_dir), "--models", MODEL, "--num-samples", "60",
               "--noise-levels", "80", "50", "20", "--threads", "1"])
    out = capsys.readouterr()
    assert rc == 0
    assert f"{MODEL}: {tiny_data_dir / MODEL}" in out.out
    assert "metadata.csv: up to date (180 points), skipped" in out.err


def test_cli_extract_adds_a_layer_consistent_with_the_first(copy_dir, paths, adapter, capsys):
    assert main(["extract", "--data-dir", str(copy_dir), "--model", MODEL, "--layers", "enc_8x8", "--threads", "1",
                 "-q"]) == 0
    assert capsys.readouterr().out.strip() == f"{MODEL}: enc_8x8 in {copy_dir / MODEL}"
    p = model_paths(copy_dir, MODEL)
    md = load_metadata(p)
    acts = load_activations(p, "enc_8x8", expected_rows=len(md))
    assert acts.shape == (180, 32 * 8 * 8) and read_sidecar(p, "enc_8x8")["shape"] == [32, 8, 8]
    assert load_embedding(p, "enc_8x8")[0].shape == (180, 2)
    # the same noised inputs as the build's "mid": one joint extraction (first level) gives both
    images, labels = load_sample_images(paths, md)
    s = md.num_samples
    with torch_threads(1):
        both = extract_activations(adapter, images, labels, md.noise_levels[:1], ["enc_8x8", "mid"], seed=0,
                                   batch_size=EXTRACT_BATCH)
    np.testing.assert_array_equal(acts[:s], both["enc_8x8"])
    np.testing.assert_array_equal(load_activations(p, "mid")[:s], both["mid"])
    # a second run finds it built
    assert main(["extract", "--data-dir", str(copy_dir), "--model", MODEL, "--layers", "enc_8x8"]) == 0
    assert "embeddings/enc_8x8.csv: up to date, skipped" in capsys.readouterr().err


def test_cli_errors_are_one_line_with_exit_code_2(tiny_data_dir, capsys):
    rc = main(["extract", "--data-dir", str(tiny_data_dir), "--model", "nope", "--layers", "mid"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "no model 'nope'" in err and "models found: digits" in err

    rc = main(["extract", "--data-dir", str(tiny_data_dir), "--model", MODEL, "--layers", "mid", "nope"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "unknown layer 'nope'" in err and "hookable layers: enc_16x16, enc_8x8, enc_4x4, bottleneck, mid" in err

    rc = main(["build-demo", "--data-dir", str(tiny_data_dir), "--models", "cats"])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown demo model 'cats'; bundled demo models: digits, shapes" in err


def test_cli_has_the_subcommands_and_rejects_a_missing_one(capsys):
    assert {"build-demo", "extract", "viz"} <= set(COMMANDS)
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2


def test_cli_viz_forwards_its_options_and_unknown_ones_to_the_app(monkeypatch, tmp_path):
    calls = []
    app = types.ModuleType("diffviews.visualization.app")  # records what the real app.main would get
    app.main = lambda argv: calls.append(argv) or 0
    monkeypatch.setitem(sys.modules, "diffviews.visualization.app", app)
    assert main(["viz", "--data-dir", str(tmp_path), "--port", "7999", "--share", "--host", "0.0.0.0"]) == 0
    assert calls == [["--data-dir", str(tmp_path), "--port", "7999", "--share", "--host", "0.0.0.0"]]
