"""`longscale worker` (a real Celery worker process) and `longscale flower` (the Celery monitor)."""
from __future__ import annotations

import argparse


def _run_worker(args: argparse.Namespace) -> int:
    from worker.celery_app import app
    from worker.settings import get_worker_settings

    argv = ["worker", f"--loglevel={args.loglevel}", f"--concurrency={args.concurrency}",
            f"--queues={args.queues or get_worker_settings().queue}", f"--pool={args.pool}"]
    if args.hostname:
        argv.append(f"--hostname={args.hostname}")
    app.worker_main(argv)
    return 0


def _run_flower(args: argparse.Namespace) -> int:
    from worker.celery_app import app

    try:
        import flower  # noqa: F401
    except ModuleNotFoundError:
        raise SystemExit("longscale flower needs flower: pip install flower") from None
    app.start(["flower", f"--port={args.port}", f"--address={args.address}"])
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    worker = sub.add_parser("worker", help="start a Celery worker for generation jobs (Redis from "
                            "LONGSCALE_REDIS_URL)")
    worker.add_argument("--concurrency", type=int, default=1, help="worker processes (default: 1; each loads "
                        "its own engine client and tokenizers)")
    worker.add_argument("--queues", default=None, help="comma-separated queues (default: LONGSCALE_QUEUE or "
                        "'longscale')")
    worker.add_argument("--loglevel", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    worker.add_argument("--pool", default="prefork", choices=["prefork", "solo", "threads"],
                        help="execution pool (solo: one task at a time in the main process)")
    worker.add_argument("--hostname", default=None, help="node name, e.g. w1@%%h (default: celery@host)")
    worker.set_defaults(func=_run_worker)

    flower = sub.add_parser("flower", help="start Flower, the Celery web monitor (pip install flower)")
    flower.add_argument("--port", type=int, default=5555)
    flower.add_argument("--address", default="127.0.0.1")
    flower.set_defaults(func=_run_flower)
