"""cffi (API mode) build of ``aiozcrx._abi``: the io_uring kernel ABI, nothing else.

The C lives in ``aiozcrx/_c/`` as real C files (``setup.c``, ``queue.c``,
``register.c``, ``memory.c``, ``timer.c``, ``wakeprobe.c``), compiled as the
module's sources. Each type and function they share with Python is declared once,
in ``aiozcrx/_c/abi.h``; the cdef (what Python sees) is made here from that
header's text between its two "cdef" marker lines, plus every integer ``#define
NAME`` of the headers in ``EXPORTED_HEADERS`` (values left to the compiler:
``#define NAME ...``), so no declaration or constant is written twice. Only
``aiozcrx/_kernel.py`` imports the result; everything above it works with Python
objects, never with pointers.

Values follow the 7.2 UAPI (include/uapi/linux/io_uring.h and io_uring/zcrx.h); see uapi.h.
"""

import os
import re

from cffi import FFI

# absolute, so the build works from any cwd
C_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_c")

#: the module's own declarations (the marked part becomes the cdef)
ABI_HEADER = os.path.join(C_DIR, "abi.h")
#: headers whose integer constants Python reads as lib.NAME: the kernel's, and the
#: protocol between the C dispatcher and the engines
EXPORTED_HEADERS = [os.path.join(C_DIR, "uapi.h"), os.path.join(C_DIR, "protocol.h")]
C_SOURCES = [os.path.join(C_DIR, name)
             for name in ("setup.c", "queue.c", "register.c", "memory.c", "timer.c", "wakeprobe.c")]

CDEF_BEGIN = "/* ==== cdef begin ==== */"
CDEF_END = "/* ==== cdef end ==== */"
CDEF_PRIVATE = "/* cdef: the rest is private */"
# an object-like macro with a value: `#define NAME value` (not `#define NAME(x) ...`,
# not an include guard's bare `#define NAME`, not the libc's `__NR_...`)
_DEFINE = re.compile(r"^#define\s+([A-Z][A-Z0-9_]*)\s+\S")


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def cdef_declarations(header_text: str) -> str:
    """The text between the cdef markers of ``header_text``, each struct's
    private tail (from the CDEF_PRIVATE line to its closing ``};``) replaced by
    ``...;`` (cffi then takes the struct's size and layout from the compiler)."""
    try:
        body = header_text.split(CDEF_BEGIN, 1)[1].split(CDEF_END, 1)[0]
    except IndexError:
        raise RuntimeError(f"abi.h: the markers {CDEF_BEGIN!r} and {CDEF_END!r} are missing") from None
    out: list[str] = []
    private = False
    for line in body.splitlines():
        if private:
            if line.startswith("};"):
                out.append(line)
                private = False
            continue
        if CDEF_PRIVATE in line:
            out.append("    ...;")
            private = True
            continue
        out.append(line)
    return "\n".join(out) + "\n"


def cdef_constants(header_text: str) -> str:
    """``#define NAME ...`` for every object-like macro of a header that has a value."""
    names = [m.group(1) for m in map(_DEFINE.match, header_text.splitlines()) if m]
    return "".join(f"#define {name} ...\n" for name in names)


def cdef() -> str:
    return "".join(cdef_constants(_read(h)) for h in EXPORTED_HEADERS) + cdef_declarations(_read(ABI_HEADER))


ffibuilder = FFI()
ffibuilder.cdef(cdef())
ffibuilder.set_source("aiozcrx._abi", '#include "abi.h"\n', include_dirs=[C_DIR], sources=C_SOURCES,
                      depends=[ABI_HEADER, *EXPORTED_HEADERS, *C_SOURCES],
                      extra_compile_args=["-O2", "-Wall"])

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
