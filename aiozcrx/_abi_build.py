"""cffi (API mode) build of ``aiozcrx._abi``: the io_uring kernel ABI, nothing else.

Our own definitions of the UAPI structs and constants (the machines ship 6.1 kernel
headers, which predate zcrx) live in ``aiozcrx/_c/uapi.h``, shared with the
``aiozcrx._leases`` extension; the C source here ``#include``s it and adds raw
``io_uring_setup/enter/register`` syscalls, ring mapping and SQE preparation. The
``cdef`` below (what Python sees) must repeat what it exposes: cffi cannot read
headers. Only ``aiozcrx/_ring.py`` imports the result; everything above it works
with Python objects, never with pointers.

Values follow the 7.2 UAPI (include/uapi/linux/io_uring.h and io_uring/zcrx.h); see uapi.h.
"""

import os

from cffi import FFI

CDEF = r"""
/* ---- setup / enter / register constants ---- */
#define AZX_SETUP_CQSIZE ...
#define AZX_SETUP_CLAMP ...
#define AZX_SETUP_SUBMIT_ALL ...
#define AZX_SETUP_COOP_TASKRUN ...
#define AZX_SETUP_TASKRUN_FLAG ...
#define AZX_SQ_CQ_OVERFLOW ...
#define AZX_SQ_TASKRUN ...
#define AZX_CQ_EVENTFD_DISABLED ...
#define AZX_SETUP_CQE32 ...
#define AZX_SETUP_SINGLE_ISSUER ...
#define AZX_SETUP_DEFER_TASKRUN ...
#define AZX_ENTER_GETEVENTS ...
#define AZX_FEAT_NODROP ...

#define AZX_OP_NOP ...
#define AZX_OP_ASYNC_CANCEL ...
#define AZX_OP_READ ...
#define AZX_OP_RECV ...
#define AZX_OP_RECV_ZC ...

#define AZX_REGISTER_EVENTFD ...
#define AZX_REGISTER_PROBE ...
#define AZX_REGISTER_PBUF_RING ...
#define AZX_UNREGISTER_PBUF_RING ...
#define AZX_REGISTER_ZCRX_IFQ ...
#define AZX_REGISTER_QUERY ...
#define AZX_REGISTER_ZCRX_CTRL ...

#define AZX_QUERY_ZCRX ...
#define AZX_ZCRX_REG_IMPORT ...
#define AZX_ZCRX_REG_NODEV ...
#define AZX_ZCRX_CTRL_FLUSH_RQ ...
#define AZX_ZCRX_CTRL_EXPORT ...
#define AZX_ZCRX_CTRL_ARM_NOTIFICATION ...
#define AZX_ZCRX_NOTIF_NO_BUFFERS ...
#define AZX_ZCRX_NOTIF_COPY ...
#define AZX_ZCRX_FEATURE_NOTIFICATION ...
#define AZX_MEM_REGION_TYPE_USER ...
#define AZX_CQE_F_MORE ...
#define AZX_CQE_F_BUFFER ...
#define AZX_CQE_F_BUF_MORE ...
#define AZX_PBUF_RING_INC ...

/* What a ring looks like to Python: addresses as integers, for the C fast path
 * in aiozcrx._leases, and sizes for the record. */
struct azx_ring {
    int fd;
    unsigned sq_entries, cq_entries, features, flags, cqe_size;
    uintptr_t cq_khead, cq_ktail, cq_mask, cq_cqes, cq_overflow, sq_flags, cq_flags;
    ...;
};

struct azx_zcrx_info {
    uint32_t zcrx_id;
    uint32_t rq_entries;
    uint32_t rx_buf_len;
    uint64_t rq_area_token;
    uintptr_t rq_head, rq_tail, rq_rqes;   /* addresses inside the refill region */
    uintptr_t region_addr;                 /* start of the refill region mapping */
    size_t region_len;
    int region_kernel;                     /* 1: kernel-allocated, mmap()ed from the ring fd */
    uintptr_t stats;                       /* the kernel's struct zcrx_stats in the region (7.2), or 0 */
    int dontfork_failed;                   /* the error returned is madvise(MADV_DONTFORK)'s */
};

struct azx_query_zcrx {
    uint64_t register_flags;
    uint64_t area_flags;
    uint32_t nr_ctrl_opcodes;
    uint32_t features;
    uint32_t rq_hdr_size;
    uint32_t rq_hdr_alignment;
};

int azx_ring_setup(unsigned entries, unsigned cq_entries, unsigned flags, struct azx_ring *ring);
void azx_ring_close(struct azx_ring *ring);
int azx_enter(struct azx_ring *ring, unsigned min_complete, unsigned flags);
int azx_register_eventfd(struct azx_ring *ring, int efd);
int azx_probe_op(struct azx_ring *ring, unsigned op);
unsigned azx_sq_space(struct azx_ring *ring);
int azx_prep_recv_zc(struct azx_ring *ring, int fd, uint32_t zcrx_id, uint64_t user_data);
int azx_prep_recv_pbuf(struct azx_ring *ring, int fd, uint16_t bgid, uint64_t user_data);
int azx_prep_cancel(struct azx_ring *ring, uint64_t target, uint64_t user_data);
int azx_prep_nop(struct azx_ring *ring, uint64_t user_data);
int azx_prep_read_nowait(struct azx_ring *ring, int fd, uintptr_t addr, uint32_t len,
                         uint64_t user_data, uint32_t *pos);
int azx_sqe_withdraw(struct azx_ring *ring, uint32_t pos);

void *azx_mmap_anon(size_t len, int huge, int *err);
int azx_munmap(uintptr_t addr, size_t len);
int azx_dontfork(uintptr_t addr, size_t len);

int azx_timerfd_create(void);
int azx_timerfd_period(int fd, long long period_ns);

int azx_zcrx_register(struct azx_ring *ring, uint32_t if_idx, uint32_t if_rxq,
                      uint32_t rq_entries, uint32_t flags, uintptr_t area, size_t area_len,
                      int kernel_region, uint32_t rx_buf_len, uint64_t notif_user_data,
                      uint32_t notif_mask, int want_stats, struct azx_zcrx_info *out);
int azx_zcrx_import(struct azx_ring *ring, int zcrx_fd, struct azx_zcrx_info *out);
int azx_zcrx_ctrl(struct azx_ring *ring, uint32_t zcrx_id, uint32_t op, uint32_t arg0);
int azx_zcrx_export(struct azx_ring *ring, uint32_t zcrx_id);
int azx_query_zcrx(struct azx_query_zcrx *out);

int azx_pbuf_register(struct azx_ring *ring, uintptr_t ring_mem, uint32_t entries, uint16_t bgid,
                      uint16_t flags);
int azx_pbuf_unregister(struct azx_ring *ring, uint16_t bgid);

/* aiozcrx/_c/wakeprobe.c: 1 the kernel signals the eventfd inline, 0 deferred, -errno */
int azx_probe_eventfd_inline(void);
"""

SOURCE = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>

/* the kernel UAPI: structs, constants, syscall numbers (aiozcrx/_c/uapi.h) */
#include "uapi.h"

/* ---- our own types (not kernel ABI) ---- */
struct azx_ring {
    int fd;
    unsigned sq_entries, cq_entries, features, flags, cqe_size;
    uintptr_t cq_khead, cq_ktail, cq_mask, cq_cqes, cq_overflow, sq_flags, cq_flags;
    /* private */
    void *sq_map; size_t sq_map_len;
    void *cq_map; size_t cq_map_len;
    struct azx_sqe *sqes; size_t sqes_len;
    uint32_t *sq_ktail, *sq_khead, sq_mask, sq_local_tail;
};

struct azx_zcrx_info {
    uint32_t zcrx_id, rq_entries, rx_buf_len;
    uint64_t rq_area_token;
    uintptr_t rq_head, rq_tail, rq_rqes;
    uintptr_t region_addr;
    size_t region_len;
    int region_kernel;
    uintptr_t stats;
    int dontfork_failed;
};

struct azx_query_zcrx {
    uint64_t register_flags, area_flags;
    uint32_t nr_ctrl_opcodes, features, rq_hdr_size, rq_hdr_alignment;
};

static long azx_sys_register(int fd, unsigned op, void *arg, unsigned nr)
{
    long r = syscall(__NR_io_uring_register, fd, op, arg, nr);
    return r < 0 ? -errno : r;
}

void azx_ring_close(struct azx_ring *r)
{
    if (r->sqes) munmap(r->sqes, r->sqes_len);
    if (r->cq_map && r->cq_map != r->sq_map) munmap(r->cq_map, r->cq_map_len);
    if (r->sq_map) munmap(r->sq_map, r->sq_map_len);
    if (r->fd >= 0) close(r->fd);
    r->sqes = NULL; r->cq_map = r->sq_map = NULL; r->fd = -1;
}

int azx_ring_setup(unsigned entries, unsigned cq_entries, unsigned flags, struct azx_ring *r)
{
    struct azx_params p;
    memset(&p, 0, sizeof p);
    memset(r, 0, sizeof *r);
    r->fd = -1;
    p.flags = flags;
    if (cq_entries) { p.flags |= AZX_SETUP_CQSIZE; p.cq_entries = cq_entries; }
    int fd = (int)syscall(__NR_io_uring_setup, entries, &p);
    if (fd < 0) return -errno;
    r->fd = fd;
    r->flags = p.flags;
    r->features = p.features;
    r->sq_entries = p.sq_entries;
    r->cq_entries = p.cq_entries;
    r->cqe_size = (p.flags & AZX_SETUP_CQE32) ? 32 : 16;
    r->sq_map_len = p.sq_off.array + p.sq_entries * sizeof(uint32_t);
    r->cq_map_len = p.cq_off.cqes + (size_t)p.cq_entries * r->cqe_size;
    r->sq_map = mmap(NULL, r->sq_map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, AZX_OFF_SQ_RING);
    if (r->sq_map == MAP_FAILED) { int e = -errno; r->sq_map = NULL; azx_ring_close(r); return e; }
    r->cq_map = mmap(NULL, r->cq_map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, AZX_OFF_CQ_RING);
    if (r->cq_map == MAP_FAILED) { int e = -errno; r->cq_map = NULL; azx_ring_close(r); return e; }
    r->sqes_len = p.sq_entries * sizeof(struct azx_sqe);
    r->sqes = mmap(NULL, r->sqes_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, AZX_OFF_SQES);
    if (r->sqes == MAP_FAILED) { int e = -errno; r->sqes = NULL; azx_ring_close(r); return e; }
    char *sq = r->sq_map, *cq = r->cq_map;
    r->sq_khead = (uint32_t *)(sq + p.sq_off.head);
    r->sq_ktail = (uint32_t *)(sq + p.sq_off.tail);
    r->sq_mask = *(uint32_t *)(sq + p.sq_off.ring_mask);
    r->sq_flags = (uintptr_t)(sq + p.sq_off.flags);
    /* identity SQ index array, set once: slot i always holds SQE i */
    uint32_t *array = (uint32_t *)(sq + p.sq_off.array);
    for (unsigned i = 0; i < p.sq_entries; i++) array[i] = i;
    r->sq_local_tail = *r->sq_ktail;
    r->cq_khead = (uintptr_t)(cq + p.cq_off.head);
    r->cq_ktail = (uintptr_t)(cq + p.cq_off.tail);
    r->cq_mask = *(uint32_t *)(cq + p.cq_off.ring_mask);
    r->cq_cqes = (uintptr_t)(cq + p.cq_off.cqes);
    r->cq_overflow = (uintptr_t)(cq + p.cq_off.overflow);
    r->cq_flags = (uintptr_t)(cq + p.cq_off.flags);
    return 0;
}

unsigned azx_sq_space(struct azx_ring *r)
{
    return r->sq_entries - (r->sq_local_tail - __atomic_load_n(r->sq_khead, __ATOMIC_ACQUIRE));
}

static struct azx_sqe *azx_next_sqe(struct azx_ring *r)
{
    if (azx_sq_space(r) == 0) return NULL;
    struct azx_sqe *s = &r->sqes[r->sq_local_tail & r->sq_mask];
    memset(s, 0, sizeof *s);
    return s;
}

static void azx_publish_sqe(struct azx_ring *r)
{
    r->sq_local_tail++;
    __atomic_store_n(r->sq_ktail, r->sq_local_tail, __ATOMIC_RELEASE);
}

/* Submits everything queued and runs deferred task work (DEFER_TASKRUN posts
 * completions only from io_uring_enter with GETEVENTS). Returns >= 0 or -errno. */
int azx_enter(struct azx_ring *r, unsigned min_complete, unsigned flags)
{
    unsigned to_submit = r->sq_local_tail - __atomic_load_n(r->sq_khead, __ATOMIC_ACQUIRE);
    long ret = syscall(__NR_io_uring_enter, r->fd, to_submit, min_complete, flags, NULL, 0);
    return ret < 0 ? -errno : (int)ret;
}

int azx_register_eventfd(struct azx_ring *r, int efd)
{
    return (int)azx_sys_register(r->fd, AZX_REGISTER_EVENTFD, &efd, 1);
}

/* 1 if the opcode is supported, 0 if not, -errno if the probe itself failed */
int azx_probe_op(struct azx_ring *r, unsigned op)
{
    static struct azx_probe p;
    memset(&p, 0, sizeof p);
    long ret = azx_sys_register(r->fd, AZX_REGISTER_PROBE, &p, 256);
    if (ret < 0) return (int)ret;
    if (op > p.last_op || op >= p.ops_len) return 0;
    return (p.ops[op].flags & 1) ? 1 : 0;
}

int azx_prep_recv_zc(struct azx_ring *r, int fd, uint32_t zcrx_id, uint64_t user_data)
{
    struct azx_sqe *s = azx_next_sqe(r);
    if (!s) return -EBUSY;
    s->opcode = AZX_OP_RECV_ZC; s->fd = fd; s->ioprio = AZX_RECV_MULTISHOT;
    s->zcrx_ifq_idx = zcrx_id; s->user_data = user_data;
    azx_publish_sqe(r);
    return 0;
}

int azx_prep_recv_pbuf(struct azx_ring *r, int fd, uint16_t bgid, uint64_t user_data)
{
    struct azx_sqe *s = azx_next_sqe(r);
    if (!s) return -EBUSY;
    s->opcode = AZX_OP_RECV; s->fd = fd; s->ioprio = AZX_RECV_MULTISHOT;
    s->flags = AZX_SQE_BUFFER_SELECT; s->buf_index = bgid; s->user_data = user_data;
    azx_publish_sqe(r);
    return 0;
}

int azx_prep_cancel(struct azx_ring *r, uint64_t target, uint64_t user_data)
{
    struct azx_sqe *s = azx_next_sqe(r);
    if (!s) return -EBUSY;
    s->opcode = AZX_OP_ASYNC_CANCEL; s->fd = -1; s->addr = target; s->user_data = user_data;
    azx_publish_sqe(r);
    return 0;
}

int azx_prep_nop(struct azx_ring *r, uint64_t user_data)
{
    struct azx_sqe *s = azx_next_sqe(r);
    if (!s) return -EBUSY;
    s->opcode = AZX_OP_NOP; s->fd = -1; s->user_data = user_data;
    azx_publish_sqe(r);
    return 0;
}

/* A read that never waits (RWF_NOWAIT): it completes at submission, with the
 * data or -EAGAIN, and is never left armed in the kernel. *pos: where it sits in
 * the SQ, for azx_sqe_withdraw(). Used by the dispatcher to read the ring's
 * eventfd inside the io_uring_enter it makes anyway (see dispatch.c). */
int azx_prep_read_nowait(struct azx_ring *r, int fd, uintptr_t addr, uint32_t len,
                         uint64_t user_data, uint32_t *pos)
{
    struct azx_sqe *s = azx_next_sqe(r);
    if (!s) return -EBUSY;
    s->opcode = AZX_OP_READ; s->fd = fd; s->addr = addr; s->len = len; s->off = 0;
    s->op_flags = AZX_RWF_NOWAIT; s->user_data = user_data;
    *pos = r->sq_local_tail;
    azx_publish_sqe(r);
    return 0;
}

/* If the SQE at SQ position pos has not been consumed by the kernel yet, turns
 * it into a NOP (same user_data) and returns 1; 0 if the kernel took it. The
 * kernel reads SQEs only inside io_uring_enter (no SQPOLL), from this thread. */
int azx_sqe_withdraw(struct azx_ring *r, uint32_t pos)
{
    uint32_t head = __atomic_load_n(r->sq_khead, __ATOMIC_ACQUIRE);
    if ((int32_t)(pos - head) < 0) return 0;
    struct azx_sqe *s = &r->sqes[pos & r->sq_mask];
    uint64_t ud = s->user_data;
    memset(s, 0, sizeof *s);
    s->opcode = AZX_OP_NOP; s->fd = -1; s->user_data = ud;
    return 1;
}

void *azx_mmap_anon(size_t len, int huge, int *err)
{
    int fl = MAP_PRIVATE | MAP_ANONYMOUS | (huge ? MAP_HUGETLB : 0);
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, fl, -1, 0);
    if (p == MAP_FAILED) { *err = errno; return NULL; }
    *err = 0;
    return p;
}

/* Memory the kernel pins (a zcrx area, refill and buffer rings) is left out of
 * fork()ed children: copying pinned pages at fork is costly, and on the 7.2 UML
 * kernel a child exec()ing after fork corrupted page maps ("Bad page map"). */
int azx_dontfork(uintptr_t addr, size_t len)
{
    return madvise((void *)addr, len, MADV_DONTFORK) < 0 ? -errno : 0;
}

/* A periodic timer the event loop watches as a reader (see _ring.PeriodicTimer:
 * os.timerfd_* is Python 3.13+ only). */
int azx_timerfd_create(void)
{
    int fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

/* Expires every period_ns from now on; 0 disarms. */
int azx_timerfd_period(int fd, long long period_ns)
{
    struct itimerspec its;
    memset(&its, 0, sizeof its);
    its.it_interval.tv_sec = (time_t)(period_ns / 1000000000LL);
    its.it_interval.tv_nsec = (long)(period_ns % 1000000000LL);
    its.it_value = its.it_interval;
    return timerfd_settime(fd, 0, &its, NULL) < 0 ? -errno : 0;
}

int azx_munmap(uintptr_t addr, size_t len)
{
    return munmap((void *)addr, len) < 0 ? -errno : 0;
}

static size_t azx_page_round(size_t n)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    return (n + pg - 1) & ~(pg - 1);
}

/* Registers a zcrx instance. The refill region is user memory we map here, or
 * (kernel_region) memory the kernel allocates and we map from the ring fd. On
 * failure nothing stays mapped. */
int azx_zcrx_register(struct azx_ring *r, uint32_t if_idx, uint32_t if_rxq,
                      uint32_t rq_entries, uint32_t flags, uintptr_t area, size_t area_len,
                      int kernel_region, uint32_t rx_buf_len, uint64_t notif_user_data,
                      uint32_t notif_mask, int want_stats, struct azx_zcrx_info *out)
{
    /* header page (head/tail) + the rqe array */
    size_t region_len = azx_page_round(rq_entries * sizeof(struct azx_zcrx_rqe) + (size_t)sysconf(_SC_PAGESIZE));
    void *region = NULL;
    struct azx_region_desc rd; memset(&rd, 0, sizeof rd);
    struct azx_zcrx_area_reg ar; memset(&ar, 0, sizeof ar);
    struct azx_zcrx_ifq_reg reg; memset(&reg, 0, sizeof reg);
    struct azx_zcrx_notif_desc nd; memset(&nd, 0, sizeof nd);
    rd.size = region_len;
    if (!kernel_region) {
        region = mmap(NULL, region_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (region == MAP_FAILED) return -errno;
        int e = azx_dontfork((uintptr_t)region, region_len);
        if (e < 0) {            /* pinned memory must stay out of forked children */
            munmap(region, region_len);
            out->dontfork_failed = 1;
            return e;
        }
        rd.user_addr = (uintptr_t)region;
        rd.flags = AZX_MEM_REGION_TYPE_USER;
    }
    ar.addr = area; ar.len = area_len;
    reg.if_idx = if_idx; reg.if_rxq = if_rxq; reg.rq_entries = rq_entries; reg.flags = flags;
    reg.area_ptr = (uintptr_t)&ar; reg.region_ptr = (uintptr_t)&rd;
    reg.rx_buf_len = rx_buf_len;
    /* The statistics region (7.2) goes at the end of the refill region: the
     * header and the rqe array take at most rq_entries * 16 + one page less the
     * stats, and the kernel checks that they do not overlap (ERANGE). */
    size_t stats_off = region_len - sizeof(struct azx_zcrx_stats);
    if (notif_mask || want_stats) {
        nd.user_data = notif_user_data; nd.type_mask = notif_mask;
        if (want_stats) { nd.flags = AZX_ZCRX_NOTIF_DESC_FLAG_STATS; nd.stats_offset = stats_off; }
        reg.notif_desc = (uintptr_t)&nd;
    }
    long ret = azx_sys_register(r->fd, AZX_REGISTER_ZCRX_IFQ, &reg, 1);
    if (ret < 0) {
        if (region) munmap(region, region_len);
        return (int)ret;
    }
    if (kernel_region) {
        region = mmap(NULL, region_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd, rd.mmap_offset);
        if (region == MAP_FAILED) return -errno;   /* registration lives on until the ring closes */
    }
    out->zcrx_id = reg.zcrx_id;
    out->rq_entries = reg.rq_entries;
    out->rx_buf_len = reg.rx_buf_len;
    out->rq_area_token = ar.rq_area_token;
    out->rq_head = (uintptr_t)region + reg.offsets.head;
    out->rq_tail = (uintptr_t)region + reg.offsets.tail;
    out->rq_rqes = (uintptr_t)region + reg.offsets.rqes;
    out->region_addr = (uintptr_t)region;
    out->region_len = region_len;
    out->region_kernel = kernel_region;
    out->stats = want_stats ? (uintptr_t)region + stats_off : 0;
    return 0;
}

/* arg0: the first u32 of the op's union member (e.g. the notification type
 * for ZCRX_CTRL_ARM_NOTIFICATION); 0 for ops without arguments */
int azx_zcrx_ctrl(struct azx_ring *r, uint32_t zcrx_id, uint32_t op, uint32_t arg0)
{
    struct azx_zcrx_ctrl c; memset(&c, 0, sizeof c);
    c.zcrx_id = zcrx_id; c.op = op;
    *(uint32_t *)&c.u[0] = arg0;
    return (int)azx_sys_register(r->fd, AZX_REGISTER_ZCRX_CTRL, &c, 0);
}

/* Exports an instance as a file descriptor another ring can import. */
int azx_zcrx_export(struct azx_ring *r, uint32_t zcrx_id)
{
    struct azx_zcrx_ctrl c; memset(&c, 0, sizeof c);
    c.zcrx_id = zcrx_id; c.op = AZX_ZCRX_CTRL_EXPORT;
    long ret = azx_sys_register(r->fd, AZX_REGISTER_ZCRX_CTRL, &c, 0);
    if (ret < 0) return (int)ret;
    /* kernels return the fd, or 0 with it in zc_export.zcrx_fd */
    return ret > 0 ? (int)ret : (int)*(uint32_t *)&c.u[0];
}

/* Imports an exported instance: the area and refill ring stay the exporter's. */
int azx_zcrx_import(struct azx_ring *r, int zcrx_fd, struct azx_zcrx_info *out)
{
    struct azx_zcrx_ifq_reg reg; memset(&reg, 0, sizeof reg);
    reg.flags = AZX_ZCRX_REG_IMPORT;
    reg.if_idx = (uint32_t)zcrx_fd;
    long ret = azx_sys_register(r->fd, AZX_REGISTER_ZCRX_IFQ, &reg, 1);
    if (ret < 0) return (int)ret;
    memset(out, 0, sizeof *out);
    out->zcrx_id = reg.zcrx_id;
    return 0;
}

/* IO_URING_QUERY_ZCRX (6.19+). Needs no ring: fd -1. */
int azx_query_zcrx(struct azx_query_zcrx *out)
{
    struct azx_query_zcrx_raw q; memset(&q, 0, sizeof q);
    struct azx_query_hdr h; memset(&h, 0, sizeof h);
    h.query_op = AZX_QUERY_ZCRX; h.query_data = (uintptr_t)&q; h.size = sizeof q;
    long ret = azx_sys_register(-1, AZX_REGISTER_QUERY, &h, 0);
    if (ret < 0) return (int)ret;
    if (h.result < 0) return h.result;
    out->register_flags = q.register_flags; out->area_flags = q.area_flags;
    out->nr_ctrl_opcodes = q.nr_ctrl_opcodes; out->features = q.features;
    out->rq_hdr_size = q.rq_hdr_size; out->rq_hdr_alignment = q.rq_hdr_alignment;
    return 0;
}

int azx_pbuf_register(struct azx_ring *r, uintptr_t ring_mem, uint32_t entries, uint16_t bgid,
                      uint16_t flags)
{
    struct azx_buf_reg b; memset(&b, 0, sizeof b);
    b.ring_addr = ring_mem; b.ring_entries = entries; b.bgid = bgid; b.flags = flags;
    return (int)azx_sys_register(r->fd, AZX_REGISTER_PBUF_RING, &b, 1);
}

int azx_pbuf_unregister(struct azx_ring *r, uint16_t bgid)
{
    struct azx_buf_reg b; memset(&b, 0, sizeof b);
    b.bgid = bgid;
    return (int)azx_sys_register(r->fd, AZX_UNREGISTER_PBUF_RING, &b, 1);
}
"""

# uapi.h lives next to the extension's sources; absolute, so the build works from any cwd
C_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_c")

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
# C that needs no cdef'd struct lives in aiozcrx/_c/ as real C files, compiled here
C_SOURCES = [os.path.join(C_DIR, "wakeprobe.c")]

ffibuilder.set_source("aiozcrx._abi", SOURCE, include_dirs=[C_DIR], sources=C_SOURCES,
                      depends=[os.path.join(C_DIR, "uapi.h"), *C_SOURCES],
                      extra_compile_args=["-O2", "-Wall"])

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
