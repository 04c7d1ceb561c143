import os
import sys

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from build_tools.openmp import openmp_flags  # noqa: E402

HAS_OPENMP, OMP_COMPILE, OMP_LINK = openmp_flags()

# -O3 for auto-vectorisation of the pointwise loops; no -ffast-math (NaN must propagate)
# and no -march=native (wheels must run on any x86-64 / aarch64 CPU).
compile_args = ["-O3", "-fno-math-errno"] if sys.platform != "win32" else ["/O2"]
compile_args += OMP_COMPILE
macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"), ("FASTLSTM_OPENMP", str(int(HAS_OPENMP)))]

extensions = [
    Extension(
        f"fastlstm.{name}",
        [f"src/{name}.pyx"],
        include_dirs=["src", np.get_include()],
        extra_compile_args=compile_args,
        extra_link_args=OMP_LINK,
        define_macros=macros,
    )
    for name in ("_forward", "_backward")
]

setup(
    ext_modules=cythonize(
        extensions,
        include_path=["src"],
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
    ),
)
