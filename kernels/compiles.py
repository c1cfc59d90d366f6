"""A count of the Triton kernel variants this process compiled or loaded from Triton's disk cache.

Triton compiles a kernel once per combination of its compile-time arguments, on first use; on a server that
is a stall of up to seconds for whichever step meets the variant first. The engine compiles what it can
foresee before serving (Engine.warm_up) and reports the count since then (stats()["kernel_compiles"]), so a
variant it missed shows up instead of hiding in a latency tail.
"""

from __future__ import annotations

import collections
import logging
import threading

__all__ = ["compiled", "install"]

logger = logging.getLogger(__name__)
_lock = threading.Lock()
_installed = False
_by_kernel: collections.Counter[str] = collections.Counter()


def install() -> None:
    """Hook the count into Triton (once per process; keeps a hook someone else installed)."""
    global _installed
    with _lock:
        if _installed:
            return
        try:
            import triton
        except ImportError:  # no Triton (e.g. macOS): nothing compiles
            _installed = True
            return
        previous = triton.knobs.runtime.jit_post_compile_hook

        def hook(*args, **kwargs):
            fn = kwargs.get("fn")
            name = getattr(fn, "name", None) or "?"
            with _lock:
                _by_kernel[name] += 1
            logger.debug("Triton compiled %s", kwargs.get("repr", name))
            return previous(*args, **kwargs) if previous else None

        triton.knobs.runtime.jit_post_compile_hook = hook
        _installed = True


def compiled() -> dict[str, int]:
    """Variants compiled (or loaded) so far in this process, by kernel name (needs install() first)."""
    with _lock:
        return dict(_by_kernel)
