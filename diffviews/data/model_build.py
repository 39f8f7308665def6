"""``diffviews build``: a data folder for any supported model, from real images or its own samples.

    build("data", "openai/diffusers-cd_imagenet64_l2", "cd64", images="my_imagenet", classes=["tabby=281"])
    build("data", "./my-sd-folder", "sd", generate=8, classes=["a photo of a cat", "a photo of a dog"])
    build("data", "digits")                      # a bundled demo model on its bundled dataset

The model (``model``) is a Hugging Face Hub id or a local folder of a diffusers model
(pixel ``UNet2DModel``, DiT, Stable Diffusion; the family is read from its config), a
bundled demo name (``digits``, ``shapes``), or ``edm-demo:<weights.safetensors>``.

Samples come from one of
- ``images``: a folder with one subfolder per class, or ``images_csv``: ``path,label`` rows;
  resized and centre-cropped to the model's image size (``image_sources``);
- ``generate=N``: N samples per class (or prompt) made by the model itself (default steps,
  guidance and the stochastic sampler of its config, seeded per class);
- nothing, for a bundled demo model: its bundled dataset (what ``build-demo`` builds).

Generated samples are then treated exactly like real images: each clean sample is noised to
every requested level (x0 + sigma * eps with seeded eps) and pushed through the model. We
do not record the states of the model's own sampling run instead, because (1) every layer
of a folder must be reproducible from ``images/`` and the seed alone: the app, ``diffviews
extract`` and a GPU worker extract further layers later by that one recipe, which cannot
replay a sampler run (it depends on the step count, the sampler's noise and 8-bit PNGs);
(2) points made from generated and from real images then mean the same thing and can be
compared on one map; and (3) the sampler's steps need not land on the requested noise
levels. Trajectories of the model's own runs are what the app projects onto the map.

Classes (``classes``; ``LABEL`` or ``LABEL=CLASS``): for a class-conditional model, CLASS
(default: LABEL) is one of the model's class ids or class names, LABEL the folder or CSV
label and the name shown; only these classes are used, in this order (default: every
label of the images, sorted). The folder's classes 0..K-1 map to the model's ids
(``class_ids`` in config.json). For a text-conditioned model CLASS is the prompt. For an
unconditional model the labels only group the images (the model never sees them).

Every part is checked and skipped when valid, so an interrupted build resumes where it
stopped (generated samples already in ``images/`` are not generated again).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..demo import DEMO_MODELS, weights_path
from .build_steps import (
    DEFAULT_NUM_SAMPLES,
    DEMO_ADAPTER,
    _check_threads,
    check_layers,
    check_noise_levels,
    ensure_config,
    stratified_subset,
    write_samples_and_layers,
)
from .image_sources import ImageEntry, load_fitted, read_image_csv, scan_image_folder
from .layout import HUB_PREFIX, PACKAGE_PREFIX, DataLayoutError, ModelPaths, checkpoint_ref, model_paths
from .metadata import read_image

log = logging.getLogger("diffviews.data.build")

DEMO_PREFIX = "edm-demo:"
#: adapters whose classes are prompts
TEXT_ADAPTERS = ("sd-unet",)
#: class-conditional models with more classes than this need --classes for --generate
MAX_DEFAULT_CLASSES = 32
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
GENERATE_NOISE_MODE = "stochastic"


@dataclass(frozen=True)
class ModelSpec:
    """What ``--model`` names: the adapter, what ``from_checkpoint`` takes, and the demo dataset if any."""

    spec: str
    adapter: str
    location: Path | str
    demo: str | None = None

    @property
    def text(self) -> bool:
        return self.adapter in TEXT_ADAPTERS

    def checkpoint(self, root: Path) -> str:
        """config.json's ``checkpoint`` for this model in the model folder ``root``."""
        if self.demo is not None:
            return f"{PACKAGE_PREFIX}demo/weights/{Path(self.location).name}"
        return checkpoint_ref(self.location, root)


def parse_model_spec(spec: str) -> ModelSpec:
    """A demo name, ``edm-demo:<weights>``, or a diffusers Hub id / folder (its family checked)."""
    spec = str(spec).strip()
    if spec in DEMO_MODELS:
        weights = weights_path(spec)
        if not weights.is_file():
            raise DataLayoutError(f"bundled weights for {spec!r} are missing: expected {weights} "
                                  f"(train them with scripts/train_demo_models.py)")
        return ModelSpec(spec, DEMO_ADAPTER, weights, spec)
    if spec.startswith(DEMO_PREFIX):
        weights = Path(spec[len(DEMO_PREFIX):]).expanduser()
        if not weights.is_file():
            raise FileNotFoundError(f"edm-demo weights {weights} not found (expected a .safetensors file)")
        return ModelSpec(spec, DEMO_ADAPTER, weights.resolve())
    if spec.startswith(HUB_PREFIX):
        spec = spec[len(HUB_PREFIX):]
    from ..adapters import adapter_for_model

    try:
        adapter = adapter_for_model(spec)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{exc.args[0]}; or name a bundled demo model ({', '.join(DEMO_MODELS)}) or "
                                f"{DEMO_PREFIX}<weights.safetensors>") from None
    path = Path(spec).expanduser()
    return ModelSpec(spec, adapter, path.resolve() if path.is_dir() else spec)


def hub_revision(hub_id: str) -> str | None:
    """The commit of a Hub model in the local cache (after it was loaded), or None."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        return None
    for name in ("model_index.json", "config.json"):
        try:
            return Path(hf_hub_download(hub_id, name, local_files_only=True)).parent.name
        except Exception:  # noqa: BLE001 - not cached / not that kind of repository
            continue
    return None


# ---- classes -------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClassChoice:
    label: str  # the folder / CSV label, and the name shown
    target: str  # the model's class id or name, or the prompt


def parse_classes(classes: Sequence[str] | None) -> list[ClassChoice] | None:
    if classes is None:
        return None
    out = []
    for item in classes:
        label, sep, target = str(item).partition("=")
        label, target = label.strip(), target.strip()
        if not label or (sep and not target):
            raise ValueError(f"--classes entry {item!r}: expected LABEL or LABEL=CLASS")
        out.append(ClassChoice(label, target or label))
    labels = [c.label for c in out]
    dup = next((x for x in labels if labels.count(x) > 1), None)
    if dup is not None:
        raise ValueError(f"--classes names {dup!r} twice")
    return out


def resolve_class(adapter, choice: ClassChoice, spec: str) -> tuple[int, str]:
    """(the model's class id, the name shown) of a class-conditional model's ``choice``."""
    names, n = adapter.class_names, adapter.num_classes
    named = names != [str(i) for i in range(n)]
    target = choice.target
    if target.isdigit() and int(target) < n:
        cid = int(target)
    else:
        hits = [i for i, name in enumerate(names) if name.lower() == target.lower()]
        if len(hits) > 1:
            raise ValueError(f"class {target!r} names classes {hits} of {spec}; give the id (LABEL=ID)")
        if not hits:
            example = f" such as {', '.join(repr(x) for x in names[:3])}" if named else ""
            raise ValueError(f"class {target!r} is neither a class id 0..{n - 1} nor a class name{example} of "
                             f"{spec}; map a label to a class with --classes LABEL=ID")
        cid = hits[0]
    shown = choice.label if choice.label != target or not named else names[cid]
    return cid, shown


def resolve_classes(adapter, spec: ModelSpec, choices: list[ClassChoice]) -> tuple[list[str], list[int] | None]:
    """(class names of the folder, the model's class ids or None) for ``choices``."""
    if spec.text:
        return [c.target for c in choices], None
    if adapter.conditioning_type == "none":
        return [c.label for c in choices], [0] * len(choices)
    resolved = [resolve_class(adapter, c, spec.spec) for c in choices]
    ids = [cid for cid, _ in resolved]
    dup = next((i for i in ids if ids.count(i) > 1), None)
    if dup is not None:
        raise ValueError(f"two classes map to the model's class {dup}: "
                         f"{', '.join(c.label for c, i in zip(choices, ids) if i == dup)}")
    return [name for _, name in resolved], ids


# ---- where the samples come from ------------------------------------------------------------

def _entries(images: str | Path | None, images_csv: str | Path | None,
             choices: list[ClassChoice] | None) -> tuple[list[ImageEntry], list[ClassChoice]]:
    entries = scan_image_folder(images) if images is not None else read_image_csv(images_csv)
    labels = sorted({e.label for e in entries})
    if choices is None:
        choices = [ClassChoice(label, label) for label in labels]
    else:
        empty = [c.label for c in choices if c.label not in labels]
        if empty:
            raise DataLayoutError(f"class {empty[0]!r} from --classes has no images in "
                                  f"{images or images_csv} (labels found: {', '.join(labels)})")
        skipped = sorted(set(labels) - {c.label for c in choices})
        if skipped:
            log.info("skipping images of label(s) not in --classes: %s", ", ".join(skipped))
    order = {c.label: k for k, c in enumerate(choices)}
    entries = sorted((e for e in entries if e.label in order), key=lambda e: (order[e.label], str(e.path)))
    return entries, choices


def _read_entries(entries: list[ImageEntry], size: int, channels: int, progress: bool, name: str) -> np.ndarray:
    return np.stack([load_fitted(e.path, size, channels, e.where)
                     for e in tqdm(entries, desc=f"{name}: read images", unit="img", disable=not progress,
                                   leave=False)])


def _stored(paths: ModelPaths, sample_ids, size: int, channels: int) -> np.ndarray | None:
    """The PNGs of ``sample_ids`` already in ``images/`` at the right size, or None if any is missing/bad."""
    out = []
    for sid in sample_ids:
        try:
            img = read_image(paths.image(sid))
        except DataLayoutError:
            return None
        if img.shape != (size, size, channels):
            return None
        out.append(img)
    return np.stack(out)


def generate_samples(adapter, paths: ModelPaths, per_class: int, class_labels: Sequence[int], seed: int,
                     batch_size: int, steps: int, guidance: float, reuse: bool, progress: bool) -> np.ndarray:
    """(K * per_class, H, W, C) uint8 for the adapter's ``class_labels`` (K of them): the k-th
    class's samples are ids k*per_class ...; a class whose images are all in ``images/``
    already (``reuse``) is read, not generated."""
    from ..core.generator import generate

    size, channels = adapter.image_resolution, adapter.image_channels
    out = []
    bar = tqdm(total=len(class_labels) * per_class, desc=f"{paths.name}: generate", unit="img",
               disable=not progress, leave=False)
    for k, class_label in enumerate(class_labels):
        ids = range(k * per_class, (k + 1) * per_class)
        stored = _stored(paths, ids, size, channels) if reuse else None
        if stored is None:
            batches = []
            for c, start in enumerate(range(0, per_class, batch_size)):
                n = min(batch_size, per_class - start)
                run_seed = int(np.random.SeedSequence([seed, k, c]).generate_state(1)[0])
                batches.append(generate(adapter, class_label=int(class_label), num_steps=steps, guidance_scale=guidance,
                                        noise_mode=GENERATE_NOISE_MODE, seed=run_seed, num_samples=n).images)
                bar.update(n)
            stored = np.concatenate(batches)
        else:
            log.info("[%s] generated samples of class %d already in images/, reused", paths.name, k)
            bar.update(per_class)
        out.append(stored)
    bar.close()
    return np.concatenate(out)


# ---- the build -------------------------------------------------------------------------------

def _torch_dtype(dtype: str | None, device: str):
    if dtype is None or dtype == "fp32":
        return None
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if not str(device).startswith("cuda"):
        raise ValueError(f"--dtype {dtype} runs only on a CUDA device (--device cuda); on {device} use fp32")
    import torch

    return getattr(torch, DTYPES[dtype])


def _check_device(device: str) -> None:
    import torch

    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available here; use --device cpu")


def _positive(name: str, value) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def build(data_dir: str | Path, model: str, name: str | None = None, *, images: str | Path | None = None,
          images_csv: str | Path | None = None, generate: int | None = None, classes: Sequence[str] | None = None,
          noise_levels: Sequence[float] | None = None, layers: Sequence[str] | None = None,
          num_samples: int | None = None, batch_size: int | None = None, device: str = "cpu",
          dtype: str | None = None, seed: int = 0, force: bool = False, progress: bool = True,
          umap_params: dict | None = None, threads: int | None = None) -> ModelPaths:
    """Build ``data_dir/<name>/`` for ``model`` (see the module docstring); returns its paths."""
    from ..adapters import get_adapter

    t_start = time.perf_counter()
    sources = [s for s in (images, images_csv, generate) if s is not None]
    if len(sources) > 1:
        raise ValueError("give one sample source: --images, --images-csv or --generate")
    _positive("generate", generate)
    _positive("num_samples", num_samples)
    _positive("batch_size", batch_size)
    _check_threads(threads)
    if generate is not None and num_samples is not None:
        raise ValueError("--num-samples picks among real images; with --generate N, N is the samples per class")
    ms = parse_model_spec(model)
    if not sources and ms.demo is None:
        raise ValueError(f"say where the samples come from: --images FOLDER, --images-csv FILE or --generate N "
                         f"(only the bundled demo models {', '.join(DEMO_MODELS)} have a dataset of their own)")
    paths = model_paths(data_dir, name or ms.demo or "")
    torch_dtype = _torch_dtype(dtype, device)
    _check_device(device)
    choices = parse_classes(classes)

    entries: list[ImageEntry] = []
    if images is not None or images_csv is not None:
        entries, choices = _entries(images, images_csv, choices)
    elif generate is not None and choices is None and ms.text:
        raise ValueError(f"{ms.spec} is text-conditioned: give the prompts to generate with --classes")

    kwargs = {"classes": [c.target for c in choices]} if ms.text else {}
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    adapter = get_adapter(ms.adapter).from_checkpoint(ms.location, device=device, **kwargs)
    if generate is not None and choices is None:
        choices = _default_generate_classes(adapter, ms)
    class_ids, model_label = None, None
    if ms.demo is not None and not sources:
        dataset_images, labels, sample_ids, class_names = _bundled(ms.demo, num_samples, seed)
    else:
        class_names, class_ids = resolve_classes(adapter, ms, choices)
        model_label = np.arange(len(class_names))
        if class_ids is not None and hasattr(adapter, "select_classes"):
            adapter.select_classes(class_ids, class_names)
        elif class_ids is not None:  # a model without class subsets (the demo): labels are its own ids
            model_label, class_names, class_ids = np.asarray(class_ids), list(adapter.class_names), None
    defaults = adapter.get_default_config()
    levels = check_noise_levels(defaults["noise_levels"] if noise_levels is None else noise_levels)
    layers = check_layers(adapter, [defaults["default_layer"]] if layers is None else layers, paths.name)
    if not layers:
        raise ValueError("layers must name at least one layer")

    config = {"adapter": ms.adapter, "checkpoint": ms.checkpoint(paths.root), **defaults, "noise_levels": levels}
    if ms.demo is not None and not sources:
        config.update(class_names=class_names, num_samples=int(len(sample_ids)), seed=int(seed),
                      resolution=adapter.resolution, channels=adapter.channels)
        ensure_config(paths, config, force)
    else:
        per_class = generate
        if entries:
            label_of = {c.label: k for k, c in enumerate(choices)}
            all_labels = np.asarray([label_of[e.label] for e in entries], dtype=np.int64)
            sample_ids = stratified_subset(all_labels, num_samples or len(entries), seed)
            labels = model_label[all_labels[sample_ids]]
        else:
            sample_ids = np.arange(len(choices) * per_class)
            labels = np.repeat(model_label, per_class)
        source = ({"kind": "generate", "per_class": per_class, "steps": int(defaults["default_steps"]),
                   "guidance": float(defaults["default_guidance"]), "noise_mode": GENERATE_NOISE_MODE}
                  if generate is not None else
                  {"kind": "images" if images is not None else "images-csv",
                   "path": str(Path(images if images is not None else images_csv).expanduser().resolve())})
        config.update(class_names=class_names, num_samples=int(len(sample_ids)), seed=int(seed),
                      resolution=adapter.image_resolution, channels=adapter.image_channels,
                      native_noise_name=adapter.native_noise_name, source=source)
        if class_ids is not None:
            config["class_ids"] = class_ids
        if ms.text:
            config["prompts"] = class_names
        if batch_size is not None:
            config["batch_size"] = batch_size
        if dtype not in (None, "fp32"):
            config["dtype"] = DTYPES[dtype]
        if isinstance(ms.location, str):
            config["checkpoint_revision"] = hub_revision(ms.location)
        rewritten = ensure_config(paths, config, force)
        size, channels = adapter.image_resolution, adapter.image_channels
        if entries:
            dataset_images = _read_entries([entries[i] for i in sample_ids], size, channels, progress, paths.name)
        else:
            dataset_images = generate_samples(adapter, paths, per_class, model_label, seed, batch_size or 16,
                                              int(defaults["default_steps"]), float(defaults["default_guidance"]),
                                              reuse=not (rewritten or force), progress=progress)
    write_samples_and_layers(paths, adapter, config, sample_ids, dataset_images, labels, layers, force=force,
                             progress=progress, umap_params=umap_params, threads=threads)
    log.info("[%s] done in %.1fs: %s", paths.name, time.perf_counter() - t_start, paths.root)
    return paths


def _default_generate_classes(adapter, ms: ModelSpec) -> list[ClassChoice]:
    if adapter.conditioning_type == "none":
        return [ClassChoice("unconditional", "0")]
    if adapter.num_classes > MAX_DEFAULT_CLASSES:
        raise ValueError(f"{ms.spec} has {adapter.num_classes} classes: name the ones to generate with --classes "
                         f"(ids or names, e.g. --classes 1 2 or --classes cat=281)")
    return [ClassChoice(str(i), str(i)) for i in range(adapter.num_classes)]


def _bundled(demo: str, num_samples: int | None, seed: int):
    """A bundled demo dataset's class-stratified subset: (images, labels, sample ids, class names)."""
    from ..demo.datasets import load_dataset

    dataset = load_dataset(demo)
    idx = stratified_subset(dataset.labels, DEFAULT_NUM_SAMPLES if num_samples is None else num_samples, seed)
    if num_samples is not None and len(idx) < num_samples:
        log.info("[%s] dataset has %d images; using all of them", demo, len(idx))
    return dataset.images[idx], dataset.labels[idx], idx, list(dataset.class_names)
