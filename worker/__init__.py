"""Celery workers for generation jobs: thin named tasks on validated JSON that call datafactory."""
