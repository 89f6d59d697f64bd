# GPU worker image: one Celery worker process per GPU (solo pool: no fork after CUDA is initialised),
# models loaded once per process and kept under a memory budget. The model store is a per-machine volume.
# It installs requirements/worker.lock: the web set plus the engine. torch==2.14.1 there is PyPI's CUDA 13.0
# build, which brings its own CUDA runtime, cuDNN and NCCL as nvidia-*-cu13 wheels (pinned in the lock), so
# the base needs no CUDA libraries of its own: the CUDA 13.0 `base` image only declares the requirement
# (NVIDIA_REQUIRE_CUDA), and the container toolkit refuses a host driver too old for it (CUDA 13.0 needs
# driver 580 or newer) instead of torch failing later.
FROM nvidia/cuda:13.0.2-base-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    RIS_ENV=production RIS_MODEL_DIR=/models RIS_CACHE_DIR=/var/cache/ris RIS_DEVICE=cuda RIS_MODEL_PROFILE=paper
WORKDIR /app

RUN apt-get update && apt-get install -y --no-install-recommends software-properties-common curl \
    && add-apt-repository -y ppa:deadsnakes/ppa && apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/* && python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY requirements/worker.lock requirements/
# --no-deps: exactly the lock's pins, nothing resolved on the side; pip check proves the set is complete.
RUN pip install --no-deps -r requirements/worker.lock && pip check
COPY . .
RUN useradd --create-home --uid 1000 ris && mkdir -p /models /var/cache/ris && chown -R ris /models /var/cache/ris
USER ris
HEALTHCHECK --interval=60s --timeout=20s --retries=3 CMD celery -A workers.celery_app inspect ping -d "gpu@$HOSTNAME" || exit 1
# One process per GPU; without a command it serves both lanes (workers/lanes.py), so interactive work can
# wait behind one background task. compose.yaml runs it twice per device instead: one process per lane.
CMD ["celery", "-A", "workers.celery_app", "worker", "-Q", "interactive,background", "--pool", "solo", \
     "--concurrency", "1", "--prefetch-multiplier", "1", "-n", "gpu@%h", "--loglevel", "INFO"]
