"""Fixtures of the fault tests (real processes on real PostgreSQL and a private Redis).

- ``media_root`` (autouse, overrides the suite's): one media folder for the whole session, because the
  worker processes started once per module read the images the tests upload.
- ``model_dir`` (session): a model store with real MobileSAM, spaCy and the tiny CLIP.
- ``artifacts`` (session): where process logs go (``$RIS_TEST_ARTIFACTS/faults`` or a temporary folder).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image as PILImage

from tests.faults.procs import build_model_store


@pytest.fixture(scope="session")
def shared_media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fault-media")


@pytest.fixture(autouse=True)
def media_root(settings, shared_media: Path) -> Path:
    settings.MEDIA_ROOT = shared_media
    return shared_media


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model_store(tmp_path_factory.mktemp("fault-models"))


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get("RIS_TEST_ARTIFACTS")
    root = Path(configured) / "faults" if configured else tmp_path_factory.mktemp("fault-logs")
    root.mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture(scope="session")
def photo_jpeg() -> Callable[[int, int], bytes]:
    """``(variant, side) -> JPEG bytes``: a real photo (skimage's astronaut), a different crop per variant,
    so each variant is a new image to the engine's per-image cache."""
    from skimage import data

    astronaut = PILImage.fromarray(data.astronaut())

    def make(variant: int = 0, side: int = 256) -> bytes:
        offset = 6 * variant
        crop = astronaut.crop((offset, offset, 512 - offset, 512 - offset))
        buffer = io.BytesIO()
        crop.resize((side, side), PILImage.Resampling.BILINEAR).save(buffer, format="JPEG", quality=92)
        return buffer.getvalue()

    return make
