"""The three hosts: the Spaces entry (app.py) and the Modal files (modal_gpu/web/app.py).

The Modal files are imported for real (their declared resources are read back) and the
GPU worker class's methods run in this process through Modal's ``.local()``.
"""

from __future__ import annotations

import socket
import sys
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_data import make_tiny_data_dir

from diffviews.backends import wire
from diffviews.backends.local import LocalBackend
from diffviews.backends.modal_worker import modal_backend
from diffviews.backends.process import process_backend
from diffviews.backends.protocol import ExtractionRequest, FitRequest, GenerationRequest, UnavailableBackend
from diffviews.backends.remote import RemoteBackend
from diffviews.hosting import IMAGE_EXTRAS, MODAL_DATA_DIR, PYPROJECT, worker_or_local_backend
from diffviews.visualization import gpu_ops

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the host files live in the repository root
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_data_dir(tmp_path_factory.mktemp("hosts"))


@pytest.fixture(scope="module")
def local(tiny_dir):
    return LocalBackend(tiny_dir, device="cpu")


REQUEST = GenerationRequest(model="tiny", class_label=2, num_steps=3, guidance_scale=1.5, seed=5, mask_steps=1,
                            masks={"bottleneck": np.full((1, 16, 4, 4), 0.5, np.float32)}, extract_layers=["mid"])
EXTRACTION = ExtractionRequest(model="tiny", layers=["enc_4x4"], images=np.linspace(-1, 1, 4 * 64, dtype=np.float32)
                               .reshape(4, 1, 8, 8), labels=np.array([0, 1, 2, 0]), noise_levels=[60.0], seed=2)


def _same_generation(a, b) -> None:
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.trajectory["mid"], b.trajectory["mid"])
    np.testing.assert_array_equal(a.noise_levels, b.noise_levels)


# ---- Hugging Face Spaces ------------------------------------------------------------------

def test_spaces_entry_imports_without_launching_and_sizes_gpu_time():
    import app

    if app.spaces is None:  # outside Spaces the decorator leaves the function alone
        assert app.gpu(30)(len) is len

    def seconds(op, payload):
        return app.gpu_seconds(wire.encode({"op": op, "payload": payload}))

    assert 10 <= seconds("generate", GenerationRequest("m", num_steps=20)) < seconds(
        "generate", GenerationRequest("m", num_steps=200, num_samples=4)) <= app.MAX_GPU_SECONDS
    big = ExtractionRequest("m", ["a"], np.zeros((10**6, 1, 1, 1), np.float32), np.zeros(10**6, np.int64), [1, 2, 3])
    assert seconds("extract_layer", big) == app.MAX_GPU_SECONDS
    assert seconds("fit_umap", FitRequest(np.zeros((100, 4), np.float32))) >= 10
    assert seconds("layer_shapes", "m") == 10


@pytest.mark.slow
def test_spaces_backend_gives_the_local_result(tiny_dir, local):
    """Local, process-backend and Spaces-entry runs give the same image for the same request and seed."""
    import app

    # the same torch thread count on both sides: float sums differ in the last bit between counts
    # (and a umap fit earlier in this process leaves the count other than the environment's)
    same_threads = {"OMP_NUM_THREADS": str(torch.get_num_threads())}
    with process_backend(tiny_dir, device="cpu", timeout=120, env=same_threads) as process:
        from_process = gpu_ops.generate(process, REQUEST)
    backend = app.configure(tiny_dir, device="cpu")
    assert isinstance(backend, RemoteBackend) and backend.transport is app.gpu_serve
    assert backend.fits_remotely == app.cuml_installed()
    from_spaces, from_local = gpu_ops.generate(backend, REQUEST), gpu_ops.generate(local, REQUEST)
    _same_generation(from_spaces, from_local)
    _same_generation(from_process, from_local)
    assert from_local.images.std() > 0  # untrained, but not a blank image
    ours, theirs = gpu_ops.extract_layer(backend, EXTRACTION), local.extract_layer(EXTRACTION)
    np.testing.assert_array_equal(ours["enc_4x4"], theirs["enc_4x4"])
    assert gpu_ops.layer_shapes(backend, "tiny") == local.layer_shapes("tiny")


@pytest.mark.slow
def test_spaces_app_launches_and_generates_once(tiny_data_dir):
    pytest.importorskip("diffviews.visualization.app")
    import app
    from diffviews.visualization.app import launch_app

    demo = app.create_app(tiny_data_dir, device="cpu")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launch_app(demo, port=port, prevent_thread_lock=True, quiet=True)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as page:
            assert page.status == 200 and "DiffViews" in page.read().decode()
        spaces = RemoteBackend(app.gpu_serve, "spaces")  # what the app's visualizer was given
        result = gpu_ops.generate(spaces, GenerationRequest(model="digits", class_label=3, num_steps=4, seed=1))
        assert result.images.shape == (1, 16, 16, 1) and result.images.std() > 0
    finally:
        demo.close()


def test_spaces_requirements_and_readme_header_match_the_package():
    """requirements.txt = pyproject's dependencies + the viz, r2, spaces and diffusers extras; the README
    header (docs/space-readme-header.md) is valid Spaces front matter for app.py."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    import yaml
    from packaging.requirements import Requirement
    from packaging.version import Version

    project = tomllib.loads(PYPROJECT.read_text())["project"]
    declared = project["dependencies"] + [p for extra in ("viz", "r2", "spaces", "diffusers")
                                          for p in project["optional-dependencies"][extra]]
    lines = [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    listed = [line for line in lines if line and not line.startswith("#")]
    assert sorted(listed) == sorted(set(declared))

    text = (ROOT / "docs" / "space-readme-header.md").read_text()
    assert text.startswith("---\n") and text.rstrip().endswith("\n---")
    meta = yaml.safe_load(text.strip().strip("-"))
    assert meta["sdk"] == "gradio" and (ROOT / meta["app_file"]).is_file() and len(meta["short_description"]) <= 60
    gradio = next(Requirement(p) for p in project["optional-dependencies"]["viz"] if p.startswith("gradio"))
    assert Version(meta["sdk_version"]) in gradio.specifier
    assert Version(meta["python_version"]) in Requirement(f"python{project['requires-python']}").specifier


# ---- Modal ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def modal_files():
    modal = pytest.importorskip("modal")
    import modal_app
    import modal_gpu
    import modal_web

    return modal, modal_gpu, modal_web, modal_app


def test_modal_files_declare_their_resources(modal_files):
    modal, gpu, web, single = modal_files
    opts = gpu.WORKER_OPTIONS
    assert opts["gpu"] == "T4" and opts["scaledown_window"] <= 120
    assert isinstance(opts["volumes"][MODAL_DATA_DIR], modal.Volume)
    spec = getattr(gpu.GPUWorker._get_class_service_function(), "_spec_", None)  # what Modal recorded
    if spec is not None:
        assert spec.gpus == "T4" and MODAL_DATA_DIR in spec.volumes
    assert {"serve", "seed_layer"} == set(gpu.GPUWorker._get_method_names())

    assert web.WEB_OPTIONS["max_containers"] == 1 and "gpu" not in web.WEB_OPTIONS
    assert isinstance(web.WEB_OPTIONS["volumes"][MODAL_DATA_DIR], modal.Volume)
    assert web.MAX_CONCURRENT_INPUTS > 1
    assert single.SINGLE_OPTIONS["gpu"] == "T4" and single.SINGLE_OPTIONS["max_containers"] == 1
    for module in (web, single):
        assert isinstance(module.web, modal.Function)


def test_modal_images_install_the_declared_extras():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    worker_packages = " ".join(p for extra in IMAGE_EXTRAS["worker"] for p in extras[extra])
    assert "cuml-cu12" in worker_packages and "cupy-cuda12x" in worker_packages
    assert "viz" in IMAGE_EXTRAS["web"] and "gpu" not in IMAGE_EXTRAS["web"]


def test_gpu_worker_methods_run_locally(modal_files, tiny_dir, local):
    _, gpu, _, _ = modal_files
    backend = modal_backend(gpu.GPUWorker(data_dir=str(tiny_dir)), call="local")
    assert backend.fits_remotely
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*executing locally.*")
        _same_generation(backend.generate(REQUEST), local.generate(REQUEST))
        acts = backend.extract_layer(EXTRACTION)["enc_4x4"]
        np.testing.assert_array_equal(acts, local.extract_layer(EXTRACTION)["enc_4x4"])
        assert backend.layer_shapes("tiny") == local.layer_shapes("tiny")
        rng = np.random.default_rng(0)
        fit = backend.fit_umap(FitRequest(rng.standard_normal((60, 80)).astype(np.float32),
                                          params={"n_neighbors": 5}))
    assert fit.embedding.shape == (60, 2) and np.isfinite(fit.embedding).all()
    with pytest.raises(ValueError, match="class_label must be an integer within"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backend.generate(GenerationRequest(model="tiny", class_label=9))


@pytest.mark.slow
def test_web_uses_the_worker_or_falls_back_with_a_visible_notice(modal_files, tiny_dir, tiny_data_dir, monkeypatch,
                                                                 tmp_path):
    from diffviews.hosting import connect_gpu_worker

    _, gpu, web, _ = modal_files
    remote = modal_backend(gpu.GPUWorker(data_dir=str(tiny_dir)), call="local")
    backend, notice = worker_or_local_backend(tiny_dir, connect=lambda: remote)
    assert notice is None and backend is remote

    for var in ("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET"):  # no Modal account here: the lookup really fails
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(tmp_path / "no-modal.toml"))
    backend, notice = worker_or_local_backend(tiny_dir, connect_gpu_worker)
    assert isinstance(backend, LocalBackend)
    assert "could not be reached" in notice and "CPU" in notice
    monkeypatch.setattr("diffviews.backends.torch_installed", lambda: False)  # a web image without torch
    backend, notice = worker_or_local_backend(tiny_dir, connect_gpu_worker)
    assert isinstance(backend, UnavailableBackend) and "only browses" in notice
    monkeypatch.undo()

    pytest.importorskip("diffviews.visualization.app")
    from fastapi.testclient import TestClient

    asgi = web.create_web_app(str(tiny_data_dir))
    with TestClient(asgi) as client:
        page = client.get("/")
        assert page.status_code == 200 and 'rel="modulepreload"' in page.text  # preload.py, mounted too
        config = client.get("/config").text
    assert "could not be reached" in config  # the notice is part of the page
