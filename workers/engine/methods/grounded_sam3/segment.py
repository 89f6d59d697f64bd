"""SAM 3 on one image and one noun phrase: every instance as :class:`Proposals` at image size.

:func:`instances_from_outputs` is the post-processing: the processor's own
``post_process_instance_segmentation`` (scores = sigmoid(query logit) x sigmoid(presence logit), kept when
> ``score_threshold``; mask logits resized bilinearly to the image's ``H x W`` and cut at
``mask_threshold``), then empty masks dropped, the rest ordered by score (best first), the best
``max_instances`` kept and encoded as COCO RLE at ``H x W``. The scores ride in ``Proposals.predicted_iou``.

:func:`cached_instances` runs the model once per (image, noun phrase, model files, thresholds) through the
per-image cache; the meter counts one call of the SAM 3 store name per run (stage ``sam3``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from workers.engine.blocks.masks import Proposals
from workers.engine.core.cache import ImageContext, cache_params


def instances_from_outputs(
    processor: Any,
    outputs: Any,
    image_size: tuple[int, int],
    *,
    score_threshold: float,
    mask_threshold: float,
    max_instances: int,
) -> Proposals:
    """SAM 3 ``outputs`` of one image (``pred_logits`` ``1 x Q``, ``pred_boxes`` ``1 x Q x 4``, ``pred_masks``
    ``1 x Q x h x w`` logits, ``presence_logits`` ``1 x 1`` or ``None``) as instances at ``image_size``
    ``(H, W)``; ``processor`` is a ``Sam3Processor`` or ``Sam3ImageProcessor``."""
    height, width = int(image_size[0]), int(image_size[1])
    result = processor.post_process_instance_segmentation(
        outputs, threshold=score_threshold, mask_threshold=mask_threshold, target_sizes=[(height, width)]
    )[0]
    masks = result["masks"].detach().to("cpu").bool().numpy().reshape(-1, height, width)
    scores = result["scores"].detach().to("cpu").float().numpy().reshape(-1)
    keep = masks.reshape(len(masks), height * width).any(axis=1)
    masks, scores = masks[keep], scores[keep]
    order = np.argsort(-scores, kind="stable")[:max_instances]
    if len(order) == 0:
        return Proposals.empty((height, width))
    return Proposals.from_masks(masks[order], predicted_iou=scores[order].astype(np.float64))


@torch.inference_mode()
def segment_phrase(bundle: Any, rgb: np.ndarray, phrase: str, **thresholds: Any) -> Proposals:
    """Every instance of ``phrase`` in ``rgb`` (``H x W x 3`` uint8) by a ``Sam3Bundle``."""
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(rgb)).convert("RGB")
    inputs = bundle.processor(images=image, text=phrase, return_tensors="pt")
    inputs = {
        k: (v.to(bundle.device, bundle.dtype) if torch.is_floating_point(v) else v.to(bundle.device))
        for k, v in inputs.items()
        if isinstance(v, torch.Tensor)
    }
    outputs = bundle.model(**inputs)
    outputs.pred_masks = outputs.pred_masks.float()
    outputs.pred_logits = outputs.pred_logits.float()
    outputs.pred_boxes = outputs.pred_boxes.float()
    if getattr(outputs, "presence_logits", None) is not None:
        outputs.presence_logits = outputs.presence_logits.float()
    return instances_from_outputs(bundle.processor, outputs, rgb.shape[:2], **thresholds)


def cached_instances(
    ctx: ImageContext,
    hub: Any,
    model: str,
    phrase: str,
    *,
    score_threshold: float,
    mask_threshold: float,
    max_instances: int,
) -> Proposals:
    """SAM 3's instances of ``phrase`` on ``ctx``'s image, computed once per image, phrase and settings."""
    settings = {
        "score_threshold": score_threshold,
        "mask_threshold": mask_threshold,
        "max_instances": max_instances,
    }

    def compute() -> dict[str, Any]:
        bundle = hub.get(model)
        with ctx.meter.stage("sam3"), ctx.meter.model_call(model):
            return segment_phrase(bundle, ctx.rgb, phrase, **settings).to_state()

    params = cache_params(models={"sam3": hub.fingerprint(model)}, settings=settings, phrase=phrase)
    return Proposals.from_state(ctx.cached("sam3_instances", params, compute))
