/*
 * aiozcrx._leases: buffers handed to Python as read-only memoryviews, and given
 * back to the kernel when the last view over them is released.
 *
 * Four types:
 *   Area       - a memory area receive buffers live in, plus the ring that takes
 *                released buffers back: a zcrx refill ring, a provided-buffer ring,
 *                or a plain free list (socket engine). It owns the mappings and
 *                unmaps them only when it is closed AND no lease refers to it any
 *                more, so an old view never reads unmapped memory.
 *   Lease      - one received buffer (pointer, length, identity). It exports the
 *                buffer protocol (read-only); CPython keeps it alive as long as any
 *                memoryview, slice or derived view over it exists. Its dealloc is
 *                the "buffer released" hook: it queues the buffer for the kernel.
 *   Dispatcher - drains a completion queue in C: one memoryview and one callback
 *                call per data completion, everything else collected for Python.
 *   CopySink   - a protocol's data_received fed bytes, not views: the dispatcher
 *                copies and gives the buffer back at once, with no view made.
 *
 * Refill publishing is batched: a released buffer is written into the ring's
 * entry array right away, but the tail the kernel reads is stored (store-release)
 * only by Area.publish(), once per dispatch round.
 *
 * Threads: all state is guarded by the GIL. A view dropped in another thread
 * runs the dealloc there, under the GIL, which only appends to user-space state;
 * the kernel sees it at the next publish from the loop thread.
 *
 * Source layout (one extension, one translation unit: the files below are
 * #included, not compiled separately, so `static` stays static):
 *   uapi.h     - the io_uring kernel UAPI (shared with the cffi layer, _abi_build.py)
 *   common.h   - macros, the Area and Lease structs, forward declarations
 *   area.c     - Area
 *   lease.c    - Lease, the lease cache, view reuse
 *   copysink.c - CopySink: bytes for protocols that take no views
 *   dispatch.c - Dispatcher
 *   leases.c   - this file: the module
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "common.h"

#include "area.c"
#include "lease.c"
#include "copysink.c"
#include "dispatch.c"

/* ---------------------------------------------------------------- module */

static struct PyModuleDef leases_module = {
    PyModuleDef_HEAD_INIT, "aiozcrx._leases",
    "Buffer exporter, area and completion dispatcher (see aiozcrx/_c/leases.c).", -1, NULL,
};

PyMODINIT_FUNC
PyInit__leases(void)
{
    if (PyType_Ready(&AreaType) < 0 || PyType_Ready(&LeaseType) < 0 ||
        PyType_Ready(&DispatcherType) < 0 || PyType_Ready(&CopySinkType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&leases_module);
    if (!m)
        return NULL;
#if VIEW_REUSE
    check_view_layout();
#endif
    /* whether views can be reused here at all (Dispatcher.set_view_reuse toggles it) */
    PyModule_AddIntConstant(m, "VIEW_REUSE", VIEW_REUSE && view_layout_ok);
    /* completions one pump delivers before the loop's other callbacks get a turn */
    PyModule_AddIntConstant(m, "PUMP_BUDGET", PUMP_BUDGET);
    Py_INCREF(&AreaType);
    PyModule_AddObject(m, "Area", (PyObject *)&AreaType);
    Py_INCREF(&LeaseType);
    PyModule_AddObject(m, "Lease", (PyObject *)&LeaseType);
    Py_INCREF(&CopySinkType);
    PyModule_AddObject(m, "CopySink", (PyObject *)&CopySinkType);
    Py_INCREF(&DispatcherType);
    PyModule_AddObject(m, "Dispatcher", (PyObject *)&DispatcherType);
    return m;
}
