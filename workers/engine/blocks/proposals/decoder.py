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


def _project(linear: nn.Linear, x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """``linear(x)``; with ``dtype`` (e.g. ``torch.bfloat16``) the product runs in that precision and the
    result comes back as ``float32`` (the image-side projections, where the decoder spends its time)."""
    if dtype is None:
        return linear(x)
    weight = linear.weight.to(dtype)
    bias = linear.bias.to(dtype) if linear.bias is not None else None
    return nn.functional.linear(x.to(dtype), weight, bias).float()


def _token_to_image(
    attn: nn.Module,
    token_q: torch.Tensor,
    image_k: torch.Tensor,
    image_v: torch.Tensor,
    dtype: torch.dtype | None,
) -> torch.Tensor:
    """``attn(q=token_q, k=image_k, v=image_v)`` of SAM's ``Attention`` with the image-side projections in
    ``dtype`` (``None``: float32, as the module). ``token_q``: ``B x T x C``; ``image_k``, ``image_v``:
    ``1|B x N x C``; returns ``B x T x C`` (float32)."""
    if dtype is None or image_k.shape[0] == 1:  # shared image tokens: projected once, in float32
        return attn(q=token_q, k=image_k, v=image_v)
    heads = attn.num_heads
    q = _heads(attn.q_proj(token_q), heads)  # B x h x T x d
    k = _heads(_project(attn.k_proj, image_k, dtype), heads)  # B x h x N x d
    v = _heads(_project(attn.v_proj, image_v, dtype), heads)
    probs = torch.softmax((q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1]), dim=-1)
    out = (probs @ v).transpose(1, 2).flatten(2)  # B x T x (h*d)
    return attn.out_proj(out)


def _image_to_token(
    attn: nn.Module,
    image_q: torch.Tensor,
    token_k: torch.Tensor,
    token_v: torch.Tensor,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``attn(q=image_q, k=token_k, v=token_v)`` of SAM's ``Attention``, output projection folded into the
    token values. ``image_q``: ``1|B x N x C``; ``token_k``, ``token_v``: ``B x T x C``; returns ``B x N x C``.
    With ``dtype``, the per-prompt image-side products (the query projection when ``image_q`` is not shared,
    and ``probs @ (v W)``) run in that precision."""
    heads = attn.num_heads
    shared = image_q.shape[0] == 1
    q = _heads(attn.q_proj(image_q) if shared else _project(attn.q_proj, image_q, dtype), heads)
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
    bias = attn.out_proj.bias.expand(b, 1, -1)
    if dtype is None:
        return torch.baddbmm(bias, probs, vw.reshape(b, h * t, -1))
    return torch.bmm(probs.to(dtype), vw.reshape(b, h * t, -1).to(dtype)).float() + bias


def decode_points(
    mask_decoder: nn.Module,
    image_embeddings: torch.Tensor,
    image_pe: torch.Tensor,
    sparse_prompt_embeddings: torch.Tensor,
    dense_prompt_embedding: torch.Tensor,
    dtype: torch.dtype | None = None,
    min_iou: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``MaskDecoder.forward(..., multimask_output=True)`` for a batch of prompts on one image.

    Args:
        mask_decoder: SAM's / MobileSAM's ``MaskDecoder``.
        image_embeddings: ``1 x C x h x w`` (the image encoder's output).
        image_pe: ``1 x C x h x w`` (``prompt_encoder.get_dense_pe()``).
        sparse_prompt_embeddings: ``B x P x C`` (the prompt encoder's, one row per prompt).
        dense_prompt_embedding: ``1 x C x h x w``, the same for every prompt (no mask prompt: the
            prompt encoder's ``no_mask_embed``).
        dtype: ``None`` (float32, equal to the stock decoder to float rounding) or a lower precision such as
            ``torch.bfloat16`` for the per-prompt image-side work (projections of the updated image tokens,
            the image-to-token attention output, the upscaler): about 3x faster matrix products on CPUs
            with bfloat16 instructions; the token side (attention among the prompt tokens, the MLPs, the IoU
            head and the hypernetworks) stays in float32. Not the stock arithmetic: the generator's output
            is compared with the stock generator's in ``scripts/bench_amg.py``.

        min_iou: when given, the upscaler (about half of the decoder's work) runs only for prompts with a
            predicted IoU above ``min_iou`` (the generator's ``pred_iou_thresh``, which drops the others'
            masks without looking at them); the other prompts' logits are ``-inf``.

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
        queries = layer.norm2(
            queries + _token_to_image(layer.cross_attn_token_to_image, q, keys_pe, keys, dtype)
        )
        queries = layer.norm3(queries + layer.mlp(queries))
        q = queries + query_pe
        keys = layer.norm4(
            keys + _image_to_token(layer.cross_attn_image_to_token, keys_pe, q, queries, dtype)
        )
    q = queries + query_pe
    queries = tr.norm_final_attn(
        queries + _token_to_image(tr.final_attn_token_to_image, q, keys + key_pe, keys, dtype)
    )

    iou_pred = dec.iou_prediction_head(queries[:, 0, :])[:, 1:]
    hyper_in = torch.stack(
        [dec.output_hypernetworks_mlps[i](queries[:, 1 + i, :]) for i in range(1, dec.num_mask_tokens)], dim=1
    )  # B x 3 x C/8
    if min_iou is None:
        return _upscaled_masks(dec.output_upscaling, keys, hyper_in, h, w, dtype), iou_pred
    wanted = (iou_pred > min_iou).any(dim=1)  # prompts with a mask that can pass the predicted-IoU filter
    masks = torch.full((b, hyper_in.shape[1], 4 * h, 4 * w), float("-inf"))
    if bool(wanted.any()):
        rows = keys[wanted] if keys.shape[0] == b else keys
        masks[wanted] = _upscaled_masks(dec.output_upscaling, rows, hyper_in[wanted], h, w, dtype)
    return masks, iou_pred


def _conv_t_matrix(conv: nn.Module, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A 2x2 stride-2 ``ConvTranspose2d`` as a per-pixel matrix ``C_in x (2 * 2 * C_out)`` (``kh, kw, c_out``)."""
    weight = conv.weight  # C_in x C_out x 2 x 2
    matrix = weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)
    return matrix if dtype is None else matrix.to(dtype)


def _upscaled_masks(
    upscaling: nn.Module,
    keys: torch.Tensor,
    hyper_in: torch.Tensor,
    h: int,
    w: int,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``hyper_in @ upscaling(keys as B x C x h x w)`` as ``B x 3 x 4h x 4w``, without the image layout copies.

    SAM's upscaler is ``ConvTranspose2d(k=2, s=2)``, ``LayerNorm2d``, activation, ``ConvTranspose2d(k=2,
    s=2)``, activation. A 2x2 stride-2 transposed convolution maps each input pixel to its own 2x2 output
    block, so both are matrix products per pixel; the channel layer norm runs on the last dimension; the
    pixels are put in image order only at the end, on the three masks instead of the 32 channels. With
    ``dtype`` every step runs in that precision (the layer norm's statistics are float32 inside torch) and
    the masks come back as float32.
    """
    conv1, norm, act1, conv2, act2 = upscaling
    b, n, _ = keys.shape
    c1 = conv1.weight.shape[1]
    c2 = conv2.weight.shape[1]
    cast = (lambda t: t) if dtype is None else (lambda t: t.to(dtype))
    x = torch.matmul(cast(keys), _conv_t_matrix(conv1, dtype)).view(b, n, 2, 2, c1) + cast(conv1.bias)
    x = act1(torch.nn.functional.layer_norm(x, (c1,), cast(norm.weight), cast(norm.bias), eps=norm.eps))
    x = torch.matmul(x.view(b, n * 4, c1), _conv_t_matrix(conv2, dtype)).view(b, n * 4, 4, c2) + cast(
        conv2.bias
    )
    x = act2(x)
    masks = torch.bmm(x.view(b, n * 16, c2), cast(hyper_in).transpose(1, 2)).float()  # B x (N*16) x 3
    # token (i, j), first block (a, c), second block (e, f) -> pixel (4i + 2a + e, 4j + 2c + f)
    masks = masks.view(b, h, w, 2, 2, 2, 2, -1).permute(0, 7, 1, 3, 5, 2, 4, 6)
    return masks.reshape(b, -1, 4 * h, 4 * w)
