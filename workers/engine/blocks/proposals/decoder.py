"""SAM's prompt decoder for many single-point prompts on one image, without the per-prompt copies.

``decode_points(mask_decoder, image_embeddings, image_pe, sparse, dense_one)`` computes what
``MaskDecoder.forward(..., multimask_output=True)`` computes (the same modules and weights; the same
arithmetic up to float rounding), with three changes that only remove repeated work:

- the image embedding is not repeated per prompt: until the first image-to-token attention changes the image
  tokens, they are the same for every prompt, so the first layer's key / value projections (token-to-image)
  and query projection (image-to-token) run once, and tensors broadcast over the prompt batch;
- image-to-token attention applies its output projection per head to the few token values first
  (``probs @ (v_h W_h^T)`` instead of ``(probs @ v_h) W_h^T``): ``N x (heads * tokens) x C`` multiply-adds
  per prompt instead of ``N x C' x C`` (``N = 4096`` image tokens, ``C = 256``, ``C' = 128``);
- only the three multimask outputs are made (the single-mask output is dropped by ``multimask_output``).

The results agree with the stock decoder to float rounding (tests compare them); the generator's output is
compared with the stock generator's in ``scripts/bench_amg.py`` and the tests.

Source: segment-anything's ``modeling/mask_decoder.py`` and ``modeling/transformer.py`` (Apache-2.0), whose
modules run here; MobileSAM's copies are the same code.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _heads(x: torch.Tensor, n: int) -> torch.Tensor:
    """``B x T x C`` -> ``B x heads x T x C/heads``."""
    b, t, c = x.shape
    return x.reshape(b, t, n, c // n).transpose(1, 2)


def _image_to_token(attn: nn.Module, image_q: torch.Tensor, token_k: torch.Tensor, token_v: torch.Tensor):
    """``attn(q=image_q, k=token_k, v=token_v)`` of SAM's ``Attention``, output projection folded into the
    token values. ``image_q``: ``1|B x N x C``; ``token_k``, ``token_v``: ``B x T x C``; returns ``B x N x C``."""
    heads = attn.num_heads
    q = _heads(attn.q_proj(image_q), heads)  # 1|B x h x N x d
    k = _heads(attn.k_proj(token_k), heads)  # B x h x T x d
    v = _heads(attn.v_proj(token_v), heads)  # B x h x T x d
    d = q.shape[-1]
    probs = torch.softmax((q @ k.transpose(-1, -2)) / math.sqrt(d), dim=-1)  # B x h x N x T
    weight = attn.out_proj.weight  # C x (h*d)
    w_heads = weight.view(weight.shape[0], heads, d).permute(1, 2, 0)  # h x d x C
    vw = v @ w_heads  # B x h x T x C
    b, h, n, t = probs.shape
    probs = probs.permute(0, 2, 1, 3).reshape(b, n, h * t)
    return torch.baddbmm(attn.out_proj.bias.expand(b, 1, -1), probs, vw.reshape(b, h * t, -1))


def decode_points(
    mask_decoder: nn.Module,
    image_embeddings: torch.Tensor,
    image_pe: torch.Tensor,
    sparse_prompt_embeddings: torch.Tensor,
    dense_prompt_embedding: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``MaskDecoder.forward(..., multimask_output=True)`` for a batch of prompts on one image.

    Args:
        mask_decoder: SAM's / MobileSAM's ``MaskDecoder``.
        image_embeddings: ``1 x C x h x w`` (the image encoder's output).
        image_pe: ``1 x C x h x w`` (``prompt_encoder.get_dense_pe()``).
        sparse_prompt_embeddings: ``B x P x C`` (the prompt encoder's, one row per prompt).
        dense_prompt_embedding: ``1 x C x h x w``, the same for every prompt (no mask prompt: the
            prompt encoder's ``no_mask_embed``).

    Returns:
        ``(B x 3 x 4h x 4w low-resolution logits, B x 3 predicted IoU)``.
    """
    dec = mask_decoder
    tr = dec.transformer
    b = sparse_prompt_embeddings.shape[0]
    output_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
    tokens = torch.cat((output_tokens.unsqueeze(0).expand(b, -1, -1), sparse_prompt_embeddings), dim=1)
    src = image_embeddings + dense_prompt_embedding  # 1 x C x h x w
    _, c, h, w = src.shape
    keys = src.flatten(2).permute(0, 2, 1)  # 1 x N x C, shared until the first image-to-token attention
    key_pe = image_pe.flatten(2).permute(0, 2, 1)
    queries, query_pe = tokens, tokens
    for layer in tr.layers:
        if layer.skip_first_layer_pe:
            queries = layer.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + layer.self_attn(q=q, k=q, v=queries)
        queries = layer.norm1(queries)
        q = queries + query_pe
        queries = layer.norm2(queries + layer.cross_attn_token_to_image(q=q, k=keys + key_pe, v=keys))
        queries = layer.norm3(queries + layer.mlp(queries))
        q = queries + query_pe
        keys = layer.norm4(keys + _image_to_token(layer.cross_attn_image_to_token, keys + key_pe, q, queries))
    q = queries + query_pe
    queries = tr.norm_final_attn(queries + tr.final_attn_token_to_image(q=q, k=keys + key_pe, v=keys))

    iou_pred = dec.iou_prediction_head(queries[:, 0, :])[:, 1:]
    upscaled = dec.output_upscaling(keys.transpose(1, 2).reshape(b, c, h, w))
    hyper_in = torch.stack(
        [dec.output_hypernetworks_mlps[i](queries[:, 1 + i, :]) for i in range(1, dec.num_mask_tokens)], dim=1
    )
    _, uc, uh, uw = upscaled.shape
    masks = (hyper_in @ upscaled.view(b, uc, uh * uw)).view(b, -1, uh, uw)
    return masks, iou_pred
