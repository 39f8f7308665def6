"""Hooks, sampler, generate(), masks: on the real bundled digits model (small and fast)."""

import numpy as np
import pytest
import torch

from diffviews.adapters import EDMDemoAdapter, get_adapter, list_adapters, register_adapter
from diffviews.adapters.base import GeneratorAdapter
from diffviews.core.extraction import extract_activations
from diffviews.core.generator import generate
from diffviews.core.hooks import ActivationExtractor, ActivationMasker, run_with_cache
from diffviews.core.masking import compute_mask_dict, split_layers
from diffviews.demo import weights_path


@pytest.fixture(scope="module")
def adapter():
    return get_adapter("edm-demo").from_checkpoint(weights_path("digits"), device="cpu")


def _hook_count(adapter) -> int:
    return sum(len(m._forward_hooks) for m in adapter.hook_points.values())


def _batch(adapter, b=2):
    size = (b, adapter.channels, adapter.resolution, adapter.resolution)
    x = torch.randn(size, generator=torch.Generator().manual_seed(0))
    return x, torch.arange(b) % adapter.num_classes


# ---- registry -----------------------------------------------------------------------------

def test_registry_lists_demo_adapter_and_names_unknown():
    assert "edm-demo" in list_adapters()
    with pytest.raises(KeyError, match="unknown adapter 'nope'.*edm-demo"):
        get_adapter("nope")


def test_register_adapter_rejects_non_adapters_and_accepts_subclasses():
    with pytest.raises(TypeError, match="GeneratorAdapter subclass"):
        register_adapter("bad", dict)

    @register_adapter("edm-demo-alias")
    class Alias(EDMDemoAdapter):
        pass

    assert get_adapter("edm-demo-alias") is Alias
    assert issubclass(Alias, GeneratorAdapter)


# ---- adapter ------------------------------------------------------------------------------

def test_noise_level_round_trip_and_range(adapter):
    levels = np.array([0.0, 12.5, 50.0, 99.0, 100.0])
    native = adapter.noise_level_to_native(levels)
    assert native[0] == pytest.approx(adapter.sigma_min) and native[-1] == pytest.approx(adapter.sigma_max)
    assert np.all(np.diff(native) > 0)
    np.testing.assert_allclose(adapter.native_to_noise_level(native), levels, atol=1e-9)
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        adapter.noise_level_to_native(101)


def test_timesteps_run_from_noise_max_to_clean(adapter):
    sig = adapter.get_timesteps(10, noise_max=80, noise_min=10)
    assert len(sig) == 11 and sig[-1] == 0
    assert sig[0].item() == pytest.approx(adapter.noise_level_to_native(80.0), rel=1e-5)
    assert sig[-2].item() == pytest.approx(adapter.noise_level_to_native(10.0), rel=1e-4)
    assert torch.all(sig[:-1] > sig[1:])
    with pytest.raises(ValueError, match="greater than"):
        adapter.get_timesteps(10, noise_max=10, noise_min=20)


def test_layer_shapes_cover_every_resolution(adapter):
    shapes = adapter.get_layer_shapes()
    assert list(shapes) == adapter.hookable_layers
    assert {"enc_16x16", "enc_8x8", "enc_4x4", "bottleneck", "mid", "dec_16x16"} <= set(shapes)
    assert shapes["enc_16x16"][1:] == (16, 16) and shapes["mid"][1:] == (4, 4)


def test_forward_with_cfg_matches_two_separate_passes(adapter):
    x, y = _batch(adapter, 3)
    sigma = adapter.noise_level_to_native(60.0)
    with torch.no_grad():
        guided = adapter.forward_with_cfg(x, sigma, y, 3.0)
        cond = adapter.forward(x, sigma, y)
        uncond = adapter.forward(x, sigma, torch.full_like(y, adapter.null_class))
    torch.testing.assert_close(guided, uncond + 3.0 * (cond - uncond), rtol=1e-4, atol=1e-4)


# ---- hooks --------------------------------------------------------------------------------

def test_extractor_records_and_removes_hooks(adapter):
    x, y = _batch(adapter)
    with ActivationExtractor(adapter, ["mid", "enc_8x8"]) as ex, torch.no_grad():
        assert _hook_count(adapter) == 2
        adapter.forward(x, 1.0, y)
    assert _hook_count(adapter) == 0
    acts = ex.get_activations()
    assert acts["mid"].shape == (2, *adapter.get_layer_shapes()["mid"])
    assert acts["enc_8x8"].shape[0] == 2


def test_hooks_removed_after_error(adapter):
    with pytest.raises(RuntimeError, match="boom"):
        with ActivationExtractor(adapter, ["mid"]), ActivationMasker(adapter, {"bottleneck": np.zeros((1, 64, 4, 4))}):
            assert _hook_count(adapter) == 2
            raise RuntimeError("boom")
    assert _hook_count(adapter) == 0


def test_unknown_layer_names_the_known_ones(adapter):
    with pytest.raises(KeyError, match="unknown layer 'nope'.*mid"):
        ActivationExtractor(adapter, ["nope"])


def test_masker_replaces_and_blends(adapter):
    x, y = _batch(adapter)
    shape = adapter.get_layer_shapes()["mid"]
    target = np.full((1, *shape), 0.5, dtype=np.float32)
    with ActivationExtractor(adapter, ["mid"]) as plain, torch.no_grad():
        adapter.forward(x, 1.0, y)
    own = plain.get_activations()["mid"]
    for alpha in (1.0, 0.25):
        with ActivationMasker(adapter, {"mid": target}, alpha=alpha), ActivationExtractor(adapter, ["mid"]) as ex:
            with torch.no_grad():
                adapter.forward(x, 1.0, y)
        expected = (1 - alpha) * own + alpha * torch.from_numpy(target)
        torch.testing.assert_close(ex.get_activations()["mid"], expected.expand_as(own), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"alpha must be within \[0, 1\]"):
        ActivationMasker(adapter, {"mid": target}, alpha=1.5)
    with pytest.raises(ValueError, match="expected \\(1, 64, 4, 4\\)"):
        ActivationMasker(adapter, {"mid": np.zeros((1, 3, 4, 4))})


def test_run_with_cache_returns_every_layer(adapter):
    x, y = _batch(adapter)
    out, cache = run_with_cache(adapter, x, 2.0, y)
    assert out.shape == x.shape and set(cache) == set(adapter.hookable_layers)
    assert _hook_count(adapter) == 0


# ---- generate -----------------------------------------------------------------------------

def test_generate_shapes_and_trajectory(adapter):
    r = generate(adapter, class_label=3, num_steps=6, guidance_scale=2.0, seed=1, num_samples=3,
                 extract_layers=["mid"])
    h = adapter.resolution
    assert r.images.shape == (3, h, h, 1) and r.images.dtype == np.uint8
    assert r.denoised.shape == (6, 3, h, h, 1) and r.noised.shape == (6, 3, h, h, 1)
    assert r.trajectory["mid"].shape == (6, 3, int(np.prod(adapter.get_layer_shapes()["mid"])))
    assert r.sigmas.shape == (7,) and r.sigmas[-1] == 0 and r.noise_levels[0] == pytest.approx(100.0)
    assert r.num_steps == 6 and r.params["seed"] == 1
    # batch > 1: samples differ from each other
    assert not np.array_equal(r.images[0], r.images[1])
    assert _hook_count(adapter) == 0


def test_same_seed_same_image_other_seed_other_image(adapter):
    kw = dict(class_label=5, num_steps=8, guidance_scale=2.0, noise_mode="stochastic")
    a, b, c = (generate(adapter, seed=s, **kw).images for s in (7, 7, 8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_every_noise_mode_is_honoured(adapter):
    kw = dict(class_label=2, num_steps=8, guidance_scale=2.0, seed=3)
    out = {m: generate(adapter, noise_mode=m, **kw) for m in ("stochastic", "fixed", "zero")}
    finals = {m: r.images for m, r in out.items()}
    assert not np.array_equal(finals["stochastic"], finals["fixed"])
    assert not np.array_equal(finals["stochastic"], finals["zero"])
    assert not np.array_equal(finals["fixed"], finals["zero"])
    # all three start from the same initial noise: the first denoised estimate is identical
    np.testing.assert_array_equal(out["stochastic"].denoised[0], out["zero"].denoised[0])
    with pytest.raises(ValueError, match="unknown noise mode 'bogus'.*stochastic, fixed, zero"):
        generate(adapter, noise_mode="bogus", **kw)


def test_mask_steps_limit_the_masking_window(adapter):
    shape = adapter.get_layer_shapes()["mid"]
    target = np.random.default_rng(0).normal(size=(1, *shape)).astype(np.float32)
    kw = dict(class_label=1, num_steps=6, guidance_scale=1.0, seed=2, noise_mode="zero",
              masks={"mid": target}, extract_layers=["mid"])
    r = generate(adapter, mask_steps=2, **kw)
    flat = target.reshape(-1)
    for step in range(6):
        held = np.allclose(r.trajectory["mid"][step, 0], flat, atol=1e-5)
        assert held == (step < 2), f"step {step}: mask {'missing' if step < 2 else 'still held'}"
    unmasked = generate(adapter, mask_steps=0, **kw)
    assert not np.array_equal(r.images, unmasked.images)
    with pytest.raises(ValueError, match=r"mask_steps must be an integer within \[0, 6\]"):
        generate(adapter, mask_steps=7, **kw)


def test_generate_validates_parameters(adapter):
    with pytest.raises(ValueError, match=r"class_label must be an integer within \[0, 9\]"):
        generate(adapter, class_label=10, num_steps=2)
    with pytest.raises(ValueError, match="num_steps"):
        generate(adapter, class_label=0, num_steps=0)
    with pytest.raises(KeyError, match="unknown layer"):
        generate(adapter, class_label=0, num_steps=2, extract_layers=["nope"])


# ---- extraction and masks -------------------------------------------------------------------

def test_extraction_really_noises_and_is_seeded(adapter):
    images = np.zeros((4, 1, 16, 16), dtype=np.float32)
    labels = np.array([0, 1, 2, 3])
    a = extract_activations(adapter, images, labels, [80.0, 20.0], ["mid"], seed=0, batch_size=3)
    b = extract_activations(adapter, images, labels, [80.0, 20.0], ["mid"], seed=0)
    assert a["mid"].shape == (8, 1024) and a["mid"].dtype == np.float32
    np.testing.assert_allclose(a["mid"], b["mid"], atol=1e-4)  # batch size only changes rounding
    assert not np.allclose(a["mid"][:4], a["mid"][4:])  # levels differ
    with pytest.raises(ValueError, match=r"expected \(N, 1, 16, 16\)"):
        extract_activations(adapter, np.zeros((2, 3, 16, 16), np.float32), labels[:2], [50.0], ["mid"])


def test_extraction_stops_after_the_last_recorded_layer(adapter):
    images = np.random.default_rng(1).uniform(-1, 1, size=(6, 1, 16, 16)).astype(np.float32)
    labels = np.arange(6) % 10
    calls = {"enc_16x16": 0, "dec_16x16": 0}
    hooks = [adapter.get_layer_module(name).register_forward_hook(
        lambda m, i, o, name=name: calls.__setitem__(name, calls[name] + 1)) for name in calls]
    try:
        got = extract_activations(adapter, images, labels, [60.0], ["enc_16x16"], seed=0, batch_size=2)
    finally:
        for h in hooks:
            h.remove()
    # the first batch runs whole (to check each layer runs once); the other two stop after enc_16x16
    assert calls == {"enc_16x16": 3, "dec_16x16": 1}
    assert _hook_count(adapter) == 0
    # the same activations as a whole forward pass records
    x0 = torch.from_numpy(images)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    sigma = adapter.noise_level_to_native(60.0)
    with torch.no_grad(), ActivationExtractor(adapter, ["enc_16x16"]) as ex:
        for start in range(0, 6, 2):
            adapter.forward(adapter.add_noise(x0[start:start + 2], sigma, eps[start:start + 2]), sigma,
                            torch.from_numpy(labels[start:start + 2]))
            np.testing.assert_array_equal(got["enc_16x16"][start:start + 2],
                                          ex.get_activations()["enc_16x16"].flatten(1).numpy())


def test_compute_mask_dict_is_the_neighbour_mean():
    rng = np.random.default_rng(0)
    shapes = {"a": (2, 2, 2), "b": (3, 1, 1)}
    acts = rng.normal(size=(10, 11)).astype(np.float32)
    masks = compute_mask_dict(acts, [1, 4, 7], shapes)
    assert masks["a"].shape == (1, 2, 2, 2) and masks["b"].shape == (1, 3, 1, 1)
    np.testing.assert_allclose(masks["a"].reshape(-1), acts[[1, 4, 7], :8].mean(0), rtol=1e-6)
    per_layer = split_layers(acts, shapes)
    np.testing.assert_array_equal(compute_mask_dict(per_layer, [1, 4, 7], shapes)["b"], masks["b"])
    with pytest.raises(IndexError, match=r"out of range \[0, 9\]"):
        compute_mask_dict(acts, [3, 12], shapes)
    with pytest.raises(ValueError, match="no neighbours"):
        compute_mask_dict(acts, [], shapes)
    with pytest.raises(ValueError, match=r"expected \(N, 11\)"):
        compute_mask_dict(acts[:, :5], [0], shapes)
