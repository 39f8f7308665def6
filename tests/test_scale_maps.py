"""Maps at scale: landmark maps through the layer build path (recorded in the map's JSON,
reloaded without a UMAP refit, shown in the plot title) and extraction streamed into a
memory-mapped ``.npy``."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from diffviews.core.extraction import extract_activations
from diffviews.data.activations import load_activations
from diffviews.data.layers import ensure_layer, fit_here, layer_source
from diffviews.data.layout import load_adapter, load_config, model_paths
from diffviews.data.maps import load_embedding, load_pipeline, save_embedding
from diffviews.data.metadata import load_metadata, load_sample_images
from diffviews.visualization.figures import describe_map


@pytest.fixture
def paths(tiny_data_dir, tmp_path):
    shutil.copytree(tiny_data_dir / "digits", tmp_path / "digits")
    return model_paths(tmp_path, "digits")


def test_a_landmark_map_is_recorded_reloaded_without_refit_and_described(paths):
    acts = np.asarray(load_activations(paths, "mid"))
    estimator, extra = fit_here(threshold=100, n_landmarks=60)(acts)
    info = extra["map"]
    assert info["method"] == "landmarks" and info["n_landmarks"] == 60
    assert estimator.embedding_.shape == (acts.shape[0], 2) and estimator.train_features_.shape[0] == acts.shape[0]
    save_embedding(paths, "mid", estimator, extra_meta={"map": info})
    embedding, meta = load_embedding(paths, "mid")
    assert meta["map"] == info
    paths.reducer_cache("mid").unlink()  # as on another machine: rebuilt from the saved map, never refitted
    pipe = load_pipeline(paths, "mid", acts)
    assert pipe.reducer_ is None
    np.testing.assert_array_equal(pipe.embedding_, embedding)
    # a training row projects onto its own place (k-NN over every point of the map)
    np.testing.assert_allclose(pipe.transform(acts[:5]), embedding[:5], atol=1e-4)
    assert describe_map(info).startswith("map: UMAP on 60 landmarks") and describe_map({"method": "full"}) == ""


def test_full_maps_say_so(paths):
    acts = np.asarray(load_activations(paths, "mid"))
    estimator, extra = fit_here()(acts)
    assert extra["map"] == {"method": "full", "knn": "exact", "deterministic": True, "layout": "float32",
                          "n_epochs": 300}
    assert estimator.embedding_.shape == (acts.shape[0], 2)


def test_extraction_streams_into_a_memory_mapped_file(paths):
    config, metadata = load_config(paths), load_metadata(paths)
    source = layer_source(paths, config, metadata)
    want = np.asarray(load_activations(paths, "mid"))
    seen = []

    def extract_into(layer, out):
        assert isinstance(out, np.memmap) and out.shape == want.shape  # on disk, not in memory
        for start in range(0, len(want), 64):  # batch by batch, as the extractor writes
            out[start:start + 64] = want[start:start + 64]
        seen.append(layer)

    before = ensure_layer(paths, "mid", source, None, (64, 4, 4), force=True, extract_into=extract_into)
    assert not before.built and seen == ["mid"]
    np.testing.assert_array_equal(load_activations(paths, "mid"), want)
    assert not list(paths.activations_dir.glob(".*stream*"))  # the temporary file is gone
    assert load_embedding(paths, "mid")[1]["map"]["method"] == "full"


def test_extract_activations_writes_into_given_arrays(paths):
    adapter = load_adapter(paths)
    images, labels = load_sample_images(paths, load_metadata(paths))
    images, labels = images[:4], labels[:4]
    out = {"mid": np.zeros((8, 1024), dtype=np.float32)}
    got = extract_activations(adapter, images, labels, [80.0, 20.0], ["mid"], out=out)
    assert got["mid"] is out["mid"] and np.abs(out["mid"]).sum() > 0
    fresh = extract_activations(adapter, images, labels, [80.0, 20.0], ["mid"])["mid"]
    np.testing.assert_array_equal(out["mid"], fresh)
    with pytest.raises(ValueError, match=r"out\['mid'\] has shape \(3, 1024\); expected \(8, 1024\)"):
        extract_activations(adapter, images, labels, [80.0, 20.0], ["mid"], out={"mid": np.zeros((3, 1024))})
