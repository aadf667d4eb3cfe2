/*
 * aiozcrx._leases: buffers handed to Python as read-only memoryviews, and given
 * back to the kernel when the last view over them is released.
 *
 * Three types:
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
 *
 * Refill publishing is batched: a released buffer is written into the ring's
 * entry array right away, but the tail the kernel reads is stored (store-release)
 * only by Area.publish(), once per dispatch round.
 *
 * Threads: all state is guarded by the GIL. A view dropped in another thread
 * runs the dealloc there, under the GIL, which only appends to user-space state;
 * the kernel sees it at the next publish from the loop thread.
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

#define LOAD_ACQ32(p)      __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define STORE_REL32(p, v)  __atomic_store_n((p), (v), __ATOMIC_RELEASE)

#define ZCRX_AREA_SHIFT 48
#define ZCRX_OFF_MASK   ((1ULL << ZCRX_AREA_SHIFT) - 1)
#define CQE_F_BUFFER    (1U << 0)
#define CQE_F_MORE      (1U << 1)
#define CQE_BUFFER_SHIFT 16
#define REGISTER_ZCRX_CTRL 36
#define ZCRX_CTRL_FLUSH_RQ 0

/* user_data layout shared with aiozcrx/_ring.py: low 32 bits slot, bits 32..39 kind */
#define UD_KIND(ud)  (((ud) >> 32) & 0xff)
#define UD_SLOT(ud)  ((uint32_t)(ud))
#define UD_KIND_RECV 1

enum { KIND_ZCRX = 0, KIND_PBUF = 1, KIND_POOL = 2 };

#define MAX_MAPPINGS 4

typedef struct {
    PyObject_HEAD
    int kind;
    char *base;
    size_t len;
    uint32_t buf_size;          /* pbuf/pool: size of each buffer; zcrx: page size */
    uint32_t nbufs;
    struct { void *addr; size_t len; } maps[MAX_MAPPINGS];  /* unmapped at dealloc */
    int nmaps;
    /* zcrx refill ring */
    uint32_t *rq_khead, *rq_ktail;
    char *rqes;
    uint32_t rq_mask, rq_entries, rq_local_tail;
    uint64_t token;
    int ring_fd;
    uint32_t zcrx_id;
    int nodev;                  /* the kernel consumes refill entries only on FLUSH_RQ */
    /* provided buffer ring */
    char *pbufs;
    uint16_t *pbuf_ktail;
    uint16_t pbuf_local_tail;
    uint32_t pbuf_mask;
    /* returns that did not fit in the refill ring (zcrx): packed (off << 20 | len) */
    uint64_t *pending;
    uint32_t npending, pending_cap;
    /* free buffers, most recently returned on top (pool, and pbuf buffers not posted) */
    uint32_t *freelist;
    uint32_t nfree;
    /* pbuf: buffers in the kernel's ring, and how many we keep there (see publish) */
    uint32_t posted, window, window_min, posted_mark, epoch_peak, epoch_rounds;
    unsigned long long window_grows, window_shrinks;
    /* wake-up when buffers return while starved */
    int wake_fd;
    int starved;
    int closed;
    /* stats */
    unsigned long long outstanding, returned, publishes, flushes, flush_errors;
    /* benchmarks (Dispatcher.set_timing): thread CPU spent inside the io_uring
     * syscalls we make, i.e. kernel work done on our behalf (see thread_cpu_ns) */
    int timing;
    unsigned long long syscall_cpu_ns;
} Area;

typedef struct {
    PyObject_HEAD
    Area *area;
    char *ptr;
    Py_ssize_t len;
    uint64_t ident;             /* zcrx: offset in the area; pbuf/pool: buffer id */
} Lease;

static PyTypeObject AreaType;
static PyTypeObject LeaseType;

/* ------------------------------------------------------------------ Area */

static int
pending_push(Area *a, uint64_t v)
{
    if (a->npending == a->pending_cap) {
        uint32_t cap = a->pending_cap ? a->pending_cap * 2 : 1024;
        uint64_t *p = PyMem_Realloc(a->pending, cap * sizeof(uint64_t));
        if (!p)
            return -1;
        a->pending = p;
        a->pending_cap = cap;
    }
    a->pending[a->npending++] = v;
    return 0;
}

static inline int
rq_try_put(Area *a, uint64_t off, uint32_t len)
{
    if (a->rq_local_tail - LOAD_ACQ32(a->rq_khead) >= a->rq_entries)
        return 0;
    char *e = a->rqes + (size_t)(a->rq_local_tail & a->rq_mask) * 16;
    *(uint64_t *)e = off | a->token;
    *(uint32_t *)(e + 8) = len;
    *(uint32_t *)(e + 12) = 0;
    a->rq_local_tail++;
    return 1;
}

static inline void
pbuf_put(Area *a, uint32_t bid)
{
    char *e = a->pbufs + (size_t)(a->pbuf_local_tail & a->pbuf_mask) * 16;
    *(uint64_t *)e = (uint64_t)(uintptr_t)(a->base + (size_t)bid * a->buf_size);
    *(uint32_t *)(e + 8) = a->buf_size;
    *(uint16_t *)(e + 12) = (uint16_t)bid;
    a->pbuf_local_tail++;
}

/* A buffer comes back from user space. Never fails: a zcrx return that cannot be
 * queued (out of memory for the pending list) is dropped and counted, which costs
 * the area one buffer, never correctness. */
static void
area_return(Area *a, uint64_t ident, uint32_t len)
{
    a->outstanding--;
    a->returned++;
    if (a->closed)
        return;
    switch (a->kind) {
    case KIND_ZCRX:
        if (a->npending || !rq_try_put(a, ident, len))
            if (pending_push(a, (ident << 20) | (len & 0xfffff)) < 0)
                a->flush_errors++;
        break;
    case KIND_PBUF:
    case KIND_POOL:
        a->freelist[a->nfree++] = (uint32_t)ident;
        break;
    }
    if (a->starved && a->wake_fd >= 0) {
        uint64_t one = 1;
        a->starved = 0;
        if (write(a->wake_fd, &one, sizeof one) < 0) {
            /* eventfd counter saturated or fd closed: the loop is awake anyway */
        }
    }
}

/* CLOCK_THREAD_CPUTIME_ID is exact (the scheduler's runtime, not tick samples),
 * so bracketing a syscall with it measures the kernel time that syscall cost even
 * where getrusage's user/sys split is unusable (User-Mode Linux books the guest
 * kernel's work as user time). */
static inline unsigned long long
thread_cpu_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (unsigned long long)t.tv_sec * 1000000000ULL + (unsigned long long)t.tv_nsec;
}

static int
zcrx_flush(Area *a)
{
    struct { uint32_t zcrx_id, op; uint64_t resv[2]; uint64_t u[6]; } c;
    memset(&c, 0, sizeof c);
    c.zcrx_id = a->zcrx_id;
    c.op = ZCRX_CTRL_FLUSH_RQ;
    unsigned long long c0 = a->timing ? thread_cpu_ns() : 0;
    long r = syscall(__NR_io_uring_register, a->ring_fd, REGISTER_ZCRX_CTRL, &c, 0);
    if (a->timing)
        a->syscall_cpu_ns += thread_cpu_ns() - c0;
    a->flushes++;
    if (r < 0) {
        a->flush_errors++;
        return -errno;
    }
    return 0;
}

#define PBUF_EPOCH 256

/* Makes queued returns visible to the kernel: one tail store per call. */
static void
area_publish(Area *a, int force)
{
    if (a->closed)
        return;
    if (a->kind == KIND_ZCRX) {
        for (int round = 0; round < 64; round++) {
            /* move what waited for room into the ring */
            uint32_t i = 0;
            while (i < a->npending) {
                uint64_t v = a->pending[i];
                if (!rq_try_put(a, v >> 20, (uint32_t)(v & 0xfffff)))
                    break;
                i++;
            }
            if (i) {
                memmove(a->pending, a->pending + i, (a->npending - i) * sizeof(uint64_t));
                a->npending -= i;
            }
            uint32_t queued = a->rq_local_tail - LOAD_ACQ32(a->rq_khead);
            if (queued && *a->rq_ktail != a->rq_local_tail) {
                STORE_REL32(a->rq_ktail, a->rq_local_tail);
                a->publishes++;
            }
            /* A NODEV instance never drains the refill ring on its own: flush when a
             * quarter of the ring (or of the area) waits, when asked, or when the
             * ring is full and returns are piling up. */
            uint32_t threshold = a->rq_entries / 4;
            if (a->nbufs / 4 < threshold)
                threshold = a->nbufs / 4;
            if (threshold == 0)
                threshold = 1;
            int want = a->nodev && queued && (force || queued >= threshold || a->npending);
            if (!want || zcrx_flush(a) < 0)
                break;
            if (!a->npending)
                break;
        }
    } else if (a->kind == KIND_PBUF) {
        /* Keep `window` buffers in the kernel's ring, most recently returned first.
         * The ring is FIFO: posting every free buffer would make the kernel cycle
         * through the whole area, so each receive copies into memory that left the
         * CPU cache long ago (measured: +60% kernel time for a 32 MiB area). A small
         * window of recently used buffers stays cache-warm. The window doubles
         * when the kernel runs out within a round (ENOBUFS, in drain()) and, so
         * that a burst does not widen it for good, comes back down to twice the
         * most any round took during the last PBUF_EPOCH rounds. */
        uint32_t took = a->posted_mark - a->posted;
        if (took > a->epoch_peak)
            a->epoch_peak = took;
        if (++a->epoch_rounds == PBUF_EPOCH) {
            uint32_t want = a->window_min;
            while (want < 2 * a->epoch_peak && want < a->nbufs)
                want *= 2;
            if (want > a->nbufs)
                want = a->nbufs;
            if (want < a->window) {
                a->window = want;
                a->window_shrinks++;
            }
            a->epoch_rounds = 0;
            a->epoch_peak = 0;
        }
        while (a->posted < a->window && a->nfree) {
            pbuf_put(a, a->freelist[--a->nfree]);
            a->posted++;
        }
        a->posted_mark = a->posted;
        if (*a->pbuf_ktail != a->pbuf_local_tail) {
            __atomic_store_n(a->pbuf_ktail, a->pbuf_local_tail, __ATOMIC_RELEASE);
            a->publishes++;
        }
    }
}

static PyObject *
Area_publish(Area *a, PyObject *args)
{
    int force = 0;
    if (!PyArg_ParseTuple(args, "|p", &force))
        return NULL;
    area_publish(a, force);
    Py_RETURN_NONE;
}

static int
Area_init(Area *a, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"base", "length", "buf_size", NULL};
    unsigned long long base;
    Py_ssize_t length;
    unsigned int buf_size;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "KnI", kwlist, &base, &length, &buf_size))
        return -1;
    if (!base || length <= 0 || !buf_size || (size_t)length % buf_size) {
        PyErr_SetString(PyExc_ValueError, "Area: length must be a positive multiple of buf_size");
        return -1;
    }
    a->base = (char *)(uintptr_t)base;
    a->len = (size_t)length;
    a->buf_size = buf_size;
    a->nbufs = (uint32_t)((size_t)length / buf_size);
    a->kind = -1;
    a->wake_fd = -1;
    a->ring_fd = -1;
    return 0;
}

static PyObject *
Area_own_mapping(Area *a, PyObject *args)
{
    unsigned long long addr;
    Py_ssize_t len;
    if (!PyArg_ParseTuple(args, "Kn", &addr, &len))
        return NULL;
    if (a->nmaps == MAX_MAPPINGS) {
        PyErr_SetString(PyExc_RuntimeError, "too many mappings");
        return NULL;
    }
    a->maps[a->nmaps].addr = (void *)(uintptr_t)addr;
    a->maps[a->nmaps].len = (size_t)len;
    a->nmaps++;
    Py_RETURN_NONE;
}

static PyObject *
Area_setup_zcrx(Area *a, PyObject *args)
{
    unsigned long long head, tail, rqes, token;
    unsigned int entries, zcrx_id;
    int ring_fd, nodev;
    if (!PyArg_ParseTuple(args, "KKKIKIip", &head, &tail, &rqes, &entries, &token,
                          &zcrx_id, &ring_fd, &nodev))
        return NULL;
    if (!entries || (entries & (entries - 1))) {
        PyErr_SetString(PyExc_ValueError, "rq_entries must be a power of two");
        return NULL;
    }
    a->kind = KIND_ZCRX;
    a->rq_khead = (uint32_t *)(uintptr_t)head;
    a->rq_ktail = (uint32_t *)(uintptr_t)tail;
    a->rqes = (char *)(uintptr_t)rqes;
    a->rq_entries = entries;
    a->rq_mask = entries - 1;
    a->rq_local_tail = *a->rq_ktail;
    a->token = token;
    a->zcrx_id = zcrx_id;
    a->ring_fd = ring_fd;
    a->nodev = nodev;
    Py_RETURN_NONE;
}

/* The provided buffer ring: `entries` slots of 16 bytes; the kernel reads the tail
 * from the reserved u16 of slot 0. `window` buffers go in now, the rest wait on
 * the free stack (see area_publish). */
static PyObject *
Area_setup_pbuf(Area *a, PyObject *args)
{
    unsigned long long ring;
    unsigned int entries, window;
    if (!PyArg_ParseTuple(args, "KII", &ring, &entries, &window))
        return NULL;
    if (!entries || (entries & (entries - 1)) || entries < a->nbufs || a->nbufs > 32768) {
        PyErr_SetString(PyExc_ValueError, "pbuf ring entries must be a power of two >= buffers");
        return NULL;
    }
    if (!(a->freelist = PyMem_Malloc(a->nbufs * sizeof(uint32_t))))
        return PyErr_NoMemory();
    /* low ids on top: a small workload touches few pages */
    for (uint32_t i = 0; i < a->nbufs; i++)
        a->freelist[i] = a->nbufs - 1 - i;
    a->nfree = a->nbufs;
    a->kind = KIND_PBUF;
    a->pbufs = (char *)(uintptr_t)ring;
    a->pbuf_mask = entries - 1;
    a->pbuf_ktail = (uint16_t *)(a->pbufs + 14);
    a->pbuf_local_tail = 0;
    a->posted = 0;
    a->window = window < 1 ? 1 : (window > a->nbufs ? a->nbufs : window);
    a->window_min = a->window;
    a->posted_mark = 0;
    area_publish(a, 0);
    Py_RETURN_NONE;
}

static PyObject *
Area_setup_pool(Area *a, PyObject *Py_UNUSED(ignored))
{
    a->kind = KIND_POOL;
    a->freelist = PyMem_Malloc(a->nbufs * sizeof(uint32_t));
    if (!a->freelist)
        return PyErr_NoMemory();
    /* hand out low ids first: fewer pages touched for small workloads */
    for (uint32_t i = 0; i < a->nbufs; i++)
        a->freelist[i] = a->nbufs - 1 - i;
    a->nfree = a->nbufs;
    Py_RETURN_NONE;
}

static PyObject *
Area_close(Area *a, PyObject *Py_UNUSED(ignored))
{
    /* After close, returned buffers are only counted: the ring they would go to
     * is gone. The mappings stay until the last lease is released. */
    a->closed = 1;
    a->wake_fd = -1;
    Py_RETURN_NONE;
}

/* Leases are made and freed once per completion: keep a few for reuse rather
 * than going through the allocator each time (guarded by the GIL). */
#define LEASE_CACHE 256
static Lease *lease_cache[LEASE_CACHE];
static int lease_cached;

static inline PyObject *
make_view(Area *a, char *ptr, Py_ssize_t len, uint64_t ident)
{
    Lease *l;
    if (lease_cached)
        l = (Lease *)PyObject_Init((PyObject *)lease_cache[--lease_cached], &LeaseType);
    else
        l = PyObject_New(Lease, &LeaseType);
    if (!l)
        return NULL;
    Py_INCREF(a);
    l->area = a;
    l->ptr = ptr;
    l->len = len;
    l->ident = ident;
    a->outstanding++;
    PyObject *v = PyMemoryView_FromObject((PyObject *)l);
    Py_DECREF(l);   /* the view holds the lease now; on failure this returns the buffer */
    return v;
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
static inline Lease *
reusable_lease(PyObject *v)
{
    PyMemoryViewObject *mv = (PyMemoryViewObject *)v;
    _PyManagedBufferObject *mb = mv->mbuf;
    if (Py_REFCNT(v) != 1 || mv->exports != 0 || mv->weakreflist != NULL || mv->view.ndim != 1 ||
        (mv->flags & ~(_Py_MEMORYVIEW_C | _Py_MEMORYVIEW_FORTRAN)))
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
    _PyManagedBufferObject *mb = mv->mbuf;
    view_layout_ok =
        Py_TYPE(mb) == &_PyManagedBuffer_Type && mb->master.obj == b && mb->exports == 1 &&
        mb->master.buf == PyBytes_AS_STRING(b) && mb->master.len == 7 &&
        mv->view.obj == b && mv->view.buf == PyBytes_AS_STRING(b) && mv->view.len == 7 &&
        mv->view.ndim == 1 && mv->view.shape == mv->ob_array && mv->view.shape[0] == 7 &&
        Py_SIZE(mv) == 3 && mv->exports == 0 && mv->weakreflist == NULL &&
        (mv->flags & ~(_Py_MEMORYVIEW_C | _Py_MEMORYVIEW_FORTRAN)) == 0 && Py_REFCNT(mb) == 1;
    Py_DECREF(v);
    Py_DECREF(b);
}

/* Points an unobservable view (see reusable_lease) at a new buffer of the same area. */
static inline void
retarget_view(PyObject *v, Lease *l, char *ptr, Py_ssize_t len, uint64_t ident)
{
    PyMemoryViewObject *mv = (PyMemoryViewObject *)v;
    Area *a = l->area;
    area_return(a, l->ident, (uint32_t)l->len);
    l->ptr = ptr;
    l->len = len;
    l->ident = ident;
    a->outstanding++;
    mv->mbuf->master.buf = ptr;
    mv->mbuf->master.len = len;
    mv->view.buf = ptr;
    mv->view.len = len;
    mv->view.shape[0] = len;
    mv->hash = -1;
}
#else
#define VIEW_REUSE 0
#endif

/* socket engine: recv() into a free pool buffer.
 * Returns a memoryview, None (would block), b"" (EOF), or False (no free buffer:
 * the area is marked starved and wakes wake_fd when one comes back). */
static PyObject *
Area_recv(Area *a, PyObject *arg)
{
    long fd = PyLong_AsLong(arg);
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    if (a->kind != KIND_POOL || a->closed) {
        PyErr_SetString(PyExc_RuntimeError, "recv on a closed or non-pool area");
        return NULL;
    }
    if (!a->nfree) {
        a->starved = 1;
        Py_RETURN_FALSE;
    }
    uint32_t bid = a->freelist[a->nfree - 1];
    char *ptr = a->base + (size_t)bid * a->buf_size;
    ssize_t n;
    do {
        n = recv((int)fd, ptr, a->buf_size, 0);
    } while (n < 0 && errno == EINTR);
    if (n > 0) {
        a->nfree--;
        return make_view(a, ptr, n, bid);
    }
    if (n == 0)
        return PyBytes_FromStringAndSize(NULL, 0);
    if (errno == EAGAIN || errno == EWOULDBLOCK)
        Py_RETURN_NONE;
    return PyErr_SetFromErrno(PyExc_OSError);
}

/* Marks the area starved: the next returned buffer writes the wake fd. */
static PyObject *
Area_set_wake(Area *a, PyObject *args)
{
    int fd, starved;
    if (!PyArg_ParseTuple(args, "ip", &fd, &starved))
        return NULL;
    a->wake_fd = fd;
    a->starved = starved;
    Py_RETURN_NONE;
}

static PyObject *
Area_stats(Area *a, PyObject *Py_UNUSED(ignored))
{
    uint32_t queued = 0;
    if (a->kind == KIND_ZCRX && !a->closed)
        queued = a->rq_local_tail - LOAD_ACQ32(a->rq_khead);
    PyObject *s = Py_BuildValue("{s:K,s:K,s:K,s:K,s:K,s:I,s:I,s:n,s:I,s:I,s:i,s:i,s:K}",
                                "buffers_outstanding", a->outstanding,
                                "buffers_returned", a->returned,
                                "refill_publishes", a->publishes,
                                "refill_flushes", a->flushes,
                                "refill_errors", a->flush_errors,
                                "refill_queued", queued + a->npending,
                                "buffers_total", a->nbufs,
                                "area_size", (Py_ssize_t)a->len,
                                "buffer_size", a->buf_size,
                                "buffers_free", a->nbufs - (uint32_t)a->outstanding,
                                "closed", a->closed,
                                "starved", a->starved,
                                "area_addr", (unsigned long long)(uintptr_t)a->base);
    if (s && a->kind == KIND_PBUF) {
        PyObject *p = Py_BuildValue("{s:I,s:I,s:K,s:K}", "buffers_posted", a->posted,
                                    "post_window", a->window, "post_window_grows", a->window_grows,
                                    "post_window_shrinks", a->window_shrinks);
        if (!p || PyDict_Update(s, p) < 0)
            Py_CLEAR(s);
        Py_XDECREF(p);
    }
    return s;
}

static PyObject *
Area_get_outstanding(Area *a, void *c)
{
    return PyLong_FromUnsignedLongLong(a->outstanding);
}

static PyObject *
Area_get_nbufs(Area *a, void *c)
{
    return PyLong_FromUnsignedLong(a->nbufs);
}

static void
Area_dealloc(Area *a)
{
    for (int i = 0; i < a->nmaps; i++)
        munmap(a->maps[i].addr, a->maps[i].len);
    PyMem_Free(a->pending);
    PyMem_Free(a->freelist);
    Py_TYPE(a)->tp_free((PyObject *)a);
}

static PyMethodDef Area_methods[] = {
    {"own_mapping", (PyCFunction)Area_own_mapping, METH_VARARGS, "own_mapping(addr, len): munmap at dealloc"},
    {"setup_zcrx", (PyCFunction)Area_setup_zcrx, METH_VARARGS, "attach a zcrx refill ring"},
    {"setup_pbuf", (PyCFunction)Area_setup_pbuf, METH_VARARGS, "attach a provided buffer ring"},
    {"setup_pool", (PyCFunction)Area_setup_pool, METH_NOARGS, "use a user-space free list"},
    {"publish", (PyCFunction)Area_publish, METH_VARARGS, "publish queued returns (one tail store)"},
    {"recv", (PyCFunction)Area_recv, METH_O, "recv(fd) into a pool buffer"},
    {"set_wake", (PyCFunction)Area_set_wake, METH_VARARGS, "set_wake(fd, starved)"},
    {"close", (PyCFunction)Area_close, METH_NOARGS, "stop returning buffers to the ring"},
    {"stats", (PyCFunction)Area_stats, METH_NOARGS, "counters"},
    {NULL},
};

static PyGetSetDef Area_getset[] = {
    {"outstanding", (getter)Area_get_outstanding, NULL, "buffers held by user space", NULL},
    {"nbufs", (getter)Area_get_nbufs, NULL, "buffers in the area", NULL},
    {NULL},
};

static PyTypeObject AreaType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aiozcrx._leases.Area",
    .tp_basicsize = sizeof(Area),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Area_init,
    .tp_dealloc = (destructor)Area_dealloc,
    .tp_methods = Area_methods,
    .tp_getset = Area_getset,
    .tp_doc = "Receive buffer area and the ring that takes released buffers back.",
};

/* ----------------------------------------------------------------- Lease */

static int
Lease_getbuffer(Lease *l, Py_buffer *view, int flags)
{
    return PyBuffer_FillInfo(view, (PyObject *)l, l->ptr, l->len, 1, flags);
}

static void
Lease_dealloc(Lease *l)
{
    Area *a = l->area;
    area_return(a, l->ident, (uint32_t)l->len);
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
    .tp_name = "aiozcrx._leases.Lease",
    .tp_basicsize = sizeof(Lease),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = (destructor)Lease_dealloc,
    .tp_as_buffer = &Lease_as_buffer,
    .tp_doc = "One received buffer; released back to the kernel when the last view goes.",
};

/* ------------------------------------------------------------ Dispatcher */

typedef struct {
    PyObject_HEAD
    Area *area;
    PyObject *slots;            /* list: slot -> callable(view) or None */
    uint32_t *khead, *ktail;
    char *cqes;
    uint32_t mask;
    unsigned cqe_shift;
    int copy;
    unsigned long long completions, bytes, dropped;
    unsigned long long *slot_counts;   /* per slot: completions, bytes */
    uint32_t slot_cap;
    /* for the reset watch (engines.py): per slot, bit 0 "got data this tick", bit 1
     * "got data last tick"; the slots with each bit set, listed once */
    uint8_t *slot_active;
    uint32_t *active, nactive;          /* bit 0 */
    uint32_t *was_active, nwas_active;  /* bit 1 */
    /* the ring, for pump(): its struct and two functions from the cffi layer
     * (aiozcrx/_abi_build.py), kept alive by ring_owner */
    PyObject *ring_owner;
    void *ring;
    int (*enter)(void *ring, unsigned min_complete, unsigned flags);
    unsigned (*sq_space)(void *ring);
    uint32_t *sq_flags, *cq_flags;
    unsigned sq_entries, getevents, pending_mask, evfd_disabled_bit;
    unsigned long long wakeups, idle_wakeups, enters;
    int reuse_views;            /* see reusable_lease() */
    unsigned long long reused_views;
    /* benchmarks: time spent dispatching (drain + publish), clock_gettime per round */
    int timing;
    unsigned long long dispatch_ns;
} Dispatcher;

typedef struct {
    uint64_t ud;
    int32_t res;
    uint32_t flags;
    uint64_t zc_off;
} cqe_rec;

#define BATCH 256

static int
Dispatcher_init(Dispatcher *d, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"area", "slots", "khead", "ktail", "mask", "cqes", "cqe_size", "copy", NULL};
    Area *area;
    PyObject *slots;
    unsigned long long khead, ktail, mask, cqes;
    unsigned int cqe_size;
    int copy = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!O!KKKKI|p", kwlist, &AreaType, &area,
                                     &PyList_Type, &slots, &khead, &ktail, &mask, &cqes,
                                     &cqe_size, &copy))
        return -1;
    if (cqe_size != 16 && cqe_size != 32) {
        PyErr_SetString(PyExc_ValueError, "cqe_size must be 16 or 32");
        return -1;
    }
    Py_INCREF(area);
    Py_XSETREF(d->area, area);
    Py_INCREF(slots);
    Py_XSETREF(d->slots, slots);
    d->khead = (uint32_t *)(uintptr_t)khead;
    d->ktail = (uint32_t *)(uintptr_t)ktail;
    d->mask = (uint32_t)mask;
    d->cqes = (char *)(uintptr_t)cqes;
    d->cqe_shift = cqe_size == 32 ? 5 : 4;
    d->copy = copy;
    d->reuse_views = VIEW_REUSE && view_layout_ok;
    return 0;
}

static int
grow_slots(Dispatcher *d, uint32_t slot)
{
    uint32_t cap = d->slot_cap ? d->slot_cap : 64;
    while (cap <= slot)
        cap *= 2;
    unsigned long long *p = PyMem_Realloc(d->slot_counts, (size_t)cap * 2 * sizeof(*p));
    if (!p) {
        PyErr_NoMemory();
        return -1;
    }
    memset(p + 2 * (size_t)d->slot_cap, 0, (size_t)(cap - d->slot_cap) * 2 * sizeof(*p));
    d->slot_counts = p;
    uint8_t *f = PyMem_Realloc(d->slot_active, cap);
    if (!f) {
        PyErr_NoMemory();
        return -1;
    }
    memset(f + d->slot_cap, 0, cap - d->slot_cap);
    d->slot_active = f;
    uint32_t *l = PyMem_Realloc(d->active, (size_t)cap * sizeof(*l));
    if (!l) {
        PyErr_NoMemory();
        return -1;
    }
    d->active = l;
    l = PyMem_Realloc(d->was_active, (size_t)cap * sizeof(*l));
    if (!l) {
        PyErr_NoMemory();
        return -1;
    }
    d->was_active = l;
    d->slot_cap = cap;
    return 0;
}

/* take_quiet() -> the slots that got data in the previous tick and none in this
 * one; then this tick becomes the previous one. O(slots with data), in C, so a tick
 * costs next to nothing with 10,000 busy connections. */
static PyObject *
Dispatcher_take_quiet(Dispatcher *d, PyObject *Py_UNUSED(ignored))
{
    PyObject *out = PyList_New(0);
    if (!out)
        return NULL;
    for (uint32_t i = 0; i < d->nwas_active; i++) {
        uint32_t slot = d->was_active[i];
        if (!(d->slot_active[slot] & 1)) {
            PyObject *v = PyLong_FromUnsignedLong(slot);
            if (!v || PyList_Append(out, v) < 0) {
                Py_XDECREF(v);
                Py_DECREF(out);
                return NULL;
            }
            Py_DECREF(v);
        }
        d->slot_active[slot] &= (uint8_t)~2;
    }
    for (uint32_t i = 0; i < d->nactive; i++)
        d->slot_active[d->active[i]] = 2;
    uint32_t *t = d->was_active;
    d->was_active = d->active;
    d->nwas_active = d->nactive;
    d->active = t;
    d->nactive = 0;
    return out;
}

static PyObject *
Dispatcher_slot_stats(Dispatcher *d, PyObject *arg)
{
    unsigned long slot = PyLong_AsUnsignedLong(arg);
    if (PyErr_Occurred())
        return NULL;
    if (slot >= d->slot_cap)
        return Py_BuildValue("(KK)", 0ULL, 0ULL);
    return Py_BuildValue("(KK)", d->slot_counts[2 * slot], d->slot_counts[2 * slot + 1]);
}

static PyObject *
Dispatcher_reset_slot(Dispatcher *d, PyObject *arg)
{
    unsigned long slot = PyLong_AsUnsignedLong(arg);
    if (PyErr_Occurred())
        return NULL;
    if (slot < d->slot_cap)
        d->slot_counts[2 * slot] = d->slot_counts[2 * slot + 1] = 0;
    Py_RETURN_NONE;
}

/* Locates the buffer a data completion refers to; 0 if the completion is bogus. */
static inline int
cqe_buffer(Area *a, const cqe_rec *c, char **ptr, uint64_t *ident)
{
    if (a->kind == KIND_ZCRX) {
        uint64_t off = c->zc_off & ZCRX_OFF_MASK;
        if (off + (uint64_t)c->res > a->len)
            return 0;
        *ptr = a->base + off;
        *ident = off;
        return 1;
    }
    if (!(c->flags & CQE_F_BUFFER))
        return 0;
    uint32_t bid = c->flags >> CQE_BUFFER_SHIFT;
    if (bid >= a->nbufs || (uint32_t)c->res > a->buf_size)
        return 0;
    if (a->posted)
        a->posted--;            /* the kernel took it out of the ring */
    *ptr = a->base + (size_t)bid * a->buf_size;
    *ident = bid;
    return 1;
}

/* the raised exception as one object (PyErr_GetRaisedException is 3.12+) */
static PyObject *
fetch_exception(void)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (value && tb)
        PyException_SetTraceback(value, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
}

static int
append_control(PyObject **control, uint64_t ud, int32_t res, uint32_t flags, PyObject *exc)
{
    if (!*control && !(*control = PyList_New(0)))
        return -1;
    PyObject *t = Py_BuildValue("(KiIO)", (unsigned long long)ud, res, flags, exc ? exc : Py_None);
    if (!t)
        return -1;
    int r = PyList_Append(*control, t);
    Py_DECREF(t);
    return r;
}

/* Drains the CQ: data completions for a live slot become slot_callback(view);
 * everything else (errors, EOF, ends of multishot requests, other ops, callback
 * exceptions) is appended to *control as (user_data, res, flags, exception)
 * tuples, in completion order. Adds the number of CQEs seen to *n. */
static int
drain(Dispatcher *d, PyObject **controlp, unsigned long long *n)
{
    Area *a = d->area;
    cqe_rec batch[BATCH];
    PyObject *spare = NULL;     /* the last view handed out, if we hold its only reference */
    int rc = -1;

    for (;;) {
        uint32_t head = *d->khead;
        uint32_t tail = LOAD_ACQ32(d->ktail);
        uint32_t cnt = tail - head;
        if (!cnt)
            break;
        if (cnt > BATCH)
            cnt = BATCH;
        for (uint32_t i = 0; i < cnt; i++) {
            const char *c = d->cqes + ((size_t)((head + i) & d->mask) << d->cqe_shift);
            batch[i].ud = *(const uint64_t *)c;
            batch[i].res = *(const int32_t *)(c + 8);
            batch[i].flags = *(const uint32_t *)(c + 12);
            batch[i].zc_off = d->cqe_shift == 5 ? *(const uint64_t *)(c + 16) : 0;
        }
        /* the CQ slots are free for the kernel before any Python code runs */
        STORE_REL32(d->khead, head + cnt);
        *n += cnt;

        for (uint32_t i = 0; i < cnt; i++) {
            const cqe_rec *c = &batch[i];
            int is_recv = UD_KIND(c->ud) == UD_KIND_RECV;
            char *ptr;
            uint64_t ident;
            if (is_recv && c->res > 0 && cqe_buffer(a, c, &ptr, &ident)) {
                uint32_t slot = UD_SLOT(c->ud);
                PyObject *cb = NULL;
                if (slot < (uint32_t)PyList_GET_SIZE(d->slots))
                    cb = PyList_GET_ITEM(d->slots, slot);
                d->completions++;
                d->bytes += (unsigned long long)c->res;
                if (slot >= d->slot_cap && grow_slots(d, slot) < 0)
                    goto out;
                d->slot_counts[2 * slot]++;
                d->slot_counts[2 * slot + 1] += (unsigned long long)c->res;
                if (!(d->slot_active[slot] & 1)) {
                    d->slot_active[slot] |= 1;
                    d->active[d->nactive++] = slot;
                }
                if (cb == NULL || cb == Py_None) {
                    /* connection already gone: straight back to the kernel */
                    a->outstanding++;
                    area_return(a, ident, (uint32_t)c->res);
                    d->dropped++;
                } else {
                    PyObject *view;
                    if (d->copy) {
                        view = PyBytes_FromStringAndSize(ptr, c->res);
                        a->outstanding++;
                        area_return(a, ident, (uint32_t)c->res);
                    } else {
                        view = NULL;
#if VIEW_REUSE
                        Lease *l;
                        if (spare && d->reuse_views && (l = reusable_lease(spare))) {
                            retarget_view(spare, l, ptr, c->res, ident);
                            view = spare;
                            spare = NULL;
                            d->reused_views++;
                        }
#endif
                        if (!view) {
                            Py_CLEAR(spare);
                            view = make_view(a, ptr, c->res, ident);
                        }
                    }
                    if (!view)
                        goto out;
                    Py_INCREF(cb);
                    PyObject *r = PyObject_CallOneArg(cb, view);
                    Py_DECREF(cb);
                    if (VIEW_REUSE && d->reuse_views && !d->copy)
                        spare = view;   /* released at the next completion or below */
                    else
                        Py_DECREF(view);
                    if (r) {
                        Py_DECREF(r);
                    } else {
                        Py_CLEAR(spare);  /* the view may be in the traceback */
                        PyObject *exc = fetch_exception();
                        int bad = append_control(controlp, c->ud, c->res, c->flags, exc);
                        Py_XDECREF(exc);
                        if (bad)
                            goto out;
                    }
                }
                if (!(c->flags & CQE_F_MORE) && append_control(controlp, c->ud, c->res, c->flags, NULL))
                    goto out;
                continue;
            }
            if (is_recv && a->kind == KIND_PBUF && (c->flags & CQE_F_BUFFER) &&
                cqe_buffer(a, c, &ptr, &ident)) {
                /* a buffer picked for a completion that carries no data */
                a->outstanding++;
                area_return(a, ident, 0);
            }
            if (is_recv && a->kind == KIND_PBUF && c->res == -ENOBUFS && a->window < a->nbufs) {
                /* the kernel ran through the posted window within one round: widen it */
                a->window = a->window * 2 > a->nbufs ? a->nbufs : a->window * 2;
                a->window_grows++;
            }
            if (append_control(controlp, c->ud, c->res, c->flags, NULL))
                goto out;
        }
    }
    rc = 0;
out:
    Py_XDECREF(spare);  /* its buffer goes back before the round's refill publish */
    return rc;
}

/* run() -> (completions, control list or None): one drain, no syscalls. */
static PyObject *
Dispatcher_run(Dispatcher *d, PyObject *Py_UNUSED(ignored))
{
    PyObject *control = NULL;
    unsigned long long n = 0;
    if (drain(d, &control, &n) < 0) {
        Py_XDECREF(control);
        return NULL;
    }
    PyObject *ret = Py_BuildValue("(KO)", n, control ? control : Py_None);
    Py_XDECREF(control);
    return ret;
}

/* Switching the eventfd off while we work relies on the kernel's "set
 * IORING_SQ_TASKRUN, then read cq_flags" being ordered against our "clear
 * cq_flags, then read sq_flags" (both sides need a full barrier, else each may
 * read the other's old value and a wake-up is lost). Ours is a locked RMW; the
 * kernel's atomic_or() is one too on x86 (TSO, LOCK prefix) but is unordered on
 * weaker architectures (arm64), so elsewhere the eventfd stays on and we accept
 * the empty wake-ups. */
#if defined(__x86_64__) || defined(__i386__)
#define EVFD_OFF_IS_SAFE 1
#else
#define EVFD_OFF_IS_SAFE 0
#endif

static PyObject *
Dispatcher_bind_ring(Dispatcher *d, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"owner", "ring", "enter", "sq_space", "sq_flags", "cq_flags",
                             "sq_entries", "getevents", "pending_mask", "evfd_disabled_bit", NULL};
    PyObject *owner;
    unsigned long long ring, enter, sq_space, sq_flags, cq_flags;
    unsigned int sq_entries, getevents, pending_mask, disabled_bit;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OKKKKKIIII", kwlist, &owner, &ring, &enter,
                                     &sq_space, &sq_flags, &cq_flags, &sq_entries, &getevents,
                                     &pending_mask, &disabled_bit))
        return NULL;
    if (!ring || !enter || !sq_space || !sq_flags || !cq_flags) {
        PyErr_SetString(PyExc_ValueError, "bind_ring: null address");
        return NULL;
    }
    Py_INCREF(owner);
    Py_XSETREF(d->ring_owner, owner);
    d->ring = (void *)(uintptr_t)ring;
    d->enter = (int (*)(void *, unsigned, unsigned))(uintptr_t)enter;
    d->sq_space = (unsigned (*)(void *))(uintptr_t)sq_space;
    d->sq_flags = (uint32_t *)(uintptr_t)sq_flags;
    d->cq_flags = (uint32_t *)(uintptr_t)cq_flags;
    d->sq_entries = sq_entries;
    d->getevents = getevents;
    d->pending_mask = pending_mask;
    d->evfd_disabled_bit = pending_mask && EVFD_OFF_IS_SAFE ? disabled_bit : 0;
    Py_RETURN_NONE;
}

enum { PUMP_IDLE = 0, PUMP_PENDING = 1, PUMP_BUSY = 2 };
#define PUMP_ROUNDS 64

/* pump(eventfd) -> (completions, control list or None, state)
 *
 * One wake-up's work in one call: read the eventfd (when given, >= 0), then
 * rounds of io_uring_enter (submit + run deferred task work) -> drain ->
 * publish refills, until the kernel has nothing more for us.
 *
 * While we work, the ring's eventfd is switched off (IORING_CQ_EVENTFD_DISABLED):
 * the kernel signals it for every batch of CQEs it posts, even those posted inside
 * our own enter, and each such signal is a wake-up that finds nothing. Once it is
 * back on, IORING_SQ_TASKRUN tells whether work arrived meanwhile (the kernel sets
 * it before it would have signalled): then we go round again.
 *
 * state: PUMP_IDLE (the eventfd will tell us of new work), PUMP_PENDING (the
 * kernel says work is queued but an enter found none: look again later),
 * PUMP_BUSY (the round limit was reached: continue after other callbacks).
 * Returns early, with the control list, whenever there is something for Python
 * to decide; the caller handles it and calls pump(-1) again. */
static PyObject *
Dispatcher_pump(Dispatcher *d, PyObject *arg)
{
    long evfd = PyLong_AsLong(arg);
    if (evfd == -1 && PyErr_Occurred())
        return NULL;
    if (!d->ring) {
        PyErr_SetString(PyExc_RuntimeError, "pump: no ring bound");
        return NULL;
    }
    Area *a = d->area;
    PyObject *control = NULL;
    unsigned long long total = 0;
    int state = PUMP_BUSY;

    if (evfd >= 0) {
        uint64_t v;
        unsigned long long c0 = d->timing ? thread_cpu_ns() : 0;
        d->wakeups++;
        if (read((int)evfd, &v, sizeof v) < 0) {
            /* EAGAIN: already consumed by an earlier round; nothing else is expected */
        }
        if (d->timing)
            a->syscall_cpu_ns += thread_cpu_ns() - c0;
    }
    for (int round = 0; round < PUMP_ROUNDS; round++) {
        if (d->evfd_disabled_bit)
            __atomic_fetch_or(d->cq_flags, d->evfd_disabled_bit, __ATOMIC_SEQ_CST);
        int ret;
        unsigned long long c0 = d->timing ? thread_cpu_ns() : 0;
        do {
            ret = d->enter(d->ring, 0, d->getevents);
        } while (ret == -EINTR);
        if (d->timing)
            a->syscall_cpu_ns += thread_cpu_ns() - c0;
        d->enters++;
        if (ret < 0 && ret != -EAGAIN && ret != -EBUSY) {
            /* EAGAIN/EBUSY: CQ overflow backlog, retried next round */
            if (d->evfd_disabled_bit)
                __atomic_fetch_and(d->cq_flags, ~d->evfd_disabled_bit, __ATOMIC_SEQ_CST);
            Py_XDECREF(control);
            errno = -ret;
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        unsigned long long n = 0;
        struct timespec t0, t1;
        if (d->timing)
            clock_gettime(CLOCK_MONOTONIC, &t0);
        int bad = drain(d, &control, &n);
        if (!bad)
            area_publish(a, 0);
        if (d->timing) {
            clock_gettime(CLOCK_MONOTONIC, &t1);
            d->dispatch_ns += (unsigned long long)((t1.tv_sec - t0.tv_sec) * 1000000000LL +
                                                   (t1.tv_nsec - t0.tv_nsec));
        }
        if (d->evfd_disabled_bit)
            __atomic_fetch_and(d->cq_flags, ~d->evfd_disabled_bit, __ATOMIC_SEQ_CST);
        if (bad) {
            Py_XDECREF(control);
            return NULL;
        }
        if (evfd >= 0 && round == 0 && n == 0)
            d->idle_wakeups++;
        total += n;
        int sq_pending = d->sq_space(d->ring) < d->sq_entries;
        if (control) {
            state = PUMP_IDLE;  /* the caller comes back */
            break;
        }
        if (sq_pending)
            continue;
        if (!d->pending_mask) {
            /* cannot tell whether work is left (no TASKRUN_FLAG): go on while there is progress */
            if (!n) {
                state = PUMP_IDLE;
                break;
            }
            continue;
        }
        if (!(__atomic_load_n(d->sq_flags, __ATOMIC_SEQ_CST) & d->pending_mask)) {
            state = PUMP_IDLE;
            break;
        }
        if (!n) {
            /* flagged, but an enter found nothing: the flag can lag; a timer looks again */
            state = PUMP_PENDING;
            break;
        }
    }
    PyObject *ret = Py_BuildValue("(KOi)", total, control ? control : Py_None, state);
    Py_XDECREF(control);
    return ret;
}

static PyObject *
Dispatcher_set_view_reuse(Dispatcher *d, PyObject *arg)
{
    int on = PyObject_IsTrue(arg);
    if (on < 0)
        return NULL;
    d->reuse_views = VIEW_REUSE && view_layout_ok && on;
    return PyBool_FromLong(d->reuse_views);
}

static PyObject *
Dispatcher_set_timing(Dispatcher *d, PyObject *arg)
{
    int on = PyObject_IsTrue(arg);
    if (on < 0)
        return NULL;
    d->timing = on;
    d->area->timing = on;
    Py_RETURN_NONE;
}

static PyObject *
Dispatcher_stats(Dispatcher *d, PyObject *Py_UNUSED(ignored))
{
    PyObject *s = Py_BuildValue("{s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:O}", "completions", d->completions,
                                "bytes", d->bytes, "dropped_completions", d->dropped,
                                "wakeups", d->wakeups, "idle_wakeups", d->idle_wakeups,
                                "enters", d->enters, "reused_views", d->reused_views,
                                "eventfd_paused", d->evfd_disabled_bit ? Py_True : Py_False);
    if (s && d->timing) {
        PyObject *v = Py_BuildValue("{s:K,s:K}", "dispatch_ns", d->dispatch_ns,
                                    "syscall_cpu_ns", d->area->syscall_cpu_ns);
        if (!v || PyDict_Update(s, v) < 0)
            Py_CLEAR(s);
        Py_XDECREF(v);
    }
    return s;
}

static int
Dispatcher_traverse(Dispatcher *d, visitproc visit, void *arg)
{
    Py_VISIT(d->slots);
    Py_VISIT(d->ring_owner);
    return 0;
}

static int
Dispatcher_clear(Dispatcher *d)
{
    Py_CLEAR(d->slots);
    Py_CLEAR(d->ring_owner);
    d->ring = NULL;
    return 0;
}

static void
Dispatcher_dealloc(Dispatcher *d)
{
    PyObject_GC_UnTrack(d);
    Py_CLEAR(d->slots);
    Py_CLEAR(d->ring_owner);
    Py_CLEAR(d->area);
    PyMem_Free(d->slot_counts);
    PyMem_Free(d->slot_active);
    PyMem_Free(d->active);
    PyMem_Free(d->was_active);
    Py_TYPE(d)->tp_free((PyObject *)d);
}

static PyMethodDef Dispatcher_methods[] = {
    {"run", (PyCFunction)Dispatcher_run, METH_NOARGS, "drain the CQ and dispatch"},
    {"pump", (PyCFunction)Dispatcher_pump, METH_O, "pump(eventfd): one wake-up's enter/drain/publish rounds"},
    {"bind_ring", (PyCFunction)(void (*)(void))Dispatcher_bind_ring, METH_VARARGS | METH_KEYWORDS, "give pump() the ring"},
    {"set_view_reuse", (PyCFunction)Dispatcher_set_view_reuse, METH_O, "benchmarks/tests: reuse unobservable views (default on); returns whether it is in effect"},
    {"set_timing", (PyCFunction)Dispatcher_set_timing, METH_O, "benchmarks: time dispatching (stats()['dispatch_ns'])"},
    {"stats", (PyCFunction)Dispatcher_stats, METH_NOARGS, "counters"},
    {"slot_stats", (PyCFunction)Dispatcher_slot_stats, METH_O, "(completions, bytes) of a slot"},
    {"reset_slot", (PyCFunction)Dispatcher_reset_slot, METH_O, "zero a slot's counters"},
    {"take_quiet", (PyCFunction)Dispatcher_take_quiet, METH_NOARGS, "slots with data last tick and none since; starts a new tick"},
    {NULL},
};

static PyTypeObject DispatcherType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aiozcrx._leases.Dispatcher",
    .tp_basicsize = sizeof(Dispatcher),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Dispatcher_init,
    .tp_dealloc = (destructor)Dispatcher_dealloc,
    .tp_traverse = (traverseproc)Dispatcher_traverse,
    .tp_clear = (inquiry)Dispatcher_clear,
    .tp_methods = Dispatcher_methods,
    .tp_doc = "Drains a completion queue in C and hands data to per-slot callbacks.",
};

/* ---------------------------------------------------------------- module */

static struct PyModuleDef leases_module = {
    PyModuleDef_HEAD_INIT, "aiozcrx._leases",
    "Buffer exporter, area and completion dispatcher (see _leases.c).", -1, NULL,
};

PyMODINIT_FUNC
PyInit__leases(void)
{
    if (PyType_Ready(&AreaType) < 0 || PyType_Ready(&LeaseType) < 0 ||
        PyType_Ready(&DispatcherType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&leases_module);
    if (!m)
        return NULL;
#if VIEW_REUSE
    check_view_layout();
#endif
    /* whether views can be reused here at all (Dispatcher.set_view_reuse toggles it) */
    PyModule_AddIntConstant(m, "VIEW_REUSE", VIEW_REUSE && view_layout_ok);
    Py_INCREF(&AreaType);
    PyModule_AddObject(m, "Area", (PyObject *)&AreaType);
    Py_INCREF(&LeaseType);
    PyModule_AddObject(m, "Lease", (PyObject *)&LeaseType);
    Py_INCREF(&DispatcherType);
    PyModule_AddObject(m, "Dispatcher", (PyObject *)&DispatcherType);
    return m;
}
