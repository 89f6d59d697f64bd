"""Captions of mask crops and of whole images through a transformers image-to-text model (TAS's P- and N-scores).

Settings: :class:`workers.engine.blocks.captions.config.CaptionConfig`.

- :func:`blurred_background_crops`: each mask's crop with the mask's pixels sharp and everything else
  Gaussian-blurred (kernel 75, OpenCV's sigma for that kernel, as TAS's code), cut to the mask's tight
  box and padded to a centred square with black. The blurred image is made once per image, not once per
  mask as in the public code.
- :class:`Captioner`: captions PIL images in batches of ``batch_size`` with ``model.generate`` (beam search,
  LAVIS's BLIP-2 defaults: 5 beams, at most 30 new tokens, at least 1). Any ``AutoModelForImageTextToText``
  of the model store works: with an empty ``prompt`` the processor gets images only (BLIP-2), otherwise
  each image is paired with ``prompt`` and the prompt's tokens are cut from the answer.
- :func:`cached_mask_captions`, :func:`cached_image_caption`: the captions of an image's masks and the
  image-level caption, through the per-image cache, so every expression on an image (and every later job
  with the same settings) shares them.

The meter counts one call of the captioner's store name per *image captioned* (a batch of 16 crops adds
16 calls, and its seconds), so the count reads as "captions generated" and compares directly with the
public code, which calls ``generate`` once per mask, per ref.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from workers.engine.blocks.captions.config import BLUR_KERNEL, CaptionConfig
from workers.engine.blocks.geometry import pad_square, tight_box_xyxy
from workers.engine.blocks.masks import Proposals
from workers.engine.core.cache import ImageContext, cache_params
from workers.engine.core.errors import BadInputError, ConfigError
from workers.engine.core.meter import Meter, current_meter


def opencv_sigma(kernel: int) -> float:
    """The standard deviation OpenCV derives from a kernel size when it is given sigma 0."""
    return 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8


def blur_image(rgb: np.ndarray, kernel: int = BLUR_KERNEL) -> np.ndarray:
    """``H x W x 3`` uint8 Gaussian blur with OpenCV's sigma for ``kernel`` and reflected borders.

    The kernel shrinks (keeping its sigma) on images smaller than it, where reflection needs it.
    """
    if kernel < 1 or kernel % 2 == 0:
        raise ConfigError(f"blur kernel must be an odd positive number of pixels, got {kernel}")
    height, width = rgb.shape[:2]
    sigma = opencv_sigma(kernel)
    limit = 2 * (min(height, width) - 1) - 1  # reflection padding must stay under the image side
    size = kernel if kernel <= limit else max(1, limit if limit % 2 else limit - 1)
    if size < 3:
        return rgb.copy()
    tensor = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)
    blurred = TF.gaussian_blur(tensor, [size, size], [sigma, sigma])
    return blurred.permute(1, 2, 0).contiguous().numpy()


def blurred_background_crops(
    rgb: np.ndarray, masks: np.ndarray | torch.Tensor, *, kernel: int = BLUR_KERNEL
) -> list[Image.Image]:
    """One square PIL crop per mask: the mask sharp on the blurred image, cut to its box, padded black.

    Args:
        rgb: ``H x W x 3`` uint8 RGB.
        masks: ``N x H x W`` bool.
    """
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise BadInputError(
            f"an image must be an H x W x 3 uint8 RGB array, got {getattr(rgb, 'shape', None)}"
        )
    array = masks.detach().cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    if array.ndim != 3 or array.shape[1:] != rgb.shape[:2]:
        raise BadInputError(f"masks must be N x H x W with H x W = {rgb.shape[:2]}, got {array.shape}")
    if array.shape[0] == 0:
        return []
    blurred = blur_image(rgb, kernel)
    crops = []
    for mask in array.astype(bool, copy=False):
        x0, y0, x1, y1 = tight_box_xyxy(mask)
        window = mask[y0:y1, x0:x1, None]
        composite = np.where(window, rgb[y0:y1, x0:x1], blurred[y0:y1, x0:x1])
        crops.append(Image.fromarray(pad_square(composite)[0]))
    return crops


class Captioner:
    """Batched captions of PIL images by a loaded ``CaptionerBundle`` (model, processor, device, dtype).

    Args:
        bundle: from the model hub (``workers.engine.store.loaders.transformers.load_captioner``).
        model_name: the store name (meter and cache keys).
        settings: :class:`CaptionConfig`.
        meter: counts one call of ``model_name`` per image captioned; ``None`` records into the active meter
            (``current_meter()``), as a wrapper kept by the model hub must.
    """

    def __init__(
        self, bundle: Any, *, model_name: str, settings: CaptionConfig, meter: Meter | None = None
    ) -> None:
        for attribute in ("model", "processor"):
            if not hasattr(bundle, attribute):
                raise ConfigError(
                    f"model {model_name!r} is not an image-to-text captioner (no {attribute}); "
                    "choose a captioner of the model store in the config key captioner_model"
                )
        self.bundle = bundle
        self.model_name = model_name
        self.settings = settings
        self._meter = meter

    @property
    def meter(self) -> Meter:
        return self._meter if self._meter is not None else current_meter()

    @property
    def device(self) -> torch.device:
        return torch.device(getattr(self.bundle, "device", "cpu"))

    @property
    def dtype(self) -> torch.dtype:
        return getattr(self.bundle, "dtype", torch.float32)

    def _inputs(self, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        processor = self.bundle.processor
        if self.settings.prompt:
            encoded = processor(
                images=list(images), text=[self.settings.prompt] * len(images), return_tensors="pt"
            )
        else:
            encoded = processor(images=list(images), return_tensors="pt")
        inputs = {}
        for key, value in dict(encoded).items():
            if not isinstance(value, torch.Tensor):
                continue
            value = value.to(self.device)
            if value.is_floating_point():
                value = value.to(self.dtype)
            inputs[key] = value
        return inputs

    @torch.inference_mode()
    def caption(self, images: Sequence[Image.Image]) -> list[str]:
        """One caption per image, generated ``batch_size`` images at a time (whitespace-trimmed)."""
        captions: list[str] = []
        s = self.settings
        for first in range(0, len(images), s.batch_size):
            batch = list(images[first : first + s.batch_size])
            inputs = self._inputs(batch)
            with self.meter.model_call(self.model_name, n=len(batch)):
                generated = self.bundle.model.generate(
                    **inputs,
                    max_new_tokens=s.max_new_tokens,
                    min_new_tokens=s.min_new_tokens,
                    num_beams=s.num_beams,
                    do_sample=False,
                )
            if "input_ids" in inputs and generated.shape[1] >= inputs["input_ids"].shape[1]:
                generated = generated[:, inputs["input_ids"].shape[1] :]  # the answer without the prompt
            texts = self.bundle.processor.batch_decode(generated, skip_special_tokens=True)
            captions.extend(" ".join(t.split()) for t in texts)
        return captions

    def describe(self) -> dict[str, Any]:
        return {"model": self.model_name, "generation": self.settings.generation_dict()}


def cached_mask_captions(
    ctx: ImageContext, captioner: Captioner, proposals: Proposals, fingerprint: str
) -> list[str]:
    """Captions of ``proposals``' blurred-background crops, generated once per image and settings.

    ``fingerprint``: the captioner's ``ModelHub.fingerprint``.
    """
    params = cache_params(models={"captioner": fingerprint}, masks=proposals, settings=captioner.describe())

    def compute() -> dict[str, Any]:
        with ctx.meter.stage("captions"):
            crops = blurred_background_crops(
                ctx.rgb, proposals.to_numpy(), kernel=captioner.settings.blur_kernel
            )
            return {"captions": captioner.caption(crops)}

    return list(ctx.cached("tas_mask_captions", params, compute)["captions"])


def cached_image_caption(ctx: ImageContext, captioner: Captioner, fingerprint: str) -> str:
    """The caption of the whole image, generated once per image and settings."""
    describe = captioner.describe()
    describe["generation"].pop("blur_kernel", None)  # the whole image is never blurred
    params = cache_params(models={"captioner": fingerprint}, settings=describe)

    def compute() -> dict[str, Any]:
        with ctx.meter.stage("captions"):
            return {"caption": captioner.caption([Image.fromarray(ctx.rgb)])[0]}

    return str(ctx.cached("image_caption", params, compute)["caption"])
