"""Two apps in one process, each on its own data folder and backend; and an app with no
backend that can run a model (browse-only, with a notice)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from diffviews.backends.local import LocalBackend
from diffviews.backends.protocol import UnavailableBackend
from diffviews.visualization import callbacks as cb
from diffviews.visualization.app import create_gradio_app
from diffviews.visualization.visualizer import GradioVisualizer

GEN = dict(class_choice=cb.FROM_SELECTION, steps=4, mask_steps=2, alpha=1.0, guidance=2.0, noise_max=100.0,
           noise_min=0.0, noise_mode="fixed", seed=1, num_samples=1)


class Recording(LocalBackend):
    """A LocalBackend that notes which model every request named."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.models: list[str] = []

    def generate(self, request):
        self.models.append(request.model)
        return super().generate(request)

    def extract_layer(self, request):
        self.models.append(request.model)
        return super().extract_layer(request)

    def layer_shapes(self, model):
        self.models.append(model)
        return super().layer_shapes(model)


def ok(out: dict) -> bool:
    return not out.get("status", "").startswith("**Error")


@pytest.mark.slow
def test_two_visualizers_over_two_data_folders_work_side_by_side(tiny_data_dir, app_data_dir, tmp_path):
    shutil.copytree(tiny_data_dir / "digits", tmp_path / "a" / "digits")
    shutil.copytree(app_data_dir / "shapes", tmp_path / "b" / "shapes")
    backend_a, backend_b = Recording(tmp_path / "a", device="cpu"), Recording(tmp_path / "b", device="cpu")
    a = GradioVisualizer(tmp_path / "a", backend=backend_a)
    layers_a = a.layers("digits")
    b = GradioVisualizer(tmp_path / "b", backend=backend_b)  # building B changes nothing of A
    layers_b = b.layers("shapes")
    assert a.layers("digits") == layers_a and len(layers_a) > 1 and "mid" in layers_b
    assert a.model_names == ["digits"] and b.model_names == ["shapes"]

    sa, out_a = cb.select_point(a, cb.initial_session(a), 3)
    sb, out_b = cb.select_point(b, cb.initial_session(b), 5)
    sa, out_a = cb.generate(a, sa, **GEN)
    sb, out_b = cb.generate(b, sb, **GEN)
    assert ok(out_a) and ok(out_b)
    assert a.generations.get(sa.active).result.images.shape == (1, 16, 16, 1)
    assert b.generations.get(sb.active).result.images.shape == (1, 32, 32, 3)

    new_a = next(name for name in layers_a if not a.layer_is_built("digits", name))
    new_b = next(name for name in layers_b if not b.layer_is_built("shapes", name))
    sa, out_a = cb.switch_layer(a, sa, new_a)
    assert a.layers("digits") == layers_a and b.layers("shapes") == layers_b
    sb, out_b = cb.switch_layer(b, sb, new_b)
    assert ok(out_a) and ok(out_b) and sa.layer == new_a and sb.layer == new_b
    assert a.layer("digits", new_a).n_points == a.model("digits").n_points
    assert b.layer("shapes", new_b).n_points == b.model("shapes").n_points
    assert not (tmp_path / "a" / "shapes").exists() and not (tmp_path / "b" / "digits").exists()

    sb, out_b = cb.generate(b, sb, **GEN)
    sa, out_a = cb.generate(a, sa, **GEN)
    assert ok(out_a) and ok(out_b)
    assert np.isfinite(a.generations.get(sa.active).coords["2-D"]).all()
    assert a.layers("digits") == layers_a and b.layers("shapes") == layers_b
    assert set(backend_a.models) == {"digits"} and set(backend_b.models) == {"shapes"}


def test_without_a_backend_that_runs_models_the_app_browses_with_a_notice(tiny_data_dir, monkeypatch):
    monkeypatch.setattr("diffviews.backends.torch_installed", lambda: False)  # as in a web image without torch
    vis = GradioVisualizer(tiny_data_dir)
    assert isinstance(vis.backend, UnavailableBackend) and "only browses" in vis.notice
    assert vis.layers("digits") == ["mid"]  # the layers on disk
    s, out = cb.select_point(vis, cb.initial_session(vis), 3)
    assert ok(out) and json.loads(out["overlay"])["traces"]
    s2, out = cb.generate(vis, s, **GEN)
    assert out["status"].startswith("**Error") and "only browses" in out["status"] and s2 == s
    demo = create_gradio_app(vis, warmup=False)
    assert any(getattr(block, "elem_id", None) == "backend-notice" for block in demo.blocks.values())
