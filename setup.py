# Build glue only: metadata lives in pyproject.toml. Two compiled pieces:
#  - aiozcrx._abi    (cffi, API mode): io_uring UAPI structs/constants, raw syscalls,
#    ring setup, SQE prep, registration; built by aiozcrx/_abi_build.py from the C
#    files it names in aiozcrx/_c/ (abi.h declares what Python sees)
#  - aiozcrx._fastpath (CPython C API): the buffer exporter whose release recycles a
#    buffer, and the C completion dispatcher
# Both take the kernel UAPI from aiozcrx/_c/uapi.h. The extension is one translation
# unit: aiozcrx/_c/fastpath.c #includes area.c, lease.c and dispatch.c (the depends).
from glob import glob

from setuptools import Extension, setup

C_DEPENDS = sorted(glob("aiozcrx/_c/*.h") + glob("aiozcrx/_c/*.c"))

setup(
    cffi_modules=["aiozcrx/_abi_build.py:ffibuilder"],
    ext_modules=[
        Extension("aiozcrx._fastpath", ["aiozcrx/_c/fastpath.c"], include_dirs=["aiozcrx/_c"],
                  depends=C_DEPENDS, extra_compile_args=["-O2", "-Wall"]),
    ],
)
