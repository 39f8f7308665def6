"""The bundled demo network: a small class-conditional U-Net with EDM preconditioning.

The raw network ``DemoUNet`` maps (x_in, c_noise, class_labels) to F(x). ``EDMDenoiser``
wraps it the way EDM (Karras et al. 2022) does, turning it into a denoiser
D(x; sigma) = c_skip * x + c_out * F(c_in * x, c_noise), which is what samplers call.

Every block that a person may want to look inside is a named submodule listed in
``DemoUNet.hook_points``; names carry the resolution, e.g. ``enc_16x16``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class UNetConfig:
    resolution: int = 32
    in_channels: int = 3
    num_classes: int = 6
    channels: tuple[int, ...] = (32, 64, 64)
    emb_dim: int = 128
    groups: int = 8
    sigma_data: float = 0.5
    sigma_min: float = 0.002
    sigma_max: float = 40.0
    # False: decoder blocks see the noise level but not the class, so the class reaches the
    # output through the encoder and the bottleneck/mid path, which is what masking edits
    class_in_decoder: bool = False
    class_names: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        d["class_names"] = list(self.class_names)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> UNetConfig:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        known["channels"] = tuple(known.get("channels", cls.channels))
        known["class_names"] = tuple(known.get("class_names", ()))
        return cls(**known)


class FourierNoiseEmbedding(nn.Module):
    """Sinusoidal embedding of the scalar c_noise (one per batch element)."""

    def __init__(self, dim: int):
        super().__init__()
        half = dim // 2
        self.register_buffer("freqs", torch.exp(-math.log(10000.0) * torch.arange(half) / half),
                             persistent=False)

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        angles = c_noise.reshape(-1, 1) * 250.0 * self.freqs
        return torch.cat([angles.cos(), angles.sin()], dim=1)


class ResBlock(nn.Module):
    """GroupNorm → SiLU → conv, twice, with the embedding as scale/shift in between."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return (h + self.skip(x)) / math.sqrt(2.0)


class Level(nn.Module):
    """One named hook point: a residual block whose output is what hooks see."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int):
        super().__init__()
        self.block = ResBlock(c_in, c_out, emb_dim, groups)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.block(x, emb)


class DemoUNet(nn.Module):
    """Encoder blocks at every resolution, a bottleneck, a mid block, decoder blocks."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        ch, emb_dim, g = config.channels, config.emb_dim, config.groups
        self.noise_emb = FourierNoiseEmbedding(emb_dim)
        # one extra row: the "no class" token used for classifier-free guidance
        self.class_emb = nn.Embedding(config.num_classes + 1, emb_dim)
        self.emb_mlp = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.conv_in = nn.Conv2d(config.in_channels, ch[0], 3, padding=1)

        self.resolutions = [config.resolution // 2**i for i in range(len(ch))]
        self.encoder = nn.ModuleList()
        c_prev = ch[0]
        for c in ch:
            self.encoder.append(Level(c_prev, c, emb_dim, g))
            c_prev = c
        low = ch[-1]
        self.bottleneck = Level(low, low, emb_dim, g)
        self.mid = Level(low, low, emb_dim, g)
        self.decoder = nn.ModuleList()
        for i in reversed(range(len(ch))):
            c_out = ch[i - 1] if i > 0 else ch[0]
            self.decoder.append(Level(c_prev + ch[i], c_out, emb_dim, g))
            c_prev = c_out
        self.norm_out = nn.GroupNorm(g, c_prev)
        self.conv_out = nn.Conv2d(c_prev, config.in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    @property
    def hook_points(self) -> dict[str, nn.Module]:
        """Named layers, in forward order."""
        points: dict[str, nn.Module] = {}
        for r, m in zip(self.resolutions, self.encoder):
            points[f"enc_{r}x{r}"] = m
        points["bottleneck"] = self.bottleneck
        points["mid"] = self.mid
        for r, m in zip(reversed(self.resolutions), self.decoder):
            points[f"dec_{r}x{r}"] = m
        return points

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        noise_emb = self.noise_emb(c_noise)
        emb = self.emb_mlp(noise_emb + self.class_emb(class_labels))
        if self.config.class_in_decoder:
            dec_emb = emb
        else:
            null = torch.full_like(class_labels, self.config.num_classes)
            dec_emb = self.emb_mlp(noise_emb + self.class_emb(null))
        h = self.conv_in(x)
        skips = []
        for i, level in enumerate(self.encoder):
            h = level(h, emb)
            skips.append(h)
            if i < len(self.encoder) - 1:
                h = F.avg_pool2d(h, 2)
        h = self.bottleneck(h, emb)
        h = self.mid(h, emb)
        for i, level in enumerate(self.decoder):
            h = level(torch.cat([h, skips.pop()], dim=1), dec_emb)
            if i < len(self.decoder) - 1:
                h = F.interpolate(h, scale_factor=2, mode="nearest")
        return self.conv_out(F.silu(self.norm_out(h)))


class EDMDenoiser(nn.Module):
    """EDM preconditioning: D(x; sigma, y) = c_skip x + c_out F(c_in x, c_noise, y)."""

    def __init__(self, net: DemoUNet):
        super().__init__()
        self.net = net
        self.sigma_data = net.config.sigma_data
        self.null_class = net.config.num_classes

    def scalings(self, sigma: torch.Tensor):
        sd = self.sigma_data
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
        c_in = 1 / (sigma**2 + sd**2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1)
        sigma = sigma.expand(x.shape[0], 1, 1, 1)
        c_skip, c_out, c_in, c_noise = self.scalings(sigma)
        f = self.net(c_in * x, c_noise.flatten(), class_labels)
        return c_skip * x + c_out * f

    def loss(self, x0: torch.Tensor, class_labels: torch.Tensor, p_mean=-1.2, p_std=1.2) -> torch.Tensor:
        """EDM training loss with log-normal sigma sampling and lambda(sigma) weighting."""
        sigma = (torch.randn(x0.shape[0], 1, 1, 1, device=x0.device) * p_std + p_mean).exp()
        weight = (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2
        denoised = self(x0 + sigma * torch.randn_like(x0), sigma, class_labels)
        return (weight * (denoised - x0) ** 2).mean()
