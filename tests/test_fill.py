"""Model-free fills (harmonic, paste) and the harmonic start of the inpainting sampler."""

import pytest
import torch

from models.dit import DiTConfig, build_dit, build_scheduler
from models.fill import harmonic_fill
from models.inpaint import InpaintConfig, inpaint


def _box(size=24, top=6, left=8, h=8, w=10):
    mask = torch.zeros(1, 1, size, size)
    mask[..., top:top + h, left:left + w] = 1.0
    return mask


def test_harmonic_fill_reproduces_a_linear_ramp_and_keeps_the_outside():
    yy, xx = torch.meshgrid(torch.arange(24.0), torch.arange(24.0), indexing="ij")
    ramp = (0.1 + 0.02 * yy + 0.01 * xx)[None, None]  # linear: harmonic, so the fill must recover it
    holed = ramp.clone()
    mask = _box()
    holed[mask > 0] = 0.9  # a bright "lesion" inside the mask
    filled = harmonic_fill(holed, mask)
    assert torch.allclose(filled, ramp, atol=1e-5)
    assert torch.equal(filled[mask == 0], holed[mask == 0])


def test_harmonic_fill_at_the_film_edge_and_whole_image():
    image = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros_like(image)
    mask[0, 0, :4, :] = 1.0  # touches the top edge: a free boundary there
    mask[1] = 1.0  # no edge at all
    filled = harmonic_fill(image, mask)
    assert torch.isfinite(filled).all()
    lo, hi = image[0, 0, 4:].min(), image[0, 0, 4:].max()
    assert lo - 1e-6 <= filled[0, 0, :4].min() and filled[0, 0, :4].max() <= hi + 1e-6  # maximum principle
    assert torch.allclose(filled[1], image[1].mean().expand_as(filled[1]))


def test_harmonic_start_of_the_sampler():
    torch.manual_seed(0)
    config = DiTConfig(image_size=16, patch_size=4, depth=1, num_heads=2, head_dim=8)
    model, scheduler = build_dit(config).eval(), build_scheduler(config)
    image = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros_like(image)
    mask[..., 4:10, 5:12] = 1.0
    # strength so small that only the last step (t = 0, almost no noise) runs: about the fill itself
    tiny = inpaint(model, scheduler, image, mask, InpaintConfig(init="harmonic", strength=1e-4))
    assert torch.allclose(tiny, harmonic_fill(image, mask), atol=0.02)
    gens = [torch.Generator().manual_seed(s) for s in (3, 4)]
    out = inpaint(model, scheduler, image, mask, InpaintConfig(steps=10, init="harmonic", strength=0.5), gens)
    assert torch.equal(out[mask == 0], image[mask == 0]) and 0 <= out.min() and out.max() <= 1
    assert not torch.allclose(out, tiny)  # the DiT did change the region
    with pytest.raises(ValueError):
        InpaintConfig(init="harmonic", strength=0.0)
