/*
 * aiozcrx._fastpath, Lease: one received buffer exported as a read-only
 * memoryview; its dealloc returns the buffer. The lease cache and view reuse
 * (with the check of CPython's memoryview layout).
 *
 * Not compiled on its own: fastpath.c #includes it, so everything stays static in
 * one translation unit.
 */

/* Leases are made and freed once per completion: keep a few for reuse rather
 * than going through the allocator each time (guarded by the GIL). */
#define LEASE_CACHE 256
static Lease *lease_cache[LEASE_CACHE];
static int lease_cached;

/* Points a lease at a buffer delivered through area user `user` to its
 * connection (slot, gen), which now holds it. */
static inline void
lease_take(Lease *l, Area *a, char *ptr, Py_ssize_t len, uint64_t ident, uint32_t user,
           uint32_t slot, uint32_t gen)
{
    l->ptr = ptr;
    l->len = len;
    l->ident = ident;
    l->user = user;
    l->slot = slot;
    l->gen = gen;
    l->empty = 0;
    area_take(a, ident);
    area_hold(a, user, slot, gen);
}

/* The buffer goes back to the kernel (once): the view over it is gone, or about
 * to be pointed elsewhere. */
static inline void
lease_give_back(Lease *l)
{
    if (l->empty)
        return;
    l->empty = 1;
    if (forked(l->area->fork_gen))
        return;     /* inherited across fork: the buffer is the parent's to return */
    area_unhold(l->area, l->user, l->slot, l->gen);
    area_return(l->area, l->ident, (uint32_t)l->len);
}

static inline PyObject *
make_view(Area *a, char *ptr, Py_ssize_t len, uint64_t ident, uint32_t user, uint32_t slot,
          uint32_t gen)
{
    Lease *l;
    if (lease_cached)
        l = (Lease *)PyObject_Init((PyObject *)lease_cache[--lease_cached], &LeaseType);
    else
        l = PyObject_New(Lease, &LeaseType);
    if (!l) {
        /* out of memory: the buffer goes straight back, as when the view fails */
        area_take(a, ident);
        area_return(a, ident, (uint32_t)len);
        return NULL;
    }
    Py_INCREF(a);
    l->area = a;
    lease_take(l, a, ptr, len, ident, user, slot, gen);
    PyObject *v = PyMemoryView_FromObject((PyObject *)l);
    Py_DECREF(l);   /* the view holds the lease now; on failure this returns the buffer */
    return v;       /* NULL: the buffer is back, MemoryError set */
}

/* View reuse. Making a memoryview costs two GC-tracked allocations (the managed
 * buffer and the view) and a buffer export, and freeing it as much again: about
 * half of what a completion costs us in C. When data_received returns and nothing
 * but the dispatcher refers to the view, its managed buffer or its lease (no slice,
 * no re-export, no weak reference, no `view.obj` kept, not released), nobody can
 * observe it any more: the next completion of the same round can take it over
 * in place, its old buffer going back to the kernel exactly as a dealloc would
 * have sent it. Any doubt and it is simply released and a new view made.
 *
 * This reads CPython's memoryview structs (declared in memoryobject.h "so that
 * macros can work"). Their layout has been the same from 3.3 through 3.14; on
 * any other version, or a free-threaded build, reuse is compiled out. */
static int view_layout_ok;     /* set by check_view_layout() at import */

#if !defined(Py_LIMITED_API) && !defined(Py_GIL_DISABLED) && \
    PY_VERSION_HEX >= 0x030A0000 && PY_VERSION_HEX < 0x030F0000
#define VIEW_REUSE 1
/* CPython's managed buffer and memoryview flags (cpython/memoryobject.h), mirrored
 * here rather than named: no private CPython symbol is used at compile time. The
 * mirror is checked against a real memoryview at import (check_view_layout). */
typedef struct {
    PyObject_HEAD
    int flags;
    Py_ssize_t exports;
    Py_buffer master;
} azx_managed_buffer;
#define AZX_MV_C        0x002
#define AZX_MV_FORTRAN  0x004
#define MBUF(mv)        ((azx_managed_buffer *)(mv)->mbuf)

static inline Lease *
reusable_lease(PyObject *v)
{
    PyMemoryViewObject *mv = (PyMemoryViewObject *)v;
    azx_managed_buffer *mb = MBUF(mv);
    if (Py_REFCNT(v) != 1 || mv->exports != 0 || mv->weakreflist != NULL || mv->view.ndim != 1 ||
        (mv->flags & ~(AZX_MV_C | AZX_MV_FORTRAN)))
        return NULL;
    if (Py_REFCNT(mb) != 1 || mb->exports != 1 || mb->flags != 0)
        return NULL;
    PyObject *l = mb->master.obj;
    if (l == NULL || Py_TYPE(l) != &LeaseType || Py_REFCNT(l) != 1)
        return NULL;
    return (Lease *)l;
}

/* The layout above is checked once, at import, on a real memoryview: if this
 * interpreter's structs are not what we expect (a patched or unusual build), reuse
 * stays off rather than writing into the wrong fields. */
static void
check_view_layout(void)
{
    static const char probe[] = "aiozcrx";
    PyObject *b = PyBytes_FromStringAndSize(probe, 7);
    if (!b) {
        PyErr_Clear();
        return;
    }
    PyObject *v = PyMemoryView_FromObject(b);
    if (!v) {
        PyErr_Clear();
        Py_DECREF(b);
        return;
    }
    PyMemoryViewObject *mv = (PyMemoryViewObject *)v;
    azx_managed_buffer *mb = MBUF(mv);
    /* the managed buffer's type by name: its type object is not exported on 3.13+ */
    view_layout_ok =
        strcmp(Py_TYPE(mb)->tp_name, "managedbuffer") == 0 &&
        mb->master.obj == b && mb->exports == 1 &&
        mb->master.buf == PyBytes_AS_STRING(b) && mb->master.len == 7 &&
        mv->view.obj == b && mv->view.buf == PyBytes_AS_STRING(b) && mv->view.len == 7 &&
        mv->view.ndim == 1 && mv->view.shape == mv->ob_array && mv->view.shape[0] == 7 &&
        Py_SIZE(mv) == 3 && mv->exports == 0 && mv->weakreflist == NULL &&
        mv->flags == (AZX_MV_C | AZX_MV_FORTRAN) && Py_REFCNT(mb) == 1;
    Py_DECREF(v);
    Py_DECREF(b);
}

/* Points an unobservable view (see reusable_lease) at a new buffer of the same area. */
static inline void
retarget_view(PyObject *v, Lease *l, char *ptr, Py_ssize_t len, uint64_t ident,
              uint32_t user, uint32_t slot, uint32_t gen)
{
    PyMemoryViewObject *mv = (PyMemoryViewObject *)v;
    lease_give_back(l);
    lease_take(l, l->area, ptr, len, ident, user, slot, gen);
    MBUF(mv)->master.buf = ptr;
    MBUF(mv)->master.len = len;
    mv->view.buf = ptr;
    mv->view.len = len;
    mv->view.shape[0] = len;
    mv->hash = -1;
}

/* A parked view has given its buffer back and points at no memory of the area
 * (an empty static buffer) until retarget_view() gives it the next one. */
static const char parked_nothing[1];

static inline void
empty_view(PyObject *v, Lease *l)
{
    PyMemoryViewObject *mv = (PyMemoryViewObject *)v;
    lease_give_back(l);
    l->ptr = (char *)parked_nothing;
    l->len = 0;
    MBUF(mv)->master.buf = l->ptr;
    MBUF(mv)->master.len = 0;
    mv->view.buf = l->ptr;
    mv->view.len = 0;
    mv->view.shape[0] = 0;
    mv->hash = -1;
}
#else
#define VIEW_REUSE 0
#endif


/* ----------------------------------------------------------------- Lease */

static int
Lease_getbuffer(Lease *l, Py_buffer *view, int flags)
{
    if (forked(l->area->fork_gen)) {
        raise_forked();
        return -1;
    }
    return PyBuffer_FillInfo(view, (PyObject *)l, l->ptr, l->len, 1, flags);
}

static void
Lease_dealloc(Lease *l)
{
    Area *a = l->area;
    lease_give_back(l);
    if (lease_cached < LEASE_CACHE)
        lease_cache[lease_cached++] = l;
    else
        PyObject_Free(l);
    Py_DECREF(a);
}

static PyBufferProcs Lease_as_buffer = {
    .bf_getbuffer = (getbufferproc)Lease_getbuffer,
};

static PyTypeObject LeaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aiozcrx._fastpath.Lease",
    .tp_basicsize = sizeof(Lease),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = (destructor)Lease_dealloc,
    .tp_as_buffer = &Lease_as_buffer,
    .tp_doc = "One received buffer; released back to the kernel when the last view goes.",
};

