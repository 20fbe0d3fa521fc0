"""The data recipe as a plain library: documents -> chunks -> QA by a chat model -> critique -> long instances.

No Celery, no FastAPI, nothing else of longscale is imported here.
"""
