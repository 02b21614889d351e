"""Side-by-side RoPE speed (the same as ``ropekit bench``), results under benchmarks/results/.

    python benchmarks/speed.py            # CPU table: speed_cpu.csv + speed_cpu.png
    python benchmarks/speed.py --gpu      # plus the GPU table (CUDA): speed_gpu.csv

See ``ropekit.bench`` for what is measured and how.
"""

import os
import sys

from ropekit.cli import main

if __name__ == "__main__":
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    argv = sys.argv[1:]
    sys.exit(main(["bench", *(argv if "--out" in argv else ["--out", here, *argv])]))
