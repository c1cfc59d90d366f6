"""Programmatic dependent launch (PDL, Hopper and later) for the decoder's kernels.

A decode step is a chain of ~170 short kernels; between two of them the GPU drains the first, makes its writes
visible and only then starts launching the second. A kernel launched with PDL may be launched while the one
before it in the stream is still running: it enters through `enter`, which lets the next kernel launch in turn
and then waits (griddepcontrol.wait) until the previous kernel has finished and its writes are visible. Nothing
is read or written before that wait, so the results are those of a plain launch; what overlaps is the launch
and the programs' set-up. configs.launches_pdl says where it is used.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .configs import launches_pdl

__all__ = ["enter", "launch"]


@triton.jit
def enter(PDL: tl.constexpr):
    """A kernel's first step: with PDL, release the next kernel's launch, then wait for the previous kernel."""
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()


def launch(device: torch.device) -> dict:
    """The keywords of a launch on device of a kernel that enters through `enter`: its PDL constexpr and, where
    configs.launches_pdl says so, the launch option that makes the launch programmatic."""
    return {"PDL": True, "launch_pdl": True} if launches_pdl(device) else {"PDL": False}
