"""Real model families end to end, offline, on tiny random models of the real diffusers classes:
``diffviews build`` (from an image folder and from the model's own samples), then the app over
that data folder with a LocalBackend, through the plain callbacks: hover, select, KNN, masked
generation, trajectory on the map, a layer switch (extracted on demand) and exports.
Also the build's refusals of bad input and its resumption of an interrupted build."""

from __future__ import annotations

import json
import logging
import shutil
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffviews import cli
from diffviews.data.layout import load_config, model_paths
from diffviews.data.metadata import load_metadata

pytest.importorskip("diffusers")

NOISE = ["--noise-levels", "80", "40"]
#: family (a tiny_diffusers_folders key) → --classes for the image folder (cat/, dog/) and for --generate
FAMILIES = {
    "ddpm-eps": ([], []),  # unconditional: the folders only group the images
    "dit": (["cat=3", "dog=5"], ["3", "5"]),
    "sd": (["cat=a photo of a cat", "dog=a photo of a dog"], ["a red square", "a blue circle"]),
}
SLOW = {"dit", "sd"}


def family_params():
    return [pytest.param(f, marks=pytest.mark.slow) if f in SLOW else f for f in FAMILIES]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """2 classes × 3 images of different sizes and modes (resized and centre-cropped by the build)."""
    root = tmp_path_factory.mktemp("images") / "pets"
    rng = np.random.default_rng(0)
    for c, cls in enumerate(("cat", "dog")):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            arr = rng.integers(0, 256, (12 + 5 * i, 10 + 3 * c, 3), dtype=np.uint8)
            arr[..., c] = 255  # the classes differ in colour
            Image.fromarray(arr).convert("L" if i == 2 else "RGB").save(root / cls / f"{i}.{'png' if i else 'jpg'}")
    (root / "cat" / "notes.txt").write_text("not an image: ignored")
    return root


class Built(dict):
    """family → data dir with folders ``<family>`` (from the image folder) and ``<family>-gen``
    (generated), built on first use."""

    def __init__(self, build):
        super().__init__()
        self._build = build

    def __missing__(self, family: str) -> Path:
        self[family] = self._build(family)
        return self[family]


@pytest.fixture(scope="module")
def built(tiny_diffusers_folders, image_folder, tmp_path_factory) -> Built:
    def build(family: str) -> Path:
        img_classes, gen_classes = FAMILIES[family]
        data = tmp_path_factory.mktemp(f"data-{family}")
        model = str(tiny_diffusers_folders[family])
        argv = ["build", "--model", model, "--data-dir", str(data), *NOISE, "-q"]
        assert cli.main([*argv, "--name", family, "--images", str(image_folder),
                         *(["--classes", *img_classes] if img_classes else [])]) == 0
        assert cli.main([*argv, "--name", f"{family}-gen", "--generate", "3", "--batch-size", "2",
                         *(["--classes", *gen_classes] if gen_classes else [])]) == 0
        return data

    return Built(build)


# ---- build -----------------------------------------------------------------------------------

@pytest.mark.parametrize("family", family_params())
def test_build_writes_the_data_layout_for_each_family(built, tiny_diffusers_folders, family):
    data = built[family]
    paths = model_paths(data, family)
    config = load_config(paths)
    md = load_metadata(paths)
    assert config["adapter"] == {"ddpm-eps": "diffusers-unet", "dit": "dit", "sd": "sd-unet"}[family]
    assert Path(config["checkpoint"]) == Path(tiny_diffusers_folders[family]).resolve()
    assert config["noise_levels"] == [80.0, 40.0] and config["native_noise_name"] == "sigma"
    assert config["source"]["kind"] == "images"
    assert len(md) == 12 and md.noise_levels == [80.0, 40.0]
    assert list(md.class_name[:6]) == [config["class_names"][0]] * 3 + [config["class_names"][1]] * 3
    expected_names = {"ddpm-eps": ["cat", "dog"], "dit": ["cat", "dog"],
                      "sd": ["a photo of a cat", "a photo of a dog"]}[family]
    assert config["class_names"] == expected_names
    if family == "dit":
        assert config["class_ids"] == [3, 5]
    if family == "sd":
        assert config["prompts"] == expected_names
    images = sorted(paths.images.glob("*.png"))
    assert len(images) == 6
    with Image.open(images[0]) as im:  # resized / cropped to the model's image size (pixels, also for latents)
        assert im.size == (config["resolution"],) * 2 == (8, 8) and im.mode == "RGB"
    acts = np.load(paths.activations(config["default_layer"]))
    assert acts.shape[0] == 12 and np.isfinite(acts).all()
    emb = np.loadtxt(paths.embedding(config["default_layer"]), delimiter=",", skiprows=1)
    assert emb.shape[0] == 12 and np.isfinite(emb).all()

    gen = model_paths(data, f"{family}-gen")
    gconfig = load_config(gen)
    assert gconfig["source"]["kind"] == "generate" and gconfig["source"]["per_class"] == 3
    n_classes = 1 if family == "ddpm-eps" else 2
    assert len(load_metadata(gen)) == 3 * n_classes * 2
    assert len(list(gen.images.glob("*.png"))) == 3 * n_classes


def test_build_demo_is_the_demo_case_of_build(tmp_path, capsys):
    """``build --model digits`` (its bundled dataset) writes what ``build-demo`` writes."""
    small = ["--num-samples", "20", *NOISE, "-q"]
    assert cli.main(["build-demo", "--data-dir", str(tmp_path / "a"), "--models", "digits", *small]) == 0
    assert cli.main(["build", "--model", "digits", "--data-dir", str(tmp_path / "b"), *small]) == 0
    a, b = model_paths(tmp_path / "a", "digits"), model_paths(tmp_path / "b", "digits")
    assert a.config.read_text() == b.config.read_text()
    assert a.metadata.read_text() == b.metadata.read_text()
    assert np.array_equal(np.load(a.activations("mid")), np.load(b.activations("mid")))


def test_interrupted_build_resumes_and_skips_what_is_done(tiny_diffusers_folders, image_folder, tmp_path, caplog,
                                                        monkeypatch):
    model = str(tiny_diffusers_folders["ddpm-eps"])
    argv = ["build", "--model", model, "--name", "m", "--data-dir", str(tmp_path), *NOISE]  # not quiet: logged
    assert cli.main([*argv, "--images", str(image_folder), "--layers", "mid_block", "up_blocks.0"]) == 0
    paths = model_paths(tmp_path, "m")
    before = np.load(paths.activations("mid_block"))
    # an interrupted build: one image, one layer's activations and the other's map are gone
    paths.image(4).unlink()
    paths.activations("mid_block").unlink()
    paths.embedding("up_blocks.0").unlink()
    caplog.set_level(logging.INFO, logger="diffviews")
    assert cli.main([*argv, "--images", str(image_folder), "--layers", "mid_block", "up_blocks.0"]) == 0
    log = caplog.text
    assert "config.json: up to date, skipped" in log and "metadata.csv: up to date" in log
    assert "wrote 1 of 6 PNGs" in log
    assert "activations/mid_block.npy: extracted" in log and "activations/up_blocks.0.npy: up to date" in log
    assert "embeddings/up_blocks.0.csv: fitted" in log
    assert np.array_equal(np.load(paths.activations("mid_block")), before)

    # generated samples already on disk are not generated again
    gen = [*argv[:4], "gen", *argv[5:], "--generate", "2"]
    assert cli.main(gen) == 0
    gpaths = model_paths(tmp_path, "gen")
    gpaths.activations("mid_block").unlink()
    import diffviews.core.generator as generator

    monkeypatch.setattr(generator, "generate", lambda *a, **k: pytest.fail("generated again"))
    assert cli.main(gen) == 0
    assert gpaths.activations("mid_block").is_file()


# ---- bad input -------------------------------------------------------------------------------

def _bad_folder(tmp_path: Path, image_folder: Path, what: str) -> Path:
    root = tmp_path / what
    shutil.copytree(image_folder, root)
    if what == "unreadable":
        (root / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    elif what == "empty-class":
        (root / "bird").mkdir()
    return root


@pytest.mark.parametrize("case, expect", [
    ("unknown-layer", ["unknown layer 'nope'", "hookable layers: down_blocks.0, down_blocks.1, mid_block"]),
    ("unreadable", ["cannot read image", "broken.png"]),
    ("empty-class", ["class folder", "bird", "holds no images"]),
    ("no-folder", ["image folder", "does not exist"]),
    ("missing-class", ["class 'fish' from --classes has no images"]),
    ("fp16-on-cpu", ["--dtype fp16 runs only on a CUDA device"]),
    ("no-source", ["--images FOLDER, --images-csv FILE or --generate N"]),
    ("dit-unknown-class", ["class 'cat' is neither a class id 0..999 nor a class name", "--classes LABEL=ID"]),
    ("sd-generate-without-prompts", ["text-conditioned: give the prompts to generate with --classes"]),
])
def test_build_refuses_bad_input_naming_it(tiny_diffusers_folders, image_folder, tmp_path, capsys, case, expect):
    family = {"dit-unknown-class": "dit", "sd-generate-without-prompts": "sd"}.get(case, "ddpm-eps")
    argv = ["build", "--model", str(tiny_diffusers_folders[family]), "--name", "m", "--data-dir",
            str(tmp_path / "data"), *NOISE, "-q"]
    images = ["--images", str(image_folder)]
    extra = {
        "unknown-layer": [*images, "--layers", "nope"],
        "unreadable": ["--images", str(_bad_folder(tmp_path, image_folder, "unreadable"))],
        "empty-class": ["--images", str(_bad_folder(tmp_path, image_folder, "empty-class"))],
        "no-folder": ["--images", str(tmp_path / "nowhere")],
        "missing-class": [*images, "--classes", "cat", "fish"],
        "fp16-on-cpu": [*images, "--dtype", "fp16"],
        "no-source": [],
        "dit-unknown-class": images,
        "sd-generate-without-prompts": ["--generate", "2"],
    }[case]
    rc = cli.main([*argv, *extra])
    err = capsys.readouterr().err
    assert rc == cli.USAGE_ERROR, err
    for part in expect:
        assert part in err, err
    assert not (tmp_path / "data" / "m" / "activations").exists()


def test_build_refuses_an_unsupported_model_folder(tmp_path, capsys):
    folder = tmp_path / "video"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "UNet3DConditionModel"}))
    rc = cli.main(["build", "--model", str(folder), "--name", "v", "--data-dir", str(tmp_path), "--generate", "1",
                   "-q"])
    err = capsys.readouterr().err
    assert rc == cli.USAGE_ERROR and "not a supported diffusers family" in err and "UNet3DConditionModel" in err
    rc = cli.main(["build", "--model", "no/such/model", "--name", "v", "--data-dir", str(tmp_path), "--generate",
                   "1", "-q"])
    assert rc == cli.USAGE_ERROR and "neither a local folder nor a Hub id" in capsys.readouterr().err


def test_images_csv_rows_with_errors_are_named_by_line(tiny_diffusers_folders, image_folder, tmp_path, capsys):
    good = [f"{p.relative_to(image_folder).as_posix()},{p.parent.name}" for p in sorted(image_folder.glob("*/*.*"))
            if p.suffix != ".txt"]
    model = str(tiny_diffusers_folders["ddpm-eps"])

    def build_from(rows: list[str], header: str = "path,label") -> tuple[int, str]:
        csv = image_folder / "list.csv"
        csv.write_text("\n".join([header, *rows]) + "\n")
        try:
            rc = cli.main(["build", "--model", model, "--name", "c", "--data-dir", str(tmp_path), "--images-csv",
                           str(csv), *NOISE, "-q"])
            return rc, capsys.readouterr().err
        finally:
            csv.unlink()

    rc, err = build_from([*good[:2], "cat/missing.png,cat", *good[2:]])
    assert rc == 2 and "line 4: image file" in err and "missing.png not found" in err
    rc, err = build_from([good[0], "cat/0.jpg,"])
    assert rc == 2 and "line 3: empty label" in err
    rc, err = build_from(good, header="file,class")
    assert rc == 2 and "line 1: header lacks column(s) path, label" in err
    rc, err = build_from(good)
    assert rc == 0, err
    assert load_config(model_paths(tmp_path, "c"))["class_names"] == ["cat", "dog"]


# ---- the app on the built folders ---------------------------------------------------------------

def _ok(out: dict) -> dict:
    assert "Error" not in str(out.get("status", "")), out.get("status")
    return out


def _app_flow(data: Path, name: str) -> None:
    from diffviews.backends.local import LocalBackend
    from diffviews.visualization import callbacks as cb
    from diffviews.visualization.visualizer import GradioVisualizer

    vis = GradioVisualizer(data, backend=LocalBackend(data, device="cpu"), default_model=name)
    config = load_config(model_paths(data, name))
    state = cb.initial_session(vis, name)
    md = vis.model(name)
    assert md.class_names == config["class_names"] and md.noise_symbol == "σ"
    assert state.layer == config["default_layer"] and len(md.hookable_layers) >= 2

    out = cb.hover(vis, state, json.dumps({"kind": "hover", "points": [{"i": 4, "m": "pts"}]}))
    assert out["preview_image"].shape == (256, 256, 3) and "σ =" in out["preview_info"]
    state, out = cb.select_point(vis, state, 1)
    _ok(out)
    assert state.selected == 1 and out["selected_image"] is not None
    for space in cb.KNN_SPACES:
        state, out = cb.suggest_knn(vis, state, 4, space)
        _ok(out)
        assert len(state.knn) == 4 and 1 not in state.knn

    defaults = cb._defaults(vis, name)
    args = dict(class_choice=cb.FROM_SELECTION, steps=3, mask_steps=3, alpha=1.0, guidance=defaults["gen_guidance"],
                noise_max=100.0, noise_min=0.0, noise_mode="fixed", seed=3, num_samples=1)
    plain, out = cb.generate(vis, replace(state, manual=(), knn=(), knn_dist=()), *args.values())
    _ok(out)
    masked, out = cb.generate(vis, state, *args.values())
    _ok(out)
    a, b = (vis.generations.get(s.active) for s in (plain, masked))
    assert a.result.images.shape == (1, 8, 8, 3)
    assert not np.array_equal(a.result.denoised, b.result.denoised), "masking changed nothing"
    coords = vis.trajectory_coords(b, "2-D")
    assert coords.shape == (3, 1, 2) and np.isfinite(coords).all()
    assert "σ=" in out["steps_gallery"][0][1]

    second = next(layer for layer in md.hookable_layers if layer != state.layer)
    assert not vis.layer_is_built(name, second)
    state, out = cb.switch_layer(vis, masked, second)
    _ok(out)
    assert state.layer == second and "extracted and mapped now" in out["status"]
    assert md.paths.activations(second).is_file()

    state, out = cb.select_point(vis, state, 2)
    state, out = cb.suggest_knn(vis, state, 3, "map")
    state, out = cb.export_selection(vis, state)
    _ok(out)
    with zipfile.ZipFile(out["export_file"]) as z:
        assert {"points.csv", "selection.json"} <= set(z.namelist())
    state, out = cb.export_generation(vis, masked)
    _ok(out)
    with zipfile.ZipFile(out["export_file"]) as z:
        assert {"final_0.png", "trajectory.csv", "params.json"} <= set(z.namelist())


@pytest.mark.parametrize("family", family_params())
def test_app_on_a_built_folder_of_each_family(built, family):
    _app_flow(built[family], family)


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_app_on_generated_samples_of_each_family(built, family):
    _app_flow(built[family], f"{family}-gen")


def test_hub_checkpoint_in_config_is_never_loaded_on_the_cpu_side(tmp_path):
    """A folder whose config names a Hub model: the layer's identity comes from the recorded
    revision, without touching the network or any weights."""
    from diffviews.data.layers import checkpoint_identity
    from diffviews.data.layout import resolve_checkpoint

    paths = model_paths(tmp_path, "hub")
    config = {"checkpoint": "hub:openai/diffusers-cd_imagenet64_l2", "checkpoint_revision": "abc123"}
    assert resolve_checkpoint(paths, config) == "openai/diffusers-cd_imagenet64_l2"
    assert checkpoint_identity(paths, config) == "hub:openai/diffusers-cd_imagenet64_l2@abc123"
