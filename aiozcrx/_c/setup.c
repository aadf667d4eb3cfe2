/*
 * aiozcrx._abi: io_uring_setup and the ring's three mappings (SQ ring, CQ ring,
 * SQE array), and their teardown. See abi.h for the module's layout.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/syscall.h>

#include "abi.h"

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
