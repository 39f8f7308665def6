"""The diffusers adapters on tiny random models of the real classes (offline, seconds).

Families: a DDPM pixel pipeline (epsilon, unconditional), a bare class-conditional pixel
UNet folder (DDIM, v-prediction), a consistency-model pipeline (CMStochasticIterative),
a DiT pipeline (latent, 1000 classes + null, learned sigma) and a Stable Diffusion
pipeline (latent, CLIP text encoder, prompts as classes).
"""

import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from diffviews.adapters import adapter_for_model, get_adapter, list_adapters
from diffviews.adapters.preconditioning import DiscreteVP, preconditioning_from_scheduler
from diffviews.bench.tiny_diffusers import TINY_FAMILIES, TINY_PROMPTS
from diffviews.core.extraction import extract_activations
from diffviews.core.generator import generate
from diffviews.core.hooks import ActivationMasker, run_with_cache

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

PROMPTS = TINY_PROMPTS
UNET_LAYERS = ["down_blocks.0", "down_blocks.1", "mid_block", "up_blocks.0", "up_blocks.1"]
#: family → its hookable layers
LAYERS = {"ddpm-eps": UNET_LAYERS, "bare-v": UNET_LAYERS, "consistency": UNET_LAYERS,
          "dit": [f"transformer_blocks.{i}" for i in range(3)], "sd": UNET_LAYERS}


@pytest.fixture(params=list(TINY_FAMILIES))
def family(request, tiny_diffusers_adapters):
    return request.param, tiny_diffusers_adapters[request.param]


def _pixels(adapter, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    size = (n, adapter.image_channels, adapter.image_resolution, adapter.image_resolution)
    return torch.rand(size, generator=g) * 2 - 1


def _model_input(adapter, n=2, seed=0):
    """Clean samples in model space (latents for latent models) and their labels."""
    return adapter.encode(_pixels(adapter, n, seed)), torch.arange(n) % adapter.num_classes


# ---- registry and loading ---------------------------------------------------------------------------

def test_registered_names_and_registry_does_not_import_diffusers():
    assert {"diffusers-unet", "dit", "sd-unet", "edm-demo"} <= set(list_adapters())
    code = "import sys, diffviews.adapters; assert not {'diffusers', 'transformers'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_family_detection_and_wrong_family_refused(tiny_diffusers_folders):
    for name, folder in tiny_diffusers_folders.items():
        assert adapter_for_model(folder) == TINY_FAMILIES[name][1]
    with pytest.raises(ValueError, match="UNet2DConditionModel.*use adapter 'sd-unet'"):
        get_adapter("diffusers-unet").from_pretrained(tiny_diffusers_folders["sd"])
    with pytest.raises(ValueError, match="needs a pipeline folder with transformer/, vae/"):
        get_adapter("dit").from_pretrained(tiny_diffusers_folders["bare-v"])
    with pytest.raises(ValueError, match="list of prompts"):
        get_adapter("sd-unet").from_pretrained(tiny_diffusers_folders["sd"])


def test_pickle_only_weights_are_refused_without_unpickling(tiny_diffusers_folders, tmp_path, monkeypatch):
    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load must never be called")

    monkeypatch.setattr(torch, "load", no_unpickling)
    pipe = tmp_path / "pipe"
    shutil.copytree(tiny_diffusers_folders["ddpm-eps"], pipe)
    for f in (pipe / "unet").glob("*.safetensors"):
        f.rename(f.with_name("diffusion_pytorch_model.bin"))
    with pytest.raises(ValueError, match=r"unet: weights exist only as pickle files \(diffusion_pytorch_model.bin\)"):
        get_adapter("diffusers-unet").from_pretrained(pipe)
    bare = tmp_path / "bare"
    shutil.copytree(tiny_diffusers_folders["bare-v"], bare)
    for f in bare.glob("*.safetensors"):
        f.rename(f.with_suffix(".bin"))
    with pytest.raises(ValueError, match=f"{bare}: weights exist only as pickle files"):
        get_adapter("diffusers-unet").from_checkpoint(bare)


def test_from_checkpoint_delegates_to_from_pretrained(tiny_diffusers_folders):
    a = get_adapter("dit").from_checkpoint(tiny_diffusers_folders["dit"], device="cpu")
    assert a.hookable_layers[0] == "transformer_blocks.0" and a.device == torch.device("cpu")


# ---- description, layers, shapes ---------------------------------------------------------------------

def test_hookable_layers_and_shapes(family):
    name, adapter = family
    assert adapter.hookable_layers == LAYERS[name]
    shapes = adapter.get_layer_shapes()
    assert list(shapes) == adapter.hookable_layers
    x, labels = _model_input(adapter, n=3)
    _, acts = run_with_cache(adapter, x, adapter.noise_level_to_native(50.0), labels)
    for layer, shape in shapes.items():
        assert tuple(acts[layer].shape) == (3, *shape)
    if name == "dit":  # token-shaped (tokens, C): 4x4 latents in 2x2 patches
        assert shapes["transformer_blocks.0"] == (4, 16)
    assert adapter.get_default_config()["default_layer"] in shapes


def test_unknown_layer_error_lists_the_layers(tiny_diffusers_adapters):
    adapter = tiny_diffusers_adapters["sd"]
    with pytest.raises(KeyError, match="unknown layer 'nope'.*down_blocks.0, down_blocks.1, mid_block, up_blocks.0"):
        generate(adapter, class_label=0, num_steps=2, masks={"nope": np.zeros((1, 1))}, mask_steps=1)


def test_latent_models_encode_and_decode_pixels(tiny_diffusers_adapters):
    for name in ("dit", "sd"):
        adapter = tiny_diffusers_adapters[name]
        assert (adapter.image_resolution, adapter.image_channels) == (8, 3) and adapter.resolution == 4
        z = adapter.encode(_pixels(adapter, 2))
        assert z.shape == (2, adapter.channels, 4, 4)
        img = adapter.decode(z)
        assert img.shape == (2, 3, 8, 8) and img.min() >= -1 and img.max() <= 1
    pixel = tiny_diffusers_adapters["ddpm-eps"]
    p = _pixels(pixel)
    assert pixel.encode(p) is p and pixel.decode(p) is p


# ---- noise ---------------------------------------------------------------------------------------------

def test_noise_level_sigma_round_trip_and_monotone_schedule(family):
    name, adapter = family
    levels = np.array([0.0, 10.0, 50.0, 90.0, 100.0])
    sigmas = adapter.noise_level_to_native(levels)
    assert sigmas[0] == pytest.approx(adapter.sigma_min) and sigmas[-1] == pytest.approx(adapter.sigma_max)
    assert np.all(np.diff(sigmas) > 0)
    np.testing.assert_allclose(adapter.native_to_noise_level(sigmas), levels, atol=1e-9)
    # linear in log-sigma: 50 % is the geometric mean of the range
    assert sigmas[2] == pytest.approx(np.sqrt(adapter.sigma_min * adapter.sigma_max))
    ts = adapter.get_timesteps(8, 90.0, 5.0).numpy()
    assert len(ts) == 9 and ts[-1] == 0 and np.all(np.diff(ts) < 0)
    assert ts[0] == pytest.approx(adapter.noise_level_to_native(90.0), rel=1e-5)
    if isinstance(adapter.precond, DiscreteVP):  # t <-> sigma over the discrete schedule
        t = adapter.precond.sigma_to_t(torch.as_tensor(sigmas))
        assert t[0] == pytest.approx(0) and t[-1] == pytest.approx(len(adapter.precond.sigmas) - 1)
        assert torch.all(t.diff() > 0)
        np.testing.assert_allclose(adapter.precond.t_to_sigma(t).numpy(), sigmas, rtol=1e-9)
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        adapter.noise_level_to_native(-1)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_discrete_preconditioning_recovers_x0_in_diffusers_conventions(prediction):
    """An oracle network that returns exactly what diffusers' own scheduler defines as its
    target (eps, v = get_velocity, x0) on diffusers' own noised input must give D(x) = x0."""
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(prediction_type=prediction)
    pre = preconditioning_from_scheduler(sched)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64), torch.randn(3, 2, 4, 4, generator=g,
                                                                                    dtype=torch.float64)
    t = torch.tensor([0, 317, 999])
    sigma = pre.sigmas[t]
    x = x0 + sigma.reshape(-1, 1, 1, 1) * eps
    target = {"epsilon": eps, "v_prediction": sched.get_velocity(x0, eps, t), "sample": x0}[prediction]

    def oracle(x_in, t_in):
        torch.testing.assert_close(x_in, sched.add_noise(x0, eps, t))  # the VP input diffusers trains on
        torch.testing.assert_close(t_in, t.float())
        return target

    torch.testing.assert_close(pre.denoise(oracle, x, sigma), x0)


def test_consistency_preconditioning_matches_the_scheduler():
    from diffusers import CMStochasticIterativeScheduler

    sched = CMStochasticIterativeScheduler(sigma_min=0.002, sigma_max=80.0, clip_denoised=False)
    pre = preconditioning_from_scheduler(sched)
    sigma = torch.tensor([0.002, 0.3, 5.0, 80.0], dtype=torch.float64)
    c_skip, c_out, c_in, t = pre.scalings(sigma)
    ref_skip, ref_out = sched.get_scalings_for_boundary_condition(sigma)
    torch.testing.assert_close((c_skip, c_out), (ref_skip, ref_out))
    torch.testing.assert_close(c_in, 1 / (sigma**2 + 0.25).sqrt())
    np.testing.assert_allclose(t.numpy(), sched.sigma_to_t(sigma.numpy()))
    assert (pre.sigma_min, pre.sigma_max) == (0.002, 80.0)


# ---- generation, masking, trajectories ----------------------------------------------------------------

def test_generate_mask_on_second_layer_changes_the_image_and_records_trajectories(family):
    name, adapter = family
    first, second = adapter.hookable_layers[:2]  # first: a tuple-returning down block or a token-shaped block
    kw = {"class_label": 1 % adapter.num_classes, "num_steps": 3, "seed": 3, "num_samples": 2,
          "guidance_scale": adapter.get_default_config()["default_guidance"]}
    plain = generate(adapter, extract_layers=[first], **kw)
    shape = adapter.get_layer_shapes()[second]
    mask = np.random.default_rng(0).normal(0, 3, (1, *shape)).astype(np.float32)
    masked = generate(adapter, masks={second: mask}, mask_steps=3, extract_layers=[first], **kw)
    res = adapter.image_resolution
    assert plain.images.shape == (2, res, res, 3) and plain.images.dtype == np.uint8
    assert plain.denoised.shape == plain.noised.shape == (3, 2, res, res, 3)
    assert not np.array_equal(plain.images, masked.images)
    again = generate(adapter, extract_layers=[first], **kw)
    np.testing.assert_array_equal(plain.images, again.images)
    # the layer before the mask sees the same input on the first step, then the trajectories part
    d = int(np.prod(adapter.get_layer_shapes()[first]))
    assert plain.trajectory[first].shape == (3, 2, d)
    np.testing.assert_allclose(plain.trajectory[first][0], masked.trajectory[first][0], rtol=1e-5, atol=1e-5)
    assert not np.allclose(plain.trajectory[first][1:], masked.trajectory[first][1:])


def test_holding_a_layer_at_its_recorded_activation_reproduces_the_output(family):
    name, adapter = family
    x0, labels = _model_input(adapter, n=1, seed=5)
    sigma = adapter.noise_level_to_native(60.0)
    x = adapter.add_noise(x0, sigma, torch.randn(x0.shape, generator=torch.Generator().manual_seed(1)))
    for layer in (adapter.hookable_layers[0], adapter.hookable_layers[2]):
        out, acts = run_with_cache(adapter, x, sigma, labels, [layer])
        with ActivationMasker(adapter, {layer: acts[layer]}), torch.no_grad():
            held = adapter.forward(x, sigma, labels)
        torch.testing.assert_close(held, out, rtol=1e-5, atol=1e-5)
        # a random change (a constant shift would vanish in a transformer's LayerNorms)
        other = acts[layer] + torch.randn(acts[layer].shape, generator=torch.Generator().manual_seed(2))
        with ActivationMasker(adapter, {layer: other}), torch.no_grad():
            moved = adapter.forward(x, sigma, labels)
        assert not torch.allclose(moved, out, atol=1e-4)  # the held value really is what flows on


def test_extraction_of_two_layers_at_two_noise_levels(family):
    name, adapter = family
    x0, labels = _model_input(adapter, n=3)
    layers = adapter.hookable_layers[1:3]
    acts = extract_activations(adapter, x0.numpy(), labels.numpy(), [80.0, 30.0], layers, seed=0, batch_size=2)
    shapes = adapter.get_layer_shapes()
    for layer in layers:
        assert acts[layer].shape == (6, int(np.prod(shapes[layer]))) and acts[layer].dtype == np.float32
        assert np.isfinite(acts[layer]).all() and not np.allclose(acts[layer][:3], acts[layer][3:])
    again = extract_activations(adapter, x0.numpy(), labels.numpy(), [80.0, 30.0], layers, seed=0, batch_size=3)
    np.testing.assert_allclose(acts[layers[0]], again[layers[0]], rtol=1e-5, atol=1e-5)


# ---- conditioning ----------------------------------------------------------------------------------------

def test_cfg_in_one_batched_pass_with_the_null_class(tiny_diffusers_adapters):
    for name in ("dit", "sd"):
        adapter = tiny_diffusers_adapters[name]
        assert adapter.supports_cfg and adapter.null_class == adapter.num_classes
        x0, labels = _model_input(adapter, n=2)
        sigma = adapter.noise_level_to_native(50.0)
        x = adapter.add_noise(x0, sigma, torch.randn_like(x0))
        with torch.no_grad():
            cond = adapter.forward(x, sigma, labels)
            uncond = adapter.forward(x, sigma, torch.full_like(labels, adapter.null_class))
            guided = adapter.forward_with_cfg(x, sigma, labels, 3.0)
        torch.testing.assert_close(guided, uncond + 3.0 * (cond - uncond), rtol=1e-4, atol=1e-5)
        assert not torch.allclose(cond, uncond)


def test_pixel_unet_conditioning_without_a_null_class(tiny_diffusers_adapters):
    uncond = tiny_diffusers_adapters["ddpm-eps"]
    assert uncond.conditioning_type == "none" and uncond.class_names == ["unconditional"]
    cond = tiny_diffusers_adapters["consistency"]
    assert cond.conditioning_type == "class" and cond.num_classes == 4 and not cond.supports_cfg
    assert cond.get_default_config()["default_guidance"] == 1.0 and cond.get_default_config()["default_steps"] == 4
    x0, labels = _model_input(cond, n=2)
    with torch.no_grad():  # guidance is unavailable: the conditional pass alone
        torch.testing.assert_close(cond.forward_with_cfg(x0, 1.0, labels, 5.0), cond.forward(x0, 1.0, labels))
    with pytest.raises(ValueError, match=r"no unconditional \(null\) class; choose a class within \[0, 3\]"):
        generate(cond, class_label=None, num_steps=2)


def test_sd_prompts_are_the_classes_and_embeddings_are_cached(tiny_diffusers_adapters):
    sd = tiny_diffusers_adapters["sd"]
    assert sd.class_names == PROMPTS and sd.num_classes == 2
    emb = sd.prompt_embeddings
    assert emb.shape[0] == 3  # the two prompts and the empty (null) prompt
    assert not torch.allclose(emb[0], emb[1]) and not torch.allclose(emb[0], emb[2])
    assert sd.get_default_config()["prompts"] == PROMPTS


def test_extraction_throughput_per_family_runs(tmp_path):
    from diffviews.bench.extraction_families import FAMILY_MODELS, measure

    result = measure(num_images=4, batch_size=2, repeats=1, root=tmp_path)
    assert set(result) == set(FAMILY_MODELS) and all(v > 0 for v in result.values())


def test_dit_saved_as_legacy_transformer2d_loads_with_the_same_weights(tmp_path):
    """The Hub's DiT checkpoints name their transformer Transformer2DModel (ada_norm_zero)."""
    from diffusers import DDIMScheduler, DiTPipeline, Transformer2DModel

    from diffviews.bench.tiny_diffusers import tiny_vae

    torch.manual_seed(0)
    legacy = Transformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                num_layers=2, sample_size=4, patch_size=2, num_embeds_ada_norm=1000,
                                norm_type="ada_norm_zero", activation_fn="gelu-approximate").eval()
    DiTPipeline(transformer=legacy, vae=tiny_vae(), scheduler=DDIMScheduler()).save_pretrained(
        tmp_path, safe_serialization=True)
    assert adapter_for_model(tmp_path) == "dit"
    adapter = get_adapter("dit").from_pretrained(tmp_path)
    x, t, y = torch.randn(2, 4, 4, 4), torch.tensor([10.0, 500.0]), torch.tensor([3, 1000])
    with torch.no_grad():
        torch.testing.assert_close(adapter.net(x, timestep=t, class_labels=y, return_dict=False)[0],
                                   legacy(x, timestep=t, class_labels=y, return_dict=False)[0])
