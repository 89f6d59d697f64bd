"""CLIP features of masks and texts through open_clip: global-context, local-context and text features.

Visual features of the N masks of one image (Global-Local CLIP, docs/METHODS.md#global-local-clip-image-features):

- **global-context**: the whole image through the vision tower. For a ViT, the patch tokens are multiplied
  by the mask (resized to the token grid, soft bilinear values) before every block from ``mask_from_block``
  on (default: three quarters of the depth, block 9 of 12); the class token is never masked; the output is
  ``ln_post(CLS) @ proj``. The blocks before ``mask_from_block`` do not depend on the mask, so they run
  once per image and only the masked tail runs per mask, in batches. For a ModifiedResNet (RN50) the last
  feature map is multiplied by the mask (resized to its grid) before attention pooling, again with the
  trunk run once.
- **local-context**: the mask's crop, with the pixels outside the mask replaced by a background (mean
  colour or black), resized to the model's input size and encoded; all crops of an image go through the
  encoder in batches.

Two preprocessing variants (``ClipFeatureConfig.preprocessing``, ``workers.engine.blocks.clip.config``):

- ``"reference"`` reproduces the public code: the RGB image resized so its shorter side is 800 (PIL
  bilinear), ImageNet mean/std (not CLIP's), stretched to the input size for the global path; masks at the
  original resolution resized bilinearly to the grid; the local path composites in normalised space with
  the ImageNet mean *values* (0.485, 0.456, 0.406) as background (the public code's quirk), crops to the
  FreeSOLO box (:func:`freesolo_box_xyxy`) and resizes the crop (no aspect kept).
- ``"clean"``: the model's own mean/std, the image letterboxed (aspect kept, padded with the mean colour)
  for the global path, tight box crops padded square with the background before resizing, antialiasing on.

``antialias`` is exposed because torchvision >= 0.17 antialiases tensor resizes by default and the
reference's pinned 0.11 did not; ``None`` means: off for ``reference``, on for ``clean``.

Batches are chunked to ``max_masks_per_forward`` and, when set, to ``max_forward_mb`` of estimated
activation memory. ``*_per_mask`` twins run one full forward per mask (the peers' way); tests check that
the batched path equals them, and the benchmark times both.

Text features: ``w_sentence * f(sentence) + w_phrase * f(noun phrase)`` on unnormalised features,
tokenised with the model's open_clip tokenizer, which truncates to the 77-token context (never an error).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from workers.engine.blocks.clip.config import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    OPENAI_MEAN,
    OPENAI_STD,
    ClipFeatureConfig,
)
from workers.engine.blocks.clip.tower import ClipTower, is_vit
from workers.engine.blocks.geometry import freesolo_box_xyxy, pad_square_chw, tight_box_xyxy
from workers.engine.blocks.masks import Proposals
from workers.engine.core.cache import ImageContext, cache_params
from workers.engine.core.errors import BadInputError, ConfigError
from workers.engine.core.meter import Meter, current_meter


@dataclass(frozen=True)
class _Letterbox:
    """Where an ``H x W`` image sits inside the ``S x S`` letterboxed input (clean path)."""

    new_h: int
    new_w: int
    top: int
    left: int


@dataclass
class PreparedImage:
    """Tensors of one image, made once and shared by every mask.

    Attributes:
        global_input: ``1 x 3 x S x S`` float, the vision tower's input for the global path.
        local_source: ``3 x H x W`` float, normalised, at the original resolution (crops are cut from it).
        image_size: ``(H, W)``.
        letterbox: geometry of the clean path's global input, ``None`` for the reference path.
    """

    global_input: torch.Tensor
    local_source: torch.Tensor
    image_size: tuple[int, int]
    letterbox: _Letterbox | None


# ---------------------------------------------------------------------------------------------------
# The extractor
# ---------------------------------------------------------------------------------------------------


class ClipFeatureExtractor:
    """Mask and text features of one open_clip model.

    Args:
        model: an open_clip ``CLIP`` (``.visual`` a ``VisionTransformer`` or ``ModifiedResNet``), in eval mode.
        tokenizer: the model's open_clip tokenizer (``tokenizer(list[str]) -> T x context`` LongTensor).
        model_name: the model store name (meter and cache keys).
        settings: :class:`ClipFeatureConfig`.
        meter: counts ``"<model_name>:image"`` and ``"<model_name>:text"`` forwards and their seconds.
        mean, std: the model's own normalisation (clean path); CLIP's by default.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Callable[[list[str]], torch.Tensor],
        *,
        model_name: str,
        settings: ClipFeatureConfig | None = None,
        meter: Meter | None = None,
        mean: Sequence[float] = OPENAI_MEAN,
        std: Sequence[float] = OPENAI_STD,
        text_cache_size: int = 4096,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.settings = settings or ClipFeatureConfig()
        self._meter = meter
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        visual = model.visual
        self.visual = visual
        self.is_vit = is_vit(visual)
        self.is_resnet = hasattr(visual, "attnpool") and hasattr(visual, "layer4")
        if not (self.is_vit or self.is_resnet):
            raise ConfigError(
                f"CLIP model {model_name!r}: vision tower {type(visual).__name__} is neither a ViT nor a ModifiedResNet"
            )
        self.tower = ClipTower(visual, model_name=model_name) if self.is_vit else None
        size = visual.image_size
        self.input_size = (
            (int(size[0]), int(size[1])) if isinstance(size, tuple | list) else (int(size), int(size))
        )
        if self.tower is not None:
            self.grid_size = self.tower.grid
            self.depth = self.tower.depth
            self.width = self.tower.width
            self.heads = self.tower.heads
        else:
            self.grid_size = (self.input_size[0] // 32, self.input_size[1] // 32)
            self.depth = 0
            self.width = int(visual.attnpool.k_proj.in_features)
            self.heads = int(visual.attnpool.num_heads)
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._text_cache_size = text_cache_size
        self._text_lock = threading.Lock()

    # -- properties ------------------------------------------------------------------------------
    @property
    def meter(self) -> Meter:
        """The meter given at construction, else the active one (a wrapper kept by the hub has none)."""
        return self._meter if self._meter is not None else current_meter()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.visual.parameters()).dtype

    @property
    def mask_from_block(self) -> int:
        """The first masked ViT block (0-based), clamped to the model's depth."""
        if not self.is_vit:
            return 0
        chosen = self.settings.mask_from_block
        if chosen is None:
            chosen = self.depth * 3 // 4
        return min(max(int(chosen), 0), self.depth - 1)

    def describe(self) -> dict[str, Any]:
        """What the features depend on besides the weights (cache keys; batch sizes change nothing)."""
        settings = self.settings.to_dict()
        for batching_only in ("max_masks_per_forward", "max_forward_mb"):
            settings.pop(batching_only)
        return {
            "model": self.model_name,
            "settings": settings,
            "mask_from_block": self.mask_from_block,
            "input_size": list(self.input_size),
            "mean": list(self.mean),
            "std": list(self.std),
        }

    # -- chunking --------------------------------------------------------------------------------
    def per_mask_bytes(self) -> int:
        """Estimated activation bytes of one mask in a batched forward (float32)."""
        if self.is_vit:
            tokens = self.grid_size[0] * self.grid_size[1] + 1
            per_block = tokens * self.width * 4 * 10 + self.heads * tokens * tokens * 4 * 2
            return per_block + 3 * self.input_size[0] * self.input_size[1] * 4
        channels = self.width
        return (
            channels * self.grid_size[0] * self.grid_size[1] * 4 * 4
            + 3 * self.input_size[0] * self.input_size[1] * 4 * 64
        )

    def chunk_size(self) -> int:
        size = self.settings.max_masks_per_forward
        if self.settings.max_forward_mb is not None:
            size = min(size, max(1, int(self.settings.max_forward_mb * 2**20 // self.per_mask_bytes())))
        return max(1, size)

    # -- image preparation -------------------------------------------------------------------------
    def prepare_image(self, rgb: np.ndarray) -> PreparedImage:
        """Normalised tensors of an ``H x W x 3`` uint8 RGB image (see :class:`PreparedImage`)."""
        if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            shape = getattr(rgb, "shape", None)
            raise BadInputError(f"an image must be an H x W x 3 uint8 RGB array, got {shape}")
        height, width = rgb.shape[:2]
        antialias = self.settings.use_antialias
        device, dtype = self.device, self.dtype
        if self.settings.preprocessing == "reference":
            pil = Image.fromarray(rgb)
            resized = TF.resize(pil, self.settings.shorter_side, interpolation=InterpolationMode.BILINEAR)
            tensor = TF.normalize(TF.to_tensor(resized), IMAGENET_MEAN, IMAGENET_STD).to(device)
            global_input = TF.resize(
                tensor, list(self.input_size), interpolation=InterpolationMode.BILINEAR, antialias=antialias
            )
            local_source = TF.resize(
                tensor, [height, width], interpolation=InterpolationMode.BILINEAR, antialias=antialias
            )
            return PreparedImage(global_input[None].to(dtype), local_source.to(dtype), (height, width), None)
        tensor = TF.normalize(TF.to_tensor(rgb), self.mean, self.std).to(device)
        side_h, side_w = self.input_size
        scale = min(side_h / height, side_w / width)
        new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
        top, left = (side_h - new_h) // 2, (side_w - new_w) // 2
        resized = TF.resize(
            tensor, [new_h, new_w], interpolation=InterpolationMode.BICUBIC, antialias=antialias
        )
        global_input = torch.zeros((3, side_h, side_w), device=device, dtype=tensor.dtype)
        global_input[:, top : top + new_h, left : left + new_w] = resized
        return PreparedImage(
            global_input[None].to(dtype),
            tensor.to(dtype),
            (height, width),
            _Letterbox(new_h, new_w, top, left),
        )

    def _check_masks(self, prepared: PreparedImage, masks: torch.Tensor | np.ndarray) -> torch.Tensor:
        tensor = torch.as_tensor(masks)
        if tensor.ndim != 3 or tuple(tensor.shape[1:]) != prepared.image_size:
            raise BadInputError(
                f"masks must be N x H x W with H x W = {prepared.image_size}, got {tuple(tensor.shape)}"
            )
        return tensor

    def grid_weights(self, prepared: PreparedImage, masks: torch.Tensor) -> torch.Tensor:
        """Soft mask values on the vision tower's grid, ``N x gh x gw`` float in [0, 1]."""
        antialias = self.settings.use_antialias
        floats = masks.to(self.device, torch.float32)[:, None]
        if prepared.letterbox is None:
            grid = F.interpolate(
                floats, size=self.grid_size, mode="bilinear", align_corners=False, antialias=antialias
            )
            return grid[:, 0]
        box = prepared.letterbox
        placed = torch.zeros((floats.shape[0], 1, *self.input_size), device=self.device)
        placed[:, :, box.top : box.top + box.new_h, box.left : box.left + box.new_w] = F.interpolate(
            floats, size=(box.new_h, box.new_w), mode="bilinear", align_corners=False, antialias=antialias
        )
        grid = F.interpolate(
            placed, size=self.grid_size, mode="bilinear", align_corners=False, antialias=antialias
        )
        return grid[:, 0]

    # -- global-context ----------------------------------------------------------------------------
    def _resnet_trunk(self, image: torch.Tensor) -> torch.Tensor:
        visual = self.visual
        x = visual.stem(image)
        return visual.layer4(visual.layer3(visual.layer2(visual.layer1(x))))

    @torch.inference_mode()
    def global_features(self, prepared: PreparedImage, masks: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Global-context features of N masks in batched forwards, ``N x D`` float32 (unnormalised).

        Args:
            prepared: from :meth:`prepare_image`.
            masks: ``N x H x W`` bool (or float in [0, 1]) at the image's resolution.
        """
        masks = self._check_masks(prepared, masks)
        n = masks.shape[0]
        if n == 0:
            return torch.zeros((0, self.output_dim), dtype=torch.float32)
        outputs = []
        chunk = self.chunk_size()
        with self.meter.model_call(f"{self.model_name}:image"):
            if self.is_vit:
                start = self.mask_from_block
                shared = self.tower.blocks(self.tower.embed(prepared.global_input), 0, start)
            else:
                shared = self._resnet_trunk(prepared.global_input)
        for first in range(0, n, chunk):
            weights = self.grid_weights(prepared, masks[first : first + chunk])
            with self.meter.model_call(f"{self.model_name}:image"):
                if self.is_vit:
                    tokens = shared.expand(weights.shape[0], -1, -1)
                    x = self.tower.blocks(tokens, start, token_weights=weights.flatten(1))
                    outputs.append(self.tower.head(x[:, 0]).float().cpu())
                else:
                    fmap = shared * weights[:, None].to(shared.dtype)
                    outputs.append(self.visual.attnpool(fmap).float().cpu())
        return torch.cat(outputs)

    @torch.inference_mode()
    def global_features_per_mask(
        self, prepared: PreparedImage, masks: torch.Tensor | np.ndarray
    ) -> torch.Tensor:
        """The same features as :meth:`global_features`, one full forward per mask (the peers' way)."""
        masks = self._check_masks(prepared, masks)
        outputs = []
        for i in range(masks.shape[0]):
            weights = self.grid_weights(prepared, masks[i : i + 1])
            with self.meter.model_call(f"{self.model_name}:image"):
                if self.is_vit:
                    start = self.mask_from_block
                    x = self.tower.blocks(self.tower.embed(prepared.global_input), 0, start)
                    x = self.tower.blocks(x, start, token_weights=weights.flatten(1))
                    outputs.append(self.tower.head(x[:, 0]).float().cpu())
                else:
                    fmap = self._resnet_trunk(prepared.global_input) * weights[:, None]
                    outputs.append(self.visual.attnpool(fmap).float().cpu())
        if not outputs:
            return torch.zeros((0, self.output_dim), dtype=torch.float32)
        return torch.cat(outputs)

    # -- local-context -----------------------------------------------------------------------------
    def _background(self) -> torch.Tensor:
        """Background colour in normalised space, ``3 x 1 x 1``."""
        if self.settings.preprocessing == "reference":
            if self.settings.local_background == "mean":
                # The public code's quirk: the mean *values* written into the normalised space.
                values = torch.tensor(IMAGENET_MEAN)
            else:
                values = -torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD)
        elif self.settings.local_background == "mean":
            values = torch.zeros(3)  # the model's mean colour is 0 once normalised
        else:
            values = -torch.tensor(self.mean) / torch.tensor(self.std)
        return values.view(3, 1, 1).to(self.device, self.dtype)

    def local_crops(self, prepared: PreparedImage, masks: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Masked crops on the background, resized to the input size, ``N x 3 x S x S``."""
        masks = self._check_masks(prepared, masks)
        antialias = self.settings.use_antialias
        background = self._background()
        source = prepared.local_source
        crops = torch.empty((masks.shape[0], 3, *self.input_size), device=self.device, dtype=self.dtype)
        reference = self.settings.preprocessing == "reference"
        for i in range(masks.shape[0]):
            mask = masks[i]
            x0, y0, x1, y1 = freesolo_box_xyxy(mask) if reference else tight_box_xyxy(mask)
            m = mask[y0:y1, x0:x1].to(self.device, self.dtype)[None]
            crop = source[:, y0:y1, x0:x1] * m + (1 - m) * background
            if not reference:
                crop = pad_square_chw(crop, background)
            interpolation = InterpolationMode.BILINEAR if reference else InterpolationMode.BICUBIC
            crops[i] = TF.resize(
                crop, list(self.input_size), interpolation=interpolation, antialias=antialias
            )
        return crops

    def _encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images).float().cpu()

    @torch.inference_mode()
    def local_features(self, prepared: PreparedImage, masks: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Local-context features of N masks in batched forwards, ``N x D`` float32 (unnormalised)."""
        masks = self._check_masks(prepared, masks)
        if masks.shape[0] == 0:
            return torch.zeros((0, self.output_dim), dtype=torch.float32)
        outputs = []
        chunk = self.chunk_size()
        for first in range(0, masks.shape[0], chunk):
            crops = self.local_crops(prepared, masks[first : first + chunk])
            with self.meter.model_call(f"{self.model_name}:image"):
                outputs.append(self._encode_images(crops))
        return torch.cat(outputs)

    @torch.inference_mode()
    def local_features_per_mask(
        self, prepared: PreparedImage, masks: torch.Tensor | np.ndarray
    ) -> torch.Tensor:
        """The same features as :meth:`local_features`, one forward per mask."""
        masks = self._check_masks(prepared, masks)
        outputs = []
        for i in range(masks.shape[0]):
            crops = self.local_crops(prepared, masks[i : i + 1])
            with self.meter.model_call(f"{self.model_name}:image"):
                outputs.append(self._encode_images(crops))
        if not outputs:
            return torch.zeros((0, self.output_dim), dtype=torch.float32)
        return torch.cat(outputs)

    def visual_features(self, rgb: np.ndarray, masks: torch.Tensor | np.ndarray) -> dict[str, torch.Tensor]:
        """``{"global": N x D, "local": N x D}`` float32 CPU tensors for the masks of one image."""
        prepared = self.prepare_image(rgb)
        return {
            "global": self.global_features(prepared, masks),
            "local": self.local_features(prepared, masks),
        }

    # -- text --------------------------------------------------------------------------------------
    @property
    def output_dim(self) -> int:
        if self.tower is not None:
            return self.tower.output_dim
        return int(self.visual.attnpool.c_proj.out_features)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Unnormalised text features, ``T x D`` float32; repeated texts are encoded once per process.

        Texts longer than the tokenizer's context are truncated by the tokenizer (open_clip keeps the
        end-of-text token), so a 10 000-character expression scores like its first 76 tokens.
        """
        texts = [str(t) for t in texts]
        with self._text_lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._text_cache))
        if missing:
            tokens = self.tokenizer(missing).to(self.device)
            with self.meter.model_call(f"{self.model_name}:text"):
                encoded = self.model.encode_text(tokens).float().cpu()
            with self._text_lock:
                for text, feature in zip(missing, encoded, strict=True):
                    self._text_cache[text] = feature
                    self._text_cache.move_to_end(text)
                while len(self._text_cache) > self._text_cache_size:
                    self._text_cache.popitem(last=False)
                found = {t: self._text_cache.get(t) for t in texts}
            # A tiny cache may have dropped some of this call's texts; keep them from ``encoded``.
            fresh = dict(zip(missing, encoded, strict=True))
            return torch.stack([found[t] if found[t] is not None else fresh[t] for t in texts])
        with self._text_lock:
            return torch.stack([self._text_cache[t] for t in texts])

    def text_features(
        self,
        sentences: Sequence[str],
        noun_phrases: Sequence[str],
        *,
        sentence_weight: float = 0.5,
        phrase_weight: float = 0.5,
    ) -> torch.Tensor:
        """``sentence_weight * f(sentence) + phrase_weight * f(noun phrase)`` per expression, ``E x D``."""
        if len(sentences) != len(noun_phrases):
            raise BadInputError(f"{len(sentences)} sentences but {len(noun_phrases)} noun phrases")
        if not sentences:
            return torch.zeros((0, self.output_dim), dtype=torch.float32)
        encoded = self.encode_texts([*sentences, *noun_phrases])
        n = len(sentences)
        return sentence_weight * encoded[:n] + phrase_weight * encoded[n:]


# ---------------------------------------------------------------------------------------------------
# Through the model hub and the per-image cache
# ---------------------------------------------------------------------------------------------------


def extractor_from_bundle(bundle: Any, model_name: str, settings: ClipFeatureConfig) -> ClipFeatureExtractor:
    """A :class:`ClipFeatureExtractor` on a store ``ClipBundle`` (its own mean / std for the clean path)."""
    cfg = getattr(bundle, "preprocess_cfg", {}) or {}
    kwargs: dict[str, Any] = {k: cfg[k] for k in ("mean", "std") if cfg.get(k) is not None}
    return ClipFeatureExtractor(
        bundle.model, bundle.tokenizer, model_name=model_name, settings=settings, **kwargs
    )


def clip_extractor(hub: Any, model_name: str, settings: ClipFeatureConfig) -> ClipFeatureExtractor:
    """The hub's extractor for CLIP model ``model_name`` and ``settings`` (built once, dropped with the model)."""
    return hub.wrapper(
        model_name,
        "clip_features",
        lambda bundle: extractor_from_bundle(bundle, model_name, settings),
        key=settings.to_dict(),
    )


def cached_visual_features(
    ctx: ImageContext, extractor: ClipFeatureExtractor, proposals: Proposals, fingerprint: str
) -> dict[str, torch.Tensor]:
    """``{"global": N x D, "local": N x D}`` float32 CPU features of ``proposals``, computed once per image.

    ``fingerprint``: the CLIP model's ``ModelHub.fingerprint``.
    """
    params = cache_params(models={"clip": fingerprint}, masks=proposals, settings=extractor.describe())

    def compute() -> dict[str, torch.Tensor]:
        masks = proposals.to_tensor()
        with ctx.meter.stage("clip_visual"):
            return extractor.visual_features(ctx.rgb, masks)

    return ctx.cached("clip_visual", params, compute)
