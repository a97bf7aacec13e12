"""ResNet-18/34/50 trunks in plain torch, with torchvision's parameter names and FiLM after every stage.

The module tree mirrors ``torchvision.models.resnet`` (``conv1``, ``bn1``, ``layer1.0.conv1``, ...,
``layerN.0.downsample.0/1``), so a torchvision ImageNet checkpoint converted to safetensors loads by name;
the classifier (``fc``) is not built and is ignored when loading. ``norm="group"`` swaps every BatchNorm for
a GroupNorm (Diffusion Policy's choice for small batches and EMA); the BatchNorm affine weights of a
pretrained checkpoint then initialise the GroupNorm affine weights and its running statistics are skipped.

FiLM (Perez et al. 2018): after each of the 4 stages ``x <- (1 + gamma(c)) * x + beta(c)`` with
``gamma, beta = Linear(c)``, zero-initialised so the trunk is exactly the unconditioned ResNet at init.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mode_policy.io import load_safetensors, state_dict_mismatch

# (block, blocks per stage) as in torchvision.
ARCHITECTURES: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}
NORMS = ("batch", "group")
STAGE_WIDTHS = (64, 128, 256, 512)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    # 16 channels per group, as Diffusion Policy's replace_bn_with_gn (ResNet widths are multiples of 16).
    return nn.GroupNorm(max(1, channels // 16), channels)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = _norm(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = _norm(norm, planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(inplanes, planes, stride, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = _norm(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # stride on the 3x3 (ResNet v1.5)
        self.bn2 = _norm(norm, planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = _norm(norm, planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(inplanes, planes * 4, stride, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _downsample(inplanes: int, outplanes: int, stride: int, norm: str) -> nn.Sequential | None:
    if stride == 1 and inplanes == outplanes:
        return None
    return nn.Sequential(nn.Conv2d(inplanes, outplanes, 1, stride, bias=False), _norm(norm, outplanes))


class FiLM(nn.Module):
    """``(1 + gamma) * x + beta`` per channel, gamma/beta from the conditioning; identity at init."""

    def __init__(self, cond_dim: int, channels: int) -> None:
        super().__init__()
        self.proj = nn.Linear(cond_dim, 2 * channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.proj(cond).chunk(2, dim=-1)
        return x * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]


class ResNetTrunk(nn.Module):
    """A ResNet without its classifier: (B, 3, H, W) -> (B, out_channels, H/32, W/32), FiLM per stage.

    cond_dim: size of the FiLM conditioning vector (0 disables FiLM). Output channels: 512 for
    ResNet-18/34, 2048 for ResNet-50.
    """

    def __init__(self, arch: str = "resnet18", *, norm: str = "batch", cond_dim: int = 0) -> None:
        super().__init__()
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown ResNet {arch!r}; choose one of {sorted(ARCHITECTURES)}")
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; choose one of {list(NORMS)}")
        kind, blocks = ARCHITECTURES[arch]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.arch, self.norm_kind = arch, norm
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = _norm(norm, 64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = 64
        for stage, (planes, count) in enumerate(zip(STAGE_WIDTHS, blocks, strict=True), start=1):
            layers = []
            for i in range(count):
                layers.append(block(inplanes, planes, 2 if (i == 0 and stage > 1) else 1, norm))
                inplanes = planes * block.expansion
            setattr(self, f"layer{stage}", nn.Sequential(*layers))
        self.out_channels = inplanes
        self.film = (
            nn.ModuleList(FiLM(cond_dim, planes * block.expansion) for planes in STAGE_WIDTHS)
            if cond_dim > 0
            else None
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in range(4):
            x = getattr(self, f"layer{stage + 1}")(x)
            if self.film is not None:
                if cond is None:
                    raise ValueError(
                        "this ResNet was built with FiLM (cond_dim > 0); pass cond=(B, cond_dim)"
                    )
                x = self.film[stage](x, cond)
        return x

    def load_pretrained(self, path: str | Path) -> None:
        """Load torchvision-named ImageNet weights from a local safetensors file (never downloads).

        Convert a torchvision checkpoint once with::

            from safetensors.torch import save_file; import torchvision
            model = torchvision.models.resnet18(weights="IMAGENET1K_V1")
            save_file(model.state_dict(), "resnet18.safetensors")

        Keys may carry a prefix (``backbone.``, ``model.``, ``resnet.``); ``fc.*`` is ignored; with
        ``norm="group"`` the BatchNorm running statistics are skipped. Raises FileNotFoundError for a
        missing file and ValueError naming the missing / mismatched keys.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"no pretrained ResNet weights at {path}; pass a local safetensors file converted from "
                "torchvision (see ResNetTrunk.load_pretrained), or vision_pretrained_path=None to train from "
                "scratch (nothing is ever downloaded)"
            )
        weights = _strip_prefix(load_safetensors(path, fix="convert the torchvision weights again"))
        own = {k: v for k, v in self.state_dict().items() if not k.startswith("film.")}
        skip = ("running_mean", "running_var", "num_batches_tracked")
        if self.norm_kind == "group":
            weights = {k: v for k, v in weights.items() if not k.endswith(skip)}
        weights = {k: v for k, v in weights.items() if not k.startswith("fc.")}
        mismatch = state_dict_mismatch(own, weights)
        if mismatch:
            raise ValueError(
                f"{path} does not hold torchvision {self.arch} weights: {mismatch}; convert the "
                f"matching torchvision model (vision_backbone={self.arch!r})"
            )
        self.load_state_dict(weights, strict=False)


def _strip_prefix(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in ("module.", "backbone.", "model.", "resnet.", "encoder."):
        if weights and all(k.startswith(prefix) for k in weights):
            weights = {k[len(prefix) :]: v for k, v in weights.items()}
    return weights
