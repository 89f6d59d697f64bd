"""One adapter over an open_clip ViT image tower: the few pieces the methods run by themselves.

Global-Local CLIP masks patch tokens before the last blocks; Ref-Diff adds one class token per mask that may
attend only to that mask's patches, and feeds crops whose grid differs from the training grid. Both need the
tower in pieces rather than ``encode_image``. :class:`ClipTower` gives those pieces, and only those:

- :meth:`ClipTower.patch_tokens`: ``B x 3 x H x W`` -> patch tokens with their positions, the class token with
  its position, and the token grid (the positional embedding resized bicubically when the grid differs);
- :meth:`ClipTower.embed`: the class token followed by the patch tokens, through ``ln_pre``;
- :meth:`ClipTower.blocks`: blocks ``[start, stop)``, optionally multiplying the patch tokens by per-token
  weights before each block (Global-Local's masked global context) or with an additive attention mask
  (Ref-Diff's soft tokens);
- :meth:`ClipTower.head`: ``ln_post`` and the projection of class tokens (unnormalised).

Run end to end (embed, every block, head on token 0) it equals open_clip's ``encode_image`` for a ViT with a
class token; ``tests/engine/test_clip_tower.py`` checks it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from workers.engine.core.errors import ConfigError

#: How :meth:`ClipTower.positional` resizes the positional embedding to another grid.
POSITION_INTERPOLATIONS = ("exact", "scale_factor")


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, tuple | list):
        return int(value[0]), int(value[1])
    return int(value), int(value)


def is_vit(visual: Any) -> bool:
    """Whether an open_clip image tower is a ViT with a class token (``VisionTransformer``)."""
    return hasattr(visual, "transformer") and hasattr(visual, "class_embedding") and hasattr(visual, "conv1")


class ClipTower:
    """The pieces of an open_clip ``VisionTransformer``; see the module docstring.

    Args:
        visual: ``model.visual`` of an open_clip ``CLIP`` with a ViT image tower.
        model_name: the store name (messages).
        position_interpolation: how the positional embedding meets another grid: ``"exact"`` (resized
            bicubically to the grid) or ``"scale_factor"`` (Ref-Diff's code, after DINO: bicubic with
            ``scale_factor = (g + 0.1) / g0`` per axis, g the new grid side, g0 the training one; the
            sampling positions then differ slightly from the exact resize, 2.7e-4 on ViT-B/16).

    Raises:
        ConfigError: a tower that is not a ViT with a class token, or one with attentional pooling.
    """

    def __init__(
        self, visual: torch.nn.Module, *, model_name: str = "clip", position_interpolation: str = "exact"
    ) -> None:
        if position_interpolation not in POSITION_INTERPOLATIONS:
            raise ConfigError(
                f"position_interpolation must be one of {list(POSITION_INTERPOLATIONS)}, "
                f"got {position_interpolation!r}"
            )
        self.position_interpolation = position_interpolation
        if not is_vit(visual):
            raise ConfigError(
                f"CLIP model {model_name!r}: the vision tower {type(visual).__name__} is not a ViT"
            )
        if getattr(visual, "attn_pool", None) is not None:
            raise ConfigError(f"CLIP model {model_name!r}: ViTs with attentional pooling are not supported")
        self.visual = visual
        self.patch = int(_pair(visual.conv1.kernel_size)[0])
        self.input_size = _pair(visual.image_size)
        self.grid = _pair(visual.grid_size)
        self.depth = len(visual.transformer.resblocks)
        self.width = int(visual.transformer.width)
        self.heads = int(visual.transformer.resblocks[0].attn.num_heads)

    @property
    def device(self) -> torch.device:
        return self.visual.conv1.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    @property
    def output_dim(self) -> int:
        """Width of :meth:`head`'s output (the joint embedding, or the tower width without a projection)."""
        proj = self.visual.proj
        return int(proj.shape[1]) if proj is not None else self.width

    def positional(self, grid: tuple[int, int]) -> torch.Tensor:
        """``(1 + gh * gw) x C`` positional embedding; the patch part resized bicubically to ``grid``
        (see ``position_interpolation``)."""
        pos = self.visual.positional_embedding
        if tuple(grid) == self.grid:
            return pos
        patches = pos[1:].reshape(1, self.grid[0], self.grid[1], -1).permute(0, 3, 1, 2).float()
        if self.position_interpolation == "scale_factor":
            factors = ((grid[0] + 0.1) / self.grid[0], (grid[1] + 0.1) / self.grid[1])
            resized = F.interpolate(patches, scale_factor=factors, mode="bicubic", align_corners=False)
            if tuple(resized.shape[-2:]) != tuple(grid):
                raise ConfigError(f"scale-factor interpolation gave {tuple(resized.shape[-2:])}, not {grid}")
        else:
            resized = F.interpolate(patches, size=tuple(grid), mode="bicubic", align_corners=False)
        resized = resized.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1).to(pos.dtype)
        return torch.cat([pos[:1], resized])

    def patch_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """``B x 3 x H x W`` (normalised) -> (``B x P x C`` patch tokens with positions, the ``C`` class
        token with its position, the ``(gh, gw)`` grid)."""
        x = self.visual.conv1(images.to(self.device, self.dtype))
        grid = (int(x.shape[2]), int(x.shape[3]))
        x = x.flatten(2).transpose(1, 2)
        pos = self.positional(grid).to(x.dtype)
        cls = self.visual.class_embedding.to(x.dtype) + pos[0]
        return x + pos[1:], cls, grid

    def pre(self, tokens: torch.Tensor) -> torch.Tensor:
        """``ln_pre`` of ``B x L x C`` tokens (class tokens first)."""
        return self.visual.ln_pre(tokens)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """``B x 3 x H x W`` -> ``B x (1 + P) x C``: the class token then the patch tokens, after ``ln_pre``."""
        patches, cls, _ = self.patch_tokens(images)
        return self.pre(torch.cat([cls.expand(patches.shape[0], 1, -1), patches], dim=1))

    def blocks(
        self,
        x: torch.Tensor,
        start: int = 0,
        stop: int | None = None,
        *,
        token_weights: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run blocks ``[start, stop)`` on batch-first ``B x L x C`` tokens.

        Args:
            token_weights: ``B x (L - 1)``: before each block, every token but the first is multiplied by its
                weight (the class token is never weighted).
            attn_mask: additive ``L x L`` mask (0 allowed, -inf blocked) given to every block.
        """
        transformer = self.visual.transformer
        batch_first = getattr(transformer, "batch_first", True)
        stop = self.depth if stop is None else stop
        for index in range(start, stop):
            if token_weights is not None:
                x = torch.cat([x[:, :1], x[:, 1:] * token_weights[:, :, None].to(x.dtype)], dim=1)
            block = transformer.resblocks[index]
            if batch_first:
                x = block(x, attn_mask=attn_mask)
            else:
                x = block(x.transpose(0, 1), attn_mask=attn_mask).transpose(0, 1)
        return x

    def head(self, cls_tokens: torch.Tensor) -> torch.Tensor:
        """``B x C`` class tokens -> ``B x D`` features: ``ln_post`` then the projection (unnormalised)."""
        pooled = self.visual.ln_post(cls_tokens)
        return pooled @ self.visual.proj if self.visual.proj is not None else pooled
