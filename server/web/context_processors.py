"""Template context shared by every page."""

from django.conf import settings
from django.http import HttpRequest


def model_profile(request: HttpRequest) -> dict[str, object]:
    """Whether the workers rank with random-weight stand-ins (``RIS_MODEL_PROFILE=tiny``).

    Pages show a banner then: the masks come from the real MobileSAM, but their order is random, and an
    annotator must never take that ranking for a result.
    """
    return {
        "ris_model_profile": settings.RIS_ENGINE.profile,
        "ris_tiny_models": settings.RIS_ENGINE.profile == "tiny",
    }
