"""The data-directory layout, in one place.

    <data_dir>/<model>/config.json                 adapter, checkpoint, defaults
    <data_dir>/<model>/images/<sample_id>.png      clean sample images
    <data_dir>/<model>/metadata.csv                one row per point
    <data_dir>/<model>/activations/<layer>.npy     (N, D) float32, + <layer>.json sidecar
    <data_dir>/<model>/embeddings/<layer>.csv      2-D map, + <layer>.json (params, backend)

``checkpoint`` in config.json is ``package:<path>`` (relative to the installed
``diffviews`` package, used by the bundled demo), ``hub:<owner>/<name>`` (a Hugging Face
Hub model, downloaded by whoever loads the weights: only the backend does), or a path
(a weights file or a model folder) relative to the model folder (an absolute path also
works). For a Hub model, ``checkpoint_revision`` records the commit it was built from
when it was known at build time. ``load_adapter`` passes the folder's classes on to the
adapter: ``prompts`` (text-conditioned models) and ``class_ids`` (the model's own class
ids of the folder's classes 0..K-1, when they are a subset of the model's classes).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import diffviews

PACKAGE_PREFIX = "package:"
HUB_PREFIX = "hub:"
REQUIRED_CONFIG_KEYS = {
    "adapter": str,
    "checkpoint": str,
    "default_steps": int,
    "default_guidance": (int, float),
    "noise_max": (int, float),
    "noise_min": (int, float),
    "noise_levels": list,
    "default_layer": str,
}


class DataLayoutError(ValueError):
    """A file in the data directory is missing or does not hold what it should."""


def default_data_dir() -> Path:
    return Path(os.environ.get("DIFFVIEWS_DATA_DIR", "data"))


@dataclass(frozen=True)
class ModelPaths:
    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def metadata(self) -> Path:
        return self.root / "metadata.csv"

    @property
    def activations_dir(self) -> Path:
        return self.root / "activations"

    @property
    def embeddings_dir(self) -> Path:
        return self.root / "embeddings"

    def image(self, sample_id: int) -> Path:
        return self.images / f"{int(sample_id):06d}.png"

    def activations(self, layer: str) -> Path:
        return self.activations_dir / f"{_safe(layer)}.npy"

    def activations_sidecar(self, layer: str) -> Path:
        return self.activations_dir / f"{_safe(layer)}.json"

    def embedding(self, layer: str, suffix: str = "") -> Path:
        return self.embeddings_dir / f"{_safe(layer)}{suffix}.csv"

    def embedding_meta(self, layer: str, suffix: str = "") -> Path:
        return self.embeddings_dir / f"{_safe(layer)}{suffix}.json"

    def reducer_cache(self, layer: str, suffix: str = "") -> Path:
        """Local pickle of a fitted pipeline: a cache only, never shared or trusted blindly."""
        return self.embeddings_dir / f"{_safe(layer)}{suffix}.pkl"


def model_paths(data_dir: str | Path, model: str) -> ModelPaths:
    return ModelPaths(Path(data_dir) / _safe(model))


def _safe(name: str) -> str:
    if not name or "/" in name or "\\" in name or name in (".", "..") or name.startswith("."):
        raise DataLayoutError(f"invalid name {name!r}: must be a plain file name")
    return name


def discover_models(data_dir: str | Path) -> list[str]:
    """Model folders under ``data_dir`` that have a config.json, sorted."""
    root = Path(data_dir)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "config.json").is_file())


def read_json_object(path: Path, what: str, missing_hint: str = "") -> dict:
    """The JSON object in ``path``; a missing file, malformed JSON or a non-object raise
    ``DataLayoutError`` naming ``what`` and the file."""
    if not path.is_file():
        raise DataLayoutError(f"missing {what}: {path}{missing_hint}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataLayoutError(f"malformed JSON in {what} {path}: {exc}") from None
    if not isinstance(data, dict):
        raise DataLayoutError(f"{what} {path} must hold a JSON object, got {type(data).__name__}")
    return data


def load_config(paths: ModelPaths) -> dict:
    """Read and validate ``config.json``; errors name the file and the problem."""
    config = read_json_object(paths.config, "model config")
    for key, typ in REQUIRED_CONFIG_KEYS.items():
        if key not in config:
            raise DataLayoutError(f"{paths.config} lacks required key {key!r} "
                                  f"(required: {', '.join(REQUIRED_CONFIG_KEYS)})")
        if not isinstance(config[key], typ) or isinstance(config[key], bool):
            raise DataLayoutError(f"{paths.config}: {key!r} has the wrong type "
                                  f"({type(config[key]).__name__}: {config[key]!r})")
    return config


def write_config(paths: ModelPaths, config: dict) -> None:
    paths.root.mkdir(parents=True, exist_ok=True)
    tmp = paths.config.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    tmp.replace(paths.config)


def resolve_checkpoint(paths: ModelPaths, config: dict) -> Path | str:
    """The weights config.json names: a local file or folder (a ``Path``, which must exist)
    or, for ``hub:<id>``, the Hub id as a string (nothing is downloaded here)."""
    ref = config["checkpoint"]
    if ref.startswith(HUB_PREFIX):
        hub_id = ref[len(HUB_PREFIX):]
        if hub_id.count("/") != 1 or hub_id.startswith("/") or hub_id.endswith("/"):
            raise DataLayoutError(f"{paths.config}: checkpoint {ref!r} is not a Hub id of the form hub:owner/name")
        return hub_id
    if ref.startswith(PACKAGE_PREFIX):
        path = Path(diffviews.__file__).parent / ref[len(PACKAGE_PREFIX):]
    else:
        path = Path(ref) if Path(ref).is_absolute() else paths.root / ref
    if not path.exists():
        raise DataLayoutError(f"checkpoint {ref!r} from {paths.config} not found at {path}")
    return path


def checkpoint_ref(spec: str | Path, root: Path) -> str:
    """config.json's ``checkpoint`` for a model spec: ``hub:<id>`` for a Hub id, else the
    folder or file (relative to the model folder ``root`` when inside it, else absolute)."""
    path = Path(spec).expanduser()
    if not path.exists():
        return f"{HUB_PREFIX}{spec}"
    path = path.resolve()
    try:
        return path.relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def adapter_kwargs(config: dict) -> dict:
    """Keyword arguments ``from_checkpoint`` takes from config.json (see the module docstring)."""
    kwargs = {}
    if config.get("prompts"):
        kwargs["classes"] = list(config["prompts"])
    if config.get("class_ids") is not None:
        kwargs["class_ids"] = [int(i) for i in config["class_ids"]]
        kwargs["classes"] = list(config.get("class_names") or [])
    return kwargs


def load_adapter(paths: ModelPaths, device: str = "cpu", **kwargs):
    """The model's adapter, loaded from its checkpoint as config.json says (``kwargs`` are
    passed on to ``from_checkpoint``, e.g. ``dtype``; on CUDA the default is the ``dtype`` the
    folder was built with)."""
    from ..adapters import get_adapter

    config = load_config(paths)
    try:
        adapter_cls = get_adapter(config["adapter"])
    except KeyError as exc:
        raise DataLayoutError(f"{paths.config}: {exc.args[0]}") from None
    if config.get("dtype") in ("float16", "bfloat16") and str(device).startswith("cuda"):
        import torch

        kwargs.setdefault("dtype", getattr(torch, config["dtype"]))  # as built; fp32 on the CPU
    return adapter_cls.from_checkpoint(resolve_checkpoint(paths, config), device=device,
                                       **adapter_kwargs(config), **kwargs)
