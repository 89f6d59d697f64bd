"""Template context shared by every page."""

from django.conf import settings
from django.http import HttpRequest

from workers.engine.core.errors import EngineError
from workers.engine.store.profiles import profile_notice


def model_profile(request: HttpRequest) -> dict[str, object]:
    """The one-line notice shown when some pipeline ranks with random-weight stand-ins, or ``None``.

    That is ``RIS_MODEL_PROFILE=tiny``, or ``auto`` on a machine whose store lacks a pipeline's real models
    (the hub was unreachable on first use): the masks come from the real MobileSAM, but their order is
    random, and an annotator must never take that ranking for a result. The notice names the fix command.
    """
    try:
        notice = profile_notice(settings.RIS_ENGINE)
    except EngineError as error:  # an unreadable manifest must not take every page down
        notice = f"The model store cannot be read ({error}); ranking may use random-weight stand-ins."
    return {
        "ris_model_profile": settings.RIS_ENGINE.profile,
        "ris_tiny_models": notice is not None,
        "ris_model_notice": notice,
    }
