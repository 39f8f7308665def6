"""Shared base of the diffusers adapters: loading, preconditioning, VAE, hook points.

``spec`` is a Hugging Face Hub id or a local folder, either a whole pipeline folder
(model_index.json with unet/ or transformer/, scheduler/, vae/, ...) or, for pixel UNets,
a bare model folder (config.json, plus scheduler_config.json when there is one). Weights
load only from safetensors (``use_safetensors=True``); a folder whose weights exist only
as pickles (.bin, .pt, .ckpt, ...) is refused, never unpickled.

Noise: the sampler runs in sigma space (SigmaSpaceAdapter); the checkpoint's own
scheduler config decides the preconditioning (adapters/preconditioning.py). The universal
noise level is linear in log-sigma between that schedule's sigma_min and sigma_max, for
every family: for a discrete DDPM-style schedule these are the sigmas of t = 0 and
t = T - 1; for EDM/consistency schedulers the config's sigma_min / sigma_max.

diffusers (and transformers) are imported only when a model is loaded, so this module and
the adapter registry import without the optional ``diffusers`` extra.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .preconditioning import DiscreteVP, Preconditioning, preconditioning_from_scheduler
from .sigma_space import SigmaSpaceAdapter

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
DEFAULT_NOISE_LEVELS = [85.0, 70.0, 55.0, 40.0]
INSTALL_HINT = "install the optional extra: pip install 'diffviews[diffusers]'"


def import_diffusers():
    try:
        import diffusers
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(f"diffusers models need the diffusers package; {INSTALL_HINT}") from exc
    return diffusers


# ---- where the model lives -------------------------------------------------------------------

@dataclass
class ModelSource:
    """A Hub id or local folder, and whether it is a pipeline (model_index.json) or a bare model."""

    spec: str
    local: Path | None
    model_index: dict = field(default_factory=dict)
    local_files_only: bool = False

    @property
    def is_pipeline(self) -> bool:
        return bool(self.model_index)

    def component_class(self, component: str) -> str | None:
        entry = self.model_index.get(component)
        return entry[1] if isinstance(entry, (list, tuple)) and len(entry) == 2 else None

    def subfolder(self, component: str) -> str | None:
        """The component's subfolder for a pipeline, None (the root) for a bare model."""
        if not self.is_pipeline:
            return None
        if self.component_class(component) is None:
            raise ValueError(f"{self.spec}: the pipeline has no {component!r} component "
                             f"(model_index.json lists {', '.join(self.components())})")
        return component

    def components(self) -> list[str]:
        return [k for k in self.model_index if not k.startswith("_") and self.component_class(k)]

    def require(self, family: str, components: list[str]) -> None:
        """Refuse a source that is not a pipeline holding ``components``."""
        missing = [c for c in components if self.component_class(c) is None]
        if missing:
            have = ", ".join(self.components()) if self.is_pipeline else "a bare model folder, no model_index.json"
            raise ValueError(f"{self.spec}: a {family} model needs a pipeline folder with "
                             f"{', '.join(c + '/' for c in components)} (missing {', '.join(missing)}; found {have})")

    def model_class(self, component: str) -> str | None:
        """The diffusers class named for ``component`` (model_index.json, or a bare model's config.json)."""
        if self.is_pipeline:
            return self.component_class(component)
        if self.local is not None:
            config = self.local / "config.json"
        else:
            from huggingface_hub import hf_hub_download

            config = Path(hf_hub_download(self.spec, "config.json", local_files_only=self.local_files_only))
        return json.loads(config.read_text()).get("_class_name")

    def kwargs(self, component: str) -> dict[str, Any]:
        sub = self.subfolder(component)
        if self.local is not None:
            check_safetensors(self.local / sub if sub else self.local)
        out: dict[str, Any] = {"use_safetensors": True, "local_files_only": self.local_files_only}
        if sub:
            out["subfolder"] = sub
        return out


def open_source(spec: str | Path, local_files_only: bool = False) -> ModelSource:
    """Resolve ``spec`` (local folder or Hub id); reads model_index.json when there is one."""
    path = Path(spec).expanduser()
    if path.is_dir():
        index = path / "model_index.json"
        if index.is_file():
            return ModelSource(str(spec), path, json.loads(index.read_text()), True)
        if (path / "config.json").is_file():
            return ModelSource(str(spec), path, {}, True)
        raise ValueError(f"{path} holds neither model_index.json (a diffusers pipeline) nor config.json "
                         "(a diffusers model)")
    spec = str(spec)
    if path.is_absolute() or spec.startswith(".") or spec.count("/") != 1:
        raise FileNotFoundError(f"model {spec!r} is neither a local folder nor a Hub id of the form owner/name")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError

    try:
        index = hf_hub_download(spec, "model_index.json", local_files_only=local_files_only)
    except RemoteEntryNotFoundError:  # a bare model repository (config.json at the root)
        return ModelSource(spec, None, {}, local_files_only)
    except Exception as exc:
        raise ValueError(f"model {spec!r} is not a local folder and the Hub could not serve it: {exc}") from exc
    return ModelSource(spec, None, json.loads(Path(index).read_text()), local_files_only)


#: denoiser class (in model_index.json or config.json) → DiffViews adapter name
FAMILY_BY_CLASS = {
    "UNet2DModel": "diffusers-unet",
    "DiTTransformer2DModel": "dit",
    "Transformer2DModel": "dit",  # DiT checkpoints saved before DiTTransformer2DModel existed
    "UNet2DConditionModel": "sd-unet",
}


def adapter_for_model(spec: str | Path, local_files_only: bool = False) -> str:
    """The registered adapter name for a diffusers model (Hub id or local folder)."""
    source = open_source(spec, local_files_only=local_files_only)
    if source.is_pipeline:
        component = next((c for c in ("transformer", "unet") if source.component_class(c)), None)
        found = source.component_class(component) if component else None
        what = f"model_index.json lists {', '.join(source.components()) or 'no components'}"
    else:
        found = source.model_class("unet")
        what = f"config.json names {found!r}"
    if found not in FAMILY_BY_CLASS:
        raise ValueError(f"{spec}: not a supported diffusers family ({what}); supported denoisers: "
                         + ", ".join(f"{k} ({v})" for k, v in FAMILY_BY_CLASS.items()))
    return FAMILY_BY_CLASS[found]


def check_model_class(source: ModelSource, component: str, allowed: tuple[str, ...], family: str) -> None:
    found = source.model_class(component)
    if found is not None and found not in allowed:
        hint = f"; use adapter {FAMILY_BY_CLASS[found]!r}" if found in FAMILY_BY_CLASS else ""
        raise ValueError(f"{source.spec}: {component} is a {found}, not a {' / '.join(allowed)} "
                         f"(adapter {family!r}){hint}")


def check_safetensors(folder: Path) -> None:
    """Refuse a folder whose weights exist only as pickles (they are never unpickled)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder not found: {folder}")
    files = [p for p in folder.iterdir() if p.is_file()]
    if any(p.name.endswith(".safetensors") for p in files):
        return
    pickles = sorted(p.name for p in files if p.name.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise ValueError(f"{folder}: weights exist only as pickle files ({', '.join(pickles)}); DiffViews loads "
                         "safetensors only and never unpickles. Convert them to .safetensors first.")


def load_model(cls, source: ModelSource, component: str, dtype: torch.dtype | None):
    """``cls.from_pretrained`` for one component (diffusers or transformers class), safetensors only."""
    kwargs = source.kwargs(component)
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        return cls.from_pretrained(source.spec, **kwargs)
    except OSError as exc:
        where = f"{source.spec}/{kwargs.get('subfolder', '')}".rstrip("/")
        raise ValueError(f"could not load {cls.__name__} from {where} with safetensors weights "
                         f"(pickle-only weights are refused): {exc}") from exc


def read_scheduler_config(source: ModelSource) -> dict:
    """scheduler/scheduler_config.json of a pipeline, scheduler_config.json of a bare model."""
    sub = "scheduler" if source.is_pipeline else None
    try:
        if source.local is not None:
            path = source.local / (sub or "") / "scheduler_config.json"
            if not path.is_file():
                raise FileNotFoundError(f"{path} does not exist")
        else:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(source.spec, "scheduler_config.json", subfolder=sub,
                                        local_files_only=source.local_files_only))
    except Exception as exc:
        raise ValueError(f"{source.spec}: no scheduler config found ({exc}); pass scheduler=... "
                         "(a diffusers scheduler or its config dict)") from exc
    return json.loads(path.read_text())


def load_scheduler(source: ModelSource, scheduler=None):
    """The checkpoint's own scheduler (a diffusers scheduler object), or ``scheduler`` if given
    (an object or a config dict with ``_class_name``)."""
    diffusers = import_diffusers()
    if scheduler is not None and not isinstance(scheduler, dict):
        return scheduler
    config = scheduler if scheduler is not None else read_scheduler_config(source)
    name = config.get("_class_name")
    cls = getattr(diffusers, str(name), None)
    if cls is None or not hasattr(cls, "from_config"):
        raise ValueError(f"{source.spec}: unknown scheduler class {name!r} in the scheduler config")
    return cls.from_config(config)


# ---- the adapter base ----------------------------------------------------------------------------

class DiffusersAdapter(SigmaSpaceAdapter):
    """One diffusers denoising network, its preconditioning, and (latent models) a VAE.

    Subclasses implement ``_call_net(x_in, t, class_labels)`` (the raw network output),
    ``hook_points``, ``num_classes`` and ``_load(source, dtype, **kwargs)``.
    """

    def __init__(self, net: nn.Module, preconditioning: Preconditioning, device: str | torch.device = "cpu",
                 vae: nn.Module | None = None, class_names: list[str] | None = None, spec: str = "",
                 scheduler_name: str = ""):
        self.device = torch.device(device)
        self.net = net.to(self.device).eval().requires_grad_(False)
        self.vae = vae.to(self.device).eval().requires_grad_(False) if vae is not None else None
        self.precond = preconditioning
        self.spec = spec
        self.scheduler_name = scheduler_name
        #: what the raw network predicts ("epsilon", "v_prediction", "sample"); forward() always
        #: returns the preconditioned denoised estimate, so ``prediction_type`` stays "x0"
        self.network_prediction = getattr(preconditioning, "prediction_type", "x0")
        self._resolution = square_size(self.net.config.sample_size, type(net).__name__)
        self._class_ids: torch.Tensor | None = None
        self._class_names = list(class_names) if class_names else None
        if self._class_names is not None and len(self._class_names) != self.num_classes:
            raise ValueError(f"{len(self._class_names)} class names given for a model with {self.num_classes} "
                             "classes")
        self._layer_shapes = None

    # ---- description -------------------------------------------------------------------------
    @property
    def resolution(self) -> int:
        return self._resolution

    @property
    def channels(self) -> int:
        return self.net.config.in_channels

    @property
    def dtype(self) -> torch.dtype:
        return next(self.net.parameters()).dtype

    @property
    def model_num_classes(self) -> int:
        """The classes of the network itself (its class ids 0..model_num_classes-1)."""
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        return len(self._class_ids) - 1 if self._class_ids is not None else self.model_num_classes

    @property
    def class_names(self) -> list[str]:
        return list(self._class_names) if self._class_names else super().class_names

    def select_classes(self, class_ids: list[int], class_names: list[str] | None = None) -> None:
        """Make the network's classes ``class_ids`` this adapter's classes 0..K-1 (named
        ``class_names``, default: the ids), e.g. 3 of ImageNet's 1000 for a data folder of 3
        classes; the null class K stands for the network's own null class. An unconditional
        network ignores its labels: its ids are all 0 and the names are just groups."""
        ids = [int(i) for i in class_ids]
        model_n = self.model_num_classes
        bad = [i for i in ids if not 0 <= i < model_n]
        if not ids or bad:
            raise ValueError(f"class ids {bad or ids} out of range: the model has classes 0..{model_n - 1}")
        if class_names is not None and len(class_names) != len(ids):
            raise ValueError(f"{len(class_names)} class names for {len(ids)} class ids")
        self._class_ids = torch.tensor([*ids, model_n], dtype=torch.long)
        self._class_names = [str(n) for n in class_names] if class_names else [str(i) for i in ids]

    def model_labels(self, class_labels: torch.Tensor) -> torch.Tensor:
        """This adapter's class labels (and null class) as the network's own class ids."""
        labels = class_labels.to(self.device)
        if self._class_ids is None:
            return labels
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > self.num_classes):
            raise ValueError(f"class label out of range: classes are 0..{self.num_classes - 1} "
                             f"(null class {self.num_classes})")
        return self._class_ids.to(self.device)[labels]

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 1

    @property
    def image_resolution(self) -> int:
        return self.resolution * self.vae_scale_factor

    @property
    def image_channels(self) -> int:
        return self.vae.config.in_channels if self.vae is not None else self.channels

    @property
    def sigma_min(self) -> float:
        return self.precond.sigma_min

    @property
    def sigma_max(self) -> float:
        return self.precond.sigma_max

    # ---- pixels <-> latents ------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1] → scaled latents (the mean of the VAE posterior, deterministic)."""
        if self.vae is None:
            return images
        cfg = self.vae.config
        z = self.vae.encode(images.to(self.device, self.vae.dtype)).latent_dist.mean
        return ((z - (cfg.get("shift_factor") or 0.0)) * cfg.scaling_factor).float()

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            return x
        cfg = self.vae.config
        z = x / cfg.scaling_factor + (cfg.get("shift_factor") or 0.0)
        return self.vae.decode(z.to(self.vae.dtype)).sample.float().clamp(-1, 1)

    # ---- model -------------------------------------------------------------------------------
    def _call_net(self, x_in: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x, native, class_labels):
        sigma = torch.as_tensor(native, dtype=torch.float64, device=x.device).reshape(-1)
        sigma = sigma.expand(x.shape[0]) if sigma.numel() == 1 else sigma
        labels = self.model_labels(class_labels)

        def net(x_in, t):
            out = self._call_net(x_in.to(self.dtype), t, labels)
            # learned-variance models (DiT, improved DDPM) output eps and a variance: keep eps
            return out[:, : self.channels] if out.shape[1] == 2 * self.channels else out

        return self.precond.denoise(net, x, sigma)

    # ---- defaults ----------------------------------------------------------------------------
    @property
    def default_layer(self) -> str:
        return self.hookable_layers[len(self.hookable_layers) // 2]

    @property
    def default_guidance(self) -> float:
        return 1.0

    @property
    def default_steps(self) -> int:
        return 20

    def get_default_config(self) -> dict:
        return {
            "default_steps": self.default_steps,
            "default_guidance": self.default_guidance if self.supports_cfg and self.conditioning_type != "none"
            else 1.0,
            "noise_max": 100.0,
            "noise_min": 0.0,
            "noise_levels": list(DEFAULT_NOISE_LEVELS),
            "default_layer": self.default_layer,
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
            "model": self.spec,
            "scheduler": self.scheduler_name,
            "network_prediction": self.network_prediction,
            "latent": self.vae is not None,
            "image_resolution": self.image_resolution,
        }

    def timestep_of(self, native) -> float:
        """The network's own timestep for a sigma (t for discrete schedules, c_noise otherwise)."""
        sigma = torch.as_tensor(native, dtype=torch.float64).reshape(-1)
        if isinstance(self.precond, DiscreteVP):
            return float(self.precond.sigma_to_t(sigma)[0])
        return float(self.precond.scalings(sigma)[3][0])

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, spec: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                        classes: list[str] | None = None, scheduler=None, local_files_only: bool = False,
                        **kwargs: Any) -> DiffusersAdapter:
        """Load from a Hub id or a local folder (safetensors only).

        ``classes``: class names (pixel UNet, DiT) or, for text-conditioned models, the
        prompts that act as classes. ``class_ids`` (keyword): use only these classes of the
        network, as classes 0..K-1 named ``classes`` (see ``select_classes``). ``scheduler``:
        overrides the checkpoint's scheduler (object or config dict). ``dtype``: e.g. torch.float16 on CUDA.
        """
        class_ids = kwargs.pop("class_ids", None)
        source = open_source(spec, local_files_only=local_files_only)
        sched = load_scheduler(source, scheduler)
        common = {"preconditioning": preconditioning_from_scheduler(sched), "device": device, "spec": str(spec),
                  "scheduler_name": type(sched).__name__}
        if class_ids is None:
            return cls._load(source, dtype, classes, common, **kwargs)
        adapter = cls._load(source, dtype, None, common, **kwargs)
        adapter.select_classes(class_ids, classes)
        return adapter

    @classmethod
    def _load(cls, source: ModelSource, dtype: torch.dtype | None, classes: list[str] | None, common: dict,
              **kwargs: Any) -> DiffusersAdapter:
        """Load the family's components from ``source``; ``common`` holds the constructor
        arguments every family shares (preconditioning, device, spec, scheduler_name)."""
        raise NotImplementedError

    @classmethod
    def from_checkpoint(cls, path, device="cpu", **kwargs: Any) -> DiffusersAdapter:
        return cls.from_pretrained(path, device=device, **kwargs)


def unet_hook_points(unet: nn.Module) -> dict[str, nn.Module]:
    """down_blocks.i, mid_block, up_blocks.i of a diffusers UNet, in forward order."""
    points = {f"down_blocks.{i}": b for i, b in enumerate(unet.down_blocks)}
    if getattr(unet, "mid_block", None) is not None:
        points["mid_block"] = unet.mid_block
    points.update({f"up_blocks.{i}": b for i, b in enumerate(unet.up_blocks)})
    return points


def square_size(sample_size, what: str) -> int:
    """A config's sample_size as one side (int, or a square [h, w])."""
    if isinstance(sample_size, (list, tuple)):
        if len(set(sample_size)) != 1:
            raise ValueError(f"{what}: non-square sample_size {list(sample_size)} is not supported")
        sample_size = sample_size[0]
    return int(sample_size)
