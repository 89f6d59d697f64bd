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
- only the three multimask outputs are made (the single-mask output is dropped by ``multimask_output``);
- the upscaler's 2x2 stride-2 transposed convolutions run as per-pixel matrix products and its channel layer
  norm on the last dimension, so no image-layout copies of the 64- and 32-channel maps are made.

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
    q = q * (1.0 / math.sqrt(d))  # scaled before the product (shared in the first layer)
    probs = torch.softmax(q @ k.transpose(-1, -2), dim=-1)  # B x h x N x T
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
        keys_pe = keys + key_pe  # the same for both cross attentions of the layer
        queries = layer.norm2(queries + layer.cross_attn_token_to_image(q=q, k=keys_pe, v=keys))
        queries = layer.norm3(queries + layer.mlp(queries))
        q = queries + query_pe
        keys = layer.norm4(keys + _image_to_token(layer.cross_attn_image_to_token, keys_pe, q, queries))
    q = queries + query_pe
    queries = tr.norm_final_attn(queries + tr.final_attn_token_to_image(q=q, k=keys + key_pe, v=keys))

    iou_pred = dec.iou_prediction_head(queries[:, 0, :])[:, 1:]
    hyper_in = torch.stack(
        [dec.output_hypernetworks_mlps[i](queries[:, 1 + i, :]) for i in range(1, dec.num_mask_tokens)], dim=1
    )  # B x 3 x C/8
    return _upscaled_masks(dec.output_upscaling, keys, hyper_in, h, w), iou_pred


def _conv_t_matrix(conv: nn.Module) -> torch.Tensor:
    """A 2x2 stride-2 ``ConvTranspose2d`` as a per-pixel matrix ``C_in x (2 * 2 * C_out)`` (``kh, kw, c_out``)."""
    weight = conv.weight  # C_in x C_out x 2 x 2
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)


def _upscaled_masks(
    upscaling: nn.Module, keys: torch.Tensor, hyper_in: torch.Tensor, h: int, w: int
) -> torch.Tensor:
    """``hyper_in @ upscaling(keys as B x C x h x w)`` as ``B x 3 x 4h x 4w``, without the image layout copies.

    SAM's upscaler is ``ConvTranspose2d(k=2, s=2)``, ``LayerNorm2d``, activation, ``ConvTranspose2d(k=2,
    s=2)``, activation. A 2x2 stride-2 transposed convolution maps each input pixel to its own 2x2 output
    block, so both are matrix products per pixel; the channel layer norm runs on the last dimension; the
    pixels are put in image order only at the end, on the three masks instead of the 32 channels.
    """
    conv1, norm, act1, conv2, act2 = upscaling
    b, n, _ = keys.shape
    c1 = conv1.weight.shape[1]
    c2 = conv2.weight.shape[1]
    x = torch.matmul(keys, _conv_t_matrix(conv1)).view(b, n, 2, 2, c1) + conv1.bias
    x = act1(torch.nn.functional.layer_norm(x, (c1,), norm.weight, norm.bias, eps=norm.eps))
    x = torch.matmul(x.view(b, n * 4, c1), _conv_t_matrix(conv2)).view(b, n * 4, 4, c2) + conv2.bias
    x = act2(x)
    masks = torch.bmm(x.view(b, n * 16, c2), hyper_in.transpose(1, 2))  # B x (N*16) x 3
    # token (i, j), first block (a, c), second block (e, f) -> pixel (4i + 2a + e, 4j + 2c + f)
    masks = masks.view(b, h, w, 2, 2, 2, 2, -1).permute(0, 7, 1, 3, 5, 2, 4, 6)
    return masks.reshape(b, -1, 4 * h, 4 * w)
