"""Image-to-latent noising and a short guided DDIM denoise with Stable Diffusion (Ref-Diff's generative pass).

The recipe (docs/METHODS.md#ref-diff-generative-pass; the public code's values as defaults):

1. pad the RGB image to a centred square (black), resize it to ``image_size`` (1024; Lanczos, as the code);
2. encode it with the VAE (a posterior sample drawn from a seeded generator, times the VAE's scaling factor);
3. DDIM with ``steps`` (20) timesteps: ``int(steps * strength)`` (0.1 -> 2) of them are run, the latent is
   noised to the first of them (``scheduler.add_noise``) and denoised with classifier-free guidance
   (``guidance_scale`` 9.0, prompt = the sentence, negative prompt ``""``), eta 0;
4. the caller's :class:`~workers.engine.methods.refdiff.attention.AttentionStore` records cross-attention during
   the UNet calls; :func:`attention_to_image` maps a square query-grid map back to the image (resize to
   the padded square, crop the padding, min-max normalise).

Precision follows the bundle: float16 on GPU, float32 on CPU; the captured logits are float32 either way.
Several expressions of one image go through the UNet in one batch (``2E`` rows: E unconditional rows then
E conditional rows); the image's latent is encoded once and can be cached by the caller.

``peer_noise_level``: the public code (ldm's DDIM sampler) noises the latent to the DDIM timestep one above
the first one it denoises (to t=101, then runs the UNet at t=51 and t=1); diffusers' img2img, our default,
noises to t=51. The switch reproduces the code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from workers.engine.blocks.geometry import SquareGeometry, pad_square
from workers.engine.core.errors import BadInputError
from workers.engine.methods.refdiff.attention import AttentionStore, capture_cross_attention, minmax
from workers.engine.methods.refdiff.config import NoisingConfig


def sd_input(rgb: np.ndarray, settings: NoisingConfig) -> tuple[torch.Tensor, SquareGeometry]:
    """``1 x 3 x S x S`` float32 in [-1, 1] (``S = image_size``): the padded square, Lanczos-resized."""
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise BadInputError(
            f"an image must be an H x W x 3 uint8 RGB array, got {getattr(rgb, 'shape', None)}"
        )
    square, geometry = pad_square(rgb, settings.pad_value)
    resized = Image.fromarray(square).resize(
        (settings.image_size, settings.image_size), Image.Resampling.LANCZOS
    )
    tensor = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 127.5 - 1.0)
    return tensor.permute(2, 0, 1)[None].contiguous(), geometry


def latent_size(bundle: Any, settings: NoisingConfig) -> int:
    return settings.image_size // int(bundle.vae_scale_factor)


@torch.inference_mode()
def encode_latents(bundle: Any, rgb: np.ndarray, settings: NoisingConfig) -> torch.Tensor:
    """The image's SD latent, ``1 x C x L x L`` float32 on CPU (posterior sample with ``seed``, scaled)."""
    pixels, _ = sd_input(rgb, settings)
    pixels = pixels.to(bundle.device, bundle.dtype)
    generator = torch.Generator(device="cpu").manual_seed(settings.seed)
    posterior = bundle.vae.encode(pixels).latent_dist
    noise = torch.randn(posterior.mean.shape, generator=generator, dtype=torch.float32)
    sample = posterior.mean.float().cpu() + posterior.std.float().cpu() * noise
    return sample * float(bundle.vae.config.scaling_factor)


@torch.inference_mode()
def encode_prompts(bundle: Any, prompts: Sequence[str]) -> torch.Tensor:
    """``E x 77 x D`` text-encoder states of the prompts (padded to the tokenizer's max length)."""
    tokenizer = bundle.tokenizer
    tokens = tokenizer(
        list(prompts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    return bundle.text_encoder(tokens.input_ids.to(bundle.device))[0].to(bundle.dtype)


def new_scheduler(bundle: Any) -> Any:
    """A fresh DDIM scheduler from the bundle's config (``set_timesteps`` mutates, so never share one)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(bundle.scheduler.config)


def schedule(scheduler: Any, settings: NoisingConfig) -> tuple[int, list[int]]:
    """``(noise timestep, denoising timesteps)`` of the img2img schedule (module docstring)."""
    scheduler.set_timesteps(settings.steps)
    timesteps = [int(t) for t in scheduler.timesteps]
    start = len(timesteps) - settings.denoise_steps
    run = timesteps[start:]
    noise_t = timesteps[start - 1] if settings.peer_noise_level and start > 0 else run[0]
    return noise_t, run


@torch.inference_mode()
def denoise_with_capture(
    bundle: Any,
    latent: torch.Tensor,
    prompts: Sequence[str],
    settings: NoisingConfig,
    store: AttentionStore,
    *,
    meter: Any = None,
    model_name: str = "diffusion",
) -> torch.Tensor:
    """Noise ``latent`` and denoise it guided by each prompt, recording cross-attention into ``store``.

    Args:
        latent: ``1 x C x L x L`` from :func:`encode_latents`.
        prompts: E prompts (one UNet batch of 2E rows).
        store: filled with records of batch ``2E`` (unconditional rows first), ``store.step`` = 0, 1, ...

    Returns:
        ``E x C x L x L`` float32 CPU latents after the last step.
    """
    if not prompts:
        raise BadInputError("denoise_with_capture needs at least one prompt")
    n = len(prompts)
    scheduler = new_scheduler(bundle)
    noise_t, timesteps = schedule(scheduler, settings)
    generator = torch.Generator(device="cpu").manual_seed(settings.seed + 1)
    noise = torch.randn(latent.shape, generator=generator, dtype=torch.float32)
    noisy = scheduler.add_noise(latent.float(), noise, torch.tensor([noise_t]))
    latents = noisy.expand(n, -1, -1, -1).to(bundle.device, bundle.dtype)
    text = encode_prompts(bundle, [settings.negative_prompt] * n + list(prompts))
    store.clear()
    with capture_cross_attention(bundle.unet, store):
        for step, t in enumerate(timesteps):
            store.step = step
            model_input = torch.cat([latents, latents])
            model_input = scheduler.scale_model_input(model_input, t)
            if meter is not None:
                with meter.model_call(model_name):
                    prediction = bundle.unet(model_input, t, encoder_hidden_states=text).sample
            else:
                prediction = bundle.unet(model_input, t, encoder_hidden_states=text).sample
            uncond, cond = prediction.chunk(2)
            guided = uncond + settings.guidance_scale * (cond - uncond)
            latents = scheduler.step(guided, t, latents, eta=settings.eta).prev_sample
    return latents.float().cpu()


def attention_to_image(
    square_map: torch.Tensor, geometry: SquareGeometry, postprocess: str = "float"
) -> torch.Tensor:
    """An ``S x S`` query-grid map as an ``H x W`` map in [0, 1] of the original image (float32; float64
    with ``postprocess="code"``, as the code keeps it).

    ``postprocess="float"`` (ours): bilinear resize in float to the padded square's side, crop the padding,
    min-max normalise again (the code normalises after cropping, so the padding's values never set the
    range). ``"code"`` (Ref-Diff's): ``uint8(map * 255)`` (truncated), PIL Lanczos to the square's side,
    ``/ 255`` in float64, crop, min-max with ``1e-8`` added to the range; 0.10-0.16 apart from ``"float"``.
    """
    if square_map.ndim != 2:
        raise BadInputError(f"an attention map must be S x S, got shape {tuple(square_map.shape)}")
    if postprocess not in ("float", "code"):
        raise BadInputError(f"attention postprocess must be 'float' or 'code', got {postprocess!r}")
    if postprocess == "code":
        eight_bit = (square_map.detach().cpu().double().numpy() * 255).astype(np.uint8)
        resized = Image.fromarray(eight_bit).resize((geometry.side, geometry.side), Image.Resampling.LANCZOS)
        full64 = np.asarray(resized, dtype=np.float64) / 255
        crop = full64[
            geometry.top : geometry.top + geometry.height, geometry.left : geometry.left + geometry.width
        ]
        low, high = crop.min(), crop.max()
        return torch.from_numpy(np.ascontiguousarray((crop - low) / (high - low + 1e-8)))
    full = F.interpolate(
        square_map.float()[None, None],
        size=(geometry.side, geometry.side),
        mode="bilinear",
        align_corners=False,
    )[0, 0]
    cropped = full[
        geometry.top : geometry.top + geometry.height, geometry.left : geometry.left + geometry.width
    ]
    return minmax(cropped).contiguous()
