/*
 * aiozcrx._abi: the submission queue. SQEs are written in place and published
 * one by one (store-release of the SQ tail); io_uring_enter submits them and runs
 * the ring's deferred task work. Single issuer: only the loop thread calls these.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>

#include "abi.h"

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

/* len: the most bytes the request takes before it ends (res 0, no F_MORE, as
 * at EOF: the engine tells them apart by what it received); 0: no limit. */
int azx_prep_recv_zc(struct azx_ring *r, int fd, uint32_t zcrx_id, uint32_t len, uint64_t user_data)
{
    struct azx_sqe *s = azx_next_sqe(r);
    if (!s) return -EBUSY;
    s->opcode = AZX_OP_RECV_ZC; s->fd = fd; s->ioprio = AZX_RECV_MULTISHOT; s->len = len;
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
