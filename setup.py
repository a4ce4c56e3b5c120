"""Build the compiled parts of iim.

* ``iim._fastmux`` - the multiplexor relay core (Cython, links the system
  OpenSSL: libssl/libcrypto).
* ``iim._tlsrecord`` - the TLS record layer the relay runs on legacy-SSL
  sessions after OpenSSL's handshake (Cython, libcrypto/libssl).
* ``iim._tickets`` - the multiplexor's rotating TLS session ticket keys.
* ``iim.keys._nss`` - a read-only NSS database reader (Cython, links libnss3;
  flags come from ``pkg-config nss``).

A missing development package is reported as one line naming the Debian
package to install, not as a compiler traceback.

``./dev`` installs iim in editable mode with ``IIM_NO_EXTENSIONS=1`` and then
builds the extensions in place itself (``build_ext --inplace -j 2``): without it
the editable install would compile them once in its own build folder and the
in-place build a second time, ~15 s of CPU for nothing on a fresh clone.
"""
import os
import shlex
import subprocess
import sys

from Cython.Build import cythonize
from setuptools import Extension, find_packages, setup


def pkg_config(package, debian_name):
    try:
        out = subprocess.run(
            ["pkg-config", "--cflags", "--libs", package],
            check=True, capture_output=True, text=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        sys.exit(f"setup.py: pkg-config cannot find {package}: install {debian_name}")
    flags = shlex.split(out)
    return {
        "include_dirs": [f[2:] for f in flags if f.startswith("-I")],
        "library_dirs": [f[2:] for f in flags if f.startswith("-L")],
        "libraries": [f[2:] for f in flags if f.startswith("-l")],
    }


def extensions():
    # -g0: Python's CFLAGS carry -g, and the debug information of Cython's
    # generated C is most of its compile time (_fastmux: 8.7 -> 6.2 s, the longest
    # step of ./dev's set-up). The symbol table stays, so perf still names our
    # functions; the code is the same.
    openssl = dict(pkg_config("openssl", "libssl-dev"), extra_compile_args=["-g0"])
    nss = dict(pkg_config("nss", "libnss3-dev"), extra_compile_args=["-g0"])
    return cythonize(
        [Extension("iim._fastmux", ["iim/_fastmux.pyx"], **openssl),
         Extension("iim._tlsrecord", ["iim/_tlsrecord.pyx"], **openssl),
         Extension("iim._tickets", ["iim/_tickets.pyx"], **openssl),
         Extension("iim.keys._nss", ["iim/keys/_nss.pyx"], **nss)],
        language_level=3,
        include_path=["iim"],
        compiler_directives={"embedsignature": True},
        nthreads=2,
    )


setup(
    packages=find_packages(include=["iim", "iim.*"]),
    ext_modules=[] if os.environ.get("IIM_NO_EXTENSIONS") == "1" else extensions(),
)
