/*
 * aiozcrx._fastpath: buffers handed to Python as read-only memoryviews, and given
 * back to the kernel when the last view over them is released; the completion
 * dispatcher that makes them. Everything done once per completion or per read is
 * here (the name says so: it was "_leases", which hid the Dispatcher).
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
 *   uapi.h     - the io_uring kernel UAPI (shared with the cffi layer, abi.h)
 *   common.h   - macros, the Area and Lease structs, forward declarations
 *   area.c     - Area
 *   lease.c    - Lease, the lease cache, view reuse
 *   copysink.c - CopySink: bytes for protocols that take no views
 *   dispatch.c - Dispatcher
 *   fastpath.c - this file: the module
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>

#include "common.h"

/* ------------------------------------------------------------------ fork
 *
 * A child forked while a Receiver is open shares the parent's ring (its fd, and
 * the SQ/CQ mapped MAP_SHARED), sees a kernel-allocated refill region MAP_SHARED
 * too, and has no area or user refill region at all (MADV_DONTFORK: they are
 * unmapped in the child). Whatever the child does with what it inherited must
 * never reach the parent's ring: so, in every child, before any Python runs
 * there (pthread_atfork), the process generation is bumped, which makes every
 * Area and Dispatcher made before inert, and each inherited Area's mappings are
 * replaced by zero pages, read-only: an inherited view reads as zeros in the
 * child, never crashes, and never reaches the parent's memory. The C objects
 * check the generation where they would touch a ring (Area.publish/recv,
 * Dispatcher.run/pump/on_wake/kick/socket_wake: ProcessForked) or the area (a
 * lease's release: nothing happens). The Python layers check too (Receiver,
 * ZcrxTransport, _kernel.Ring), with the same error. docs/security.md says what a
 * child may do. */

static Area *all_areas;         /* every Area alive in this process (see Area_new) */
static PyObject *forked_error;  /* aiozcrx.errors.ProcessForked */

static PyObject *
raise_forked(void)
{
    PyErr_SetString(forked_error ? forked_error : PyExc_RuntimeError,
                    "aiozcrx: this Receiver was opened in another process (fork): a forked "
                    "child cannot use it, its ring, its transports or its views (they are the "
                    "parent's); open a Receiver of its own in the child");
    return NULL;
}

/* pthread_atfork's child handler: runs in the child only, right after fork(),
 * with one thread; only system calls here. */
static void
at_fork_child(void)
{
    fork_gen++;
    for (Area *a = all_areas; a; a = a->next_area)
        for (int i = 0; i < a->nmaps; i++)
            if (mmap(a->maps[i].addr, a->maps[i].len, PROT_READ,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED) {
                /* out of memory in a new child: the range stays as fork left it
                 * (absent, or the parent's copy); the generation check still
                 * keeps every write of ours away from it */
            }
}

#include "area.c"
#include "lease.c"
#include "copysink.c"
#include "dispatch.c"

/* ---------------------------------------------------------------- module */

static struct PyModuleDef leases_module = {
    PyModuleDef_HEAD_INIT, "aiozcrx._fastpath",
    "Buffer exporter, area and completion dispatcher (see aiozcrx/_c/fastpath.c).", -1, NULL,
};

PyMODINIT_FUNC
PyInit__fastpath(void)
{
    if (PyType_Ready(&AreaType) < 0 || PyType_Ready(&LeaseType) < 0 ||
        PyType_Ready(&DispatcherType) < 0 || PyType_Ready(&CopySinkType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&leases_module);
    if (!m)
        return NULL;
    /* the typed error of a forked child (aiozcrx.errors needs no compiled core) */
    PyObject *errors = PyImport_ImportModule("aiozcrx.errors");
    if (errors) {
        forked_error = PyObject_GetAttrString(errors, "ProcessForked");
        Py_DECREF(errors);
    }
    if (!forked_error) {
        Py_DECREF(m);
        return NULL;
    }
    static int at_fork_set;
    if (!at_fork_set) {
        int e = pthread_atfork(NULL, NULL, at_fork_child);
        if (e) {
            Py_DECREF(m);
            errno = e;
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        at_fork_set = 1;
    }
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
