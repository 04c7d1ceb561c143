"""Find the compiler flags that give OpenMP, by compiling, linking and running a probe.

Used by ``setup.py``.  If no flag works the extension is built serially with a warning,
unless ``FASTLSTM_FAIL_NO_OPENMP`` is set.  ``FASTLSTM_NO_OPENMP=1`` forces a serial build
(used to test that fallback).
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import warnings

PROBE = textwrap.dedent(
    """
    #include <omp.h>
    #include <stdio.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+:n)
        n += 1;
        printf("%d\\n", n > 0 && omp_get_max_threads() > 0);
        return 0;
    }
    """
)


def _candidate_flags():
    if sys.platform == "win32":
        return [(["/openmp"], [])]
    if sys.platform == "darwin":
        return [(["-Xpreprocessor", "-fopenmp"], ["-lomp"]), (["-fopenmp"], ["-fopenmp"])]
    return [(["-fopenmp"], ["-fopenmp"])]


def _try(compile_flags, link_flags):
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    cc = cc.split()
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        exe = os.path.join(tmp, "probe")
        with open(src, "w") as f:
            f.write(PROBE)
        try:
            subprocess.run(
                cc + compile_flags + [src, "-o", exe] + link_flags,
                check=True, capture_output=True, timeout=120,
            )
            out = subprocess.run([exe], check=True, capture_output=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return False
        return out.stdout.strip() == b"1"


def openmp_flags():
    """Return ``(enabled, compile_flags, link_flags)``."""
    if os.environ.get("FASTLSTM_NO_OPENMP", "") not in ("", "0"):
        return False, [], []
    for compile_flags, link_flags in _candidate_flags():
        if _try(compile_flags, link_flags):
            return True, compile_flags, link_flags
    message = (
        "fastlstm: the C compiler does not support OpenMP; building a serial version. "
        "Results are identical but only one core is used by the kernels."
    )
    if os.environ.get("FASTLSTM_FAIL_NO_OPENMP", "") not in ("", "0"):
        raise RuntimeError(message)
    warnings.warn(message)
    return False, [], []


if __name__ == "__main__":  # pragma: no cover
    print(openmp_flags())
    shutil.which("cc")
