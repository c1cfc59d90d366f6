"""Run the two-launch SGMV kernels on Punica's Distinct decode mix (one token per adapter) a few times, for a
profiler to attach to (Nsight Compute: `ncu --kernel-name regex:sgmv ...`); no timing of its own.

    ncu --kernel-name regex:_sgmv --launch-skip 6 --launch-count 6 --section SpeedOfLight --section Occupancy \
        --section WarpStateStats python benchmarks/kernels/profile_distinct.py
"""

from __future__ import annotations

import argparse

import torch

from bench_sgmv import DEVICE, Case, Inputs  # noqa: I001 (script dir)
from loraledger.kernels.configs import sgmv_config


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--t", type=int, default=64)
    p.add_argument("--shapes", default="qo,up,down")
    p.add_argument("--reps", type=int, default=4)
    args = p.parse_args()
    for shape in args.shapes.split(","):
        inp = Inputs(Case("decode", shape, 16, args.t, args.t), DEVICE)
        run = inp.ours(sgmv_config(args.t, DEVICE))
        for _ in range(args.reps):
            run()
        torch.cuda.synchronize()
        print(shape, "done", flush=True)


if __name__ == "__main__":
    main()
