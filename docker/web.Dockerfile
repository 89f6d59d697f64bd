# Web image: Django behind gunicorn, static files served by WhiteNoise. The web process never imports torch,
# but it shares the one lock file with the workers so both run the same code and versions.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    RIS_ENV=production RIS_VAR_DIR=/var/lib/ris RIS_MEDIA_ROOT=/var/lib/ris/media \
    RIS_STATIC_ROOT=/app/staticfiles
WORKDIR /app

RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 curl \
    && rm -rf /var/lib/apt/lists/*
COPY requirements.lock pyproject.toml ./
RUN pip install -r requirements.lock
COPY . .
# collectstatic needs a secret in production mode; this one exists only during the build.
RUN DJANGO_SECRET_KEY=build-only-secret-build-only-secret-0000 python manage.py collectstatic --noinput \
    && useradd --create-home --uid 1000 ris && mkdir -p /var/lib/ris && chown -R ris /var/lib/ris
USER ris
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --retries=3 CMD curl -fsS http://127.0.0.1:8000/healthz || exit 1
CMD ["sh", "-c", "python manage.py migrate --noinput && exec gunicorn server.config.wsgi:application --bind 0.0.0.0:8000 --workers ${WEB_CONCURRENCY:-4} --timeout 60 --access-logfile -"]
