# GPU worker image: one Celery worker process per GPU (solo pool: no fork after CUDA is initialised),
# models loaded once per process and kept under a memory budget. The model store is a per-machine volume.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    RIS_ENV=production RIS_MODEL_DIR=/models RIS_CACHE_DIR=/var/cache/ris RIS_DEVICE=cuda RIS_MODEL_PROFILE=paper
WORKDIR /app

RUN apt-get update && apt-get install -y --no-install-recommends software-properties-common curl \
    && add-apt-repository -y ppa:deadsnakes/ppa && apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/* && python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY requirements.lock pyproject.toml ./
RUN pip install -r requirements.lock
COPY . .
RUN useradd --create-home --uid 1000 ris && mkdir -p /models /var/cache/ris && chown -R ris /models /var/cache/ris
USER ris
HEALTHCHECK --interval=60s --timeout=20s --retries=3 CMD celery -A workers.celery_app inspect ping -d "gpu@$HOSTNAME" || exit 1
# One process per GPU: run one container per device (CUDA_VISIBLE_DEVICES / device_ids in compose).
CMD ["celery", "-A", "workers.celery_app", "worker", "-Q", "gpu", "--pool", "solo", "--concurrency", "1", \
     "--prefetch-multiplier", "1", "-n", "gpu@%h", "--loglevel", "INFO"]
