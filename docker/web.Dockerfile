# Web image: Django behind gunicorn, static files served by WhiteNoise; compose also runs the beat, the light
# worker and Flower from it. It installs only the web set (requirements/web.lock: no torch, no CUDA, no engine
# libraries); the worker image's lock holds the same pins plus the engine's, so both run the same versions.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    RIS_ENV=production RIS_VAR_DIR=/var/lib/ris RIS_MEDIA_ROOT=/var/lib/ris/media \
    RIS_STATIC_ROOT=/app/staticfiles
WORKDIR /app

# curl for the health check; the web set's wheels (Pillow, NumPy, pycocotools, psycopg) bring their own libraries.
RUN apt-get update && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/*
COPY requirements/web.lock requirements/
# --no-deps: exactly the lock's pins, nothing resolved on the side; pip check proves the set is complete.
RUN pip install --no-deps -r requirements/web.lock && pip check
COPY . .
# collectstatic needs a secret in production mode; this one exists only during the build.
RUN DJANGO_SECRET_KEY=build-only-secret-build-only-secret-0000 python manage.py collectstatic --noinput \
    && useradd --create-home --uid 1000 ris && mkdir -p /var/lib/ris && chown -R ris /var/lib/ris
USER ris
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --retries=3 CMD curl -fsS http://127.0.0.1:8000/healthz || exit 1
CMD ["sh", "-c", "python manage.py migrate --noinput && exec gunicorn server.config.wsgi:application -c server/config/gunicorn_conf.py"]
