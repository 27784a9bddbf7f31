"""inpaint_only outside the inpaint tab: keep the picture outside the unit's mask, as the extension does.

When a unit runs `inpaint_only` on its own image and mask (txt2img, or img2img without the tab's
mask), the extension does two things besides the control itself:

* after every UNet evaluation, whatever the step window, it predicts the clean latents from the
  output, puts the picture's own latents back outside the mask (the mask max-pooled to latent size
  with a 10x10 window, stride 8, padding 1), turns that back into a noise prediction and blends it
  with the output by the unit's weight (clamped to 0..1);
* on the decoded picture, it pastes the control picture back outside the mask, the mask dilated and
  box-blurred by 7 pixels for a soft seam.

Its clean-latent formulas read the output as noise (epsilon), so for v-prediction checkpoints the
first step is left out here rather than computed on the wrong quantity.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from PIL import Image

from modules.models.load import SDModel

SEAM = 7  # the extension's control_net_inpaint_blur_sigma default


def _schedule(model: SDModel) -> tuple[torch.Tensor, torch.Tensor]:
    """sqrt(1 / alpha_bar) and sqrt(1 / alpha_bar - 1) per training step, as LDM registers them
    (computed in float64, kept in float32)."""
    arch = model.arch
    betas = np.linspace(arch.linear_start ** 0.5, arch.linear_end ** 0.5, arch.num_train_timesteps,
                        dtype=np.float64) ** 2
    alpha_bar = np.cumprod(1.0 - betas)
    return (torch.tensor(np.sqrt(1.0 / alpha_bar), dtype=torch.float32),
            torch.tensor(np.sqrt(1.0 / alpha_bar - 1.0), dtype=torch.float32))


@dataclass
class InpaintRestore:
    latents: torch.Tensor  # 1x4xhxw: the control picture encoded
    mask: torch.Tensor  # 1x1xhxw: 1 where the unit repaints
    weight: float
    sqrt_recip: torch.Tensor
    sqrt_recip_m1: torch.Tensor
    seam_mask: np.ndarray  # HxW in [0, 1] for the final paste
    picture: np.ndarray  # HxWx3 in [0, 1]
    epsilon: bool = True

    def noise(self, out: torch.Tensor, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """The UNet output with the picture's latents restored outside the mask (epsilon models)."""
        if not self.epsilon:
            return out
        xt = x[:, :4]
        step = torch.round(torch.as_tensor(t, dtype=torch.float32)).long().reshape(-1)[0].clamp(0, 999)
        a = self.sqrt_recip[step].to(xt)
        b = self.sqrt_recip_m1[step].to(xt)
        mask, origin = self.mask.to(xt), self.latents.to(xt)
        predicted = a * xt - b * out
        clean = predicted * mask + origin * (1 - mask)
        restored = (a * xt - clean) / b
        return restored * self.weight + out * (1 - self.weight)

    def paste(self, image: Image.Image) -> Image.Image:
        """The picture pasted back outside the (softened) mask."""
        if image.size != (self.picture.shape[1], self.picture.shape[0]):
            return image  # another pass size than the map's: left as it is, as the extension does
        x = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        m = self.seam_mask[:, :, None]
        y = np.clip(m * np.clip(x, 0, 1) + (1 - m) * self.picture, 0, 1)
        return Image.fromarray((y * 255.0).round().astype(np.uint8))


def inpaint_restore(model: SDModel, fitted: np.ndarray, weight: float, device: torch.device) -> InpaintRestore:
    """The restore data of an inpaint map fitted to the final size (HxWx4, mask 255 = repaint)."""
    feed = torch.from_numpy(np.ascontiguousarray(fitted, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    marked = (feed[:, 3:4] > 0.5).float()
    mask = torch.nn.functional.max_pool2d(marked, (10, 10), stride=(8, 8), padding=1)
    vae = model.vae
    with torch.no_grad():
        pixels = (feed[:, :3] * 2.0 - 1.0).to(device, next(vae.parameters()).dtype)
        latents = vae.encode(pixels).latent_dist.mode().float() * model.arch.scale_factor
    seam = cv2.dilate(feed[0, 3].numpy(), np.ones((SEAM, SEAM), dtype=np.uint8))
    seam = cv2.blur(seam, (SEAM, SEAM))
    sqrt_recip, sqrt_recip_m1 = _schedule(model)
    return InpaintRestore(latents, mask.to(device), max(0.0, min(1.0, float(weight))), sqrt_recip.to(device),
                          sqrt_recip_m1.to(device), seam, feed[0, :3].permute(1, 2, 0).numpy(),
                          epsilon=model.arch.prediction_type == "epsilon")
