/*
 * aiozcrx._fastpath, Area: the receive buffer area and the ring that takes
 * released buffers back (zcrx refill ring, provided-buffer ring, or a plain free
 * list), refill publishing.
 *
 * Not compiled on its own: fastpath.c #includes it, so everything stays static in
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

/* zcrx: a view over `pieces` completions merged into one span (dispatch.c,
 * merge_zcrx_run) holds one niov per completion: counted as that many buffers
 * (pieces is 1 for every other view). */
static inline void
area_take_n(Area *a, uint64_t ident, uint32_t pieces)
{
    if (pieces == 1)
        area_take(a, ident);
    else
        a->outstanding += pieces;
}

/* A buffer comes back from user space. Never fails: a zcrx return that cannot be
 * queued (out of memory for the pending list) is dropped and counted, which costs
 * the area one buffer, never correctness. */
/* -------------------------------------------------------- users */

/* Whether `a` was initialised (Area(base, length, buf_size)): a type that
 * Python can make without calling __init__ (Area.__new__(Area)) must refuse,
 * not crash. 0 with RuntimeError set if not. */
static int
area_ready(Area *a)
{
    if (a->users)
        return 1;
    PyErr_SetString(PyExc_RuntimeError,
                    "aiozcrx._fastpath.Area is not initialised: make it with Area(base, length, buf_size)");
    return 0;
}

/* Slots (connections) one engine may number: their tables grow to the highest
 * slot used. 2^24, as the generation's bits (far above any real count). */
#define MAX_SLOTS (1U << 24)

/* The user an Area method names (its optional last argument, 0 by default: the
 * engine that made the area), or NULL with an exception set. */
static AreaUser *
user_arg(Area *a, unsigned int user)
{
    AreaUser *u = area_user(a, user);
    if (!u)
        PyErr_Format(PyExc_ValueError, "area user %u is not open", user);
    return u;
}

static AreaUser *
user_new(int ring_fd, uint32_t zcrx_id)
{
    AreaUser *u = PyMem_Calloc(1, sizeof(AreaUser));
    if (!u)
        return NULL;
    u->live = 1;
    u->wake_fd = u->share_wake_fd = -1;
    u->ring_fd = ring_fd;
    u->zcrx_id = zcrx_id;
    return u;
}

/* A user's own state goes with its close(): its fds are forgotten (they are
 * closed by their engine right after), its tables freed. The struct stays (its
 * index is never reused) until the area goes. */
static void
user_close(AreaUser *u)
{
    u->live = 0;
    u->wake_fd = u->share_wake_fd = u->ring_fd = -1;
    u->starved = 0;
    u->share = 0;
    PyMem_Free(u->held);
    PyMem_Free(u->slot_gen);
    PyMem_Free(u->over);
    PyMem_Free(u->back);
    u->held = u->slot_gen = u->back = NULL;
    u->over = NULL;
    u->held_cap = u->nback = 0;
}

/* Adds a user; its index, or -1 with an exception set. */
static long
area_add_user(Area *a, int ring_fd, uint32_t zcrx_id)
{
    AreaUser **v = PyMem_Realloc(a->users, (a->nusers + 1) * sizeof(*v));
    if (!v) {
        PyErr_NoMemory();
        return -1;
    }
    a->users = v;
    if (!(v[a->nusers] = user_new(ring_fd, zcrx_id))) {
        PyErr_NoMemory();
        return -1;
    }
    a->live_users++;
    return (long)a->nusers++;
}

/* Writes 1 to an eventfd (a user's wake-up). */
static inline void
wake(int fd)
{
    uint64_t one = 1;
    if (write(fd, &one, sizeof one) < 0) {
        /* counter saturated: the loop is awake anyway */
    }
}

/* -------------------------------------------------------- fair share */

/* A new connection of `user` takes `slot`: it holds nothing yet. Its generation
 * is `gen`, or with `gen` 0 the slot's next one (never 0, which means "no
 * connection"); returns it, or 0 with an exception set. u->slot_gen is the one
 * record of which generation owns a slot (the dispatcher reads it here; a
 * connection carries its own generation as its identity, as user_data does). */
static uint32_t
area_bind_slot(Area *a, uint32_t user, uint32_t slot, uint32_t gen)
{
    AreaUser *u = area_user(a, user);
    if (!u) {
        PyErr_Format(PyExc_ValueError, "area user %u is not open", user);
        return 0;
    }
    if (slot >= MAX_SLOTS) {
        PyErr_Format(PyExc_ValueError, "slot %u out of range (< %u)", slot, MAX_SLOTS);
        return 0;
    }
    if (slot >= u->held_cap) {
        uint32_t cap = u->held_cap ? u->held_cap : 64;
        while (cap <= slot)
            cap *= 2;
        uint32_t *h = PyMem_Realloc(u->held, (size_t)cap * sizeof(*h));
        if (!h)
            goto nomem;
        u->held = h;
        uint32_t *g = PyMem_Realloc(u->slot_gen, (size_t)cap * sizeof(*g));
        if (!g)
            goto nomem;
        u->slot_gen = g;
        uint8_t *o = PyMem_Realloc(u->over, cap);
        if (!o)
            goto nomem;
        u->over = o;
        uint32_t *b = PyMem_Realloc(u->back, (size_t)cap * sizeof(*b));
        if (!b)
            goto nomem;
        u->back = b;
        memset(u->held + u->held_cap, 0, (cap - u->held_cap) * sizeof(*h));
        memset(u->slot_gen + u->held_cap, 0, (cap - u->held_cap) * sizeof(*g));
        memset(u->over + u->held_cap, 0, cap - u->held_cap);
        u->held_cap = cap;
    }
    if (!gen)
        gen = u->slot_gen[slot] % UD_GEN_MASK + 1;
    u->held[slot] = 0;
    u->slot_gen[slot] = gen & UD_GEN_MASK;
    u->over[slot] &= OVER_LISTED;  /* a stale listing stays listed: never twice in back[] */
    return u->slot_gen[slot];
nomem:
    PyErr_NoMemory();
    return 0;
}

/* The live user's table entry for connection (slot, gen), or NULL. */
static inline AreaUser *
conn_of(Area *a, uint32_t user, uint32_t slot, uint32_t gen)
{
    AreaUser *u = area_user(a, user);
    return u && gen && slot < u->held_cap && u->slot_gen[slot] == gen ? u : NULL;
}

/* A view of (user, slot, gen) holds `n` buffers (niovs: a merged zcrx view
 * counts each it covers). */
static inline void
area_hold(Area *a, uint32_t user, uint32_t slot, uint32_t gen, uint32_t n)
{
    AreaUser *u = conn_of(a, user, slot, gen);
    if (u)
        u->held[slot] += n;
}

/* A view of (user, slot, gen) holding `n` buffers was released. A connection
 * over its share is let go again at half of it (hysteresis, so it does not flap
 * at the limit): listed for take_back() and its own engine's loop woken. */
static inline void
area_unhold(Area *a, uint32_t user, uint32_t slot, uint32_t gen, uint32_t n)
{
    AreaUser *u = conn_of(a, user, slot, gen);
    if (!u || !u->held[slot])
        return;
    u->held[slot] -= n < u->held[slot] ? n : u->held[slot];
    if ((u->over[slot] & OVER_SHARE) && u->held[slot] <= u->share / 2) {
        u->over[slot] &= ~OVER_SHARE;
        if (!(u->over[slot] & OVER_LISTED)) {
            u->over[slot] |= OVER_LISTED;
            u->back[u->nback++] = slot;   /* once per slot: OVER_LISTED */
        }
        if (u->share_wake_fd >= 0 && !a->closed)
            wake(u->share_wake_fd);
    }
}

/* set_share(buffers, wake_fd[, user]): how many buffers one connection's views
 * may hold (0: no limit), and the fd to write when one comes back under. */
static PyObject *
Area_set_share(Area *a, PyObject *args)
{
    if (!area_ready(a))
        return NULL;
    unsigned int share, user = 0;
    int fd;
    if (!PyArg_ParseTuple(args, "Ii|I", &share, &fd, &user))
        return NULL;
    AreaUser *u = user_arg(a, user);
    if (!u)
        return NULL;
    u->share = share;
    u->share_wake_fd = fd;
    Py_RETURN_NONE;
}

/* bind_slot(slot[, gen[, user]]) -> gen: for engines without a dispatcher
 * (socket); gen 0 (the default) takes the slot's next generation. */
static PyObject *
Area_bind_slot(Area *a, PyObject *args)
{
    if (!area_ready(a))
        return NULL;
    unsigned int slot, gen = 0, user = 0;
    if (!PyArg_ParseTuple(args, "I|II", &slot, &gen, &user))
        return NULL;
    uint32_t bound = area_bind_slot(a, user, slot, gen);
    if (!bound)
        return NULL;
    return PyLong_FromUnsignedLong(bound);
}

/* over_share(slot, gen[, user]) -> bool: whether that connection holds its share
 * now (and is marked so; the socket engine asks after each delivery). */
static PyObject *
Area_over_share(Area *a, PyObject *args)
{
    if (!area_ready(a))
        return NULL;
    unsigned int slot, gen, user = 0;
    if (!PyArg_ParseTuple(args, "II|I", &slot, &gen, &user))
        return NULL;
    AreaUser *u = conn_of(a, user, slot, gen);
    if (u && u->share && u->held[slot] >= u->share) {
        u->over[slot] |= OVER_SHARE;
        Py_RETURN_TRUE;
    }
    Py_RETURN_FALSE;
}

/* take_back([user]) -> list of that user's slots that came back under their
 * share since last time (and are not over it again) */
static PyObject *
Area_take_back(Area *a, PyObject *args)
{
    if (!area_ready(a))
        return NULL;
    unsigned int user = 0;
    if (!PyArg_ParseTuple(args, "|I", &user))
        return NULL;
    AreaUser *u = user_arg(a, user);
    if (!u)
        return NULL;
    PyObject *out = PyList_New(0);
    if (!out)
        return NULL;
    for (uint32_t i = 0; i < u->nback; i++) {
        uint32_t slot = u->back[i];
        u->over[slot] &= ~OVER_LISTED;
        if (u->over[slot] & OVER_SHARE)
            continue;
        PyObject *v = PyLong_FromUnsignedLong(slot);
        if (!v || PyList_Append(out, v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(v);
    }
    u->nback = 0;
    return out;
}

/* held(slot, gen[, user]) -> buffers that connection's views hold now */
static PyObject *
Area_held(Area *a, PyObject *args)
{
    if (!area_ready(a))
        return NULL;
    unsigned int slot, gen, user = 0;
    if (!PyArg_ParseTuple(args, "II|I", &slot, &gen, &user))
        return NULL;
    AreaUser *u = conn_of(a, user, slot, gen);
    return PyLong_FromUnsignedLong(u ? u->held[slot] : 0);
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
    /* every live user waiting for a buffer: its own wake-up */
    for (uint32_t i = 0; i < a->nusers; i++) {
        AreaUser *u = a->users[i];
        if (u->live && u->starved && u->wake_fd >= 0) {
            u->starved = 0;
            wake(u->wake_fd);
        }
    }
}

/* zcrx: the refill entries of a view over `pieces` merged completions, one per
 * niov it covers. Merging (dispatch.c, merge_zcrx_run) guarantees that every
 * completion but the last ended on a niov boundary and that each lies in one
 * niov: the first piece runs from `ident` to the next boundary, the middle ones
 * are whole niovs, the last has what is left. The kernel takes one user
 * reference per entry, so each niov goes back exactly once. */
static void
area_return_span(Area *a, uint64_t ident, uint32_t len, uint32_t pieces)
{
    if (pieces == 1) {
        area_return(a, ident, len);
        return;
    }
    uint64_t niov = a->buf_size;    /* zcrx: the niov size (a power of two) */
    while (pieces--) {
        uint32_t n = pieces ? (uint32_t)(((ident | (niov - 1)) + 1) - ident) : len;
        area_return(a, ident, n);
        ident += n;
        len -= n;
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

/* Tells the kernel to take the refill ring's entries (NODEV), through the ring
 * of a live user: any ring the instance is registered in reaches the same refill
 * ring, and a closed user's ring fd may be anybody's by now. */
static int
zcrx_flush(Area *a)
{
    AreaUser *u = NULL;
    for (uint32_t i = 0; i < a->nusers && !u; i++)
        if (a->users[i]->live && a->users[i]->ring_fd >= 0)
            u = a->users[i];
    if (!u)
        return -EBADF;
    struct azx_zcrx_ctrl c;
    memset(&c, 0, sizeof c);
    c.zcrx_id = u->zcrx_id;
    c.op = AZX_ZCRX_CTRL_FLUSH_RQ;
    unsigned long long c0 = a->timing ? thread_cpu_ns() : 0;
    long r = syscall(__NR_io_uring_register, u->ring_fd, AZX_REGISTER_ZCRX_CTRL, &c, 0);
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

/* Refill order (zcrx). The kernel hands niovs out last in, first out: a NIC
 * queue's page pool fills its cache from the refill ring in ring order and
 * allocates from the top of it; a NODEV flush pushes them on the area's free
 * list, which the copy path pops. Entries published in descending offset order
 * so come back ascending: a connection's next completions land in adjacent
 * niovs and merge into one view (dispatch.c, merge_zcrx_run). Released in
 * delivery order, the entries are mostly ascending already: reversed in place
 * then, sorted only when mixed. Only entries not yet published are ours to
 * reorder: [published tail, local tail). */
static int
rqe_off_descending(const void *x, const void *y)
{
    uint64_t a = ((const struct azx_zcrx_rqe *)x)->off, b = ((const struct azx_zcrx_rqe *)y)->off;
    return a < b ? 1 : a > b ? -1 : 0;
}

static void
rq_order_descending(Area *a)
{
    uint32_t from = *a->rq_ktail, to = a->rq_local_tail, n = to - from, m = a->rq_mask;
    struct azx_zcrx_rqe *e = a->rqes;
    if (n < 2 || !a->refill_descending)
        return;
    int up = 1, down = 1;
    for (uint32_t i = from; i + 1 != to && (up || down); i++) {
        uint64_t x = e[i & m].off, y = e[(i + 1) & m].off;
        if (x < y)
            down = 0;
        else if (x > y)
            up = 0;
    }
    if (down)
        return;
    if (up) {
        for (uint32_t i = from, j = to - 1; i - from < n / 2; i++, j--) {
            struct azx_zcrx_rqe t = e[i & m];
            e[i & m] = e[j & m];
            e[j & m] = t;
        }
        a->refill_reversed++;
        return;
    }
    struct azx_zcrx_rqe *tmp = PyMem_Malloc((size_t)n * sizeof(*tmp));
    if (!tmp)
        return;     /* out of memory: published as they are (order is only an optimisation) */
    for (uint32_t i = 0; i < n; i++)
        tmp[i] = e[(from + i) & m];
    qsort(tmp, n, sizeof(*tmp), rqe_off_descending);
    for (uint32_t i = 0; i < n; i++)
        e[(from + i) & m] = tmp[i];
    PyMem_Free(tmp);
    a->refill_sorted++;
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
                rq_order_descending(a);
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

/* set_refill_order(descending) -> bool: zcrx, publish refills in descending
 * offset order (the default; see rq_order_descending); False: as released
 * (benchmarks compare the two). Returns the setting in effect. */
static PyObject *
Area_set_refill_order(Area *a, PyObject *arg)
{
    if (!area_ready(a))
        return NULL;
    int on = PyObject_IsTrue(arg);
    if (on < 0)
        return NULL;
    a->refill_descending = a->kind == KIND_ZCRX && on;
    return PyBool_FromLong(a->refill_descending);
}

static PyObject *
Area_publish(Area *a, PyObject *args)
{
    if (!area_ready(a))
        return NULL;
    int force = 0;
    if (!PyArg_ParseTuple(args, "|p", &force))
        return NULL;
    if (forked(a->fork_gen))
        return raise_forked();
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
    if (a->users) {
        /* leases and dispatchers point into it already */
        PyErr_SetString(PyExc_RuntimeError, "Area is initialised already");
        return -1;
    }
    if (!base || length <= 0 || !buf_size || (size_t)length % buf_size) {
        PyErr_SetString(PyExc_ValueError, "Area: length must be a positive multiple of buf_size");
        return -1;
    }
    a->base = (char *)(uintptr_t)base;
    a->len = (size_t)length;
    a->buf_size = buf_size;
    a->nbufs = (uint32_t)((size_t)length / buf_size);
    a->kind = -1;
    if (area_add_user(a, -1, 0) < 0)   /* user 0: the engine that made it */
        return -1;
    return 0;
}

static PyObject *
Area_own_mapping(Area *a, PyObject *args)
{
    if (!area_ready(a))
        return NULL;
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
    if (!area_ready(a))
        return NULL;
    unsigned long long head, tail, rqes, token;
    unsigned int entries, zcrx_id, buf_size = 0;
    int ring_fd, nodev;
    if (!PyArg_ParseTuple(args, "KKKIKIip|I", &head, &tail, &rqes, &entries, &token,
                          &zcrx_id, &ring_fd, &nodev, &buf_size))
        return NULL;
    if (!entries || (entries & (entries - 1))) {
        PyErr_SetString(PyExc_ValueError, "rq_entries must be a power of two");
        return NULL;
    }
    /* the buffer size the kernel granted (rx_buf_len): one buffer (net_iov) per
     * completion, the unit the area counts; the page size unless given */
    if (buf_size && (buf_size & (buf_size - 1) || a->len % buf_size)) {
        PyErr_SetString(PyExc_ValueError, "setup_zcrx: buf_size must be a power of two dividing the area");
        return NULL;
    }
    if (!head || !tail || !rqes) {
        PyErr_SetString(PyExc_ValueError, "setup_zcrx: null address");
        return NULL;
    }
    if (a->kind != -1) {
        PyErr_SetString(PyExc_RuntimeError, "the area already has a ring");
        return NULL;
    }
    a->kind = KIND_ZCRX;
    if (buf_size) {
        a->buf_size = buf_size;
        a->nbufs = (uint32_t)(a->len / buf_size);
    }
    a->rq_khead = (uint32_t *)(uintptr_t)head;
    a->rq_ktail = (uint32_t *)(uintptr_t)tail;
    a->rqes = (struct azx_zcrx_rqe *)(uintptr_t)rqes;
    a->rq_entries = entries;
    a->rq_mask = entries - 1;
    a->rq_local_tail = *a->rq_ktail;
    a->rq_seen_head = *a->rq_khead;
    a->token = token;
    a->users[0]->zcrx_id = zcrx_id;   /* the ring that registered it is user 0's */
    a->users[0]->ring_fd = ring_fd;
    a->nodev = nodev;
    a->refill_descending = 1;
    Py_RETURN_NONE;
}

/* advise_hugepages() -> int: asks for transparent huge pages over the area
 * (MADV_HUGEPAGE), before the kernel pins it: large zcrx buffers (rx_buf_len)
 * need the area physically contiguous in runs of their size, which 2 MiB pages
 * give. 0, or the errno (EINVAL: no THP, e.g. User-Mode Linux); never raises. */
static PyObject *
Area_advise_hugepages(Area *a, PyObject *unused)
{
    if (!area_ready(a))
        return NULL;
#ifdef MADV_HUGEPAGE
    int err = madvise(a->base, a->len, MADV_HUGEPAGE) < 0 ? errno : 0;
#else
    int err = EINVAL;
#endif
    return PyLong_FromLong(err);
}

/* The provided buffer ring: `entries` slots of struct azx_buf; the kernel reads the
 * tail from the reserved u16 of slot 0. `window` buffers go in now, the rest wait on
 * the free stack (see area_publish). */
static PyObject *
Area_setup_pbuf(Area *a, PyObject *args)
{
    if (!area_ready(a))
        return NULL;
    unsigned long long ring;
    unsigned int entries, window;
    int inc = 0;
    if (!PyArg_ParseTuple(args, "KII|p", &ring, &entries, &window, &inc))
        return NULL;
    if (!entries || (entries & (entries - 1)) || entries < a->nbufs || a->nbufs > 32768) {
        PyErr_SetString(PyExc_ValueError, "pbuf ring entries must be a power of two >= buffers");
        return NULL;
    }
    if (!ring) {
        PyErr_SetString(PyExc_ValueError, "setup_pbuf: null address");
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
    if (!area_ready(a))
        return NULL;
    if (a->kind != -1) {
        PyErr_SetString(PyExc_RuntimeError, "the area already has a ring");
        return NULL;
    }
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

/* close([user]): that user (engine) is done with the area: its wake-ups, its
 * connections' state and its ring go (user_close); the last user closes the
 * area. After that, returned buffers are only counted: the ring they would go to
 * is gone. The mappings go with the last lease (area_return), or now if none is
 * out: not at dealloc, which may be much later if Python objects keep the Area.
 * Closing a user twice does nothing. */
static PyObject *
Area_close(Area *a, PyObject *args)
{
    unsigned int user = 0;
    if (!PyArg_ParseTuple(args, "|I", &user))
        return NULL;
    AreaUser *u = area_user(a, user);
    if (!u || a->closed)
        Py_RETURN_NONE;
    user_close(u);
    if (--a->live_users)
        Py_RETURN_NONE;
    a->closed = 1;
    if (!a->outstanding)
        area_unmap(a);
    Py_RETURN_NONE;
}

/* add_user(ring_fd=-1, zcrx_id=0) -> int: another engine receives into this area
 * (a zcrx instance imported into its ring, where it has id zcrx_id); returns its
 * user index, which it passes to the calls that are its own and closes once. */
static PyObject *
Area_add_user(Area *a, PyObject *args)
{
    if (!area_ready(a))
        return NULL;
    int ring_fd = -1;
    unsigned int zcrx_id = 0;
    if (!PyArg_ParseTuple(args, "|iI", &ring_fd, &zcrx_id))
        return NULL;
    if (a->closed) {
        PyErr_SetString(PyExc_RuntimeError, "area is closed");
        return NULL;
    }
    long user = area_add_user(a, ring_fd, zcrx_id);
    return user < 0 ? NULL : PyLong_FromLong(user);
}


/* socket engine: recv() into a free pool buffer, never waiting.
 * Returns a memoryview, None (would block), b"" (EOF), or False (no free buffer:
 * the area is marked starved and wakes wake_fd when one comes back). */
static PyObject *
Area_recv(Area *a, PyObject *args)
{
    if (!area_ready(a))
        return NULL;
    int fd;
    unsigned int slot, gen;
    if (!PyArg_ParseTuple(args, "iII", &fd, &slot, &gen))
        return NULL;
    if (forked(a->fork_gen))
        return raise_forked();  /* the parent's socket: its data is not ours */
    if (a->kind != KIND_POOL || a->closed) {
        PyErr_SetString(PyExc_RuntimeError, "recv on a closed or non-pool area");
        return NULL;
    }
    if (!a->nfree) {
        AreaUser *u = area_user(a, 0);
        if (u)
            u->starved = 1;
        Py_RETURN_FALSE;
    }
    uint32_t bid = a->freelist[a->nfree - 1];
    char *ptr = a->base + (size_t)bid * a->buf_size;
    ssize_t n;
    /* MSG_DONTWAIT: never wait, whatever mode the socket is in (this runs with
     * the GIL held: a wait here would stop every thread of the process) */
    do {
        n = recv((int)fd, ptr, a->buf_size, MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    if (n > 0) {
        a->nfree--;
        return make_view(a, ptr, n, bid, 1, 0, slot, gen);
    }
    if (n == 0)
        return PyBytes_FromStringAndSize(NULL, 0);
    if (errno == EAGAIN || errno == EWOULDBLOCK)
        Py_RETURN_NONE;
    return PyErr_SetFromErrno(PyExc_OSError);
}

/* set_wake(fd, starved[, user]): marks that user starved: the next returned
 * buffer writes its wake fd. */
static PyObject *
Area_set_wake(Area *a, PyObject *args)
{
    if (!area_ready(a))
        return NULL;
    int fd, starved;
    unsigned int user = 0;
    if (!PyArg_ParseTuple(args, "ip|I", &fd, &starved, &user))
        return NULL;
    AreaUser *u = user_arg(a, user);
    if (!u)
        return NULL;
    u->wake_fd = fd;
    u->starved = starved;
    Py_RETURN_NONE;
}

static PyObject *
Area_stats(Area *a, PyObject *Py_UNUSED(ignored))
{
    uint32_t queued = 0;
    int starved = 0;
    for (uint32_t i = 0; i < a->nusers; i++)
        starved |= a->users[i]->live && a->users[i]->starved;
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
                                "starved", starved,
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
        /* zcrx: a merged view holds several buffers (niovs) */
        PyObject *p = Py_BuildValue("{s:K}", "views_outstanding",
                                    a->kind == KIND_ZCRX ? a->views : a->outstanding);
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
    if (s && a->kind == KIND_ZCRX) {
        PyObject *p = Py_BuildValue("{s:O,s:K,s:K}", "refill_descending",
                                    a->refill_descending ? Py_True : Py_False,
                                    "refill_reversed", a->refill_reversed,
                                    "refill_sorted", a->refill_sorted);
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

/* Every Area is listed (all_areas) from the start, for the forked child's
 * at_fork_child; an Area made without __init__ has no ring and no memory. */
static PyObject *
Area_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    Area *a = (Area *)type->tp_alloc(type, 0);
    if (!a)
        return NULL;
    a->fork_gen = fork_gen;
    a->kind = -1;
    a->next_area = all_areas;
    if (all_areas)
        all_areas->prev_area = &a->next_area;
    a->prev_area = &all_areas;
    all_areas = a;
    return (PyObject *)a;
}

static void
Area_dealloc(Area *a)
{
    if (a->prev_area) {
        *a->prev_area = a->next_area;
        if (a->next_area)
            a->next_area->prev_area = a->prev_area;
    }
    area_unmap(a);
    PyMem_Free(a->pending);
    for (uint32_t i = 0; i < a->nusers; i++) {
        user_close(a->users[i]);
        PyMem_Free(a->users[i]);
    }
    PyMem_Free(a->users);
    PyMem_Free(a->freelist);
    PyMem_Free(a->buf_used);
    PyMem_Free(a->buf_views);
    PyMem_Free(a->buf_kernel);
    Py_TYPE(a)->tp_free((PyObject *)a);
}

static PyMethodDef Area_methods[] = {
    {"own_mapping", (PyCFunction)Area_own_mapping, METH_VARARGS, "own_mapping(addr, len): munmap at dealloc"},
    {"setup_zcrx", (PyCFunction)Area_setup_zcrx, METH_VARARGS, "attach a zcrx refill ring"},
    {"advise_hugepages", (PyCFunction)Area_advise_hugepages, METH_NOARGS,
     "advise_hugepages() -> errno: MADV_HUGEPAGE over the area (0: done)"},
    {"setup_pbuf", (PyCFunction)Area_setup_pbuf, METH_VARARGS, "attach a provided buffer ring"},
    {"setup_pool", (PyCFunction)Area_setup_pool, METH_NOARGS, "use a user-space free list"},
    {"publish", (PyCFunction)Area_publish, METH_VARARGS, "publish queued returns (one tail store)"},
    {"recv", (PyCFunction)Area_recv, METH_VARARGS, "recv(fd, slot, gen) into a pool buffer, for that connection"},
    {"set_refill_order", (PyCFunction)Area_set_refill_order, METH_O, "set_refill_order(descending) -> bool: zcrx refills published in descending offset order (default on)"},
    {"set_share", (PyCFunction)Area_set_share, METH_VARARGS, "set_share(buffers, wake_fd[, user]): one connection's limit, that user's wake-up"},
    {"bind_slot", (PyCFunction)Area_bind_slot, METH_VARARGS, "bind_slot(slot[, gen[, user]]) -> gen: a new connection holds nothing; gen 0 (default): the slot's next"},
    {"over_share", (PyCFunction)Area_over_share, METH_VARARGS, "over_share(slot, gen[, user]): holds its share now?"},
    {"take_back", (PyCFunction)Area_take_back, METH_VARARGS, "take_back([user]): that user's slots back under their share since last call"},
    {"held", (PyCFunction)Area_held, METH_VARARGS, "held(slot, gen[, user]): buffers its views hold"},
    {"set_wake", (PyCFunction)Area_set_wake, METH_VARARGS, "set_wake(fd, starved[, user])"},
    {"add_user", (PyCFunction)Area_add_user, METH_VARARGS, "add_user(ring_fd=-1, zcrx_id=0) -> user: another engine shares this area; it calls close(user)"},
    {"close", (PyCFunction)Area_close, METH_VARARGS, "close([user]): that user is done; the last one stops returning buffers to the ring"},
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
    .tp_name = "aiozcrx._fastpath.Area",
    .tp_basicsize = sizeof(Area),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Area_new,
    .tp_init = (initproc)Area_init,
    .tp_dealloc = (destructor)Area_dealloc,
    .tp_methods = Area_methods,
    .tp_getset = Area_getset,
    .tp_doc = "Receive buffer area and the ring that takes released buffers back.",
};

