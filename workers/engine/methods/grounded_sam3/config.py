"""``GroundedSam3Config``: settings of the SAM 3 + multimodal LLM grounding pipeline. Torch-free.

See ``workers.engine.methods.grounded_sam3.pipeline`` and docs/METHODS.md#grounded-sam-3. ``peer_compat`` is not
applicable: the pipeline follows the shape of the SAM 3 agent (facebookresearch/sam3, ``sam3/agent``), not its
code, and there are no published numbers of this exact pipeline to match.
"""

from __future__ import annotations

from dataclasses import dataclass

from workers.engine.blocks.proposals.config import AmgConfig
from workers.engine.core.config import Config, setting, sub_config


@dataclass(frozen=True)
class GroundedSam3Config(Config):
    """Settings of grounded SAM 3."""

    config_name = "grounded_sam3"

    sam3_model: str = setting("sam3", model="sam3", doc="SAM 3 model of the store (gated on the hub)")
    mllm_model: str = setting(
        "qwen2_5_vl_7b", model="mllm", doc="multimodal LLM of the store (qwen2_5_vl_3b: laptop)"
    )
    noun_phrase: str = setting(
        "mllm", choices=("mllm", "parser"), doc="who shortens the expression: the MLLM or spaCy's noun chunk"
    )
    score_threshold: float = setting(0.5, low=0.0, high=1.0, doc="SAM 3 instance score to keep (> this)")
    mask_threshold: float = setting(0.5, low=0.0, high=1.0, doc="SAM 3 mask probability that is foreground")
    max_instances: int = setting(20, low=1, high=100, doc="most instances (by score) shown to the MLLM")
    draw_marks: bool = setting(True, doc="draw each instance's numbered box on the image the MLLM sees")
    select_single: bool = setting(False, doc="ask the MLLM even when there is only one instance")
    max_new_tokens: int = setting(96, low=1, high=1024, doc="cap on tokens of each MLLM answer")
    fallback_source: str = setting(
        "sam_vit_h",
        model="sam",
        doc="SAM model whose whole-image proposals are used when SAM 3 finds nothing",
    )
    amg: AmgConfig = sub_config(AmgConfig, doc="automatic mask generator settings of the fallback")
