"""CLIP features of masks and texts through open_clip: global-context, local-context and text features.

Visual features of the N masks of one image (Global-Local CLIP, METHODS.md section 1):

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

Two preprocessing variants (``VisualFeatureSettings.preprocessing``):

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
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from workers.engine.errors import BadInputError, ConfigError
from workers.engine.meter import Meter

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

PREPROCESSING_CHOICES = ("reference", "clean")
BACKGROUND_CHOICES = ("mean", "black")


@dataclass(frozen=True)
class VisualFeatureSettings:
    """How visual features of masks are computed.

    Attributes:
        preprocessing: ``"reference"`` (the public code's, quirks included) or ``"clean"`` (module docstring).
        mask_from_block: first ViT block whose input patch tokens are masked; ``None`` = ``depth * 3 // 4``
            (9 of 12). Ignored for ResNets.
        local_background: ``"mean"`` or ``"black"`` behind the local crop.
        antialias: antialias resizes; ``None`` = off for ``reference``, on for ``clean``.
        shorter_side: the reference path's shorter image side before normalisation (800).
        max_masks_per_forward: largest batch of masks in one forward.
        max_forward_mb: optional cap on the estimated activation memory of one forward, in MiB.
    """

    preprocessing: str = "reference"
    mask_from_block: int | None = None
    local_background: str = "mean"
    antialias: bool | None = None
    shorter_side: int = 800
    max_masks_per_forward: int = 32
    max_forward_mb: float | None = None

    def __post_init__(self) -> None:
        if self.preprocessing not in PREPROCESSING_CHOICES:
            raise ConfigError(
                f"preprocessing must be one of {PREPROCESSING_CHOICES}, got {self.preprocessing!r}"
            )
        if self.local_background not in BACKGROUND_CHOICES:
            raise ConfigError(
                f"local_background must be one of {BACKGROUND_CHOICES}, got {self.local_background!r}"
            )
        if self.mask_from_block is not None and self.mask_from_block < 0:
            raise ConfigError(f"mask_from_block must be >= 0 or null, got {self.mask_from_block}")
        if self.shorter_side < 16:
            raise ConfigError(f"shorter_side must be >= 16, got {self.shorter_side}")
        if self.max_masks_per_forward < 1:
            raise ConfigError(f"max_masks_per_forward must be >= 1, got {self.max_masks_per_forward}")
        if self.max_forward_mb is not None and self.max_forward_mb <= 0:
            raise ConfigError(f"max_forward_mb must be > 0 or null, got {self.max_forward_mb}")

    @property
    def use_antialias(self) -> bool:
        return self.antialias if self.antialias is not None else self.preprocessing == "clean"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VisualFeatureSettings:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# ---------------------------------------------------------------------------------------------------
# Geometry helpers
# ---------------------------------------------------------------------------------------------------


def freesolo_box_xyxy(mask: np.ndarray | torch.Tensor) -> tuple[int, int, int, int]:
    """The reference code's box of an ``H x W`` mask, integer ``xyxy`` (exclusive ends), clipped to the image.

    Per axis: the centre of mass of the occupied rows (columns) plus and minus half their number,
    truncated to integers. For a mask with no pixel, the whole image.
    """
    array = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    height, width = array.shape
    rows = np.flatnonzero(array.any(axis=1))
    cols = np.flatnonzero(array.any(axis=0))
    if rows.size == 0 or cols.size == 0:
        return 0, 0, width, height
    cy, cx = rows.mean(), cols.mean()
    y0, y1 = int(cy - rows.size / 2), int(cy + rows.size / 2)
    x0, x1 = int(cx - cols.size / 2), int(cx + cols.size / 2)
    x0, y0 = min(max(x0, 0), width - 1), min(max(y0, 0), height - 1)
    x1, y1 = min(max(x1, x0 + 1), width), min(max(y1, y0 + 1), height)
    return x0, y0, x1, y1


def tight_box_xyxy(mask: np.ndarray | torch.Tensor) -> tuple[int, int, int, int]:
    """Tight integer ``xyxy`` box (exclusive ends) of an ``H x W`` mask; the whole image when empty."""
    array = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    rows = np.flatnonzero(array.any(axis=1))
    cols = np.flatnonzero(array.any(axis=0))
    if rows.size == 0 or cols.size == 0:
        return 0, 0, array.shape[1], array.shape[0]
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


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
        settings: :class:`VisualFeatureSettings`.
        meter: counts ``"<model_name>:image"`` and ``"<model_name>:text"`` forwards and their seconds.
        mean, std: the model's own normalisation (clean path); CLIP's by default.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Callable[[list[str]], torch.Tensor],
        *,
        model_name: str,
        settings: VisualFeatureSettings | None = None,
        meter: Meter | None = None,
        mean: Sequence[float] = OPENAI_MEAN,
        std: Sequence[float] = OPENAI_STD,
        text_cache_size: int = 4096,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.settings = settings or VisualFeatureSettings()
        self.meter = meter or Meter()
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        visual = model.visual
        self.visual = visual
        self.is_vit = hasattr(visual, "transformer") and hasattr(visual, "class_embedding")
        self.is_resnet = hasattr(visual, "attnpool") and hasattr(visual, "layer4")
        if not (self.is_vit or self.is_resnet):
            raise ConfigError(
                f"CLIP model {model_name!r}: vision tower {type(visual).__name__} is neither a ViT nor a ModifiedResNet"
            )
        if self.is_vit and getattr(visual, "attn_pool", None) is not None:
            raise ConfigError(f"CLIP model {model_name!r}: ViTs with attentional pooling are not supported")
        self.input_size = _pair(visual.image_size)
        if self.is_vit:
            self.grid_size = _pair(visual.grid_size)
            self.depth = len(visual.transformer.resblocks)
            self.width = int(visual.transformer.width)
            self.heads = int(visual.transformer.resblocks[0].attn.num_heads)
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
    def _vit_embed(self, image: torch.Tensor) -> torch.Tensor:
        """``B x 3 x S x S`` -> ``B x (1 + g*g) x width`` tokens after ``ln_pre`` (batch first)."""
        visual = self.visual
        x = visual.conv1(image)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
        return visual.ln_pre(x)

    def _vit_blocks(
        self, x: torch.Tensor, start: int, stop: int, weights: torch.Tensor | None
    ) -> torch.Tensor:
        """Run blocks ``[start, stop)`` on batch-first tokens; patch tokens times ``weights`` (``B x g*g``)."""
        transformer = self.visual.transformer
        batch_first = getattr(transformer, "batch_first", True)
        for index in range(start, stop):
            if weights is not None:
                x = torch.cat([x[:, :1], x[:, 1:] * weights[:, :, None].to(x.dtype)], dim=1)
            block = transformer.resblocks[index]
            x = block(x) if batch_first else block(x.transpose(0, 1)).transpose(0, 1)
        return x

    def _vit_head(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.visual.ln_post(x[:, 0])
        return pooled @ self.visual.proj if self.visual.proj is not None else pooled

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
                shared = self._vit_blocks(self._vit_embed(prepared.global_input), 0, start, None)
            else:
                shared = self._resnet_trunk(prepared.global_input)
        for first in range(0, n, chunk):
            weights = self.grid_weights(prepared, masks[first : first + chunk])
            with self.meter.model_call(f"{self.model_name}:image"):
                if self.is_vit:
                    tokens = shared.expand(weights.shape[0], -1, -1)
                    x = self._vit_blocks(tokens, start, self.depth, weights.flatten(1))
                    outputs.append(self._vit_head(x).float().cpu())
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
                    x = self._vit_blocks(self._vit_embed(prepared.global_input), 0, start, None)
                    x = self._vit_blocks(x, start, self.depth, weights.flatten(1))
                    outputs.append(self._vit_head(x).float().cpu())
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
                crop = _pad_square(crop, background)
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
        if self.is_vit:
            proj = self.visual.proj
            return int(proj.shape[1]) if proj is not None else self.width
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


def _pad_square(crop: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """Pad a ``3 x h x w`` crop to a centred square filled with ``background`` (``3 x 1 x 1``)."""
    _, h, w = crop.shape
    side = max(h, w)
    if h == w:
        return crop
    out = background.expand(3, side, side).clone()
    top, left = (side - h) // 2, (side - w) // 2
    out[:, top : top + h, left : left + w] = crop
    return out


def cosine_scores(visual: torch.Tensor, text: torch.Tensor, scale: float = 100.0) -> torch.Tensor:
    """``scale * cosine`` of every (mask, expression) pair: ``N x D``, ``E x D`` -> ``E x N`` float32."""
    v = F.normalize(visual.float(), dim=-1)
    t = F.normalize(text.float(), dim=-1)
    return scale * t @ v.T
