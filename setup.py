# Build glue only: metadata lives in pyproject.toml. Two compiled pieces:
#  - aiozcrx._abi    (cffi, API mode): io_uring UAPI structs/constants, raw syscalls, CQ drain
#  - aiozcrx._leases (CPython C API): the buffer exporter whose release recycles a buffer
from setuptools import Extension, setup

setup(
    cffi_modules=["aiozcrx/_abi_build.py:ffibuilder"],
    ext_modules=[
        Extension("aiozcrx._leases", ["aiozcrx/_leases.c"], extra_compile_args=["-O2", "-Wall"]),
    ],
)
