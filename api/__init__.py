"""FastAPI service: submit, watch, cancel and download generation jobs (runs on the Celery workers)."""
