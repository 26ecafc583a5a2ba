"""Build mamba-ssm's selective-scan CUDA extension for the visible GPU only, in minutes.

    python benchmarks/gpu/build_selective_scan.py --sdist mamba_ssm-2.3.2.post1 --site /tmp/mamba
    PYTHONPATH=/tmp/mamba python -m pytest -m cuda

Where no prebuilt mamba-ssm wheel matches the machine's torch and CUDA (torch 2.11 + CUDA 13.0 on
the H200 we were lent), ``pip install mamba-ssm`` compiles every kernel for about ten GPU
architectures and pulls tilelang and quack-kernels for Mamba-2/3. This script compiles only the
selective scan (``selective_scan_cuda``: what ``mambacontrol.ops.cuda_scan`` and mamba-ssm's
Mamba (v1) module call) for the GPU it sees, through ``torch.utils.cpp_extension`` and ninja, and
copies mamba-ssm's Python package beside it with an ``__init__`` that imports only the scan and
the Mamba (v1) module. On the H200 with 10 jobs it took 142 s. ``--sdist`` is mamba-ssm's
unpacked source distribution (``pip download --no-deps --no-binary :all: mamba-ssm``, or the
tarball from PyPI).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import torch
from torch.utils.cpp_extension import load

TRIMMED_INIT = '''# Written by mambacontrol's build_selective_scan.py: the selective scan
# and the Mamba (v1) module only, whose imports need neither tilelang nor quack-kernels.
from mamba_ssm.ops.selective_scan_interface import mamba_inner_fn, selective_scan_fn
from mamba_ssm.modules.mamba_simple import Mamba
'''

# mamba-ssm's own nvcc flags (its setup.py), less the architecture list
NVCC_FLAGS = ["-O3", "-std=c++17", "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
              "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
              "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
              "--expt-relaxed-constexpr", "--expt-extended-lambda", "--use_fast_math",
              "-lineinfo"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdist", type=Path, required=True,
                        help="mamba-ssm's unpacked source distribution (holds csrc/, mamba_ssm/)")
    parser.add_argument("--site", type=Path, required=True,
                        help="folder to put selective_scan_cuda and mamba_ssm in (PYTHONPATH)")
    parser.add_argument("--build-dir", type=Path, default=Path("/tmp/selective_scan_build"))
    args = parser.parse_args()
    src = args.sdist / "csrc" / "selective_scan"
    if not (src / "selective_scan.cpp").is_file() or not (args.sdist / "mamba_ssm").is_dir():
        parser.error(f"{args.sdist} is not mamba-ssm's source: csrc/selective_scan/ or "
                     "mamba_ssm/ is missing; unpack mamba-ssm's .tar.gz and pass its folder")
    if not torch.cuda.is_available():
        parser.error("no CUDA GPU is visible: the build targets the GPU it sees")
    major, minor = torch.cuda.get_device_capability()
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", f"{major}.{minor}")
    args.build_dir.mkdir(parents=True, exist_ok=True)
    args.site.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    sources = [src / "selective_scan.cpp", *sorted(src.glob("*.cu"))]
    module = load(name="selective_scan_cuda", sources=[str(s) for s in sources],
                  extra_cflags=["-O3", "-std=c++17"], extra_cuda_cflags=NVCC_FLAGS,
                  build_directory=str(args.build_dir), verbose=True)
    shutil.copy(module.__file__, args.site / "selective_scan_cuda.so")
    shutil.copytree(args.sdist / "mamba_ssm", args.site / "mamba_ssm", dirs_exist_ok=True)
    (args.site / "mamba_ssm" / "__init__.py").write_text(TRIMMED_INIT)
    print(f"selective_scan_cuda for sm_{major}{minor} built in "
          f"{time.perf_counter() - start:.0f} s -> {args.site}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
