"""Test servers for everyone's tests and benchmarks (real sockets on 127.0.0.1, faults injected on purpose).

Names are loaded lazily so `python -m datafactory.testing.fault_server` does not import itself twice.
"""
from __future__ import annotations

__all__ = ["CANNED_QA", "CANNED_VERDICT", "FaultInjectingServer", "FaultSpec", "TransformersServe"]


def __getattr__(name: str):
    if name == "TransformersServe":
        from datafactory.testing.transformers_serve import TransformersServe

        return TransformersServe
    if name in __all__:
        from datafactory.testing import fault_server

        return getattr(fault_server, name)
    raise AttributeError(name)
