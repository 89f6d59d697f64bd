"""Cross-attention capture in a diffusers UNet, and the subject token's attention map (Ref-Diff).

The supported extension point of diffusers is the attention *processor*: ``Attention.forward`` hands its
work to ``attn.processor``, and ``unet.set_attn_processor({name: processor})`` swaps them per layer. The
default processor (``AttnProcessor2_0``) calls the fused ``scaled_dot_product_attention`` and never holds
the attention matrix, so :class:`CapturingCrossAttnProcessor` computes the attention itself on the layers
it captures (one ``Q x 77`` matrix per head: small at the 32 x 32 query grid) and hands every other call to
the default processor untouched.

- :class:`AttentionStore` holds what was captured, keyed by ``(layer name, step, kind)``; ``kind`` is
  ``"logits"`` (pre-softmax ``q k^T * scale``, Ref-Diff's choice) and optionally ``"probs"``. Values are
  heads-averaged ``B x Q x T`` float32 CPU tensors (B = the UNet batch, Q = query tokens, T = text tokens).
- :func:`cross_attention_layers` names every cross-attention layer (``attn2``) of a UNet with its query
  grid side for a given latent size; :func:`choose_resolution` picks the grid to capture.
- :func:`capture_cross_attention` installs the capturing processors for a block of code and restores the
  UNet's own processors afterwards (the UNet is shared through the model hub).
- :func:`subject_token_index` maps the spaCy subject of an expression to the position of its *last* CLIP
  BPE token in the prompt (``<start>`` is position 0), so a multi-token word ("skateboarder" ->
  ``skate`` ``boarder</w>``) points at its last piece.
- :func:`subject_attention_map`: classifier-free guidance combination ``u + g (c - u)`` of the
  heads-averaged logits, the subject token's column, min-max normalised per (layer, step), averaged.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from workers.engine.core.errors import BadInputError, ConfigError
from workers.engine.methods.refdiff.config import ATTENTION_KINDS, PLACES

# One lock per UNet object: capturing swaps the processors of a shared model.
_UNET_LOCKS: dict[int, threading.Lock] = {}
_UNET_LOCKS_GUARD = threading.Lock()


def _unet_lock(unet: Any) -> threading.Lock:
    with _UNET_LOCKS_GUARD:
        return _UNET_LOCKS.setdefault(id(unet), threading.Lock())


# ---------------------------------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------------------------------


@dataclass
class AttentionStore:
    """Captured cross-attention, keyed by ``(layer name, step, kind)``.

    Attributes:
        layers: layer name (``"up_blocks.1.attentions.0.transformer_blocks.0.attn2"``) -> query grid side;
            only these layers are captured, and only calls whose query count is ``side * side``.
        kinds: what to keep per call: ``"logits"`` (pre-softmax) and/or ``"probs"`` (post-softmax).
        step: the denoising step the next records belong to (the caller sets it before each UNet call).
        maps: the records, ``B x Q x T`` float32 CPU tensors, heads averaged.
        skipped: calls of a captured layer whose query count did not match its side (a wrong latent size).
    """

    layers: dict[str, int]
    kinds: tuple[str, ...] = ("logits",)
    step: int = 0
    maps: dict[tuple[str, int, str], torch.Tensor] = field(default_factory=dict)
    skipped: int = 0

    def __post_init__(self) -> None:
        unknown = [k for k in self.kinds if k not in ATTENTION_KINDS]
        if unknown or not self.kinds:
            raise ConfigError(
                f"attention kinds must be among {list(ATTENTION_KINDS)}, got {list(self.kinds)}"
            )

    def wants(self, layer: str, query_tokens: int) -> bool:
        """Whether a call of ``layer`` with ``query_tokens`` queries is captured (counts mismatches)."""
        side = self.layers.get(layer)
        if side is None:
            return False
        if query_tokens != side * side:
            self.skipped += 1
            return False
        return True

    def record(self, layer: str, kind: str, value: torch.Tensor) -> None:
        """Keep ``value`` (``B x Q x T``) for ``(layer, self.step, kind)``."""
        self.maps[(layer, self.step, kind)] = value.detach().float().cpu()

    def keys(self, kind: str = "logits") -> list[tuple[str, int, str]]:
        """The keys of ``kind``, sorted by step then layer."""
        return sorted((k for k in self.maps if k[2] == kind), key=lambda k: (k[1], k[0]))

    def steps(self) -> list[int]:
        return sorted({k[1] for k in self.maps})

    def shapes(self, kind: str = "logits") -> dict[tuple[str, int], tuple[int, ...]]:
        """``(layer, step) -> shape`` of the records of ``kind``."""
        return {(k[0], k[1]): tuple(self.maps[k].shape) for k in self.keys(kind)}

    def clear(self) -> None:
        self.maps.clear()
        self.step = 0
        self.skipped = 0


# ---------------------------------------------------------------------------------------------------
# The processor
# ---------------------------------------------------------------------------------------------------


class CapturingCrossAttnProcessor:
    """A diffusers attention processor that records cross-attention of one layer into a store.

    Calls that the store does not want (self-attention, another query grid) go to ``fallback`` (the
    layer's own processor). Captured calls compute ``softmax(q k^T * scale) v`` explicitly, with the
    logits in float32 (as Ref-Diff's code forces), and return what the default processor would.
    """

    def __init__(self, store: AttentionStore, layer: str, fallback: Any) -> None:
        self.store = store
        self.layer = layer
        self.fallback = fallback

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        query_tokens = (
            hidden_states.shape[2] * hidden_states.shape[3]
            if hidden_states.ndim == 4
            else hidden_states.shape[1]
        )
        if encoder_hidden_states is None or not self.store.wants(self.layer, query_tokens):
            return self.fallback(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs
            )
        return self._attend(attn, hidden_states, encoder_hidden_states, attention_mask, temb)

    def _attend(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        temb: torch.Tensor | None,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, text_length = encoder_hidden_states.shape[0], encoder_hidden_states.shape[1]
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, text_length, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        logits = torch.matmul(query.float(), key.float().transpose(-1, -2)) * float(
            attn.scale
        )  # B x h x Q x T
        if "logits" in self.store.kinds:
            self.store.record(self.layer, "logits", logits.mean(dim=1))
        if attention_mask is not None:
            logits = logits + attention_mask.float()
        probs = logits.softmax(dim=-1)
        if "probs" in self.store.kinds:
            self.store.record(self.layer, "probs", probs.mean(dim=1))
        out = torch.matmul(probs.to(value.dtype), value)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


# ---------------------------------------------------------------------------------------------------
# Layers and resolutions
# ---------------------------------------------------------------------------------------------------


def _halve(side: int, times: int) -> int:
    """The side after ``times`` stride-2 downsamplings (SD's padded 3x3 convolutions round up)."""
    for _ in range(times):
        side = (side + 1) // 2
    return side


def cross_attention_layers(unet: Any, latent_size: int) -> dict[str, tuple[str, int]]:
    """Every cross-attention layer of ``unet``: name -> (place, query grid side) for a square latent.

    Names are the processor names without ``.processor`` (``"down_blocks.2.attentions.0.transformer_blocks.0.attn2"``);
    place is ``"down"``, ``"mid"`` or ``"up"``. The side of down block ``i`` is the latent halved ``i``
    times; up block ``j`` mirrors down block ``levels - 1 - j``; the mid block sits at the lowest level.
    """
    levels = len(unet.config.block_out_channels)
    layers: dict[str, tuple[str, int]] = {}
    for name in unet.attn_processors:
        if ".attn2." not in f"{name}." and not name.endswith("attn2.processor"):
            continue
        layer = name.removesuffix(".processor")
        parts = layer.split(".")
        if parts[0] == "down_blocks":
            layers[layer] = ("down", _halve(latent_size, int(parts[1])))
        elif parts[0] == "up_blocks":
            layers[layer] = ("up", _halve(latent_size, levels - 1 - int(parts[1])))
        elif parts[0] == "mid_block":
            layers[layer] = ("mid", _halve(latent_size, levels - 1))
    return layers


def choose_resolution(available: Iterable[int], wanted: int) -> int:
    """The available query grid side nearest to ``wanted`` on a log scale (the larger one on a tie)."""
    sides = sorted(set(available))
    if not sides:
        raise ConfigError("the UNet has no cross-attention layer to capture")
    if wanted < 1:
        raise ConfigError(f"attention resolution must be >= 1, got {wanted}")
    return min(sides, key=lambda s: (abs(math.log(s) - math.log(wanted)), -s))


def select_layers(
    unet: Any, latent_size: int, resolution: int, places: Sequence[str] = PLACES
) -> dict[str, int]:
    """The layers at ``resolution`` (exact) among ``places``: name -> side."""
    bad = [p for p in places if p not in PLACES]
    if bad:
        raise ConfigError(f"attention places must be among {list(PLACES)}, got {list(places)}")
    chosen = {
        name: side
        for name, (place, side) in cross_attention_layers(unet, latent_size).items()
        if side == resolution and place in places
    }
    if not chosen:
        raise ConfigError(
            f"no cross-attention layer at a {resolution}x{resolution} query grid in places {list(places)} "
            f"for a {latent_size}x{latent_size} latent"
        )
    return chosen


@contextlib.contextmanager
def capture_cross_attention(unet: Any, store: AttentionStore) -> Iterator[AttentionStore]:
    """Install capturing processors on ``store.layers`` for the block; the UNet's own come back after.

    Holds a per-UNet lock for the block, so two threads never swap the processors of one shared model.
    """
    lock = _unet_lock(unet)
    with lock:
        original: dict[str, Any] = dict(unet.attn_processors)
        missing = [layer for layer in store.layers if f"{layer}.processor" not in original]
        if missing:
            raise ConfigError(f"the UNet has no attention layer named {missing[0]!r}")
        installed = {
            name: (
                CapturingCrossAttnProcessor(store, name.removesuffix(".processor"), processor)
                if name.removesuffix(".processor") in store.layers
                else processor
            )
            for name, processor in original.items()
        }
        unet.set_attn_processor(installed)
        try:
            yield store
        finally:
            unet.set_attn_processor(original)


# ---------------------------------------------------------------------------------------------------
# Subject token
# ---------------------------------------------------------------------------------------------------


def _content_ids(tokenizer: Any, text: str, max_length: int) -> list[int]:
    """Token ids of ``text`` with ``<start>`` and ``<end>``, truncated to ``max_length``, no padding."""
    return list(tokenizer(text, truncation=True, max_length=max_length, add_special_tokens=True)["input_ids"])


def subject_char_end(text: str, tokens: Sequence[str], subject_index: int) -> int:
    """End offset in ``text.lower()`` of the ``subject_index``-th spaCy token (tokens are slices of it)."""
    lowered = text.lower()
    position = 0
    for index, token in enumerate(tokens):
        found = lowered.find(token, position)
        if found < 0:
            raise BadInputError(f"token {token!r} of the parse is not in the expression {text!r}")
        position = found + len(token)
        if index == subject_index:
            return position
    raise BadInputError(f"subject index {subject_index} is past the {len(tokens)} tokens of {text!r}")


def subject_token_index(tokenizer: Any, prompt: str, char_end: int, *, max_length: int = 77) -> int:
    """Position of the last CLIP BPE token that starts before ``char_end`` of ``prompt`` (``<start>`` = 0).

    The prompt's BPE pieces are aligned to its lower-cased text one by one (each piece's decoded text is
    found after the previous one), so a word split into several pieces maps to its last piece, and a
    word glued to the subject ("cannot" for the subject "can") to the piece that holds the subject's end.
    A subject beyond the 77-token window maps to the last kept content token. When the alignment fails
    (text the tokenizer rewrites), the fallback counts the pieces of ``prompt[:char_end]``.
    """
    ids = _content_ids(tokenizer, prompt, max_length)
    last_content = max(1, len(ids) - 2)
    pieces = tokenizer.convert_ids_to_tokens(ids[1:-1])
    lowered = prompt.lower()
    position, best = 0, 0
    for offset, piece in enumerate(pieces, start=1):
        text = tokenizer.convert_tokens_to_string([piece]).strip()
        if not text:
            continue
        found = lowered.find(text, position)
        if found < 0:
            best = -1
            break
        position = found + len(text)
        if found < char_end:
            best = offset
    if best <= 0:
        best = len(_content_ids(tokenizer, prompt[:char_end], max_length)) - 2
    return int(min(max(best, 1), last_content))


def code_key_word(text: str) -> tuple[str, int]:
    """Ref-Diff's key word and the end offset of that token in ``text``: the first token of spaCy's parse of
    ``text`` *as typed* whose dependency label holds ``ROOT`` or ``subj``; ``(text, len(text))`` when none.

    The code parses the sentence as typed, so case changes the parse: ``"Left man"`` -> ``"man"`` (ours, on
    the lower-cased sentence, ``"left"``); ``"Man in blue, far left."`` -> ``"left"`` (lower-cased: ``"man"``).
    """
    from workers.engine.blocks.text import get_nlp

    for token in get_nlp()(text):
        if "ROOT" in token.dep_ or "subj" in token.dep_:
            return str(token.text), int(token.idx + len(token.text))
    return text, len(text)


def subject_token_index_peer(tokenizer: Any, prompt: str, subject: str, *, max_length: int = 77) -> int:
    """Ref-Diff's public code: the last BPE position of the prefix up to the *first substring* occurrence
    of ``subject`` in the sentence, capped at the sentence's last content token.

    The match is case-sensitive on the sentence as typed (``str.find``), as in the code; a subject that is
    not found cuts at ``len(subject) - 1`` characters, as the code's ``find`` returning -1 does.
    ``"the woman next to the man"`` with subject ``man`` cuts after ``wo|man`` (the code's quirk).
    """
    cut = prompt.find(subject) + len(subject)
    prefix = _content_ids(tokenizer, prompt[:cut], max_length)
    whole = _content_ids(tokenizer, prompt, max_length)
    return int(min(max(len(prefix) - 2, 1), max(1, len(whole) - 2)))


# ---------------------------------------------------------------------------------------------------
# Reduction to one map
# ---------------------------------------------------------------------------------------------------


def minmax(values: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``(x - min) / (max - min + eps)`` over the whole tensor."""
    low, high = values.min(), values.max()
    return (values - low) / (high - low + eps)


def subject_attention_map(
    store: AttentionStore,
    token_indices: Sequence[int],
    *,
    guidance_scale: float,
    kind: str = "logits",
    cfg_layout: str = "uncond_first",
    eps: float = 1e-8,
    accumulate: torch.dtype = torch.float32,
) -> torch.Tensor:
    """One ``E x S x S`` map per expression of a batch: CFG-combined, subject column, normalised, averaged.

    Args:
        store: records of a UNet batch of ``2E`` rows: E unconditional rows then E conditional rows
            (``cfg_layout="uncond_first"``, diffusers' order), or ``E`` conditional rows only
            (``cfg_layout="cond_only"``, guidance off).
        token_indices: the subject token's position for each of the E expressions.
        guidance_scale: ``g`` in ``u + g (c - u)``.
        eps: added to each map's range before dividing (the code: 0).
        accumulate: dtype of the average (the code: float64; each map is normalised in float32 first).

    Returns:
        ``E x S x S`` in [0, 1] (``accumulate`` dtype): the mean over captured (layer, step) of each
        min-max normalised map.
    """
    keys = store.keys(kind)
    if not keys:
        raise BadInputError("no cross-attention was captured (no UNet step ran at the chosen resolution)")
    n = len(token_indices)
    total: torch.Tensor | None = None
    for key in keys:
        record = store.maps[key]
        if cfg_layout == "uncond_first":
            if record.shape[0] != 2 * n:
                raise BadInputError(f"capture {key} has batch {record.shape[0]}, expected {2 * n}")
            uncond, cond = record[:n], record[n:]
            combined = uncond + guidance_scale * (cond - uncond)
        elif cfg_layout == "cond_only":
            combined = record
        else:
            raise ConfigError(f"cfg_layout must be 'uncond_first' or 'cond_only', got {cfg_layout!r}")
        side = math.isqrt(combined.shape[1])
        columns = torch.stack([combined[e, :, token_indices[e]] for e in range(n)]).view(n, side, side)
        normalised = torch.stack([minmax(c.float(), eps) for c in columns]).to(accumulate)
        total = normalised if total is None else total + normalised
    assert total is not None
    return total / len(keys)
