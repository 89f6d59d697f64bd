"""``CaptionConfig``: how captions are generated (defaults: LAVIS's BLIP-2 ``generate``, TAS's blur). Torch-free."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from workers.engine.core.config import Config, setting
from workers.engine.core.errors import ConfigError

#: TAS's Gaussian kernel for the blurred background (``cv2.GaussianBlur(image, (75, 75), 0)``).
BLUR_KERNEL = 75


@dataclass(frozen=True)
class CaptionConfig(Config):
    """Caption generation settings (LAVIS's BLIP-2 defaults; TAS's blurred background)."""

    max_new_tokens: int = setting(30, low=1, high=256, doc="longest caption, in tokens")
    min_new_tokens: int = setting(1, low=0, high=256, doc="shortest caption, in tokens")
    num_beams: int = setting(5, low=1, high=16, doc="beam width (1: greedy decoding)")
    prompt: str = setting("", doc="text given with each image ('' = images only, as BLIP-2 captioning)")
    batch_size: int = setting(16, low=1, high=256, doc="images per generate call (speed only)")
    blur_kernel: int = setting(
        BLUR_KERNEL, low=1, high=1001, doc="odd Gaussian kernel of the blurred background"
    )

    def check(self) -> None:
        if self.min_new_tokens > self.max_new_tokens:
            raise ConfigError(
                f"config key 'min_new_tokens' must be at most max_new_tokens={self.max_new_tokens}, "
                f"got {self.min_new_tokens}"
            )
        if self.blur_kernel % 2 == 0:
            raise ConfigError(f"config key 'blur_kernel' must be an odd number, got {self.blur_kernel}")

    def generation_dict(self) -> dict[str, Any]:
        """What a caption depends on besides the weights and the pixels (cache keys; batching excluded)."""
        return {k: v for k, v in self.to_dict().items() if k != "batch_size"}
