/*
 * Shared by the parts of aiozcrx._fastpath (see fastpath.c): the kernel UAPI, the
 * protocol with Python (protocol.h), a few macros, the Area and Lease structs, and forward declarations across files.
 * Include it after <Python.h>.
 */
#ifndef AIOZCRX_COMMON_H
#define AIOZCRX_COMMON_H

#include "uapi.h"
#include "protocol.h"   /* user_data layout, pump states: shared with Python */

#define LOAD_ACQ32(p)      __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define STORE_REL32(p, v)  __atomic_store_n((p), (v), __ATOMIC_RELEASE)

#define ZCRX_OFF_MASK   ((1ULL << AZX_ZCRX_AREA_SHIFT) - 1)

enum { KIND_ZCRX = 0, KIND_PBUF = 1, KIND_POOL = 2 };

#define MAX_MAPPINGS 4

/* AreaUser.over[] bits (fair share) */
#define OVER_SHARE  1   /* the connection holds its share: its request was stopped */
#define OVER_LISTED 2   /* listed in back[] (came back under), not yet taken */

/* One engine receiving into an area. An area has one user, or more when a zcrx
 * instance is imported into other rings (share_with=): each importing engine is a
 * user of its own. What belongs to one engine lives here and nowhere else: its
 * wake-up fds (its ring's eventfd), its connections' fair-share state, keyed by
 * its own (slot, generation), and the ring it reaches the instance through. Its
 * close() (Area.close(user)) takes all of it away at once: after that no fd of
 * its is ever written or used, whatever still refers to the area (a lease keeps
 * its user's index, and finds the user closed). Indices are never reused, so a
 * late lease can never reach another engine's state. */
typedef struct {
    int live;                   /* added and not closed */
    /* wake-up when buffers return while starved (Area.set_wake) */
    int wake_fd;
    int starved;
    /* Fair share: buffers each connection's views hold, per slot and generation
     * (a lease remembers both), and how many one connection may hold. A slot
     * over its share is flagged (over[]); when it comes back under half of it,
     * it is listed in back[] and share_wake_fd is written (see Area.set_share). */
    int share_wake_fd;
    uint32_t share;
    uint32_t *held, *slot_gen;  /* slot_gen: see area_bind_slot */
    uint8_t *over;
    uint32_t held_cap;
    uint32_t *back, nback;
    /* zcrx: the ring this user reaches the instance through, and its id there
     * (a NODEV refill flush goes through a live user's ring) */
    int ring_fd;
    uint32_t zcrx_id;
} AreaUser;

typedef struct Area {
    PyObject_HEAD
    /* fork (see fastpath.c, "fork"): the process generation it was made in, and
     * its place in the list of every Area, which a forked child makes inert */
    unsigned long fork_gen;
    struct Area *next_area, **prev_area;
    int kind;
    char *base;
    size_t len;
    uint32_t buf_size;          /* pbuf/pool: size of each buffer; zcrx: page size */
    uint32_t nbufs;
    struct { void *addr; size_t len; } maps[MAX_MAPPINGS];  /* unmapped at dealloc */
    int nmaps;
    /* zcrx refill ring */
    uint32_t *rq_khead, *rq_ktail;
    struct azx_zcrx_rqe *rqes;
    uint32_t rq_mask, rq_entries, rq_local_tail;
    uint64_t token;
    int nodev;                  /* the kernel consumes refill entries only on FLUSH_RQ */
    /* provided buffer ring */
    struct azx_buf *pbufs;
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
    /* pbuf, incremental consumption (IOU_PBUF_RING_INC): the kernel fills a buffer
     * piece by piece, one completion per piece, the pieces back to back; it says
     * in each completion whether the buffer goes on (IORING_CQE_F_BUF_MORE). A
     * buffer is free again once the kernel is done with it AND no view is left
     * over any of its pieces. */
    int inc;
    uint32_t *buf_used;         /* per buffer: bytes the kernel has filled so far */
    uint32_t *buf_views;        /* per buffer: leases (views) over its pieces */
    uint8_t *buf_kernel;        /* per buffer: in the kernel's ring, not finished */
    uint32_t bufs_held;         /* buffers with at least one view */
    unsigned long long window_grows, window_shrinks;
    /* buffers handed to the kernel so far (pbuf: put in its ring; zcrx: taken
     * from the refill ring by a flush (NODEV), published (NIC)): what starved
     * connections wait for (see revive_budget in dispatch.c) */
    unsigned long long given;
    uint32_t rq_seen_head;      /* zcrx NODEV: the refill ring's head at the last look */
    /* zcrx: publish refills in descending offset order (see rq_order_descending) */
    int refill_descending;
    unsigned long long refill_reversed, refill_sorted;
    int closed;
    /* the engines receiving into it (see AreaUser): user 0 is the one that made
     * it; the last user's close() closes the area */
    AreaUser **users;
    uint32_t nusers;            /* ever added (indices are never reused) */
    uint32_t live_users;
    int unmapped;               /* closed and no lease left: the memory is gone */
    /* stats */
    unsigned long long views;   /* leases alive (a merged zcrx view holds several buffers) */
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
    uint32_t user;              /* the area user (engine) it was delivered through */
    uint32_t slot, gen;         /* that engine's connection it went to (gen 0: none) */
    uint32_t pieces;            /* zcrx: niovs (completions) merged into it; else 1 */
    int empty;                  /* its buffer went back already: a parked view (dispatch.c) */
} Lease;

static PyTypeObject AreaType;
static PyTypeObject LeaseType;

/* fork (fastpath.c): bumped in every forked child, before any Python runs there.
 * An Area or Dispatcher made in an older generation is the parent's: the child
 * never touches its ring (calls raise ProcessForked; a lease's release does
 * nothing). */
static unsigned long fork_gen;
static inline int
forked(unsigned long gen)
{
    return gen != fork_gen;
}
static PyObject *raise_forked(void);

/* lease.c: a new memoryview over a new lease (used by Area.recv in area.c) */
static inline PyObject *make_view(Area *a, char *ptr, Py_ssize_t len, uint64_t ident,
                                  uint32_t pieces, uint32_t user, uint32_t slot, uint32_t gen);
static inline void area_hold(Area *a, uint32_t user, uint32_t slot, uint32_t gen, uint32_t n);
static inline void area_unhold(Area *a, uint32_t user, uint32_t slot, uint32_t gen, uint32_t n);
static uint32_t area_bind_slot(Area *a, uint32_t user, uint32_t slot, uint32_t gen);

/* The live user `user` of `a`, or NULL (never added, or closed). */
static inline AreaUser *
area_user(Area *a, uint32_t user)
{
    AreaUser *u = user < a->nusers ? a->users[user] : NULL;
    return u && u->live ? u : NULL;
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

#endif /* AIOZCRX_COMMON_H */
