/*
 * aiozcrx._fastpath, Dispatcher: drains the completion queue (drain),
 * one wake-up's enter/drain/publish rounds (pump_core), the loop's reader that
 * runs them and calls the engine's Python only for decisions (on_wake), per-slot stats.
 *
 * Not compiled on its own: fastpath.c #includes it, so everything stays static in
 * one translation unit.
 */

/* ------------------------------------------------------------ Dispatcher */

typedef struct {
    PyObject_HEAD
    unsigned long fork_gen;     /* made in this process generation (see fastpath.c, "fork") */
    Area *area;
    uint32_t user;              /* the area user (engine) this dispatcher delivers for */
    PyObject *slots;            /* list: slot -> callable(view) or None */
    uint32_t *khead, *ktail;
    char *cqes;
    uint32_t mask;
    unsigned cqe_shift;
    int copy;
    unsigned long long completions, bytes, dropped, dropped_bytes;
    unsigned long long unknown;         /* completions of a kind we never issue */
    unsigned long long *slot_counts;   /* per slot: completions, bytes */
    uint32_t slot_cap;
    /* halt(): the engine is closing (perhaps from inside a callback we made):
     * no more callbacks or control records; every buffer goes straight back */
    int halted;
    int busy;                           /* inside pump()/run(): they must not nest */
    int in_slow;                        /* on_wake()/kick() is inside the engine's slow path */
    /* for the reset watch (engines/ring.py): per slot, bit 0 "got data this tick", bit 1
     * "got data last tick"; the slots with each bit set, listed once */
    uint8_t *slot_active;
    uint32_t *active, nactive;          /* bit 0 */
    uint32_t *was_active, nwas_active;  /* bit 1 */
    /* the ring, for pump(): its struct and two functions from the cffi layer
     * (aiozcrx/_c/queue.c), kept alive by ring_owner */
    PyObject *ring_owner;
    void *ring;
    int (*enter)(void *ring, unsigned min_complete, unsigned flags);
    unsigned (*sq_space)(void *ring);
    uint32_t *sq_flags, *cq_flags;
    unsigned sq_entries, getevents, pending_mask, evfd_disabled_bit;
    unsigned long long wakeups, idle_wakeups, enters;
    /* socket_wake(slot): the loop's reader for an armed connection's own socket,
     * the wake-up source where the kernel signals the eventfd late (engines/ring.py,
     * "Wake-ups"). Per slot, how many socket wake-ups in a row delivered it nothing:
     * at SOCKET_IDLE_LIMIT the engine is told (UD_KIND_SOCK_IDLE), so that a socket
     * that stays readable while its request cannot consume it (an error the request
     * does not read, a zcrx request waiting for buffers) never becomes a busy loop. */
    uint8_t *slot_idle;
    /* per slot: its completion count at its last socket wake-up. With many
     * connections ready in one epoll batch, the first reader's pump delivers the
     * others' data too: their own wake-ups then find nothing, and that is no sign
     * of a stuck socket. Idle means: nothing for the slot since its previous
     * socket wake-up, whoever pumped. */
    unsigned long long *slot_seen;
    unsigned long long socket_wakeups, socket_idle_wakeups, socket_idle_reports;
    /* completions delivered by the first pump of each kind of wake-up */
    unsigned long long found_eventfd, found_socket, found_kick;
    /* the ring's eventfd (bind_eventfd): a wake-up reads it with an IORING_OP_READ
     * that rides in the wake-up's first io_uring_enter (see pump_core), or, where
     * the kernel lacks the op or the SQ is full, with read(2) */
    int evfd;
    int evfd_sqe;
    int (*prep_read)(void *ring, int fd, uintptr_t addr, uint32_t len, uint64_t ud, uint32_t *pos);
    int (*withdraw)(void *ring, uint32_t pos);
    uint64_t evfd_ud;
    unsigned long long evfd_syscalls, evfd_sqe_reads, evfd_sqe_empty, evfd_sqe_errors, evfd_withdrawn;
    /* on_wake(): the engine's Python slow path, called only when a wake-up leaves
     * something to decide (see needs_slow_path) */
    PyObject *slow_path;
    int revive_wanted;          /* the engine has connections waiting for buffers */
    int unthrottle_wanted;      /* the engine has connections stopped over their share */
    int recheck_pending;        /* the engine will pump again soon (a kick, a recheck timer) */
    /* Starved connections (see revive_budget): the area's `given` at this ring's
     * last io_uring_enter, the oldest starved connection's mark (nothing to re-arm
     * until `given` passes it), how far re-arms have used `given` up (NIC), and
     * what the re-arms queued since the last enter count for (reserved). Per ring:
     * an imported zcrx instance shares the area with another ring. */
    unsigned long long given_at_enter, revive_after, granted;
    unsigned long long reserved;
    unsigned long long slow_calls;
    int reuse_views;            /* see reusable_lease() */
    unsigned long long reused_views;
    unsigned long long merged;  /* completions delivered in the same view as the one before */
    /* bytes one view may gather from several completions (merged views: see
     * gather_run); 0 or up to a page: none merged. A single completion is
     * delivered whole. */
    uint32_t max_view;
    /* over_share="copy": a connection whose views hold its share gets copies (bytes,
     * its buffer back at once) until it is back under (area_unhold), instead of
     * being stopped: asyncio never stops a protocol that did not ask for it */
    int share_copy;
    unsigned long long share_copies, share_copied_bytes;
    /* The last round's spare view, its buffer already given back (empty_view): the
     * next round's first completion reuses it, so a wake-up with one completion
     * (small messages, paced) makes no new memoryview either. Nobody else can
     * reach it (reusable_lease held when it was parked). */
    PyObject *parked;
    /* benchmarks: time spent dispatching (drain + publish), clock_gettime per round */
    int timing;
    unsigned long long dispatch_ns;
    /* Control records (see push_control) wait here, in completion order, until
     * take_control() hands them to Python as a list: drain() itself allocates no
     * Python object for them, and a list that cannot be made for want of memory
     * leaves them here for the next pump. Room for a batch is made before the
     * batch is taken from the CQ (make_room); a CQ that must wait for room stays
     * in the kernel (stalled). */
    struct ctl_rec *ctl;
    uint32_t nctl, ctl_cap;
    int stalled;
    unsigned long long nomem_failures, nomem_stalls;
} Dispatcher;

typedef struct {
    uint64_t ud;
    int32_t res;
    uint32_t flags;
    uint64_t zc_off;
} cqe_rec;

struct ctl_rec {
    uint64_t ud;
    int32_t res;
    uint32_t flags;
    PyObject *exc;              /* a sink's exception (a reference), or NULL */
};

#define BATCH 256
/* Dispatcher.set_max_view's default (Receiver(max_view=...); see docs/benchmarks.md) */
#define DEFAULT_MAX_VIEW (256 * 1024)
static uint32_t page_bytes = 4096;      /* the page size (set at import: leases.c) */

/* A re-armed connection takes what its socket holds, often more than one buffer
 * (a multishot request goes on while there are data and buffers): each re-arm is
 * counted against a fair share (max_held) of the buffers the kernel can take. */
static inline uint32_t
revive_unit(Dispatcher *d)
{
    AreaUser *u = d->area ? area_user(d->area, d->user) : NULL;  /* this engine's share */
    return u && u->share ? u->share : 1;
}

/* How many starved connections may be re-armed now. A request ends with ENOBUFS
 * (ENOMEM for zcrx) when the kernel had no buffer for it; re-armed before one came
 * back, it ends the same way at once: a busy loop through the kernel (issue 25).
 * So nothing until a buffer was handed to the kernel after the longest-waiting
 * connection starved (the area's `given` passed its mark, revive_after), and then
 * one re-arm per fair share (revive_unit, rounded up) of the buffers the kernel
 * can take now (area_free_in_kernel), less what the re-arms queued for the next
 * enter count for (reserved). A re-arm then either finds buffers, or finds that
 * another connection took them (which brings them back later), or waits for data
 * with the buffers left in the kernel. On a NIC queue, where what the kernel can
 * take is not known, one re-arm per buffer handed back since. */
static unsigned long long
revive_budget(Dispatcher *d)
{
    Area *a = d->area;
    if (!a || a->closed || a->given <= d->revive_after)
        return 0;
    if (a->kind == KIND_ZCRX && !a->nodev) {
        unsigned long long from = d->granted > d->revive_after ? d->granted : d->revive_after;
        return a->given > from ? a->given - from : 0;
    }
    unsigned long long f = area_free_in_kernel(a);
    return f > d->reserved ? (f - d->reserved + revive_unit(d) - 1) / revive_unit(d) : 0;
}

/* revive_budget() -> starved connections to re-arm now */
static PyObject *
Dispatcher_revive_budget(Dispatcher *d, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromUnsignedLongLong(revive_budget(d));
}

/* revive_took(n): n starved connections were re-armed (queued for the next enter) */
static PyObject *
Dispatcher_revive_took(Dispatcher *d, PyObject *args)
{
    unsigned int n;
    if (!PyArg_ParseTuple(args, "I", &n))
        return NULL;
    if (!d->area)
        Py_RETURN_NONE;
    d->reserved += (unsigned long long)n * revive_unit(d);
    if (d->granted < d->revive_after && d->revive_after != ~0ULL)
        d->granted = d->revive_after;
    d->granted = d->granted + n < d->area->given ? d->granted + n : d->area->given;
    Py_RETURN_NONE;
}

/* starve_mark(at_enter) -> the mark of a connection that starves now: the
 * buffers given up to the enter that ended its request (at_enter), or up to now
 * (the engine found none free before arming it); re-armed only past it. */
static PyObject *
Dispatcher_starve_mark(Dispatcher *d, PyObject *args)
{
    int at_enter;
    if (!PyArg_ParseTuple(args, "p", &at_enter))
        return NULL;
    return PyLong_FromUnsignedLongLong(at_enter ? d->given_at_enter : d->area ? d->area->given : 0);
}

static int
Dispatcher_init(Dispatcher *d, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"area", "slots", "khead", "ktail", "mask", "cqes", "cqe_size", "copy",
                             "user", NULL};
    Area *area;
    PyObject *slots;
    unsigned long long khead, ktail, mask, cqes;
    unsigned int cqe_size, user = 0;
    int copy = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!O!KKKKI|pI", kwlist, &AreaType, &area,
                                     &PyList_Type, &slots, &khead, &ktail, &mask, &cqes,
                                     &cqe_size, &copy, &user))
        return -1;
    if (cqe_size != 16 && cqe_size != 32) {
        PyErr_SetString(PyExc_ValueError, "cqe_size must be 16 or 32");
        return -1;
    }
    if (d->ctl) {
        /* a pump or its views may be using what it points at */
        PyErr_SetString(PyExc_RuntimeError, "Dispatcher is initialised already");
        return -1;
    }
    if (!khead || !ktail || !cqes || (mask & (mask + 1))) {
        PyErr_SetString(PyExc_ValueError, "Dispatcher: null CQ address or a mask that is not 2^n - 1");
        return -1;
    }
    if (forked(area->fork_gen)) {
        raise_forked();
        return -1;
    }
    if (!area_user(area, user)) {
        PyErr_Format(PyExc_ValueError, "area user %u is not open", user);
        return -1;
    }
    if (!d->ctl) {
        /* a batch's worth from the start: a drain never waits for memory to
         * record what one batch says */
        if (!(d->ctl = PyMem_Malloc(2 * BATCH * sizeof(*d->ctl)))) {
            PyErr_NoMemory();
            return -1;
        }
        d->ctl_cap = 2 * BATCH;
    }
    d->fork_gen = fork_gen;
    d->user = user;
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
    d->max_view = DEFAULT_MAX_VIEW;
    d->evfd = -1;
    d->revive_after = ~0ULL;    /* nobody starved */
    return 0;
}

/* The generation of the connection on `slot` now (0: none), from the one
 * record of it, the area user's (area_bind_slot). */
static inline uint32_t
slot_gen(Dispatcher *d, uint32_t slot)
{
    AreaUser *u = d->area ? area_user(d->area, d->user) : NULL;
    return u && slot < u->held_cap ? u->slot_gen[slot] : 0;
}

static int
grow_slots(Dispatcher *d, uint32_t slot)
{
    if (slot >= MAX_SLOTS) {
        PyErr_Format(PyExc_ValueError, "slot %u out of range (< %u)", slot, MAX_SLOTS);
        return -1;
    }
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
    f = PyMem_Realloc(d->slot_idle, cap);
    if (!f) {
        PyErr_NoMemory();
        return -1;
    }
    memset(f + d->slot_cap, 0, cap - d->slot_cap);
    d->slot_idle = f;
    unsigned long long *seen = PyMem_Realloc(d->slot_seen, (size_t)cap * sizeof(*seen));
    if (!seen) {
        PyErr_NoMemory();
        return -1;
    }
    memset(seen + d->slot_cap, 0, (size_t)(cap - d->slot_cap) * sizeof(*seen));
    d->slot_seen = seen;
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

/* bind(slot[, gen]) -> gen: a new connection takes the slot, with the slot's
 * next generation (or `gen`, which the tests forge). Only completions carrying
 * that generation reach its sink from now on; its counters start at zero. */
static PyObject *
Dispatcher_bind(Dispatcher *d, PyObject *args)
{
    unsigned int slot, gen = 0;
    if (!PyArg_ParseTuple(args, "I|I", &slot, &gen))
        return NULL;
    if (!d->area) {
        PyErr_SetString(PyExc_RuntimeError, "dispatcher is closed");
        return NULL;
    }
    if (slot >= d->slot_cap && grow_slots(d, slot) < 0)
        return NULL;
    uint32_t bound = area_bind_slot(d->area, d->user, slot, gen);
    if (!bound)
        return NULL;
    d->slot_counts[2 * slot] = d->slot_counts[2 * slot + 1] = 0;
    d->slot_idle[slot] = 0;
    d->slot_seen[slot] = 0;
    return PyLong_FromUnsignedLong(bound);
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
    if (!(c->flags & AZX_CQE_F_BUFFER))
        return 0;
    uint32_t bid = c->flags >> AZX_CQE_BUFFER_SHIFT;
    if (bid >= a->nbufs || (uint32_t)c->res > a->buf_size)
        return 0;
    if (a->inc) {
        /* the piece starts where the kernel's last one in this buffer ended */
        uint32_t off = a->buf_used[bid];
        if (!a->buf_kernel[bid] || (uint64_t)off + (uint32_t)c->res > a->buf_size)
            return 0;
        a->buf_used[bid] = off + (uint32_t)c->res;
        *ptr = a->base + (size_t)bid * a->buf_size + off;
        *ident = bid;
        return 1;           /* still posted until a completion without BUF_MORE */
    }
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

/* The completion of the eventfd read pump_core() queued (see there). */
static void
evfd_read_done(Dispatcher *d, int32_t res)
{
    if (res == (int32_t)sizeof(uint64_t))
        d->evfd_sqe_reads++;
    else if (res == -EAGAIN)
        d->evfd_sqe_empty++;    /* the counter was zero: nothing to reset */
    else if (res != 0) {        /* 0: withdrawn, a NOP */
        /* this kernel will not read the eventfd for us: read(2) from now on. The
         * counter was left as it was, so the loop calls again and reads it. */
        d->evfd_sqe_errors++;
        d->evfd_sqe = 0;
    }
}

/* ------------------------------------------------- control records
 *
 * What a drain has for Python (ends of requests, errors, a sink's exception, a
 * connection over its share or out of memory, other completions) is kept in
 * d->ctl, in completion order, and handed over as one list by take_control():
 * under memory pressure nothing a completion said is lost, it waits (see the
 * Dispatcher struct). */

/* Makes room for `want` more records; returns how many fit (fewer only when
 * memory is short). */
static uint32_t
make_room(Dispatcher *d, uint32_t want)
{
    if (d->ctl_cap - d->nctl >= want)
        return want;
    uint32_t cap = d->ctl_cap * 2;
    while (cap - d->nctl < want)
        cap *= 2;
    struct ctl_rec *p = PyMem_Realloc(d->ctl, (size_t)cap * sizeof(*p));
    if (!p)
        return d->ctl_cap - d->nctl;    /* make do: the rest waits in the CQ */
    d->ctl = p;
    d->ctl_cap = cap;
    return want;
}

/* Records one control record (room was made for it: never fails). `exc` is
 * stolen. */
static inline void
push_control(Dispatcher *d, uint64_t ud, int32_t res, uint32_t flags, PyObject *exc)
{
    struct ctl_rec *r = &d->ctl[d->nctl++];
    r->ud = ud;
    r->res = res;
    r->flags = flags;
    r->exc = exc;
}

/* The records kept so far as a list of (user_data, res, flags, exception or
 * None), or None if there are none; the records stay kept until
 * control_handed() says the list reached its taker. NULL with MemoryError set
 * (every record still kept). */
static PyObject *
control_list(Dispatcher *d)
{
    if (!d->nctl)
        Py_RETURN_NONE;
    PyObject *list = PyList_New(d->nctl);
    if (!list)
        return NULL;
    for (uint32_t i = 0; i < d->nctl; i++) {
        struct ctl_rec *r = &d->ctl[i];
        PyObject *t = Py_BuildValue("(KiIO)", (unsigned long long)r->ud, r->res, r->flags,
                                    r->exc ? r->exc : Py_None);
        if (!t) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, t);
    }
    return list;
}

static void
control_handed(Dispatcher *d)
{
    for (uint32_t i = 0; i < d->nctl; i++)
        Py_CLEAR(d->ctl[i].exc);
    d->nctl = 0;
}

/* (completions, control list or None[, state]) for whoever takes the records:
 * they are forgotten only once this tuple exists. NULL: out of memory, every
 * record kept for the next try. */
static PyObject *
control_result(Dispatcher *d, unsigned long long n, int with_state, int state)
{
    PyObject *control = control_list(d);
    if (!control)
        return NULL;
    PyObject *r = with_state ? Py_BuildValue("(KOi)", n, control, state)
                             : Py_BuildValue("(KO)", n, control);
    Py_DECREF(control);
    if (r)
        control_handed(d);
    return r;
}

/* Records kept, or completions left in the CQ, that could not go to Python for
 * want of memory: the loop calls on_wake again (the eventfd is ours to signal),
 * and they go then. No memory needed for that, and nothing is lost meanwhile. */
static void
come_back(Dispatcher *d)
{
    if ((d->nctl || d->stalled) && !d->halted && d->evfd >= 0) {
        d->nomem_stalls++;
        wake(d->evfd);
    }
}

/* The slot gets nothing more (a raised sink, a delivery that could not be made). */
static void
drop_sink(Dispatcher *d, uint32_t slot)
{
    if (d->slots && slot < (uint32_t)PyList_GET_SIZE(d->slots)) {
        Py_INCREF(Py_None);
        PyList_SetItem(d->slots, slot, Py_None);
    }
}

/* A sink raised: as asyncio, nothing more is delivered to it (its slot loses the
 * sink) and the exception goes to Python in a control record carrying F_MORE, so
 * that it only reports it. Reported even when halted (Receiver.close() in the same
 * callback): asyncio reports it whatever the callback did. */
static void
sink_failed(Dispatcher *d, uint32_t slot, uint64_t ud, int32_t res, uint32_t flags)
{
    PyObject *exc = fetch_exception();
    drop_sink(d, slot);
    push_control(d, ud, res, flags | AZX_CQE_F_MORE, exc);
}

/* A delivery could not be made for want of memory (its view, its bytes): the
 * buffer has gone back, so the connection has lost bytes. It gets nothing more,
 * and Python hears of it (UD_KIND_NOMEM, carrying F_MORE: the request itself
 * goes on until the engine stops it) and ends it with ENOMEM. */
static void
delivery_failed(Dispatcher *d, uint32_t slot, uint64_t ud)
{
    PyErr_Clear();
    d->nomem_failures++;
    drop_sink(d, slot);
    if (!d->halted)
        push_control(d, UD_WITH_KIND(ud, UD_KIND_NOMEM), -ENOMEM,
                     AZX_CQE_F_MORE, NULL);
}

/* The round is over: `spare`'s buffer goes back, and the view itself is kept for
 * the next round when nobody else can see it (otherwise it is simply released). */
static void
park_view(Dispatcher *d, PyObject *spare)
{
#if VIEW_REUSE
    Lease *l;
    if (spare && d->reuse_views && !d->halted && (l = reusable_lease(spare)) && l->area == d->area) {
        empty_view(spare, l);
        Py_XSETREF(d->parked, spare);
        return;
    }
#endif
    Py_XDECREF(spare);
}

/* ------------------------------------------------------------- drain
 *
 * drain() takes completions from the CQ a batch at a time (take_batch) and deals
 * with each: a data completion (data_completion) is gathered with the ones that
 * continue it into one delivery (gather_run), counted for its slot
 * (account_slot) and delivered (deliver: straight back, bytes, or a view);
 * anything else becomes a control record (other_completion). */

/* One delivery: a run of data completions of one request, delivered as one. */
typedef struct {
    uint64_t ud;
    uint32_t slot;
    char *ptr;
    uint64_t ident;
    int32_t res;        /* bytes, all pieces */
    uint32_t flags;     /* the last piece's: the delivery's */
    uint32_t pieces;    /* completions in it */
    uint32_t niovs;     /* buffers its view holds: zcrx, one per piece; else 1 */
    int unknown;        /* a kind we never issue */
} delivery;

/* Takes up to BATCH completions from the CQ into `batch` and frees their CQ slots
 * for the kernel before any Python code runs. Returns how many (0: the CQ is
 * empty, or there is no memory to record what they say: d->stalled). */
static inline uint32_t
take_batch(Dispatcher *d, cqe_rec *batch, unsigned long long *n)
{
    uint32_t head = *d->khead;
    uint32_t tail = LOAD_ACQ32(d->ktail);
    uint32_t cnt = tail - head;
    if (!cnt)
        return 0;
    if (cnt > BATCH)
        cnt = BATCH;
    /* a CQE makes two records at most: room for them before it leaves the CQ */
    uint32_t room = make_room(d, 2 * cnt) / 2;
    if (room < cnt)
        cnt = room;
    if (!cnt) {
        d->stalled = 1;     /* no memory for more records: the rest waits in the CQ */
        d->nomem_stalls++;
        return 0;
    }
    for (uint32_t i = 0; i < cnt; i++) {
        const struct azx_cqe *c = (const struct azx_cqe *)
            (d->cqes + ((size_t)((head + i) & d->mask) << d->cqe_shift));
        batch[i].ud = c->user_data;
        batch[i].res = c->res;
        batch[i].flags = c->flags;
        batch[i].zc_off = d->cqe_shift == 5 ? ((const struct azx_zcrx_cqe *)c->big_cqe)->off : 0;
    }
    STORE_REL32(d->khead, head + cnt);
    *n += cnt;
    return cnt;
}

/* The piece `nx` joins delivery `dl` (its buffer accounting done by the caller). */
static inline void
join_piece(Dispatcher *d, delivery *dl, const cqe_rec *nx)
{
    dl->res += nx->res;
    dl->flags = nx->flags;
    dl->pieces++;
    d->completions++;
    d->bytes += (unsigned long long)nx->res;
    d->merged++;
}

/* Incremental pbuf: pieces that follow on in the same buffer for the same
 * request are one delivery, one view over all of them. A piece that ends the
 * request (no F_MORE) or the buffer (no BUF_MORE) closes the run; its flags are
 * the delivery's. */
static inline void
merge_pbuf_run(Dispatcher *d, const cqe_rec *batch, uint32_t cnt, uint32_t *i, delivery *dl)
{
    Area *a = d->area;
    while (*i + 1 < cnt) {
        const cqe_rec *nx = &batch[*i + 1];
        uint32_t end = a->buf_used[dl->ident];
        if (nx->ud != dl->ud || nx->res <= 0 || !(dl->flags & AZX_CQE_F_MORE) ||
            !(dl->flags & AZX_CQE_F_BUF_MORE) || !(nx->flags & AZX_CQE_F_BUFFER) ||
            (nx->flags >> AZX_CQE_BUFFER_SHIFT) != dl->ident ||
            (uint64_t)end + (uint32_t)nx->res > a->buf_size ||
            (uint64_t)dl->res + (uint32_t)nx->res > d->max_view ||
            dl->ptr + dl->res != a->base + (size_t)dl->ident * a->buf_size + end)
            break;
        a->buf_used[dl->ident] = end + (uint32_t)nx->res;
        join_piece(d, dl, nx);
        (*i)++;
    }
}

/* zcrx: the completions right after this one that continue it in the area are
 * one delivery, one view (a merged view): same request (user_data), the earlier
 * says more follows (F_MORE), the next starts where it ended, the earlier ends
 * on a niov boundary, each lies within one niov, and the whole stays within
 * max_view. The kernel posts one completion per niov at most and never two of
 * one request across a niov without ending the first at its end, so a merged
 * view covers one niov per completion, and its release gives each back once
 * (area_return_span). The refill order (area.c, rq_order_descending) makes such
 * runs likely. */
static inline void
merge_zcrx_run(Dispatcher *d, const cqe_rec *batch, uint32_t cnt, uint32_t *i, delivery *dl)
{
    Area *a = d->area;
    uint64_t niov_mask = (uint64_t)a->buf_size - 1;
    if ((dl->ident & niov_mask) + (uint32_t)dl->res > a->buf_size)
        return;             /* a completion over a niov boundary: never merged */
    while (*i + 1 < cnt) {
        const cqe_rec *nx = &batch[*i + 1];
        uint64_t end = dl->ident + (uint32_t)dl->res;
        if (nx->ud != dl->ud || nx->res <= 0 || !(dl->flags & AZX_CQE_F_MORE) ||
            (end & niov_mask) || (nx->zc_off & ZCRX_OFF_MASK) != end ||
            (uint32_t)nx->res > a->buf_size || end + (uint32_t)nx->res > a->len ||
            (uint64_t)dl->res + (uint32_t)nx->res > d->max_view)
            break;
        join_piece(d, dl, nx);
        dl->niovs++;
        (*i)++;
    }
}

/* Whether views gather several completions: max_view above a page (0, or up to a
 * page: one view per completion). */
static inline int
merging(Dispatcher *d)
{
    return d->max_view > page_bytes;
}

/* The data completion batch[*i] and those that continue it, as one delivery;
 * *i ends at its last piece. */
static inline void
gather_run(Dispatcher *d, const cqe_rec *batch, uint32_t cnt, uint32_t *i, int unknown,
           char *ptr, uint64_t ident, delivery *dl)
{
    const cqe_rec *c = &batch[*i];
    dl->ud = c->ud;
    dl->slot = UD_SLOT(c->ud);
    dl->ptr = ptr;
    dl->ident = ident;
    dl->res = c->res;
    dl->flags = c->flags;
    dl->pieces = dl->niovs = 1;
    dl->unknown = unknown;
    d->completions++;
    d->bytes += (unsigned long long)c->res;
    if (unknown)
        return;
    if (!merging(d))
        return;
    if (d->area->inc)
        merge_pbuf_run(d, batch, cnt, i, dl);
    else if (d->area->kind == KIND_ZCRX)
        merge_zcrx_run(d, batch, cnt, i, dl);
}

/* The delivery's sink, counting it for its slot: only the connection the request
 * was issued for, and only while it takes data. NULL or None: a slot reused by
 * another connection, a sink dropped by close()/abort()/an exception, or a halt
 * (the buffers go straight back). Borrowed. */
static inline PyObject *
account_slot(Dispatcher *d, const delivery *dl)
{
    uint32_t slot = dl->slot;
    if (dl->unknown || d->halted || slot >= d->slot_cap || slot_gen(d, slot) != UD_GEN(dl->ud))
        return NULL;
    d->slot_counts[2 * slot] += dl->pieces;
    d->slot_counts[2 * slot + 1] += (unsigned long long)dl->res;
    if (!(d->slot_active[slot] & 1)) {
        d->slot_active[slot] |= 1;
        d->active[d->nactive++] = slot;
    }
    if (d->slots && slot < (uint32_t)PyList_GET_SIZE(d->slots))
        return PyList_GET_ITEM(d->slots, slot);
    return NULL;
}

/* The delivery's buffers go straight back to the kernel (no view over them). */
static inline void
give_back_now(Area *a, const delivery *dl)
{
    area_take_n(a, dl->ident, dl->niovs);
    area_return_span(a, dl->ident, (uint32_t)dl->res, dl->niovs);
}

/* A protocol that takes bytes: copy, give the buffers back, call. */
static inline void
deliver_to_copy_sink(Dispatcher *d, CopySink *s, const delivery *dl, PyObject **spare)
{
    PyObject *b = copysink_copy(s, dl->ptr, dl->res);
    give_back_now(d->area, dl);
    if (!b) {
        delivery_failed(d, dl->slot, dl->ud);
        return;
    }
    Py_INCREF(s);
    PyObject *r = s->data_received ? copysink_deliver(s, b) : NULL;
    if (!r && !s->data_received)
        PyErr_SetString(PyExc_RuntimeError, "CopySink is not initialised");
    Py_DECREF(s);
    Py_DECREF(b);
    if (r) {
        Py_DECREF(r);
    } else {
        Py_CLEAR(*spare);
        sink_failed(d, dl->slot, dl->ud, dl->res, dl->flags);
    }
}

/* The view (or bytes) a view sink gets for the delivery, the round's spare view
 * reused where nobody else can see it; NULL: no memory (the buffers are back).
 * *copied: bytes were made (Receiver(copy=True), or over its share with
 * over_share="copy"). */
static inline PyObject *
make_delivery_view(Dispatcher *d, const delivery *dl, PyObject **spare, int *copied)
{
    Area *a = d->area;
    uint32_t gen = UD_GEN(dl->ud);
    AreaUser *cu = d->share_copy ? conn_of(a, d->user, dl->slot, gen) : NULL;
    int over = cu && cu->share && (cu->over[dl->slot] & OVER_SHARE);
    *copied = d->copy || over;
    if (*copied) {
        PyObject *b = PyBytes_FromStringAndSize(dl->ptr, dl->res);
        give_back_now(a, dl);
        if (over) {
            d->share_copies++;
            d->share_copied_bytes += (unsigned long long)dl->res;
        }
        return b;
    }
#if VIEW_REUSE
    Lease *l;
    if (*spare && d->reuse_views && (l = reusable_lease(*spare))) {
        retarget_view(*spare, l, dl->ptr, dl->res, dl->ident, dl->niovs, d->user, dl->slot, gen);
        PyObject *v = *spare;
        *spare = NULL;
        d->reused_views++;
        return v;
    }
#endif
    Py_CLEAR(*spare);
    return make_view(a, dl->ptr, dl->res, dl->ident, dl->niovs, d->user, dl->slot, gen);
}

/* Fair share: the views this connection still holds after its callback returned
 * (in buffers: a merged view counts each niov) reached its share. Said once (the
 * engine stops its request, or copies); said again only after it came back under
 * (area_unhold). */
static inline void
check_share(Dispatcher *d, const delivery *dl)
{
    AreaUser *u = conn_of(d->area, d->user, dl->slot, UD_GEN(dl->ud));
    if (u && u->share && u->held[dl->slot] >= u->share &&
        !(u->over[dl->slot] & OVER_SHARE) && !d->halted) {
        u->over[dl->slot] |= OVER_SHARE;
        uint64_t ud = (dl->ud & ~(0xffULL << 32)) | ((uint64_t)UD_KIND_OVER_SHARE << 32);
        push_control(d, ud, (int32_t)u->held[dl->slot], AZX_CQE_F_MORE, NULL);
    }
}

/* A sink that takes views: one data_received(view) call. */
static inline void
deliver_view(Dispatcher *d, PyObject *cb, const delivery *dl, PyObject **spare)
{
    int copied;
    PyObject *view = make_delivery_view(d, dl, spare, &copied);
    if (!view) {
        /* make_view gave the buffers back (its lease's dealloc) */
        delivery_failed(d, dl->slot, dl->ud);
        return;
    }
    Py_INCREF(cb);
    PyObject *r = PyObject_CallOneArg(cb, view);
    Py_DECREF(cb);
    if (VIEW_REUSE && d->reuse_views && !copied)
        *spare = view;      /* released at the next delivery or by park_view */
    else
        Py_DECREF(view);
    if (r) {
        Py_DECREF(r);
        check_share(d, dl);
    } else {
        /* As asyncio: after a protocol callback raised, nothing more is delivered
         * to it. The rest of this round's completions for the slot find no sink;
         * the transport closes (Python, from the control record, which carries
         * F_MORE so that it only reports the exception). */
        Py_CLEAR(*spare);   /* the view may be in the traceback */
        sink_failed(d, dl->slot, dl->ud, dl->res, dl->flags);
    }
}

/* A data completion (and those gathered with it): delivered, or its buffers
 * back; the end of its request (no F_MORE) is a control record. */
static inline void
data_completion(Dispatcher *d, const cqe_rec *batch, uint32_t cnt, uint32_t *i, int unknown,
                char *ptr, uint64_t ident, PyObject **spare)
{
    Area *a = d->area;
    delivery dl;
    gather_run(d, batch, cnt, i, unknown, ptr, ident, &dl);
    PyObject *cb = account_slot(d, &dl);
    if (cb == NULL || cb == Py_None) {
        /* connection gone, stopped, or another's: straight back to the kernel */
        give_back_now(a, &dl);
        d->dropped++;
        d->dropped_bytes += (unsigned long long)dl.res;
    } else if (Py_IS_TYPE(cb, &CopySinkType)) {
        deliver_to_copy_sink(d, (CopySink *)cb, &dl, spare);
    } else {
        deliver_view(d, cb, &dl, spare);
    }
    if (a->inc && !(dl.flags & AZX_CQE_F_BUF_MORE))
        pbuf_kernel_done(a, (uint32_t)dl.ident);  /* after the view took its piece */
    if (!(dl.flags & AZX_CQE_F_MORE) && !d->halted && !unknown)
        push_control(d, dl.ud, dl.res, dl.flags, NULL);
}

/* A completion that delivers no data: buffer bookkeeping, then a control record. */
static inline void
other_completion(Dispatcher *d, const cqe_rec *c, int is_recv, int unknown)
{
    Area *a = d->area;
    char *ptr;
    uint64_t ident;
    if (is_recv && a->kind == KIND_PBUF && (c->flags & AZX_CQE_F_BUFFER) && a->inc) {
        /* a completion with no data in an incremental buffer: done with it
         * unless the kernel says it goes on */
        uint32_t bid = c->flags >> AZX_CQE_BUFFER_SHIFT;
        if (bid < a->nbufs && !(c->flags & AZX_CQE_F_BUF_MORE))
            pbuf_kernel_done(a, bid);
    } else if (is_recv && a->kind == KIND_PBUF && (c->flags & AZX_CQE_F_BUFFER) &&
               cqe_buffer(a, c, &ptr, &ident)) {
        /* a buffer picked for a completion that carries no data */
        area_take(a, ident);
        area_return(a, ident, 0);
    }
    if (is_recv && a->kind == KIND_PBUF && c->res == -ENOBUFS && a->window < a->nbufs) {
        /* the kernel ran through the posted window within one round: widen it */
        a->window = a->window * 2 > a->nbufs ? a->nbufs : a->window * 2;
        a->window_grows++;
    }
    if (!d->halted && !unknown)
        push_control(d, c->ud, c->res, c->flags, NULL);
}

/* Drains the CQ: data completions for a live slot become slot_callback(view);
 * everything else (errors, EOF, ends of multishot requests, other ops, callback
 * exceptions) becomes a control record (push_control), in completion order. Adds
 * the number of CQEs seen to *n. Every CQE taken from the CQ is dealt with, out
 * of memory or not: a delivery that cannot be made fails its connection
 * (delivery_failed), never the rest of the batch. */
static void
drain(Dispatcher *d, unsigned long long *n)
{
    cqe_rec batch[BATCH];
    PyObject *spare = d->parked;  /* the last view handed out, if we hold its only reference */
    uint32_t cnt;

    d->parked = NULL;
    d->stalled = 0;
    while ((cnt = take_batch(d, batch, n))) {
        for (uint32_t i = 0; i < cnt; i++) {
            const cqe_rec *c = &batch[i];
            uint32_t kind = UD_KIND(c->ud);
            if (kind == UD_KIND_EVFD) {
                evfd_read_done(d, c->res);
                (*n)--;         /* ours: not a completion anybody waits for */
                continue;
            }
            /* A kind we never issue (a bug, or an SQE that is not ours): counted
             * (stats()["unknown_completions"]), delivered to nobody, not handed to
             * the engine; a buffer it carries goes back to the kernel, as a
             * receive's for a connection that is gone (the area's buffers are
             * handed out only by our receives). */
            int unknown = kind != UD_KIND_RECV && kind != UD_KIND_CANCEL &&
                          kind != UD_KIND_NOTIF && kind != UD_KIND_NOP;
            if (unknown)
                d->unknown++;
            int is_recv = kind == UD_KIND_RECV || unknown;
            char *ptr;
            uint64_t ident;
            if (is_recv && c->res > 0 && cqe_buffer(d->area, c, &ptr, &ident))
                data_completion(d, batch, cnt, &i, unknown, ptr, ident, &spare);
            else
                other_completion(d, c, is_recv, unknown);
        }
    }
    park_view(d, spare);  /* its buffer goes back before the round's refill publish */
}

/* pump() and run() call into Python (the sinks), and Python could call them
 * again; a nested drain would hand out CQEs the outer one already counted.
 * The engines never nest them (engines/ring.py), and this keeps it so. */
static int
enter_busy(Dispatcher *d)
{
    if (forked(d->fork_gen)) {
        raise_forked();
        return -1;
    }
    if (!d->area) {
        PyErr_SetString(PyExc_RuntimeError, "dispatcher is closed");
        return -1;
    }
    if (d->busy) {
        PyErr_SetString(PyExc_RuntimeError, "dispatcher re-entered from one of its own callbacks");
        return -1;
    }
    d->busy = 1;
    return 0;
}

/* run() -> (completions, control list or None): one drain, no syscalls. */
static PyObject *
Dispatcher_run(Dispatcher *d, PyObject *Py_UNUSED(ignored))
{
    if (enter_busy(d) < 0)
        return NULL;
    unsigned long long n = 0;
    drain(d, &n);
    d->busy = 0;
    return control_result(d, n, 0, 0);
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

/* PUMP_IDLE, PUMP_PENDING, PUMP_BUSY: protocol.h */
#define PUMP_ROUNDS 64
/* Completions one pump may deliver before it lets the loop's other callbacks run
 * (PUMP_BUSY: the engine continues with a call_soon). Without it a sender that
 * never lets the area run dry (a NIC queue with a large area) kept one wake-up
 * going for 64 full rounds: seconds of a blocked loop in the guest. */
#define PUMP_BUDGET 1024

/* What the eventfd read lands in: nobody looks at the value. One static word for
 * every dispatcher, so that no kernel write can ever find freed memory. */
static uint64_t evfd_sink;

/* bind_eventfd(fd, prep_read, withdraw, user_data): the ring's eventfd, and the
 * two cffi functions (aiozcrx/_c/queue.c) that queue a never-waiting read of
 * it and take that read back if no io_uring_enter consumed it. prep_read 0: the
 * kernel has no IORING_OP_READ, read(2) it is. */
static PyObject *
Dispatcher_bind_eventfd(Dispatcher *d, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"fd", "prep_read", "withdraw", "user_data", NULL};
    int fd;
    unsigned long long prep_read, withdraw, ud;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iKKK", kwlist, &fd, &prep_read, &withdraw, &ud))
        return NULL;
    d->evfd = fd;
    d->prep_read = (int (*)(void *, int, uintptr_t, uint32_t, uint64_t, uint32_t *))(uintptr_t)prep_read;
    d->withdraw = (int (*)(void *, uint32_t))(uintptr_t)withdraw;
    d->evfd_ud = ud;
    d->evfd_sqe = prep_read && withdraw;
    Py_RETURN_NONE;
}

static void
evfd_read_now(Dispatcher *d, int fd)
{
    uint64_t v;
    unsigned long long c0 = d->timing ? thread_cpu_ns() : 0;
    d->evfd_syscalls++;
    if (read(fd, &v, sizeof v) < 0) {
        /* EAGAIN: already consumed; nothing else is expected */
    }
    if (d->timing)
        d->area->syscall_cpu_ns += thread_cpu_ns() - c0;
}

/* The wake-up's eventfd reset (see pump_core): queued as a read SQE that rides
 * in the first enter (1, its SQ position in *pos), or done now with read(2) (0:
 * the SQ is full, the kernel has no IORING_OP_READ, or no eventfd is bound). */
static inline int
reset_eventfd_begin(Dispatcher *d, int fd, uint32_t *pos)
{
    d->wakeups++;
    if (fd < 0)
        return 0;           /* no eventfd bound: nothing to reset */
    if (d->evfd_sqe && fd == d->evfd &&
        d->prep_read(d->ring, fd, (uintptr_t)&evfd_sink, sizeof evfd_sink, d->evfd_ud, pos) == 0)
        return 1;
    evfd_read_now(d, fd);
    return 0;
}

/* One io_uring_enter (submit + run deferred task work) with the eventfd
 * switched off; a queued eventfd read the enter did not take is withdrawn and
 * done with read(2). Returns the enter's result. */
static inline int
enter_round(Dispatcher *d, int fd, int *read_queued, uint32_t read_pos)
{
    Area *a = d->area;
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
    /* what was queued is submitted: re-arms from here on see the kernel as it is */
    d->given_at_enter = a->given;
    d->reserved = 0;
    if (*read_queued) {
        *read_queued = 0;
        if (d->withdraw(d->ring, read_pos)) {
            /* the enter took no SQE: read(2) now, before the next enter */
            d->evfd_withdrawn++;
            evfd_read_now(d, fd);
        }
    }
    return ret;
}

static inline void
eventfd_back_on(Dispatcher *d)
{
    if (d->evfd_disabled_bit)
        __atomic_fetch_and(d->cq_flags, ~d->evfd_disabled_bit, __ATOMIC_SEQ_CST);
}

/* drain + the round's refill publish (timed for the benchmarks); the CQEs seen. */
static inline unsigned long long
drain_and_publish(Dispatcher *d)
{
    unsigned long long n = 0;
    struct timespec t0, t1;
    if (d->timing)
        clock_gettime(CLOCK_MONOTONIC, &t0);
    drain(d, &n);
    area_publish(d->area, 0);
    if (d->timing) {
        clock_gettime(CLOCK_MONOTONIC, &t1);
        d->dispatch_ns += (unsigned long long)((t1.tv_sec - t0.tv_sec) * 1000000000LL +
                                               (t1.tv_nsec - t0.tv_nsec));
    }
    return n;
}

/* After a round that saw n CQEs (total so far): ROUND_AGAIN, or the state the
 * pump ends in. */
enum { ROUND_AGAIN = -1 };
static inline int
round_verdict(Dispatcher *d, unsigned long long n, unsigned long long total)
{
    int sq_pending = d->sq_space(d->ring) < d->sq_entries;
    if (d->stalled)
        return PUMP_BUSY;       /* the engine comes back for the rest */
    if (d->nctl)
        return PUMP_IDLE;       /* the caller comes back */
    if (total >= PUMP_BUDGET)
        return PUMP_BUSY;       /* the rest after the loop's other callbacks */
    if (sq_pending)
        return ROUND_AGAIN;
    if (!d->pending_mask)
        /* cannot tell whether work is left (no TASKRUN_FLAG): go on while there is progress */
        return n ? ROUND_AGAIN : PUMP_IDLE;
    if (!(__atomic_load_n(d->sq_flags, __ATOMIC_SEQ_CST) & d->pending_mask))
        return PUMP_IDLE;
    /* flagged, but an enter found nothing: the flag can lag; a timer looks again */
    return n ? ROUND_AGAIN : PUMP_PENDING;
}

/* One wake-up's work (wake: called because the eventfd was readable), or another
 * round after Python handled a control list (wake 0): rounds of io_uring_enter
 * (submit + run deferred task work) -> drain -> publish refills, until the kernel
 * has nothing more for us.
 *
 * The eventfd. A wake-up must reset its counter *before* the task work that
 * posts completions runs: a signal that comes after the reset is then kept for
 * the next wake-up, and none is lost. read(2) then io_uring_enter does that in
 * two syscalls. Here the read travels as an SQE in the enter itself: io_uring
 * issues SQEs before it runs task work, and a read with RWF_NOWAIT completes at
 * once (8 bytes, counter reset; or -EAGAIN if it was already zero), so it is
 * never left armed in the kernel where a later enter could reset the counter
 * behind our back. If the enter consumed no SQE (it failed first), the read is
 * withdrawn (turned into a NOP) and read(2) does the job, as before. The read's
 * completion is ours (UD_KIND_EVFD): drain() counts it and moves on.
 *
 * While we work, the ring's eventfd is switched off (IORING_CQ_EVENTFD_DISABLED):
 * the kernel signals it for every batch of CQEs it posts, even those posted inside
 * our own enter, and each such signal is a wake-up that finds nothing. Once it is
 * back on, IORING_SQ_TASKRUN tells whether work arrived meanwhile (the kernel sets
 * it before it would have signalled): then we go round again.
 *
 * *statep: PUMP_IDLE (the eventfd will tell us of new work), PUMP_PENDING (the
 * kernel says work is queued but an enter found none: look again later),
 * PUMP_BUSY (the round limit was reached: continue after other callbacks).
 * Returns early whenever there is something for Python to decide: control
 * records kept (d->nctl, see push_control), or a CQ that waits for memory to
 * record what it says (d->stalled: PUMP_BUSY, so that the engine comes back).
 * 0, or -1 with an exception set. */
static int
pump_core(Dispatcher *d, int wake, int fd, unsigned long long *totalp, int *statep)
{
    unsigned long long total = 0;
    int state = PUMP_BUSY;      /* the round limit reached: continue after other callbacks */
    int read_queued = 0;
    uint32_t read_pos = 0;

    *totalp = 0;
    *statep = PUMP_IDLE;
    if (d->halted)
        return 0;
    if (wake)
        read_queued = reset_eventfd_begin(d, fd, &read_pos);
    for (int round = 0; round < PUMP_ROUNDS; round++) {
        int ret = enter_round(d, fd, &read_queued, read_pos);
        if (ret < 0 && ret != -EAGAIN && ret != -EBUSY) {
            /* EAGAIN/EBUSY: CQ overflow backlog, retried next round */
            eventfd_back_on(d);
            errno = -ret;
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        unsigned long long n = drain_and_publish(d);
        eventfd_back_on(d);
        total += n;
        if (d->halted) {
            /* a callback closed the engine: return to it at once (with a
             * callback's exception, if any, in control); the ring stays mapped
             * until the engine tears it down after we return */
            state = PUMP_IDLE;
            break;
        }
        if (wake && round == 0 && n == 0)
            d->idle_wakeups++;
        int verdict = round_verdict(d, n, total);
        if (verdict != ROUND_AGAIN) {
            state = verdict;
            break;
        }
    }
    *totalp = total;
    *statep = state;
    return 0;
}

/* pump(eventfd) -> (completions, control list or None, state)
 *
 * pump_core() for Python: eventfd >= 0 for a wake-up (the eventfd is read
 * first), -1 for another round (a kick, a timer, after a control list). The
 * caller handles the control list and calls pump(-1) again. */
static PyObject *
pump_impl(Dispatcher *d, PyObject *arg)
{
    long evfd = PyLong_AsLong(arg);
    if (evfd == -1 && PyErr_Occurred())
        return NULL;
    if (!d->ring) {
        PyErr_SetString(PyExc_RuntimeError, "pump: no ring bound");
        return NULL;
    }
    unsigned long long total;
    int state;
    if (pump_core(d, evfd >= 0, (int)evfd, &total, &state) < 0)
        return NULL;
    PyObject *r = control_result(d, total, 1, state);
    if (!r)
        come_back(d);
    return r;
}

static PyObject *
Dispatcher_pump(Dispatcher *d, PyObject *arg)
{
    if (enter_busy(d) < 0)
        return NULL;
    PyObject *r = pump_impl(d, arg);
    d->busy = 0;
    return r;
}

/* Whether a wake-up that delivered only data still needs the engine's Python:
 * connections starved of buffers can be re-armed (the engine says it has some;
 * a buffer was handed to the kernel since the longest-waiting one starved and
 * the kernel has one for it: revive_budget), or a connection stopped over
 * its fair share came back under it (the engine has some; Area.take_back() has
 * slots). */
static inline int
needs_slow_path(Dispatcher *d)
{
    Area *a = d->area;
    AreaUser *u;
    return (d->revive_wanted && revive_budget(d)) ||
        (d->unthrottle_wanted && (u = area_user(a, d->user)) && u->nback);
}

/* on_wake(): the loop's reader callback for the ring's eventfd, in C, so that a
 * wake-up with nothing but data to deliver runs no Python frame of ours: it
 * pumps (pump_core), flushes a NODEV refill ring (the kernel takes refills from
 * it only when told), and returns. It calls the engine's slow path,
 * slow_path(completions, control list or None, state), only when there is
 * something to decide: a control list (ends of requests, errors, a sink's
 * exception, notifications, over-share records), state BUSY (a kick to schedule)
 * or PENDING (a timer to schedule, unless the engine has a pump coming already:
 * recheck_pending), starved or throttled connections to bring back
 * (needs_slow_path), a halt (the engine was closed from inside a callback: its
 * deferred teardown runs in the slow path, after the pump has returned), or an
 * error while halted. busy is clear while the slow path runs: it pumps again
 * (pump(-1)) and may close the dispatcher.
 *
 * kick(): the same without a wake-up (no eventfd read), for the engine's kicks
 * (requests queued) and timers.
 *
 * A call while a pump or the slow path is running (a callback re-entered the
 * loop) does nothing: the outer one goes on. */
enum { WAKE_KICK = 0, WAKE_EVENTFD = 1, WAKE_SOCKET = 2 };

static PyObject *call_slow_path(Dispatcher *d, unsigned long long total, int state, int bad);

static PyObject *
wake_impl(Dispatcher *d, int source)
{
    if (forked(d->fork_gen))
        return raise_forked();
    if (d->busy || d->in_slow || !d->ring || !d->area)
        Py_RETURN_NONE;
    unsigned long long total;
    int state;
    int wake = source == WAKE_EVENTFD;
    d->busy = 1;
    int bad = pump_core(d, wake, wake ? d->evfd : -1, &total, &state);
    if (!bad)
        *(source == WAKE_EVENTFD ? &d->found_eventfd :
          source == WAKE_SOCKET ? &d->found_socket : &d->found_kick) += total;
    /* PENDING needs a timer, unless a pump is coming anyway */
    int idle = state == PUMP_IDLE || (state == PUMP_PENDING && d->recheck_pending);
    if (!bad && !d->nctl && idle && !d->halted && !needs_slow_path(d)) {
        if (d->area->kind == KIND_ZCRX && d->area->nodev)
            /* the round's publishes flushed what passed the threshold; what is
             * left waits for more, unless the kernel's share of the area is low
             * (see area_publish). One FLUSH_RQ syscall per wake-up was the
             * zcrx-copy wake-up's third syscall. */
            area_publish(d->area, 0);
        d->busy = 0;
        Py_RETURN_NONE;
    }
    d->busy = 0;
    if (bad && !d->halted)
        return NULL;            /* as the Python pump did: the error goes to the loop */
    return call_slow_path(d, total, state, bad);
}

/* slow_path(completions, control list or None, state), the list made of the
 * records kept (they go once the arguments exist; out of memory before that,
 * they stay, and come_back() makes sure the loop calls again). The pump's error
 * (bad) is kept across it unless the slow path raises its own. */
static PyObject *
call_slow_path(Dispatcher *d, unsigned long long total, int state, int bad)
{
    PyObject *cb = d->slow_path;
    if (!cb) {
        if (bad)
            return NULL;
        PyErr_SetString(PyExc_RuntimeError, "on_wake: no slow path set (set_slow_path)");
        return NULL;
    }
    /* halted with an error: the teardown runs all the same, and the error is kept */
    PyObject *etype = NULL, *evalue = NULL, *etb = NULL;
    if (bad)
        PyErr_Fetch(&etype, &evalue, &etb);
    PyObject *args = control_result(d, total, 1, state);
    if (!args) {
        come_back(d);
        if (bad) {
            /* the pump's own error is the one to report */
            PyErr_Clear();
            PyErr_Restore(etype, evalue, etb);
        }
        return NULL;
    }
    d->slow_calls++;
    d->in_slow = 1;
    Py_INCREF(cb);
    PyObject *r = PyObject_Call(cb, args, NULL);
    Py_DECREF(args);
    Py_DECREF(cb);
    d->in_slow = 0;
    if (bad) {
        if (r) {
            Py_DECREF(r);
            PyErr_Restore(etype, evalue, etb);
        } else {
            /* the slow path's own error wins; the pump's is dropped with it */
            Py_XDECREF(etype);
            Py_XDECREF(evalue);
            Py_XDECREF(etb);
        }
        return NULL;
    }
    if (!r)
        return NULL;
    Py_DECREF(r);
    Py_RETURN_NONE;
}

static PyObject *
Dispatcher_on_wake(Dispatcher *d, PyObject *Py_UNUSED(ignored))
{
    Py_INCREF(d);   /* the slow path's teardown removes the loop's reader, and its reference */
    PyObject *r = wake_impl(d, WAKE_EVENTFD);
    Py_DECREF(d);
    return r;
}

static PyObject *
Dispatcher_kick(Dispatcher *d, PyObject *Py_UNUSED(ignored))
{
    Py_INCREF(d);
    PyObject *r = wake_impl(d, WAKE_KICK);
    Py_DECREF(d);
    return r;
}

/* Socket wake-ups in a row that delivered a slot nothing before the engine hears
 * of it. One or two happen when the socket's readiness reaches the loop before
 * io_uring has queued the task work of the same wake-up (both hang on the
 * socket's wait queue); level-triggered readiness then wakes us again. */
#define SOCKET_IDLE_LIMIT 4

/* socket_wake(slot): the loop's reader for an armed connection's socket (see
 * slot_idle). A pump like kick(); when SOCKET_IDLE_LIMIT wake-ups in a row found
 * nothing for the slot, the slow path gets a UD_KIND_SOCK_IDLE record for it. */
static PyObject *
Dispatcher_socket_wake(Dispatcher *d, PyObject *arg)
{
    unsigned long slot = PyLong_AsUnsignedLong(arg);
    if (slot == (unsigned long)-1 && PyErr_Occurred())
        return NULL;
    if (forked(d->fork_gen))
        return raise_forked();
    if (d->busy || d->in_slow || !d->ring || !d->area)
        Py_RETURN_NONE;
    d->socket_wakeups++;
    Py_INCREF(d);
    PyObject *r = wake_impl(d, WAKE_SOCKET);
    if (r && slot < d->slot_cap && !d->halted && d->area) {
        if (d->slot_counts[2 * slot] != d->slot_seen[slot]) {
            d->slot_seen[slot] = d->slot_counts[2 * slot];
            d->slot_idle[slot] = 0;
        } else {
            d->socket_idle_wakeups++;
            if (++d->slot_idle[slot] >= SOCKET_IDLE_LIMIT && !d->busy && !d->in_slow) {
                d->slot_idle[slot] = 0;
                d->socket_idle_reports++;
                uint64_t ud = UD_MAKE(UD_KIND_SOCK_IDLE, slot, slot_gen(d, slot));
                if (make_room(d, 1)) {  /* no room: only a hint lost, the next idle wake-up says it */
                    push_control(d, ud, 0, 0, NULL);
                    Py_DECREF(r);
                    r = call_slow_path(d, 0, PUMP_IDLE, 0);
                }
            }
        }
    }
    Py_DECREF(d);
    return r;
}

static PyObject *
Dispatcher_set_slow_path(Dispatcher *d, PyObject *cb)
{
    if (cb != Py_None && !PyCallable_Check(cb)) {
        PyErr_SetString(PyExc_TypeError, "set_slow_path: a callable or None");
        return NULL;
    }
    Py_XSETREF(d->slow_path, cb == Py_None ? NULL : Py_NewRef(cb));
    Py_RETURN_NONE;
}

static PyObject *
Dispatcher_set_eventfd_sqe(Dispatcher *d, PyObject *arg)
{
    int on = PyObject_IsTrue(arg);
    if (on < 0)
        return NULL;
    d->evfd_sqe = on && d->prep_read && d->withdraw;
    return PyBool_FromLong(d->evfd_sqe);
}

static PyObject *
Dispatcher_get_pumping(Dispatcher *d, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(d->busy || d->in_slow);
}

/* revive_wanted / unthrottle_wanted / recheck_pending: flags the engine keeps
 * (closure: which) */
static int *
flag_of(Dispatcher *d, void *closure)
{
    switch ((uintptr_t)closure) {
    case 1:
        return &d->unthrottle_wanted;
    case 2:
        return &d->recheck_pending;
    default:
        return &d->revive_wanted;
    }
}

static PyObject *
Dispatcher_get_revive_after(Dispatcher *d, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLongLong(d->revive_after);
}

static int
Dispatcher_set_revive_after(Dispatcher *d, PyObject *v, void *Py_UNUSED(closure))
{
    unsigned long long after = v ? PyLong_AsUnsignedLongLong(v) : ~0ULL;
    if (after == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    d->revive_after = after;
    return 0;
}

static PyObject *
Dispatcher_get_flag(Dispatcher *d, void *closure)
{
    return PyBool_FromLong(*flag_of(d, closure));
}

static int
Dispatcher_set_flag(Dispatcher *d, PyObject *v, void *closure)
{
    int on = v ? PyObject_IsTrue(v) : 0;
    if (on < 0)
        return -1;
    *flag_of(d, closure) = on;
    return 0;
}

/* halt(): see Dispatcher.halted. Safe from inside a sink. */
static PyObject *
Dispatcher_halt(Dispatcher *d, PyObject *Py_UNUSED(ignored))
{
    d->halted = 1;
    Py_CLEAR(d->parked);
    Py_RETURN_NONE;
}

/* close(): drops the slots (the protocols' callbacks), the ring and the area, so
 * that the area is unmapped as soon as its last view goes, whoever still holds
 * the engine. Not while pump()/run() is running (the engine defers it). */
static PyObject *
Dispatcher_close(Dispatcher *d, PyObject *Py_UNUSED(ignored))
{
    if (d->busy) {
        PyErr_SetString(PyExc_RuntimeError, "dispatcher closed from inside pump()/run()");
        return NULL;
    }
    d->halted = 1;
    d->ring = NULL;
    d->evfd = -1;
    Py_CLEAR(d->parked);
    Py_CLEAR(d->slots);
    Py_CLEAR(d->ring_owner);
    Py_CLEAR(d->slow_path);
    Py_CLEAR(d->area);
    Py_RETURN_NONE;
}

static PyObject *
Dispatcher_set_view_reuse(Dispatcher *d, PyObject *arg)
{
    int on = PyObject_IsTrue(arg);
    if (on < 0)
        return NULL;
    d->reuse_views = VIEW_REUSE && view_layout_ok && on;
    if (!d->reuse_views)
        Py_CLEAR(d->parked);
    return PyBool_FromLong(d->reuse_views);
}

static PyObject *
Dispatcher_set_share_copy(Dispatcher *d, PyObject *arg)
{
    int on = PyObject_IsTrue(arg);
    if (on < 0)
        return NULL;
    d->share_copy = on;
    Py_RETURN_NONE;
}

/* set_max_view(bytes): the most bytes one view may gather from several
 * completions (Receiver(max_view=...)); 0 or up to a page: every completion its
 * own view. */
static PyObject *
Dispatcher_set_max_view(Dispatcher *d, PyObject *arg)
{
    unsigned long n = PyLong_AsUnsignedLong(arg);
    if (n == (unsigned long)-1 && PyErr_Occurred())
        return NULL;
    if (n > 0x7fffffffUL) {
        PyErr_SetString(PyExc_ValueError, "max_view must be below 2 GiB (a completion's byte count is an int)");
        return NULL;
    }
    d->max_view = (uint32_t)n;
    /* up to a page: no merging, and so no reason to order the refills for it
     * (a zcrx area's niovs are pages; set_refill_order can still override) */
    if (d->area && d->area->kind == KIND_ZCRX)
        d->area->refill_descending = merging(d);
    Py_RETURN_NONE;
}

static PyObject *
Dispatcher_set_timing(Dispatcher *d, PyObject *arg)
{
    int on = PyObject_IsTrue(arg);
    if (on < 0)
        return NULL;
    d->timing = on;
    if (d->area)
        d->area->timing = on;
    Py_RETURN_NONE;
}

static PyObject *
Dispatcher_stats(Dispatcher *d, PyObject *Py_UNUSED(ignored))
{
    PyObject *s = Py_BuildValue("{s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:O}", "completions", d->completions,
                                "bytes", d->bytes, "dropped_completions", d->dropped,
                                "dropped_bytes", d->dropped_bytes,
                                "wakeups", d->wakeups, "idle_wakeups", d->idle_wakeups,
                                "enters", d->enters, "reused_views", d->reused_views,
                                "eventfd_paused", d->evfd_disabled_bit ? Py_True : Py_False);
    if (s) {
        PyObject *v = Py_BuildValue("{s:I,s:K,s:s,s:K,s:K,s:K,s:K,s:K,s:K}",
                                    "max_view", d->max_view,
                                    "merged_completions", d->merged,
                                    "eventfd_read", d->evfd_sqe ? "sqe" : "read(2)",
                                    "eventfd_reads", d->evfd_syscalls,
                                    "eventfd_sqe_reads", d->evfd_sqe_reads,
                                    "eventfd_sqe_empty", d->evfd_sqe_empty,
                                    "eventfd_sqe_withdrawn", d->evfd_withdrawn,
                                    "eventfd_sqe_errors", d->evfd_sqe_errors,
                                    "slow_path_calls", d->slow_calls);
        if (!v || PyDict_Update(s, v) < 0)
            Py_CLEAR(s);
        Py_XDECREF(v);
    }
    if (s) {
        PyObject *v = Py_BuildValue("{s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K}",
                                    "share_copies", d->share_copies,
                                    "share_copied_bytes", d->share_copied_bytes,
                                    "unknown_completions", d->unknown,
                                    "nomem_failures", d->nomem_failures,
                                    "nomem_stalls", d->nomem_stalls,
                                    "socket_wakeups", d->socket_wakeups,
                                    "socket_idle_wakeups", d->socket_idle_wakeups,
                                    "socket_idle_reports", d->socket_idle_reports,
                                    "found_by_eventfd", d->found_eventfd,
                                    "found_by_socket", d->found_socket,
                                    "found_by_kick", d->found_kick);
        if (!v || PyDict_Update(s, v) < 0)
            Py_CLEAR(s);
        Py_XDECREF(v);
    }
    if (s && d->timing) {
        PyObject *v = Py_BuildValue("{s:K,s:K}", "dispatch_ns", d->dispatch_ns,
                                    "syscall_cpu_ns", d->area ? d->area->syscall_cpu_ns : 0ULL);
        if (!v || PyDict_Update(s, v) < 0)
            Py_CLEAR(s);
        Py_XDECREF(v);
    }
    return s;
}

static int
Dispatcher_traverse(Dispatcher *d, visitproc visit, void *arg)
{
    for (uint32_t i = 0; i < d->nctl; i++)
        Py_VISIT(d->ctl[i].exc);
    Py_VISIT(d->slots);
    Py_VISIT(d->ring_owner);
    Py_VISIT(d->slow_path);
    Py_VISIT(d->parked);
    return 0;
}

/* The garbage collector's clear (a reference cycle): as close(), so that
 * whoever in the cycle still calls a method finds a closed dispatcher, not a
 * half-cleared one (slots gone, area still there). */
static int
Dispatcher_clear(Dispatcher *d)
{
    d->halted = 1;
    d->ring = NULL;
    d->evfd = -1;
    Py_CLEAR(d->slots);
    Py_CLEAR(d->ring_owner);
    Py_CLEAR(d->slow_path);
    Py_CLEAR(d->parked);
    control_handed(d);
    Py_CLEAR(d->area);
    return 0;
}

static void
Dispatcher_dealloc(Dispatcher *d)
{
    PyObject_GC_UnTrack(d);
    Py_CLEAR(d->parked);
    Py_CLEAR(d->slots);
    Py_CLEAR(d->ring_owner);
    Py_CLEAR(d->slow_path);
    Py_CLEAR(d->area);
    PyMem_Free(d->slot_counts);
    PyMem_Free(d->slot_active);
    PyMem_Free(d->slot_idle);
    PyMem_Free(d->slot_seen);
    PyMem_Free(d->active);
    PyMem_Free(d->was_active);
    control_handed(d);  /* records nobody took: their exceptions go */
    PyMem_Free(d->ctl);
    Py_TYPE(d)->tp_free((PyObject *)d);
}

static PyMethodDef Dispatcher_methods[] = {
    {"run", (PyCFunction)Dispatcher_run, METH_NOARGS, "drain the CQ and dispatch"},
    {"pump", (PyCFunction)Dispatcher_pump, METH_O, "pump(eventfd): one wake-up's enter/drain/publish rounds"},
    {"on_wake", (PyCFunction)Dispatcher_on_wake, METH_NOARGS, "the loop's reader for the ring's eventfd: pump, and the slow path only when needed"},
    {"socket_wake", (PyCFunction)Dispatcher_socket_wake, METH_O, "socket_wake(slot): the loop's reader for an armed connection's socket: kick(), and tell the slow path of a socket that keeps waking us for nothing"},
    {"kick", (PyCFunction)Dispatcher_kick, METH_NOARGS, "on_wake() without a wake-up: submit what was queued, pump, slow path when needed"},
    {"set_slow_path", (PyCFunction)Dispatcher_set_slow_path, METH_O, "set_slow_path(callable(completions, control, state) or None)"},
    {"bind_eventfd", (PyCFunction)(void (*)(void))Dispatcher_bind_eventfd, METH_VARARGS | METH_KEYWORDS, "give the pump the ring's eventfd and the read-SQE helpers"},
    {"set_eventfd_sqe", (PyCFunction)Dispatcher_set_eventfd_sqe, METH_O, "benchmarks/tests: read the eventfd in the enter (default where the kernel can) or with read(2); returns whether the SQE read is in effect"},
    {"bind_ring", (PyCFunction)(void (*)(void))Dispatcher_bind_ring, METH_VARARGS | METH_KEYWORDS, "give pump() the ring"},
    {"set_view_reuse", (PyCFunction)Dispatcher_set_view_reuse, METH_O, "benchmarks/tests: reuse unobservable views (default on); returns whether it is in effect"},
    {"set_max_view", (PyCFunction)Dispatcher_set_max_view, METH_O, "set_max_view(bytes): the most one view gathers from several completions (0: none merged)"},
    {"set_share_copy", (PyCFunction)Dispatcher_set_share_copy, METH_O, "over_share='copy': a connection over its share gets bytes (its buffer back at once) instead of being stopped"},
    {"set_timing", (PyCFunction)Dispatcher_set_timing, METH_O, "benchmarks: time dispatching (stats()['dispatch_ns'])"},
    {"stats", (PyCFunction)Dispatcher_stats, METH_NOARGS, "counters"},
    {"slot_stats", (PyCFunction)Dispatcher_slot_stats, METH_O, "(completions, bytes) of a slot"},
    {"bind", (PyCFunction)Dispatcher_bind, METH_VARARGS, "bind(slot[, gen]) -> gen: a new connection takes the slot (its next generation)"},
    {"halt", (PyCFunction)Dispatcher_halt, METH_NOARGS, "no more callbacks; every buffer goes straight back"},
    {"close", (PyCFunction)Dispatcher_close, METH_NOARGS, "drop slots, ring and area"},
    {"take_quiet", (PyCFunction)Dispatcher_take_quiet, METH_NOARGS, "slots with data last tick and none since; starts a new tick"},
    {"starve_mark", (PyCFunction)Dispatcher_starve_mark, METH_VARARGS, "starve_mark(at_enter): buffers given up to the last enter, or up to now"},
    {"revive_budget", (PyCFunction)Dispatcher_revive_budget, METH_NOARGS, "starved connections that may be re-armed now"},
    {"revive_took", (PyCFunction)Dispatcher_revive_took, METH_VARARGS, "revive_took(n): n starved connections were re-armed"},
    {NULL},
};

static PyGetSetDef Dispatcher_getset[] = {
    {"pumping", (getter)Dispatcher_get_pumping, NULL,
     "inside pump()/run(), or inside on_wake()/kick() including the slow path they called", NULL},
    {"revive_wanted", (getter)Dispatcher_get_flag, (setter)Dispatcher_set_flag,
     "the engine has starved connections: on_wake calls the slow path once buffers are back", NULL},
    {"unthrottle_wanted", (getter)Dispatcher_get_flag, (setter)Dispatcher_set_flag,
     "the engine has connections over their share: on_wake calls the slow path when one came back under",
     (void *)1},
    {"revive_after", (getter)Dispatcher_get_revive_after, (setter)Dispatcher_set_revive_after,
     "the oldest starved connection's mark (starve_mark): no re-arm until a buffer is given past it", NULL},
    {"recheck_pending", (getter)Dispatcher_get_flag, (setter)Dispatcher_set_flag,
     "the engine will pump again soon (a kick or a recheck timer): on_wake needs no slow path for PENDING",
     (void *)2},
    {NULL},
};

static PyTypeObject DispatcherType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aiozcrx._fastpath.Dispatcher",
    .tp_basicsize = sizeof(Dispatcher),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Dispatcher_init,
    .tp_dealloc = (destructor)Dispatcher_dealloc,
    .tp_traverse = (traverseproc)Dispatcher_traverse,
    .tp_clear = (inquiry)Dispatcher_clear,
    .tp_methods = Dispatcher_methods,
    .tp_getset = Dispatcher_getset,
    .tp_doc = "Drains a completion queue in C and hands data to per-slot callbacks.",
};

