/*
 * aiozcrx._leases, Area: the receive buffer area and the ring that takes
 * released buffers back (zcrx refill ring, provided-buffer ring, or a plain free
 * list), refill publishing.
 *
 * Not compiled on its own: leases.c #includes it, so everything stays static in
 * one translation unit.
 */

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
    struct azx_zcrx_rqe *e = &a->rqes[a->rq_local_tail & a->rq_mask];
    e->off = off | a->token;
    e->len = len;
    e->pad = 0;
    a->rq_local_tail++;
    return 1;
}

static inline void
pbuf_put(Area *a, uint32_t bid)
{
    struct azx_buf *e = &a->pbufs[a->pbuf_local_tail & a->pbuf_mask];
    e->addr = (uint64_t)(uintptr_t)(a->base + (size_t)bid * a->buf_size);
    e->len = a->buf_size;
    e->bid = (uint16_t)bid;     /* not resv: in entry 0 that is the ring's tail */
    a->pbuf_local_tail++;
    a->given++;
    if (a->inc) {
        a->buf_used[bid] = 0;
        a->buf_kernel[bid] = 1;
    }
}

/* A lease (a view) takes a piece of buffer `ident`: counted until area_return. */
static inline void
area_take(Area *a, uint64_t ident)
{
    a->outstanding++;
    if (a->inc && !a->closed && a->buf_views[ident]++ == 0)
        a->bufs_held++;
}

/* A buffer comes back from user space. Never fails: a zcrx return that cannot be
 * queued (out of memory for the pending list) is dropped and counted, which costs
 * the area one buffer, never correctness. */
/* -------------------------------------------------------- fair share */

/* A new connection takes `slot` (generation `gen`): it holds nothing yet. */
static int
area_bind_slot(Area *a, uint32_t slot, uint32_t gen)
{
    if (slot >= a->held_cap) {
        uint32_t cap = a->held_cap ? a->held_cap : 64;
        while (cap <= slot)
            cap *= 2;
        uint32_t *h = PyMem_Realloc(a->held, (size_t)cap * sizeof(*h));
        if (!h)
            goto nomem;
        a->held = h;
        uint32_t *g = PyMem_Realloc(a->held_gen, (size_t)cap * sizeof(*g));
        if (!g)
            goto nomem;
        a->held_gen = g;
        uint8_t *o = PyMem_Realloc(a->over, cap);
        if (!o)
            goto nomem;
        a->over = o;
        uint32_t *b = PyMem_Realloc(a->back, (size_t)cap * sizeof(*b));
        if (!b)
            goto nomem;
        a->back = b;
        memset(a->held + a->held_cap, 0, (cap - a->held_cap) * sizeof(*h));
        memset(a->held_gen + a->held_cap, 0, (cap - a->held_cap) * sizeof(*g));
        memset(a->over + a->held_cap, 0, cap - a->held_cap);
        a->held_cap = cap;
    }
    a->held[slot] = 0;
    a->held_gen[slot] = gen;
    a->over[slot] &= OVER_LISTED;  /* a stale listing stays listed: never twice in back[] */
    return 0;
nomem:
    PyErr_NoMemory();
    return -1;
}

static inline void
area_hold(Area *a, uint32_t slot, uint32_t gen)
{
    if (gen && slot < a->held_cap && a->held_gen[slot] == gen)
        a->held[slot]++;
}

/* A view of (slot, gen) was released: one buffer fewer held by that connection.
 * A connection over its share is let go again at half of it (hysteresis, so it
 * does not flap at the limit): listed for take_back() and the loop woken. */
static inline void
area_unhold(Area *a, uint32_t slot, uint32_t gen)
{
    if (!gen || slot >= a->held_cap || a->held_gen[slot] != gen || !a->held[slot])
        return;
    a->held[slot]--;
    if ((a->over[slot] & OVER_SHARE) && a->held[slot] <= a->share / 2) {
        a->over[slot] &= ~OVER_SHARE;
        if (!(a->over[slot] & OVER_LISTED)) {
            a->over[slot] |= OVER_LISTED;
            a->back[a->nback++] = slot;   /* once per slot: OVER_LISTED */
        }
        if (a->share_wake_fd >= 0 && !a->closed) {
            uint64_t one = 1;
            if (write(a->share_wake_fd, &one, sizeof one) < 0) {
                /* counter saturated: the loop is awake anyway */
            }
        }
    }
}

/* set_share(buffers, wake_fd): how many buffers one connection's views may hold
 * (0: no limit), and the fd to write when one comes back under. */
static PyObject *
Area_set_share(Area *a, PyObject *args)
{
    unsigned int share;
    int fd;
    if (!PyArg_ParseTuple(args, "Ii", &share, &fd))
        return NULL;
    a->share = share;
    a->share_wake_fd = fd;
    Py_RETURN_NONE;
}

/* bind_slot(slot, gen): for engines without a dispatcher (socket). */
static PyObject *
Area_bind_slot(Area *a, PyObject *args)
{
    unsigned int slot, gen;
    if (!PyArg_ParseTuple(args, "II", &slot, &gen))
        return NULL;
    if (area_bind_slot(a, slot, gen) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* over_share(slot, gen) -> bool: whether that connection holds its share now (and
 * is marked so; the socket engine asks after each delivery). */
static PyObject *
Area_over_share(Area *a, PyObject *args)
{
    unsigned int slot, gen;
    if (!PyArg_ParseTuple(args, "II", &slot, &gen))
        return NULL;
    if (a->share && slot < a->held_cap && a->held_gen[slot] == gen && a->held[slot] >= a->share) {
        a->over[slot] |= OVER_SHARE;
        Py_RETURN_TRUE;
    }
    Py_RETURN_FALSE;
}

/* take_back() -> list of slots that came back under their share since last
 * time (and are not over it again) */
static PyObject *
Area_take_back(Area *a, PyObject *Py_UNUSED(ignored))
{
    PyObject *out = PyList_New(0);
    if (!out)
        return NULL;
    for (uint32_t i = 0; i < a->nback; i++) {
        uint32_t slot = a->back[i];
        a->over[slot] &= ~OVER_LISTED;
        if (a->over[slot] & OVER_SHARE)
            continue;
        PyObject *v = PyLong_FromUnsignedLong(slot);
        if (!v || PyList_Append(out, v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(v);
    }
    a->nback = 0;
    return out;
}

/* held(slot, gen) -> buffers that connection's views hold now */
static PyObject *
Area_held(Area *a, PyObject *args)
{
    unsigned int slot, gen;
    if (!PyArg_ParseTuple(args, "II", &slot, &gen))
        return NULL;
    unsigned long n = slot < a->held_cap && a->held_gen[slot] == gen ? a->held[slot] : 0;
    return PyLong_FromUnsignedLong(n);
}

/* Unmaps every mapping the area owns, once. */
static void
area_unmap(Area *a)
{
    for (int i = 0; i < a->nmaps; i++)
        munmap(a->maps[i].addr, a->maps[i].len);
    a->nmaps = 0;
    a->unmapped = 1;
}

static void
area_return(Area *a, uint64_t ident, uint32_t len)
{
    a->outstanding--;
    a->returned++;
    if (a->closed) {
        /* stats() stay live after close: buffers_outstanding is what users read
         * to find a leak (incremental buffers count buffers, not views) */
        if (a->inc && a->buf_views && a->buf_views[ident] && --a->buf_views[ident] == 0)
            a->bufs_held--;
        if (!a->outstanding)
            area_unmap(a);  /* the last view of a closed area: its memory goes now */
        return;
    }
    switch (a->kind) {
    case KIND_ZCRX:
        if (a->npending || !rq_try_put(a, ident, len))
            if (pending_push(a, (ident << 20) | (len & 0xfffff)) < 0)
                a->flush_errors++;
        break;
    case KIND_PBUF:
        if (a->inc) {
            /* free once the kernel is done with it too (pbuf_kernel_done) */
            if (--a->buf_views[ident] == 0) {
                a->bufs_held--;
                if (!a->buf_kernel[ident])
                    a->freelist[a->nfree++] = (uint32_t)ident;
            }
            break;
        }
        /* fall through */
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

/* Incremental pbuf: the kernel finished buffer `bid` (a completion without
 * IORING_CQE_F_BUF_MORE); it is free once no view is left over it. */
static inline void
pbuf_kernel_done(Area *a, uint32_t bid)
{
    if (a->closed || !a->buf_kernel[bid])
        return;
    a->buf_kernel[bid] = 0;
    if (a->posted)
        a->posted--;
    if (!a->buf_views[bid])
        a->freelist[a->nfree++] = bid;
}

static int
zcrx_flush(Area *a)
{
    struct azx_zcrx_ctrl c;
    memset(&c, 0, sizeof c);
    c.zcrx_id = a->zcrx_id;
    c.op = AZX_ZCRX_CTRL_FLUSH_RQ;
    unsigned long long c0 = a->timing ? thread_cpu_ns() : 0;
    long r = syscall(__NR_io_uring_register, a->ring_fd, AZX_REGISTER_ZCRX_CTRL, &c, 0);
    if (a->timing)
        a->syscall_cpu_ns += thread_cpu_ns() - c0;
    a->flushes++;
    if (r < 0) {
        a->flush_errors++;
        return -errno;
    }
    /* the entries it took are free buffers of the kernel's now */
    uint32_t head = LOAD_ACQ32(a->rq_khead);
    a->given += head - a->rq_seen_head;
    a->rq_seen_head = head;
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
                if (!a->nodev)  /* a NIC queue's page pool takes them from here */
                    a->given += a->rq_local_tail - *a->rq_ktail;
                STORE_REL32(a->rq_ktail, a->rq_local_tail);
                a->publishes++;
            }
            /* A NODEV instance never drains the refill ring on its own: flush when a
             * quarter of the ring (or of the area) waits, when asked, when the ring
             * is full and returns are piling up, or when less than half of the
             * area is left to the kernel (views held + returns not yet flushed),
             * so that it never runs dry for want of a flush. */
            uint32_t threshold = a->rq_entries / 4;
            if (a->nbufs / 4 < threshold)
                threshold = a->nbufs / 4;
            if (threshold == 0)
                threshold = 1;
            int low = (a->outstanding + queued + a->npending) * 2 > a->nbufs;
            int want = a->nodev && queued && (force || queued >= threshold || a->npending || low);
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

/* ------------------------------------------------ starved connections */

/* Buffers the kernel can take right now, as far as we can see: pbuf, those in its
 * ring (a partly filled incremental buffer included); zcrx NODEV, the rest of the
 * area (neither held by a view nor waiting in the refill ring); on a NIC queue,
 * those no view holds (the page pool takes the refill ring's entries when it
 * likes, and a request needs no free buffer for what already sits in its socket);
 * the pool, its free list. */
static unsigned long long
area_free_in_kernel(Area *a)
{
    if (a->closed)
        return 0;
    switch (a->kind) {
    case KIND_PBUF:
        return a->posted;
    case KIND_ZCRX: {
        unsigned long long busy = a->outstanding;
        if (a->nodev)
            busy += a->npending + (uint32_t)(a->rq_local_tail - LOAD_ACQ32(a->rq_khead));
        return busy < a->nbufs ? a->nbufs - busy : 0;
    }
    case KIND_POOL:
        return a->nfree;
    }
    return 0;
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
    a->share_wake_fd = -1;
    a->users = 1;
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
    a->rqes = (struct azx_zcrx_rqe *)(uintptr_t)rqes;
    a->rq_entries = entries;
    a->rq_mask = entries - 1;
    a->rq_local_tail = *a->rq_ktail;
    a->rq_seen_head = *a->rq_khead;
    a->token = token;
    a->zcrx_id = zcrx_id;
    a->ring_fd = ring_fd;
    a->nodev = nodev;
    Py_RETURN_NONE;
}

/* The provided buffer ring: `entries` slots of struct azx_buf; the kernel reads the
 * tail from the reserved u16 of slot 0. `window` buffers go in now, the rest wait on
 * the free stack (see area_publish). */
static PyObject *
Area_setup_pbuf(Area *a, PyObject *args)
{
    unsigned long long ring;
    unsigned int entries, window;
    int inc = 0;
    if (!PyArg_ParseTuple(args, "KII|p", &ring, &entries, &window, &inc))
        return NULL;
    if (!entries || (entries & (entries - 1)) || entries < a->nbufs || a->nbufs > 32768) {
        PyErr_SetString(PyExc_ValueError, "pbuf ring entries must be a power of two >= buffers");
        return NULL;
    }
    if (a->kind != -1) {
        PyErr_SetString(PyExc_RuntimeError, "the area already has a ring");
        return NULL;
    }
    if (!(a->freelist = PyMem_Malloc(a->nbufs * sizeof(uint32_t))))
        return PyErr_NoMemory();
    if (inc) {
        a->buf_used = PyMem_Calloc(a->nbufs, sizeof(uint32_t));
        a->buf_views = PyMem_Calloc(a->nbufs, sizeof(uint32_t));
        a->buf_kernel = PyMem_Calloc(a->nbufs, 1);
        if (!a->buf_used || !a->buf_views || !a->buf_kernel)
            return PyErr_NoMemory();   /* freed at dealloc */
        a->inc = 1;
    }
    /* low ids on top: a small workload touches few pages */
    for (uint32_t i = 0; i < a->nbufs; i++)
        a->freelist[i] = a->nbufs - 1 - i;
    a->nfree = a->nbufs;
    a->kind = KIND_PBUF;
    a->pbufs = (struct azx_buf *)(uintptr_t)ring;
    a->pbuf_mask = entries - 1;
    a->pbuf_ktail = &a->pbufs[0].resv;
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
    /* One user (engine) fewer; the last one closes the area. After close,
     * returned buffers are only counted: the ring they would go to is gone. The
     * mappings go with the last lease (area_return), or now if none is out: not
     * at dealloc, which may be much later if Python objects keep the Area. */
    if (a->closed)
        Py_RETURN_NONE;
    if (a->users > 1) {
        a->users--;
        Py_RETURN_NONE;
    }
    a->users = 0;
    a->closed = 1;
    a->wake_fd = -1;
    if (!a->outstanding)
        area_unmap(a);
    Py_RETURN_NONE;
}

/* add_user(): another engine receives into this area (a zcrx instance imported
 * into a second ring); each user calls close() once. */
static PyObject *
Area_add_user(Area *a, PyObject *Py_UNUSED(ignored))
{
    if (a->closed) {
        PyErr_SetString(PyExc_RuntimeError, "area is closed");
        return NULL;
    }
    a->users++;
    Py_RETURN_NONE;
}


/* socket engine: recv() into a free pool buffer.
 * Returns a memoryview, None (would block), b"" (EOF), or False (no free buffer:
 * the area is marked starved and wakes wake_fd when one comes back). */
static PyObject *
Area_recv(Area *a, PyObject *args)
{
    int fd;
    unsigned int slot, gen;
    if (!PyArg_ParseTuple(args, "iII", &fd, &slot, &gen))
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
        return make_view(a, ptr, n, bid, slot, gen);
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
    PyObject *s = Py_BuildValue("{s:K,s:K,s:K,s:K,s:K,s:I,s:I,s:n,s:I,s:I,s:O,s:O,s:i,s:K}",
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
                                "closed", a->closed ? Py_True : Py_False,
                                "area_unmapped", a->unmapped ? Py_True : Py_False,
                                "starved", a->starved,
                                "area_addr", (unsigned long long)(uintptr_t)a->base);
    if (s && a->inc) {
        /* a view holds a piece of a buffer: count buffers, and views apart */
        PyObject *p = Py_BuildValue("{s:K,s:I,s:I,s:O}", "views_outstanding", a->outstanding,
                                    "buffers_outstanding", a->bufs_held,
                                    "buffers_free", a->nbufs - a->bufs_held,
                                    "incremental_buffers", Py_True);
        if (!p || PyDict_Update(s, p) < 0)
            Py_CLEAR(s);
        Py_XDECREF(p);
    } else if (s) {
        PyObject *p = Py_BuildValue("{s:K}", "views_outstanding", a->outstanding);
        if (!p || PyDict_Update(s, p) < 0)
            Py_CLEAR(s);
        Py_XDECREF(p);
    }
    if (s && a->kind != KIND_POOL) {
        /* handed to the kernel (see revive_budget in dispatch.c) */
        PyObject *p = Py_BuildValue("{s:K}", "buffers_given", a->given);
        if (!p || PyDict_Update(s, p) < 0)
            Py_CLEAR(s);
        Py_XDECREF(p);
    }
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

static PyObject *
Area_get_free_in_kernel(Area *a, void *c)
{
    return PyLong_FromUnsignedLongLong(area_free_in_kernel(a));
}

static void
Area_dealloc(Area *a)
{
    area_unmap(a);
    PyMem_Free(a->pending);
    PyMem_Free(a->held);
    PyMem_Free(a->held_gen);
    PyMem_Free(a->over);
    PyMem_Free(a->back);
    PyMem_Free(a->freelist);
    PyMem_Free(a->buf_used);
    PyMem_Free(a->buf_views);
    PyMem_Free(a->buf_kernel);
    Py_TYPE(a)->tp_free((PyObject *)a);
}

static PyMethodDef Area_methods[] = {
    {"own_mapping", (PyCFunction)Area_own_mapping, METH_VARARGS, "own_mapping(addr, len): munmap at dealloc"},
    {"setup_zcrx", (PyCFunction)Area_setup_zcrx, METH_VARARGS, "attach a zcrx refill ring"},
    {"setup_pbuf", (PyCFunction)Area_setup_pbuf, METH_VARARGS, "attach a provided buffer ring"},
    {"setup_pool", (PyCFunction)Area_setup_pool, METH_NOARGS, "use a user-space free list"},
    {"publish", (PyCFunction)Area_publish, METH_VARARGS, "publish queued returns (one tail store)"},
    {"recv", (PyCFunction)Area_recv, METH_VARARGS, "recv(fd, slot, gen) into a pool buffer, for that connection"},
    {"set_share", (PyCFunction)Area_set_share, METH_VARARGS, "set_share(buffers, wake_fd): one connection's limit"},
    {"bind_slot", (PyCFunction)Area_bind_slot, METH_VARARGS, "bind_slot(slot, gen): a new connection holds nothing"},
    {"over_share", (PyCFunction)Area_over_share, METH_VARARGS, "over_share(slot, gen): holds its share now?"},
    {"take_back", (PyCFunction)Area_take_back, METH_NOARGS, "slots back under their share since last call"},
    {"held", (PyCFunction)Area_held, METH_VARARGS, "held(slot, gen): buffers its views hold"},
    {"set_wake", (PyCFunction)Area_set_wake, METH_VARARGS, "set_wake(fd, starved)"},
    {"add_user", (PyCFunction)Area_add_user, METH_NOARGS, "another engine shares this area; it calls close() too"},
    {"close", (PyCFunction)Area_close, METH_NOARGS, "stop returning buffers to the ring"},
    {"stats", (PyCFunction)Area_stats, METH_NOARGS, "counters"},
    {NULL},
};

static PyGetSetDef Area_getset[] = {
    {"outstanding", (getter)Area_get_outstanding, NULL, "buffers held by user space", NULL},
    {"nbufs", (getter)Area_get_nbufs, NULL, "buffers in the area", NULL},
    {"free_in_kernel", (getter)Area_get_free_in_kernel, NULL,
     "buffers the kernel can take now (pbuf: in its ring; zcrx: neither held nor waiting for refill)", NULL},
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

