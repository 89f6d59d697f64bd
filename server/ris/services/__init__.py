"""Every write of the app goes through a function here: ``<entity>_<action>(*, ...)``, keyword-only, typed.

Submodules: ``projects``, ``images`` (upload and validation), ``image_files`` (decoding for the engine,
scaled renditions for the browser), ``rle`` (COCO RLE checks), ``expressions``, ``jobs`` (lifecycle,
dispatch, reconciler), ``work`` (the claim / heartbeat / fail / reconcile rules shared by jobs, refine
requests and benchmark shards), ``dispatch`` (sending tasks by name), ``reviews``. Nothing here imports
torch or ``workers.engine``.
"""

from server.ris.services.expressions import expression_create
from server.ris.services.image_files import image_load_rgb, image_rendition
from server.ris.services.images import RejectedFile, UploadedImage, image_upload
from server.ris.services.jobs import (
    job_cancel,
    job_claim,
    job_dispatch,
    job_fail,
    job_heartbeat,
    job_partial_candidates,
    job_progress,
    job_retry,
    job_succeed,
    jobs_reconcile,
    jobs_retry,
)
from server.ris.services.projects import project_create, project_member_add
from server.ris.services.reviews import review_create

__all__ = [
    "RejectedFile",
    "UploadedImage",
    "expression_create",
    "image_load_rgb",
    "image_rendition",
    "image_upload",
    "job_cancel",
    "job_claim",
    "job_dispatch",
    "job_fail",
    "job_heartbeat",
    "job_partial_candidates",
    "job_progress",
    "job_retry",
    "job_succeed",
    "jobs_reconcile",
    "jobs_retry",
    "project_create",
    "project_member_add",
    "review_create",
]
