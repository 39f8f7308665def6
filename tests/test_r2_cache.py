"""The bucket-backed layer cache against a real S3-compatible server on 127.0.0.1 (moto)."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import uuid

import boto3
import numpy as np
import pytest

from diffviews.data.activations import save_activations
from diffviews.data.layers import layer_source
from diffviews.data.layout import load_config, model_paths, write_config
from diffviews.data.maps import save_embedding
from diffviews.data.metadata import load_metadata, make_metadata, write_metadata
from diffviews.data.r2_cache import BUDGET_ENV, LayerCache, R2Settings
from diffviews.processing.umap import UMAPPipeline

MODEL = "m"
LAYERS = {"mid": (4, 2, 2), "enc": (2, 4, 4), "dec": (3, 2, 2)}  # mid is the default layer
SAMPLES, LEVELS = 10, [80.0, 40.0]
LOGGER = "diffviews.data.r2_cache"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def _settings(endpoint: str, bucket: str, **kw) -> R2Settings:
    return R2Settings(bucket=bucket, access_key_id="test", secret_access_key="test", endpoint_url=endpoint,
                      region="us-east-1", **kw)


@pytest.fixture
def bucket(s3_endpoint):
    name = f"layers-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                          region_name="us-east-1")
    client.create_bucket(Bucket=name)
    return client, name


def _write_layer(paths, layer: str, shape, seed: int, meta: dict) -> None:
    rng = np.random.default_rng(seed)
    acts = rng.standard_normal((SAMPLES * len(LEVELS), int(np.prod(shape)))).astype(np.float32)
    save_activations(paths, layer, acts, meta, shape=shape)
    pipe = UMAPPipeline.from_embedding(acts, rng.standard_normal((len(acts), 2)).astype(np.float32))
    save_embedding(paths, layer, pipe)


@pytest.fixture
def data_dir(tmp_path):
    """A model folder with config, metadata, a (fake) checkpoint and three small layers."""
    paths = model_paths(tmp_path, MODEL)
    paths.root.mkdir(parents=True)
    (paths.root / "weights.safetensors").write_bytes(b"not really weights, but hashed like them")
    write_config(paths, {"adapter": "edm-demo", "checkpoint": "weights.safetensors", "default_steps": 4,
                         "default_guidance": 1.0, "noise_max": 100.0, "noise_min": 0.0, "noise_levels": LEVELS,
                         "default_layer": "mid", "seed": 0})
    ids = np.arange(SAMPLES)
    write_metadata(paths, make_metadata(ids, ids % 3, ["a", "b", "c"], LEVELS, [10.0, 1.0],
                                        [f"images/{i:06d}.png" for i in ids]))
    meta = layer_source(paths, load_config(paths), load_metadata(paths))
    for k, (layer, shape) in enumerate(LAYERS.items()):
        _write_layer(paths, layer, shape, seed=k, meta=meta)
    return tmp_path


def _snapshot(root) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]


def _keys(client, bucket) -> list[str]:
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", []))


def test_settings_from_environment():
    env = {"R2_ACCOUNT_ID": "abc123", "R2_ACCESS_KEY_ID": "k", "R2_SECRET_ACCESS_KEY": "s3cret",
           "R2_BUCKET_NAME": "b"}
    s = R2Settings.from_env(env)
    assert s.endpoint_url == "https://abc123.r2.cloudflarestorage.com" and s.bucket == "b"
    assert "s3cret" not in repr(s) and s.region == "auto"
    assert R2Settings.from_env({**env, "R2_REGION": "us-east-1"}).region == "us-east-1"
    assert R2Settings.from_env({**env, "R2_ENDPOINT_URL": "http://127.0.0.1:9"}).endpoint_url == "http://127.0.0.1:9"
    assert R2Settings.from_env({k: v for k, v in env.items() if k != "R2_BUCKET_NAME"}) is None
    assert R2Settings.missing({"R2_ACCESS_KEY_ID": "k"}) == [
        "R2_SECRET_ACCESS_KEY", "R2_BUCKET_NAME", "R2_ACCOUNT_ID or R2_ENDPOINT_URL"]


def test_upload_then_fetch_restores_identical_files(data_dir, bucket, s3_endpoint, caplog):
    client, name = bucket
    cache = LayerCache(data_dir, _settings(s3_endpoint, name))
    assert cache.upload_layer(MODEL, "enc").result(timeout=30) is True
    assert _keys(client, name) == ["m/activations/enc.json", "m/activations/enc.npy",
                                   "m/embeddings/enc.csv", "m/embeddings/enc.json"]  # no pickle
    paths = model_paths(data_dir, MODEL)
    before = _snapshot(data_dir)
    layer_files = [paths.activations("enc"), paths.activations_sidecar("enc"), paths.embedding("enc"),
                   paths.embedding_meta("enc"), paths.reducer_cache("enc")]
    for f in layer_files:
        f.unlink()
    assert not cache.is_local(MODEL, "enc")
    assert cache.fetch_layer(MODEL, "enc") is True
    after = _snapshot(data_dir)
    assert after == {k: v for k, v in before.items() if not k.endswith("enc.pkl")}
    assert cache.is_local(MODEL, "enc")
    assert cache.in_bucket(MODEL, "enc") and not cache.in_bucket(MODEL, "dec")
    assert cache.fetch_layer(MODEL, "dec") is True  # already local: no bucket needed
    assert _warnings(caplog) == []


def _put_signed(client, name, key, body: bytes) -> None:
    """Replace an object with ``body`` and its correct sha256 (a consistent but bad upload)."""
    client.put_object(Bucket=name, Key=key, Body=body, Metadata={"sha256": hashlib.sha256(body).hexdigest()})


def _truncate_npy(client, name):
    body = client.get_object(Bucket=name, Key="m/activations/enc.npy")["Body"].read()
    _put_signed(client, name, "m/activations/enc.npy", body[:-40])


def _wrong_sidecar_shape(client, name):
    text = client.get_object(Bucket=name, Key="m/activations/enc.json")["Body"].read().decode()
    _put_signed(client, name, "m/activations/enc.json", text.replace('"N": 20', '"N": 21').encode())


def _checksum_mismatch(client, name):
    body = bytearray(client.get_object(Bucket=name, Key="m/embeddings/enc.csv")["Body"].read())
    body[-3] = ord("7") if body[-3] != ord("7") else ord("8")  # still a valid CSV, different numbers
    client.put_object(Bucket=name, Key="m/embeddings/enc.csv", Body=bytes(body), Metadata={"sha256": "0" * 64})


def _other_build(client, name):
    text = client.get_object(Bucket=name, Key="m/activations/enc.json")["Body"].read().decode()
    _put_signed(client, name, "m/activations/enc.json", text.replace('"seed": 0', '"seed": 5').encode())


def _map_rows_differ(client, name):
    lines = client.get_object(Bucket=name, Key="m/embeddings/enc.csv")["Body"].read().decode().splitlines()
    _put_signed(client, name, "m/embeddings/enc.csv", "\n".join(lines[:-1]).encode() + b"\n")


def _all_nan_npy(client, name):
    """The fault of issue 9 (7): an all-NaN .npy with a consistent sidecar and checksum."""
    import io

    body = client.get_object(Bucket=name, Key="m/activations/enc.npy")["Body"].read()
    acts = np.load(io.BytesIO(body))
    buf = io.BytesIO()
    np.save(buf, np.full_like(acts, np.nan))
    _put_signed(client, name, "m/activations/enc.npy", buf.getvalue())


def _no_checksum(client, name):
    body = client.get_object(Bucket=name, Key="m/activations/enc.npy")["Body"].read()
    client.put_object(Bucket=name, Key="m/activations/enc.npy", Body=body)


def _oversized_npy(client, name):
    body = client.get_object(Bucket=name, Key="m/activations/enc.npy")["Body"].read()
    _put_signed(client, name, "m/activations/enc.npy", body + b"\0" * (1 << 17))


@pytest.mark.parametrize("corrupt, reason", [
    (_truncate_npy, "truncated or corrupt"),
    (_wrong_sidecar_shape, "sidecar expects"),
    (_checksum_mismatch, "corrupt object"),
    (_other_build, "built with different seed"),
    (_map_rows_differ, "expected a header"),
    (_all_nan_npy, "NaN or infinite"),
    (_no_checksum, "no sha256 checksum"),
    (_oversized_npy, "oversized object"),
])
def test_corrupt_object_is_rejected_and_nothing_local_changes(data_dir, bucket, s3_endpoint, caplog, corrupt,
                                                              reason):
    client, name = bucket
    cache = LayerCache(data_dir, _settings(s3_endpoint, name))
    assert cache.upload_layer(MODEL, "enc", background=False) is True
    corrupt(client, name)
    model_paths(data_dir, MODEL).activations("enc").unlink()  # the layer is missing locally: read-through
    before = _snapshot(data_dir)
    assert cache.fetch_layer(MODEL, "enc") is False
    assert _snapshot(data_dir) == before  # nothing installed, no staging left behind
    [warning] = _warnings(caplog)
    assert "could not fetch m/enc" in warning and reason in warning and "continuing with local files" in warning
    assert cache.fetch_layer(MODEL, "enc") is False  # the same bad objects: not installed, not reported again
    assert _snapshot(data_dir) == before and len(_warnings(caplog)) == 1


def test_unreachable_endpoint_warns_once_and_keeps_working_locally(data_dir, caplog):
    cache = LayerCache(data_dir, _settings(f"http://127.0.0.1:{_free_port()}", "nowhere"))  # closed port
    model_paths(data_dir, MODEL).embedding("dec").unlink()
    before = _snapshot(data_dir)
    assert cache.fetch_layer(MODEL, "dec") is False
    assert cache.fetch_layer(MODEL, "dec") is False  # within the back-off: no second attempt, no second warning
    assert cache.upload_layer(MODEL, "enc", background=False) is False
    [warning] = _warnings(caplog)
    assert "EndpointConnectionError" in warning and "not trying the bucket again" in warning
    assert _snapshot(data_dir) == before


def test_timeout_is_one_warning(data_dir, caplog):
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        cache = LayerCache(data_dir, _settings(endpoint, "slow", read_timeout=0.5, max_attempts=1))
        model_paths(data_dir, MODEL).activations("dec").unlink()
        assert cache.fetch_layer(MODEL, "dec") is False
    [warning] = _warnings(caplog)
    assert "ReadTimeoutError" in warning and "could not fetch m/dec" in warning


def test_no_credentials_disables_the_bucket_with_one_warning(data_dir, monkeypatch, caplog):
    for var in ("R2_ACCOUNT_ID", "R2_ACCESS_KEY_ID", "R2_SECRET_ACCESS_KEY", "R2_BUCKET_NAME", "R2_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    cache = LayerCache(data_dir)
    assert not cache.enabled
    model_paths(data_dir, MODEL).activations("enc").unlink()
    assert cache.fetch_layer(MODEL, "enc") is False
    assert cache.upload_layer(MODEL, "dec", background=False) is False
    assert cache.fetch_layer(MODEL, "mid") is True  # local layers still work
    [warning] = _warnings(caplog)
    assert "no bucket configured" in warning and "R2_ACCESS_KEY_ID" in warning


def test_budget_evicts_least_recently_used_and_never_the_default(data_dir):
    paths = model_paths(data_dir, MODEL)
    cache = LayerCache(data_dir, settings=None, max_local_mb=1.0)
    for age, layer in enumerate(["dec", "mid", "enc"]):  # enc is used longest ago, then mid, then dec
        t = 1_000_000 - 1000 * age
        for f in cache._layer_files(paths, MODEL, layer):
            os.utime(f, (t, t))
    sizes = {layer: size for _, layer, size, _ in cache.local_layers()}
    assert set(sizes) == set(LAYERS)
    cache.max_local_bytes = sum(sizes.values()) - 1  # one layer must go
    assert cache.enforce_budget() == [(MODEL, "enc")]
    assert not paths.activations("enc").exists() and not paths.embedding("enc").exists()
    cache.touch(MODEL, "dec")
    cache.max_local_bytes = 1  # everything over budget: the default layer stays, protected layers stay
    assert cache.enforce_budget(protect=[(MODEL, "dec")]) == []
    assert cache.enforce_budget() == [(MODEL, "dec")]
    assert cache.is_local(MODEL, "mid")


def test_budget_from_environment(data_dir, monkeypatch):
    monkeypatch.setenv(BUDGET_ENV, "2.5")
    assert LayerCache(data_dir, settings=None).max_local_bytes == int(2.5 * 2**20)
    monkeypatch.setenv(BUDGET_ENV, "lots")
    with pytest.raises(ValueError, match=f"{BUDGET_ENV}='lots' is not a number"):
        LayerCache(data_dir, settings=None)
    monkeypatch.delenv(BUDGET_ENV)
    assert LayerCache(data_dir, settings=None).max_local_bytes is None


# ---- scripts/seed_layer_cache.py -------------------------------------------------------------

def _seed_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "seed_layer_cache.py"
    spec = importlib.util.spec_from_file_location("seed_layer_cache", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_seed_script_is_idempotent_and_has_a_dry_run(tiny_data_dir, bucket, s3_endpoint, monkeypatch, capsys):
    client, name = bucket
    for var, value in {"R2_ENDPOINT_URL": s3_endpoint, "R2_ACCESS_KEY_ID": "test", "R2_SECRET_ACCESS_KEY": "test",
                       "R2_BUCKET_NAME": name}.items():
        monkeypatch.setenv(var, value)
    seed = _seed_script()
    before = _snapshot(tiny_data_dir)  # a shared, read-only fixture: seeding a built layer only reads it
    args = ["--data-dir", str(tiny_data_dir), "--model", "digits", "--layer", "mid"]
    assert seed.main([*args, "--dry-run"]) == 0
    assert "digits/mid: missing" in capsys.readouterr().out and _keys(client, name) == []
    assert seed.main(args) == 0  # built already (the fixture's layer): only uploaded
    assert "digits/mid: uploaded" in capsys.readouterr().out
    assert _keys(client, name) == ["digits/activations/mid.json", "digits/activations/mid.npy",
                                   "digits/embeddings/mid.csv", "digits/embeddings/mid.json"]
    assert seed.main(args) == 0
    assert "digits/mid: present" in capsys.readouterr().out
    assert seed.main(["--data-dir", str(tiny_data_dir), "--model", "digits", "--layer", "nope"]) == 2
    assert "unknown layer 'nope' for model 'digits'; hookable layers: enc_16x16" in capsys.readouterr().err
    monkeypatch.delenv("R2_BUCKET_NAME")
    assert seed.main(args) == 2
    assert "no bucket configured; set R2_BUCKET_NAME" in capsys.readouterr().err
    assert _snapshot(tiny_data_dir) == before


# ---- the app's layer switch reads through the bucket --------------------------------------------

APP_MODEL, NEW_LAYER = "digits", "dec_4x4"  # a layer the tiny data folder does not have


@pytest.fixture(scope="module")
def local_backend(tiny_data_dir):
    """One backend shared by the visualizers below (each over its own data folder): it loads
    the digits weights once; which folder a request reads is the visualizer's business."""
    from diffviews.backends.local import LocalBackend

    return LocalBackend(tiny_data_dir, device="cpu")


def _app_data(tiny_data_dir, root):
    """A writable copy of the tiny digits folder (layer "mid" only) under ``root``."""
    import shutil

    shutil.copytree(tiny_data_dir / APP_MODEL, root / APP_MODEL)
    assert not model_paths(root, APP_MODEL).activations(NEW_LAYER).exists()
    return root


@pytest.mark.slow
def test_app_uploads_a_new_layer_and_another_host_fetches_it_instead_of_extracting(
        tiny_data_dir, bucket, s3_endpoint, tmp_path, caplog, local_backend):
    from unittest.mock import patch

    from diffviews.visualization.visualizer import GradioVisualizer

    client, name = bucket
    here = _app_data(tiny_data_dir, tmp_path / "here")
    cache = LayerCache(here, _settings(s3_endpoint, name))
    built = GradioVisualizer(here, local_backend, layer_cache=cache).layer(APP_MODEL, NEW_LAYER)  # extract + fit
    cache.wait()  # the upload runs in the background
    assert _keys(client, name) == [f"digits/activations/{NEW_LAYER}.json", f"digits/activations/{NEW_LAYER}.npy",
                                   f"digits/embeddings/{NEW_LAYER}.csv", f"digits/embeddings/{NEW_LAYER}.json"]
    assert cache.in_bucket(APP_MODEL, NEW_LAYER)

    there = _app_data(tiny_data_dir, tmp_path / "there")  # another host: the layer is only in the bucket
    other = GradioVisualizer(there, local_backend, layer_cache=LayerCache(there, _settings(s3_endpoint, name)))
    steps = []
    with patch("diffviews.visualization.gpu_ops._extract_layer_on_gpu", side_effect=AssertionError("extracted")), \
            patch("diffviews.visualization.gpu_ops.fit_umap", side_effect=AssertionError("fitted remotely")), \
            patch("diffviews.data.layers.fit_here", side_effect=AssertionError("fitted")):
        fetched = other.layer(APP_MODEL, NEW_LAYER, progress=lambda frac, desc=None: steps.append(desc))
    np.testing.assert_array_equal(fetched.embedding, built.embedding)
    np.testing.assert_array_equal(np.asarray(fetched.activations), np.asarray(built.activations))
    assert steps[0] == f"Looking for layer {NEW_LAYER} in the layer cache" and not any("Extracting" in s for s in steps)
    assert _warnings(caplog) == []


@pytest.mark.slow
def test_app_layer_switch_keeps_the_disk_budget_but_never_evicts_layers_in_memory(tiny_data_dir, tmp_path, caplog,
                                                                                  local_backend):
    from diffviews.visualization.visualizer import GradioVisualizer

    root = _app_data(tiny_data_dir, tmp_path)
    paths = model_paths(root, APP_MODEL)
    cache = LayerCache(root, settings=None, max_local_mb=0.001)  # no bucket; every layer is over budget
    vis = GradioVisualizer(root, local_backend, layer_cache=cache)
    vis.layer(APP_MODEL, NEW_LAYER)
    vis.layer(APP_MODEL, "enc_4x4")
    assert paths.activations(NEW_LAYER).is_file()  # over budget, but held in memory: kept
    fresh = GradioVisualizer(root, local_backend, layer_cache=cache)  # nothing in memory yet
    fresh.layer(APP_MODEL, "dec_8x8")
    assert not paths.activations(NEW_LAYER).exists() and not paths.embedding("enc_4x4").exists()  # evicted
    assert paths.activations("dec_8x8").is_file() and paths.activations("mid").is_file()  # new and default
    assert _warnings(caplog) == []  # a budget without a bucket is not worth a warning


def test_app_entry_points_create_the_layer_cache_from_the_environment(tiny_data_dir, bucket, s3_endpoint,
                                                                      monkeypatch, caplog, local_backend):
    from unittest.mock import patch

    from diffviews.hosting import make_visualizer
    from diffviews.visualization.app import main
    from diffviews.visualization.visualizer import GradioVisualizer

    made = []

    def capture(*args, **kwargs):  # the visualizer main() makes
        made.append(GradioVisualizer(*args, **kwargs))
        return made[-1]

    _, name = bucket
    for var in ("R2_ACCOUNT_ID", "R2_ACCESS_KEY_ID", "R2_SECRET_ACCESS_KEY", "R2_BUCKET_NAME", "R2_ENDPOINT_URL",
                BUDGET_ENV):
        monkeypatch.delenv(var, raising=False)
    with patch("diffviews.visualization.app.umap_warmup"):  # no JIT warm-up thread in the test process
        assert LayerCache.from_env(tiny_data_dir) is None
        assert make_visualizer(tiny_data_dir, local_backend).layer_cache is None

        monkeypatch.setenv(BUDGET_ENV, "50")
        budget_only = LayerCache.from_env(tiny_data_dir)
        assert not budget_only.enabled and budget_only.max_local_bytes == 50 * 2**20

        for var, value in {"R2_ENDPOINT_URL": s3_endpoint, "R2_ACCESS_KEY_ID": "test",
                           "R2_SECRET_ACCESS_KEY": "test", "R2_BUCKET_NAME": name}.items():
            monkeypatch.setenv(var, value)
        assert make_visualizer(tiny_data_dir, local_backend).layer_cache.settings.bucket == name
        with patch("diffviews.visualization.app.launch_app") as launch, \
                patch("diffviews.visualization.app.GradioVisualizer", side_effect=capture):
            assert main(["--data-dir", str(tiny_data_dir), "--device", "cpu"]) == 0
        launch.assert_called_once()
        cache = made[-1].layer_cache
        assert cache.settings.endpoint_url == s3_endpoint and cache.max_local_bytes == 50 * 2**20
    assert _warnings(caplog) == []
