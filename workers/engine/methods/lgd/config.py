"""``LgdConfig`` and its ``GenerationConfig``: LGD's settings (docs/METHODS.md#lgd). Torch-free."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from workers.engine.core.config import Config, setting, sub_config
from workers.engine.core.errors import ConfigError
from workers.engine.methods.global_local.config import GlobalLocalConfig
from workers.engine.methods.lgd.prompt_set import PromptSet, load_prompt_set


@dataclass(frozen=True)
class GenerationConfig(Config):
    """How LGD's descriptions are decoded (greedy)."""

    config_name = "generation"

    max_new_tokens: int = setting(48, low=1, high=1024, doc="cap on generated tokens per description")
    prefill_response: bool = setting(True, doc="start the assistant turn with the prompt's response prefix")
    batch_size: int = setting(16, low=1, high=256, doc="most sequences (expression x kind) per generate call")

    def cache_params(self) -> dict[str, Any]:
        """What changes a description (the batch size does not)."""
        return {"max_new_tokens": self.max_new_tokens, "prefill_response": self.prefill_response}


@dataclass(frozen=True)
class LgdConfig(GlobalLocalConfig):
    """Settings of LGD: every Global-Local CLIP key (the vanilla score and the mask features), plus the MLLM's."""

    config_name = "lgd"

    mllm_model: str = setting("llava_1_5_7b", model="mllm", doc="multimodal LLM of the store")
    prompt_set: str = setting("lgd", doc="prompt file workers/engine/methods/lgd/prompts/<name>.json")
    generation: GenerationConfig = sub_config(GenerationConfig, doc="decoding settings")
    alpha: float = setting(1.0, low=0.0, high=100.0, doc="weight of S_att")
    beta: float = setting(0.5, low=0.0, high=100.0, doc="weight of S_sur")
    use_van: bool = setting(True, doc="ablation: the vanilla CLIP term")
    use_att: bool = setting(True, doc="ablation: the attribute description term")
    use_sur: bool = setting(True, doc="ablation: the surrounding description term")

    def check(self) -> None:
        super().check()
        try:
            load_prompt_set(self.prompt_set)
        except ConfigError as exc:
            raise ConfigError(f"config key 'prompt_set': {exc}") from exc
        if not (self.use_van or self.use_att or self.use_sur):
            raise ConfigError(
                "config keys 'use_van', 'use_att' and 'use_sur' are all false; turn at least one on"
            )

    @property
    def prompts(self) -> PromptSet:
        return load_prompt_set(self.prompt_set)

    @property
    def active_kinds(self) -> tuple[str, ...]:
        """The description kinds the enabled terms need, in generation order."""
        return tuple(kind for kind, on in (("attribute", self.use_att), ("surrounding", self.use_sur)) if on)

    def vanilla_config(self) -> GlobalLocalConfig:
        """The Global-Local CLIP config whose score is ``S_van`` (this config's Global-Local keys)."""
        keys = GlobalLocalConfig.field_names()
        return GlobalLocalConfig.from_dict({k: v for k, v in self.to_dict().items() if k in keys})
