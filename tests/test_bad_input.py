"""Bad input in a data directory or a build request: every error names the file or value
and says what was expected."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from diffviews.data.activations import load_activations, save_activations
from diffviews.data.build import build_layer, build_model_data
from diffviews.data.layout import DataLayoutError, load_adapter, load_config, model_paths
from diffviews.data.metadata import load_metadata, load_sample_images

MODEL = "digits"


@pytest.fixture
def p(tiny_data_dir, tmp_path):
    """ModelPaths of a private copy of the tiny digits folder."""
    shutil.copytree(tiny_data_dir, tmp_path / "data")
    return model_paths(tmp_path / "data", MODEL)


def _edit_config(p, **changes):
    config = json.loads(p.config.read_text())
    for key, value in changes.items():
        if value is None:
            del config[key]
        else:
            config[key] = value
    p.config.write_text(json.dumps(config))


def _raises(exc_type, *fragments):
    """pytest.raises whose message must hold every fragment, in order."""
    return pytest.raises(exc_type, match=".*".join(re.escape(f) for f in fragments))


# ---- config.json ---------------------------------------------------------------------------

def test_missing_config(p):
    p.config.unlink()
    with _raises(DataLayoutError, "missing model config", str(p.config)):
        load_config(p)
    with _raises(DataLayoutError, f"no model '{MODEL}' in data directory", "models found: (none)"):
        build_layer(p.root.parent, MODEL, "mid")


def test_malformed_config(p):
    p.config.write_text('{"adapter": "edm-demo", ')
    with _raises(DataLayoutError, "malformed JSON in", str(p.config)):
        load_config(p)
    p.config.write_text("[1, 2]")
    with _raises(DataLayoutError, str(p.config), "must hold a JSON object, got list"):
        load_config(p)


def test_config_lacking_a_key_or_with_a_wrong_type(p):
    _edit_config(p, noise_levels=None)
    with _raises(DataLayoutError, str(p.config), "lacks required key 'noise_levels'", "required: adapter"):
        load_config(p)
    _edit_config(p, noise_levels=[80.0], default_steps="twenty")
    with _raises(DataLayoutError, str(p.config), "'default_steps' has the wrong type", "'twenty'"):
        load_config(p)


def test_unknown_adapter_name(p):
    _edit_config(p, adapter="stable-diffusion-9")
    with _raises(DataLayoutError, str(p.config), "unknown adapter 'stable-diffusion-9'", "known adapters:", "edm-demo"):
        load_adapter(p)


def test_missing_checkpoint(p):
    _edit_config(p, checkpoint="weights/missing.safetensors")
    with _raises(DataLayoutError, "checkpoint 'weights/missing.safetensors'", str(p.config),
                 f"not found at {p.root / 'weights/missing.safetensors'}"):
        load_adapter(p)
    with _raises(DataLayoutError, "checkpoint 'weights/missing.safetensors'"):
        build_layer(p.root.parent, MODEL, "enc_8x8")


# ---- layers and build arguments ------------------------------------------------------------

def test_unknown_layer_name(p):
    with _raises(ValueError, "unknown layer 'mid_block'", f"model '{MODEL}'",
                 "hookable layers: enc_16x16, enc_8x8, enc_4x4, bottleneck, mid, dec_4x4, dec_8x8, dec_16x16"):
        build_layer(p.root.parent, MODEL, "mid_block")
    with _raises(ValueError, "unknown layer 'mid_block'", "hookable layers:"):
        build_model_data(p.root.parent, MODEL, layers=["mid_block"], progress=False)
    with _raises(DataLayoutError, "missing activations sidecar", str(p.activations_sidecar("dec_8x8"))):
        load_activations(p, "dec_8x8")


def test_bad_build_arguments(tmp_path):
    with _raises(ValueError, "unknown demo model 'cats'", "bundled demo models: digits, shapes"):
        build_model_data(tmp_path, "cats")
    with _raises(ValueError, "noise level(s) [120.0] out of range", "[0, 100] %"):
        build_model_data(tmp_path, MODEL, noise_levels=[50, 120], progress=False)
    with _raises(ValueError, "repeat a level"):
        build_model_data(tmp_path, MODEL, noise_levels=[50, 50], progress=False)
    with _raises(ValueError, "num_samples must be a positive integer, got -5"):
        build_model_data(tmp_path, MODEL, num_samples=-5, progress=False)


# ---- activations ---------------------------------------------------------------------------

def test_activation_rows_differ_from_metadata(p):
    md = load_metadata(p)
    acts = np.asarray(load_activations(p, "mid"))
    save_activations(p, "mid", acts[:-7], shape=(64, 4, 4))
    with _raises(DataLayoutError, str(p.activations("mid")), f"has {len(md) - 7} rows; expected {len(md)}",
                 str(p.metadata)):
        load_activations(p, "mid", expected_rows=len(md))


def test_truncated_npy(p):
    npy = p.activations("mid")
    size = npy.stat().st_size
    with open(npy, "r+b") as f:
        f.truncate(size - 4096)
    for mmap in (True, False):
        with _raises(DataLayoutError, "cannot read activations file", str(npy), "truncated or corrupt",
                     "expected a (180, 1024) float32 array"):
            load_activations(p, "mid", mmap=mmap)
    npy.write_bytes(b"not an npy file at all")
    with _raises(DataLayoutError, "cannot read activations file", str(npy)):
        load_activations(p, "mid")


def test_npy_disagreeing_with_its_sidecar(p):
    npy = p.activations("mid")
    np.save(npy, np.zeros((180, 1024), np.float64))
    with _raises(DataLayoutError, str(npy), "has dtype float64; expected float32"):
        load_activations(p, "mid")
    np.save(npy, np.zeros((180, 512), np.float32))
    with _raises(DataLayoutError, str(npy), "has shape (180, 512); its sidecar expects (180, 1024)"):
        load_activations(p, "mid")
    p.activations_sidecar("mid").write_text('{"layer": "mid"}')
    with _raises(DataLayoutError, str(p.activations_sidecar("mid")), "lacks required key 'shape'"):
        load_activations(p, "mid")


# ---- metadata and images -------------------------------------------------------------------

def test_missing_or_malformed_metadata(p):
    lines = p.metadata.read_text().splitlines()
    p.metadata.write_text("\n".join([lines[0].replace(",sigma", "")] + lines[1:]) + "\n")
    with _raises(DataLayoutError, str(p.metadata), "lacks column(s) sigma", "expected columns: point, sample_id"):
        load_metadata(p)
    bad = lines[3].split(",")
    bad[4] = "lots"
    p.metadata.write_text("\n".join(lines[:3] + [",".join(bad)] + lines[4:]) + "\n")
    with _raises(DataLayoutError, str(p.metadata), "row 3: column 'noise_level' holds 'lots'", "a finite number"):
        load_metadata(p)
    bad[4] = "150"
    p.metadata.write_text("\n".join(lines[:3] + [",".join(bad)] + lines[4:]) + "\n")
    with _raises(DataLayoutError, str(p.metadata), "row 3: 'noise_level' is 150.0", "[0, 100] %"):
        load_metadata(p)
    p.metadata.unlink()
    with _raises(DataLayoutError, "missing metadata file", str(p.metadata)):
        load_metadata(p)


def test_missing_sample_image(p):
    md = load_metadata(p)
    gone = p.root / md.image[5]
    gone.unlink()
    with _raises(DataLayoutError, "missing sample image", str(gone)):
        load_sample_images(p, md)
    with _raises(DataLayoutError, "missing sample image", str(gone)):
        build_layer(p.root.parent, MODEL, "enc_4x4")
