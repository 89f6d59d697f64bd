"""Tiny random-weight generative models written in their real on-disk formats.

Each writer builds a model with random weights but the same classes, configuration keys, file names and
processor / tokenizer layout as the published checkpoint it stands in for, then saves it with the
library's own ``save_pretrained``. The loaders in :mod:`workers.engine.store.loaders.transformers` and `.diffusers` therefore run
the very code path a user runs with real weights (``from_pretrained`` of a local folder, offline).

Stand-ins
- ``write_tiny_captioner``: BLIP-2 OPT layout (Salesforce/blip2-opt-2.7b): ``Blip2ForConditionalGeneration``
  + ``Blip2Processor`` (BLIP image processor, byte-level BPE tokenizer with OPT's special tokens).
- ``write_tiny_mllm``: LLaVA-1.5 layout (llava-hf/llava-1.5-7b-hf): ``LlavaForConditionalGeneration`` with a
  CLIP vision tower and a Llama language model + ``LlavaProcessor`` with a chat template of the
  "USER: <image>\\n... ASSISTANT:" shape.
- ``write_tiny_qwen_vl``: Qwen2.5-VL layout (Qwen/Qwen2.5-VL-7B-Instruct): ``Qwen2_5_VLForConditionalGeneration``
  (windowed ViT with 2 x 2 patch merging, M-RoPE language model) + ``Qwen2_5_VLProcessor`` (Qwen2-VL image and
  video processors, Qwen's special tokens and a ChatML chat template of the same shape).
- ``write_tiny_sam3``: SAM 3 layout (facebook/sam3): ``Sam3Model`` (ViT backbone, CLIP text encoder, DETR
  encoder / decoder, mask decoder, every part shrunk) + ``Sam3Processor`` (``Sam3ImageProcessor`` at 224 px,
  the real CLIP BPE tokenizer).
- ``write_tiny_diffusion``: Stable Diffusion 1.5 layout: UNet, VAE (8x downsampling), CLIP text encoder,
  the real CLIP BPE tokenizer (vocab.json + merges.txt formed from open_clip's bundled BPE file), DDIM
  scheduler with SD 1.5's values, no safety checker.

The tokenizers of the captioner and the MLLM are trained here, at write time, with the ``tokenizers``
library on a small built-in English corpus (RefCOCO-style expressions and captions): no hub, no download.
A tiny model proves wiring only; its outputs mean nothing.
"""

from __future__ import annotations

import gzip
import importlib.resources
import json
import shutil
from pathlib import Path
from typing import Any

import torch

# RefCOCO-style expressions and COCO-style captions; the words a referring expression usually uses.
TINY_CORPUS: tuple[str, ...] = (
    "the man in the white shirt on the left",
    "woman in red dress standing on the right",
    "a man riding a horse next to a woman",
    "left person",
    "right guy",
    "middle girl",
    "top left corner",
    "bottom right corner",
    "the second from the left",
    "far right elephant",
    "closest zebra",
    "front car",
    "back row",
    "the small dog sitting on the couch",
    "big brown bear behind the tree",
    "blue umbrella above the table",
    "black cat under the chair",
    "green plant near the window",
    "the person holding an umbrella",
    "kid wearing a yellow hat",
    "lady with glasses and a purple bag",
    "player in the striped jersey",
    "catcher behind home plate",
    "batter swinging at the ball",
    "giraffe eating leaves from the tall tree",
    "sheep lying in the grass",
    "cow looking at the camera",
    "the bowl of food in front",
    "slice of pizza on the plate",
    "sandwich cut in half",
    "orange on top",
    "the banana closest to us",
    "donut with sprinkles",
    "cup of coffee",
    "glass of wine on the table",
    "a bus parked on the street",
    "white truck in the background",
    "red motorcycle",
    "bike leaning on the wall",
    "the boat in the water",
    "airplane flying in the sky",
    "train at the station",
    "laptop on the desk",
    "keyboard and mouse",
    "television screen",
    "cell phone in her hand",
    "the bed with the pillows",
    "refrigerator door",
    "microwave over the oven",
    "sink in the kitchen",
    "clock on the tower",
    "vase of flowers",
    "teddy bear",
    "scissors",
    "book on the shelf",
    "a photo of a man",
    "a photo of a woman",
    "a picture of a dog",
    "an image of two people",
    "a group of people standing around a table",
    "two men playing frisbee in a park",
    "a young boy with a baseball bat",
    "an old woman sitting on a bench",
    "a tennis player hitting the ball",
    "a skateboarder doing a trick",
    "a surfer riding a wave",
    "skier going down the snowy hill",
    "a plate with broccoli and carrots",
    "a room with a couch and a chair",
    "a street with cars and a traffic light",
    "he is wearing a dark jacket and blue jeans",
    "she has long hair",
    "they are looking at each other",
    "one of the animals",
    "nearest one",
    "furthest one",
    "center",
    "half",
    "partially hidden",
    "empty",
    "above below between beside behind inside outside upper lower top bottom left right middle",
    "black white red green blue yellow orange purple pink brown gray grey silver gold striped",
    "man woman boy girl child kid baby person people guy lady player",
    "A B C D E F G H I J K L M N O P Q R S T U V W X Y Z 0 1 2 3 4 5 6 7 8 9 . , ! ? ' \" : ; - ( )",
)

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# Stable Diffusion 1.5's scheduler values (its PNDM config, read as DDIM as the Ref-Diff code does).
SD15_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}

CLIP_BOS = "<|startoftext|>"
CLIP_EOS = "<|endoftext|>"
CLIP_VOCAB_SIZE = 49408


def _prepare_dest(dest: Path) -> Path:
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise NotADirectoryError(f"tiny model destination {dest} exists and is not a folder")
    dest.mkdir(parents=True, exist_ok=True)
    return dest


def _byte_level_bpe(special_tokens: list[str], bos: str, vocab_size: int = 1024):
    """Train a byte-level BPE on ``TINY_CORPUS``; ids 0..len(special_tokens)-1 are the special tokens.

    Returns a ``tokenizers.Tokenizer`` whose post-processor prepends ``bos`` (as OPT and Llama do).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(TINY_CORPUS), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    return tok


# ---------------------------------------------------------------------------------------------------------
# Captioner: BLIP-2 OPT layout
# ---------------------------------------------------------------------------------------------------------

CAPTIONER_IMAGE_SIZE = 224
CAPTIONER_QUERY_TOKENS = 8


def _captioner_tokenizer():
    """OPT's special tokens and order (<s> 0, <pad> 1, </s> 2, <unk> 3; BOS = EOS = </s>), plus <image>."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    backend = _byte_level_bpe(["<s>", "<pad>", "</s>", "<unk>"], bos="</s>")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="</s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        padding_side="left",
        model_max_length=512,
    )
    tokenizer.add_tokens([AddedToken("<image>", normalized=False, special=True)], special_tokens=True)
    return tokenizer


def write_tiny_captioner(dest: Path, seed: int = 0) -> dict:
    """Write a tiny random BLIP-2 (OPT) captioner and its ``Blip2Processor`` into ``dest``.

    ``Blip2Processor.from_pretrained(dest)`` and ``Blip2ForConditionalGeneration.from_pretrained(dest)`` load
    it; the processor prepends ``num_query_tokens`` ``<image>`` tokens that the model fills with Q-Former
    outputs. Images are resized to 224 x 224 (CLIP mean / std). Returns the manifest's "arch" dict.
    """
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        Blip2QFormerConfig,
        Blip2VisionConfig,
        BlipImageProcessor,
        GenerationConfig,
        OPTConfig,
    )

    dest = _prepare_dest(dest)
    tokenizer = _captioner_tokenizer()
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    vocab_size = len(tokenizer)
    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id

    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": CAPTIONER_IMAGE_SIZE,
        "patch_size": 14,
    }
    qformer = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "cross_attention_frequency": 1,
    }
    text = {
        "hidden_size": 32,
        "ffn_dim": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "word_embed_proj_dim": 32,
        "max_position_embeddings": 128,
    }
    config = Blip2Config(
        vision_config=Blip2VisionConfig(**vision),
        qformer_config=Blip2QFormerConfig(**qformer),
        text_config=OPTConfig(
            vocab_size=vocab_size, bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=pad_id, **text
        ),
        num_query_tokens=CAPTIONER_QUERY_TOKENS,
        image_text_hidden_size=32,
        image_token_index=image_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Blip2ForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=pad_id, max_new_tokens=20
    )
    model.save_pretrained(dest)

    image_processor = BlipImageProcessor(
        size={"height": CAPTIONER_IMAGE_SIZE, "width": CAPTIONER_IMAGE_SIZE},
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
        do_convert_rgb=True,
    )
    processor = Blip2Processor(
        image_processor=image_processor, tokenizer=tokenizer, num_query_tokens=CAPTIONER_QUERY_TOKENS
    )
    processor.save_pretrained(dest)
    return {
        "model_class": "Blip2ForConditionalGeneration",
        "processor_class": "Blip2Processor",
        "stands_in_for": "Salesforce/blip2-opt-2.7b",
        "vision": vision,
        "qformer": qformer,
        "text": {"model_type": "opt", "vocab_size": vocab_size, **text},
        "num_query_tokens": CAPTIONER_QUERY_TOKENS,
        "image_size": CAPTIONER_IMAGE_SIZE,
        "image_token_id": image_token_id,
    }


# ---------------------------------------------------------------------------------------------------------
# MLLM: LLaVA-1.5 layout
# ---------------------------------------------------------------------------------------------------------

MLLM_IMAGE_SIZE = 112
MLLM_PATCH_SIZE = 14

# The LLaVA-1.5 conversation shape: "USER: <image>\n{text} ASSISTANT:"; images of a turn first, then its text.
LLAVA_15_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] != 'system' -%}{{ message['role'] | upper }}{{ ': ' }}{%- endif -%}"
    "{%- if message['content'] is string -%}{{ message['content'] }}{{ ' ' }}"
    "{%- else -%}"
    "{%- for part in message['content'] if part['type'] == 'image' -%}{{ '<image>\n' }}{%- endfor -%}"
    "{%- for part in message['content'] if part['type'] == 'text' -%}{{ part['text'] }}{{ ' ' }}{%- endfor -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)


def _mllm_tokenizer():
    """Llama's special tokens and order (<unk> 0, <s> 1, </s> 2), then <image> and <pad> as in llava-hf."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    backend = _byte_level_bpe(["<unk>", "<s>", "</s>"], bos="<s>")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        padding_side="left",
        model_max_length=1024,
    )
    tokenizer.add_tokens([AddedToken("<image>", normalized=False, special=True)], special_tokens=True)
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    return tokenizer


def write_tiny_mllm(dest: Path, seed: int = 0) -> dict:
    """Write a tiny random LLaVA-1.5 model and its ``LlavaProcessor`` (with chat template) into ``dest``.

    The CLIP vision tower sees 112 x 112 images in 14 px patches: 8 x 8 = 64 patch features; with
    ``vision_feature_select_strategy="default"`` the CLS feature is dropped, and the processor (patch size 14,
    one additional CLS token) expands ``<image>`` into the same 64 tokens. Returns the manifest's "arch" dict.
    """
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        GenerationConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    dest = _prepare_dest(dest)
    tokenizer = _mllm_tokenizer()
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    vocab_size = len(tokenizer)
    num_image_tokens = (MLLM_IMAGE_SIZE // MLLM_PATCH_SIZE) ** 2

    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": MLLM_IMAGE_SIZE,
        "patch_size": MLLM_PATCH_SIZE,
        "projection_dim": 32,
    }
    text = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": 512,
    }
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**vision),
        text_config=LlamaConfig(
            vocab_size=vocab_size,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **text,
        ),
        image_token_index=image_token_id,
        image_seq_length=num_image_tokens,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(dest)

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": MLLM_IMAGE_SIZE},
        crop_size={"height": MLLM_IMAGE_SIZE, "width": MLLM_IMAGE_SIZE},
        do_center_crop=True,
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
        do_convert_rgb=True,
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=MLLM_PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_15_CHAT_TEMPLATE,
        image_token="<image>",
    )
    processor.save_pretrained(dest)
    return {
        "model_class": "LlavaForConditionalGeneration",
        "processor_class": "LlavaProcessor",
        "stands_in_for": "llava-hf/llava-1.5-7b-hf",
        "vision": {"model_type": "clip_vision_model", **vision},
        "text": {"model_type": "llama", "vocab_size": vocab_size, **text},
        "image_size": MLLM_IMAGE_SIZE,
        "image_seq_length": num_image_tokens,
        "vision_feature_select_strategy": "default",
        "vision_feature_layer": -2,
        "image_token_id": image_token_id,
    }


# ---------------------------------------------------------------------------------------------------------
# Diffusion: Stable Diffusion 1.5 layout
# ---------------------------------------------------------------------------------------------------------

DIFFUSION_IMAGE_SIZE = 256  # -> 32 x 32 latents
VAE_SCALE = 8


def _open_clip_bpe_lines() -> list[str]:
    """Lines of open_clip's bundled CLIP BPE file (first line is a version header)."""
    resource = importlib.resources.files("open_clip") / "bpe_simple_vocab_16e6.txt.gz"
    return gzip.decompress(resource.read_bytes()).decode("utf-8").split("\n")


def clip_bpe_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """The real CLIP BPE vocabulary (49408 entries) and its 48894 merges, formed as CLIP forms them.

    Order: the 256 byte characters (GPT-2's bytes-to-unicode map), the same with ``</w>``, one token per
    merge (its two halves joined), then ``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407).
    """
    from open_clip.tokenizer import bytes_to_unicode

    merges = _open_clip_bpe_lines()[1 : 49152 - 256 - 2 + 1]
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m.split()) for m in merges]
    tokens += [CLIP_BOS, CLIP_EOS]
    if len(tokens) != CLIP_VOCAB_SIZE or len(set(tokens)) != CLIP_VOCAB_SIZE:
        raise ValueError(
            f"open_clip's bpe_simple_vocab_16e6.txt.gz gave {len(tokens)} tokens ({len(set(tokens))} distinct); "
            f"CLIP's vocabulary has {CLIP_VOCAB_SIZE}"
        )
    return {tok: i for i, tok in enumerate(tokens)}, merges


def write_clip_tokenizer_folder(dest: Path) -> None:
    """Write SD 1.5's ``tokenizer/`` files: vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json."""
    dest = _prepare_dest(dest)
    vocab, merges = clip_bpe_vocab_and_merges()
    (dest / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (dest / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {"bos_token": CLIP_BOS, "eos_token": CLIP_EOS, "unk_token": CLIP_EOS, "pad_token": CLIP_EOS}
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "do_lower_case": True,
        "errors": "replace",
        **special,
    }
    (dest / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (dest / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")


def write_tiny_diffusion(dest: Path, seed: int = 0) -> dict:
    """Write a tiny random Stable Diffusion 1.5 pipeline folder into ``dest`` (model_index.json + components).

    UNet: 32 x 32 latents (a 256 px image), three levels with channels (32, 64, 64) as SD's four: cross-attention
    in the down and up blocks at 32 x 32 and 16 x 16, plain ResNet blocks at the lowest level (8 x 8) and a
    cross-attention mid block there.
    VAE: four levels, three downsamplings (8x), 4 latent channels, SD's scaling factor 0.18215.
    Text: CLIPTextModel (CLIP's 49408 vocabulary, 77 positions) with the real CLIP BPE tokenizer.
    Load with ``StableDiffusionPipeline.from_pretrained(dest, safety_checker=None)``.
    Returns the manifest's "arch" dict.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    dest = _prepare_dest(dest)
    tokenizer_dir = dest / "tokenizer"
    write_clip_tokenizer_folder(tokenizer_dir)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)

    text = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "projection_dim": 32,
        "max_position_embeddings": 77,
        "vocab_size": CLIP_VOCAB_SIZE,
        "hidden_act": "quick_gelu",
    }
    latent_size = DIFFUSION_IMAGE_SIZE // VAE_SCALE
    unet_arch = {
        "sample_size": latent_size,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": [32, 64, 64],
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "layers_per_block": 1,
        "cross_attention_dim": text["hidden_size"],
        "attention_head_dim": 4,
        "norm_num_groups": 8,
    }
    vae_arch = {
        "sample_size": DIFFUSION_IMAGE_SIZE,
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "block_out_channels": [16, 16, 32, 32],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "scaling_factor": 0.18215,
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**unet_arch).eval()
        vae = AutoencoderKL(**vae_arch).eval()
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                **text,
            )
        ).eval()
    scheduler = DDIMScheduler(**SD15_SCHEDULER_CONFIG)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(dest)
    # save_pretrained writes transformers' own tokenizer serialisation; SD 1.5 ships vocab.json + merges.txt.
    shutil.rmtree(tokenizer_dir)
    write_clip_tokenizer_folder(tokenizer_dir)
    return {
        "pipeline_class": "StableDiffusionPipeline",
        "stands_in_for": "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "image_size": DIFFUSION_IMAGE_SIZE,
        "vae_scale_factor": VAE_SCALE,
        "unet": unet_arch,
        "cross_attention_resolutions": [latent_size, latent_size // 2, latent_size // 4],
        "vae": vae_arch,
        "text_encoder": {"model_type": "clip_text_model", **text},
        "tokenizer": "clip_bpe_16e6",
        "scheduler": {"class": "DDIMScheduler", **SD15_SCHEDULER_CONFIG},
    }


# ---------------------------------------------------------------------------------------------------------
# SAM 3 layout
# ---------------------------------------------------------------------------------------------------------

SAM3_IMAGE_SIZE = 224
SAM3_PATCH_SIZE = 14
SAM3_QUERIES = 20


def write_tiny_sam3(dest: Path, seed: int = 0) -> dict:
    """Write a tiny random SAM 3 (``Sam3Model``) and its ``Sam3Processor`` into ``dest``.

    The ViT sees 224 x 224 images in 14 px patches (a 16 x 16 grid; FPN levels 64, 32, 16), the DETR decoder
    has 20 queries, and masks come out at 64 x 64 before the processor resizes them to the image. The
    tokenizer is CLIP's real BPE (49408 tokens), as SAM 3's. Returns the manifest's "arch" dict.
    """
    from transformers import CLIPTokenizerFast, Sam3Config, Sam3ImageProcessor, Sam3Model, Sam3Processor

    dest = _prepare_dest(dest)
    grid = SAM3_IMAGE_SIZE // SAM3_PATCH_SIZE
    small = {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64}
    config = Sam3Config(
        vision_config={
            "backbone_config": {
                "model_type": "sam3_vit_model",
                "num_hidden_layers": 2,
                "image_size": SAM3_IMAGE_SIZE,
                "patch_size": SAM3_PATCH_SIZE,
                "window_size": 8,
                "global_attn_indexes": [1],
                "pretrain_image_size": SAM3_IMAGE_SIZE,
                **small,
            },
            "fpn_hidden_size": 32,
            "backbone_feature_sizes": [[grid * 4, grid * 4], [grid * 2, grid * 2], [grid, grid]],
        },
        text_config={
            "model_type": "clip_text_model",
            "vocab_size": CLIP_VOCAB_SIZE,
            "projection_dim": 32,
            "num_hidden_layers": 2,
            "max_position_embeddings": 32,
            **small,
        },
        geometry_encoder_config={"num_layers": 1, **small},
        detr_encoder_config={"num_layers": 1, **small},
        detr_decoder_config={"num_layers": 1, "num_queries": SAM3_QUERIES, **small},
        mask_decoder_config={"hidden_size": 32, "num_attention_heads": 2},
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Sam3Model(config).eval()
    model.save_pretrained(dest)

    tokenizer_dir = dest / "_clip_tokenizer"
    write_clip_tokenizer_folder(tokenizer_dir)
    tokenizer = CLIPTokenizerFast.from_pretrained(tokenizer_dir, model_max_length=32)
    shutil.rmtree(tokenizer_dir)
    image_processor = Sam3ImageProcessor(
        size={"height": SAM3_IMAGE_SIZE, "width": SAM3_IMAGE_SIZE},
        mask_size={"height": grid * 4, "width": grid * 4},
    )
    Sam3Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(dest)
    return {
        "model_class": "Sam3Model",
        "processor_class": "Sam3Processor",
        "stands_in_for": "facebook/sam3",
        "image_size": SAM3_IMAGE_SIZE,
        "patch_size": SAM3_PATCH_SIZE,
        "num_queries": SAM3_QUERIES,
    }


# ---------------------------------------------------------------------------------------------------------
# MLLM: Qwen2.5-VL layout
# ---------------------------------------------------------------------------------------------------------

#: Qwen's special tokens, in the order their ids follow in the tiny vocabulary (after the trained BPE).
QWEN_SPECIALS = (
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
QWEN_MIN_PIXELS = 56 * 56
QWEN_MAX_PIXELS = 112 * 112

# The ChatML shape of Qwen2.5-VL's template: "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>
# {text}<|im_end|>\n<|im_start|>assistant\n" (the real one adds a default system turn).
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _qwen_tokenizer():
    """A byte-level BPE with ``<|endoftext|>`` (pad) first and Qwen's chat and vision tokens added."""
    from tokenizers import AddedToken, processors
    from transformers import PreTrainedTokenizerFast

    backend = _byte_level_bpe(["<|endoftext|>"], bos="<|endoftext|>")
    backend.post_processor = processors.ByteLevel(trim_offsets=False)  # Qwen adds no BOS
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        model_max_length=4096,
    )
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [AddedToken(t, normalized=False, special=True) for t in QWEN_SPECIALS]}
    )
    return tokenizer


def write_tiny_qwen_vl(dest: Path, seed: int = 0) -> dict:
    """Write a tiny random Qwen2.5-VL model and its ``Qwen2_5_VLProcessor`` (with chat template) into ``dest``.

    Images are resized to between 56 x 56 and 112 x 112 pixels in 14 px patches, merged 2 x 2 into image
    tokens (at most 16 per image). Returns the manifest's "arch" dict.
    """
    from transformers import (
        GenerationConfig,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    dest = _prepare_dest(dest)
    tokenizer = _qwen_tokenizer()
    ids = dict(zip(QWEN_SPECIALS, tokenizer.convert_tokens_to_ids(list(QWEN_SPECIALS)), strict=True))
    pad_id, eos_id = tokenizer.pad_token_id, ids["<|im_end|>"]
    text = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
    }
    vision = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": 32,
        "fullatt_block_indexes": [1],
        "window_size": 56,
    }
    config = Qwen2_5_VLConfig(
        text_config={
            "model_type": "qwen2_5_vl_text",
            "vocab_size": len(tokenizer),
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]},
            "bos_token_id": pad_id,
            "eos_token_id": eos_id,
            "pad_token_id": pad_id,
            **text,
        },
        vision_config={"model_type": "qwen2_5_vl_vision", **vision},
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(bos_token_id=pad_id, eos_token_id=eos_id, pad_token_id=pad_id)
    model.save_pretrained(dest)
    pixels = {"min_pixels": QWEN_MIN_PIXELS, "max_pixels": QWEN_MAX_PIXELS}
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(patch_size=14, merge_size=2, temporal_patch_size=2, **pixels),
        video_processor=Qwen2VLVideoProcessor(**pixels),
        tokenizer=tokenizer,
        chat_template=QWEN_CHAT_TEMPLATE,
    )
    processor.save_pretrained(dest)
    return {
        "model_class": "Qwen2_5_VLForConditionalGeneration",
        "processor_class": "Qwen2_5_VLProcessor",
        "stands_in_for": "Qwen/Qwen2.5-VL-7B-Instruct",
        "vision": {"model_type": "qwen2_5_vl_vision", **vision},
        "text": {"model_type": "qwen2_5_vl_text", "vocab_size": len(tokenizer), **text},
        **pixels,
        "image_token_id": ids["<|image_pad|>"],
    }
