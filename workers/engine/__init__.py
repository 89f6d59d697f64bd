"""Pure-PyTorch engine: mask proposals, scoring pipelines, model store, caches. No Django, no Celery."""
