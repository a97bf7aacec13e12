"""Vision encoders: shapes, FiLM identity at init, random-shift bounds, pretrained-weight loading."""

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from mode_policy.nn.encoders.resnet import ResNetTrunk
from mode_policy.nn.encoders.vision import VisionEncoder, random_shift


@pytest.mark.parametrize("pool", ["spatial_softmax", "avg"])
@pytest.mark.parametrize("shared", [False, True])
def test_encoder_shapes(pool, shared):
    encoder = VisionEncoder(2, cond_dim=6, feature_dim=16, pool=pool, shared=shared, norm="group")
    out = encoder(torch.randn(3, 2, 3, 40, 48), torch.randn(3, 6))
    assert out.shape == (3, 2, 16)
    assert len(encoder.cameras) == (1 if shared else 2)


@pytest.mark.parametrize(("arch", "channels"), [("resnet18", 512), ("resnet50", 2048)])
def test_trunk_output_channels(arch, channels):
    trunk = ResNetTrunk(arch, norm="group").eval()
    assert trunk(torch.randn(1, 3, 64, 64)).shape == (1, channels, 2, 2)


def test_film_is_identity_at_init():
    torch.manual_seed(0)
    film = ResNetTrunk("resnet18", cond_dim=5).eval()
    plain = ResNetTrunk("resnet18").eval()
    plain.load_state_dict({k: v for k, v in film.state_dict().items() if not k.startswith("film.")})
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(film(x, torch.randn(2, 5)), plain(x))


def test_random_shift_stays_inside_padded_original():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 12, 10), dtype=torch.uint8)
    shifted = random_shift(images, pad=4)
    assert shifted.shape == images.shape and shifted.dtype == torch.uint8
    padded = F.pad(images.float(), (4, 4, 4, 4), mode="replicate").to(torch.uint8)
    offsets = set()
    for i in range(len(images)):
        matches = [
            (dy, dx)
            for dy in range(9)
            for dx in range(9)
            if torch.equal(padded[i, :, dy : dy + 12, dx : dx + 10], shifted[i])
        ]
        assert matches, f"image {i} is not a crop of its padded original"
        offsets.add(matches[0])
    assert len(offsets) > 1  # per-image offsets
    assert torch.equal(random_shift(images, pad=0), images)


def test_pretrained_loading(tmp_path):
    source = ResNetTrunk("resnet18")
    weights = {f"backbone.{k}": v for k, v in source.state_dict().items()}
    weights["backbone.fc.weight"] = torch.zeros(1000, 512)  # torchvision's classifier is ignored
    save_file(weights, str(tmp_path / "r18.safetensors"))
    encoder = VisionEncoder(1, cond_dim=4, pretrained_path=tmp_path / "r18.safetensors")
    trunk = encoder.cameras[0].trunk
    assert torch.equal(trunk.conv1.weight, source.conv1.weight)
    assert torch.equal(trunk.layer4[1].bn2.running_var, source.layer4[1].bn2.running_var)
    with pytest.raises(FileNotFoundError, match="nothing is ever downloaded"):
        VisionEncoder(1, cond_dim=0, pretrained_path=tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="resnet34"):
        ResNetTrunk("resnet34").load_pretrained(tmp_path / "r18.safetensors")
    grouped = ResNetTrunk("resnet18", norm="group")
    grouped.load_pretrained(tmp_path / "r18.safetensors")  # running stats skipped, affine weights loaded
    assert torch.equal(grouped.bn1.weight, source.bn1.weight)
