/*
 * aiozcrx._abi (cffi, API mode): our own types and the functions Python calls.
 * The ONE declaration of each: the C files of the module (setup.c, queue.c,
 * register.c, memory.c, timer.c, wakeprobe.c) #include this header, and
 * aiozcrx/_abi_build.py builds the cffi cdef from the text between the two
 * "cdef" marker lines below (cffi cannot read #include). So the text between them
 * stays within what a cdef accepts: no #include, no #if, no macros with
 * arguments, no expressions in #define. Inside a struct, everything from the line
 * "cdef: the rest is private" to the struct's closing "};" reaches the cdef as
 * "...;": Python sees only the fields above that line.
 *
 * The kernel's own structs and constants are in uapi.h, the protocol between the
 * C dispatcher and Python (user_data layout, pump states) in protocol.h;
 * _abi_build.py exports the integer #defines of both to Python (lib.NAME).
 *
 * Module layout (liburing's split by concern):
 *   setup.c     - io_uring_setup, mapping the rings, closing them
 *   queue.c     - the submission queue: SQE preparation, io_uring_enter
 *   register.c  - io_uring_register: eventfd, probe, zcrx, provided buffer rings
 *   memory.c    - anonymous mappings, munmap, MADV_DONTFORK
 *   timer.c     - the periodic timerfd
 *   wakeprobe.c - does this kernel signal the ring's eventfd inline?
 */
#ifndef AIOZCRX_ABI_H
#define AIOZCRX_ABI_H

#include <stddef.h>
#include <stdint.h>

#include "uapi.h"
#include "protocol.h"

/* ==== cdef begin ==== */

/* One ring as the module and Python see it: addresses as integers, for the C
 * fast path in aiozcrx._fastpath, and sizes for the record. */
struct azx_ring {
    int fd;
    unsigned sq_entries, cq_entries, features, flags, cqe_size;
    uintptr_t cq_khead, cq_ktail, cq_mask, cq_cqes, cq_overflow, sq_flags, cq_flags;
    /* cdef: the rest is private */
    void *sq_map; size_t sq_map_len;
    void *cq_map; size_t cq_map_len;
    struct azx_sqe *sqes; size_t sqes_len;
    uint32_t *sq_ktail, *sq_khead, sq_mask, sq_local_tail;
};

/* What a zcrx registration (or import) found out. */
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

/* IO_URING_QUERY_ZCRX's answer, without the kernel struct's reserved words. */
struct azx_query_zcrx {
    uint64_t register_flags;
    uint64_t area_flags;
    uint32_t nr_ctrl_opcodes;
    uint32_t features;
    uint32_t rq_hdr_size;
    uint32_t rq_hdr_alignment;
};

/* setup.c */
int azx_ring_setup(unsigned entries, unsigned cq_entries, unsigned flags, struct azx_ring *ring);
void azx_ring_close(struct azx_ring *ring);

/* queue.c */
int azx_enter(struct azx_ring *ring, unsigned min_complete, unsigned flags);
unsigned azx_sq_space(struct azx_ring *ring);
int azx_prep_recv_zc(struct azx_ring *ring, int fd, uint32_t zcrx_id, uint32_t len, uint64_t user_data);
int azx_prep_recv_pbuf(struct azx_ring *ring, int fd, uint16_t bgid, uint64_t user_data);
int azx_prep_cancel(struct azx_ring *ring, uint64_t target, uint64_t user_data);
int azx_prep_nop(struct azx_ring *ring, uint64_t user_data);
int azx_prep_read_nowait(struct azx_ring *ring, int fd, uintptr_t addr, uint32_t len,
                         uint64_t user_data, uint32_t *pos);
int azx_sqe_withdraw(struct azx_ring *ring, uint32_t pos);

/* register.c */
int azx_register_eventfd(struct azx_ring *ring, int efd);
int azx_probe_op(struct azx_ring *ring, unsigned op);
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

/* memory.c */
void *azx_mmap_anon(size_t len, int huge, int *err);
int azx_munmap(uintptr_t addr, size_t len);
int azx_dontfork(uintptr_t addr, size_t len);

/* timer.c */
int azx_timerfd_create(void);
int azx_timerfd_period(int fd, long long period_ns);

/* wakeprobe.c: 1 the kernel signals the eventfd inline, 0 deferred, -errno */
int azx_probe_eventfd_inline(void);

/* ==== cdef end ==== */

#endif /* AIOZCRX_ABI_H */
