/*
 * The io_uring kernel UAPI, our own copy: the ONLY place in aiozcrx that defines
 * these structs and constants. Used by the cffi layer (aiozcrx/_c/abi.h,
 * module aiozcrx._abi, which exports its integer #defines to Python too) and by
 * the C extension (aiozcrx/_c/fastpath.c, module aiozcrx._fastpath).
 *
 * Why our own: the machines we build on ship 6.1 kernel headers, which predate
 * zcrx. Names are the kernel's with an azx_/AZX_ prefix (IORING_ and IO_ dropped);
 * values and layouts follow the 7.2 UAPI, include/uapi/linux/io_uring.h and
 * include/uapi/linux/io_uring/query.h. "(x.y)" after a definition is the kernel
 * version that added it. Sizes and key offsets are asserted at the bottom.
 *
 * Include it after <Python.h> (or after defining _GNU_SOURCE): it pulls in
 * system headers.
 */
#ifndef AIOZCRX_UAPI_H
#define AIOZCRX_UAPI_H

#include <stddef.h>
#include <stdint.h>
#include <sys/syscall.h>

/* ---- syscall numbers (asm-generic/unistd.h; the same on every arch but alpha) ---- */
#ifndef __NR_io_uring_setup
#define __NR_io_uring_setup 425     /* (5.1) */
#define __NR_io_uring_enter 426     /* (5.1) */
#define __NR_io_uring_register 427  /* (5.1) */
#endif

/* ---- io_uring_setup() flags: IORING_SETUP_* (struct io_uring_params.flags) ---- */
#define AZX_SETUP_CQSIZE         (1U << 3)   /* (5.5) */
#define AZX_SETUP_CLAMP          (1U << 4)   /* (5.6) */
#define AZX_SETUP_SUBMIT_ALL     (1U << 7)   /* (5.18) */
#define AZX_SETUP_COOP_TASKRUN   (1U << 8)   /* (5.19) */
#define AZX_SETUP_TASKRUN_FLAG   (1U << 9)   /* (5.19) */
#define AZX_SETUP_CQE32          (1U << 11)  /* (5.19) */
#define AZX_SETUP_SINGLE_ISSUER  (1U << 12)  /* (6.0) */
#define AZX_SETUP_DEFER_TASKRUN  (1U << 13)  /* (6.1) */

/* ---- ring flags: IORING_SQ_* (sq_off.flags), IORING_CQ_* (cq_off.flags) ---- */
#define AZX_SQ_CQ_OVERFLOW       (1U << 1)   /* (5.8) */
#define AZX_SQ_TASKRUN           (1U << 2)   /* (5.19) */
#define AZX_CQ_EVENTFD_DISABLED  (1U << 0)   /* (5.8) */

/* ---- io_uring_enter() flags: IORING_ENTER_* ---- */
#define AZX_ENTER_GETEVENTS      (1U << 0)   /* (5.1) */

/* ---- features: IORING_FEAT_* (struct io_uring_params.features) ---- */
#define AZX_FEAT_NODROP          (1U << 1)   /* (5.5) */

/* ---- mmap() offsets on the ring fd: IORING_OFF_* ---- */
#define AZX_OFF_SQ_RING  0ULL                /* (5.1) */
#define AZX_OFF_CQ_RING  0x8000000ULL        /* (5.1) */
#define AZX_OFF_SQES     0x10000000ULL       /* (5.1) */

/* ---- opcodes: enum io_uring_op, IORING_OP_* ---- */
#define AZX_OP_NOP               0           /* (5.1) */
#define AZX_OP_POLL_ADD          6           /* (5.1) */
#define AZX_OP_ASYNC_CANCEL      14          /* (5.5) */
#define AZX_OP_READ              22          /* (5.6) */
#define AZX_OP_RECV              27          /* (5.6) */
#define AZX_OP_RECV_ZC           58          /* (6.15) */

/* ---- SQE flags and per-op flags ---- */
#define AZX_SQE_BUFFER_SELECT (1U << 5)      /* IOSQE_BUFFER_SELECT (5.7) */
#define AZX_RECV_MULTISHOT    (1U << 1)      /* IORING_RECV_MULTISHOT, in sqe->ioprio (6.0) */
#define AZX_RWF_NOWAIT        0x00000008     /* RWF_NOWAIT (include/uapi/linux/fs.h), in sqe->rw_flags (4.14) */

/* ---- CQE flags: IORING_CQE_F_*, IORING_CQE_BUFFER_SHIFT ---- */
#define AZX_CQE_F_BUFFER          (1U << 0)  /* (5.7) */
#define AZX_CQE_F_MORE            (1U << 1)  /* (5.13) */
#define AZX_CQE_F_BUF_MORE        (1U << 4)  /* incremental buffer: it goes on in the next completion (6.12) */
#define AZX_CQE_BUFFER_SHIFT      16         /* buffer id in cqe->flags (5.7) */

/* ---- struct io_uring_buf_reg flags: IOU_PBUF_RING_* ---- */
#define AZX_PBUF_RING_INC         2          /* buffers consumed incrementally (6.12) */

/* ---- io_uring_register() opcodes: enum io_uring_register_op, IORING_REGISTER_* ---- */
#define AZX_REGISTER_EVENTFD      4          /* (5.1) */
#define AZX_REGISTER_PROBE        8          /* (5.6) */
#define AZX_REGISTER_PBUF_RING    22         /* (5.19) */
#define AZX_UNREGISTER_PBUF_RING  23         /* (5.19) */
#define AZX_REGISTER_ZCRX_IFQ     32         /* (6.15) */
#define AZX_REGISTER_QUERY        35         /* (6.18) */
#define AZX_REGISTER_ZCRX_CTRL    36         /* (6.19) */

/* ---- queries: enum io_uring_query_op, IO_URING_QUERY_* (io_uring/query.h) ---- */
#define AZX_QUERY_ZCRX            1          /* (6.19) */

/* ---- zcrx ---- */
#define AZX_ZCRX_AREA_SHIFT       48         /* IORING_ZCRX_AREA_SHIFT: area token in rqe/cqe off (6.15) */
#define AZX_ZCRX_REG_IMPORT       1          /* enum zcrx_reg_flags, ZCRX_REG_IMPORT (6.19) */
#define AZX_ZCRX_REG_NODEV        2          /* ZCRX_REG_NODEV (7.1) */
#define AZX_ZCRX_CTRL_FLUSH_RQ    0          /* enum zcrx_ctrl_op, ZCRX_CTRL_FLUSH_RQ (6.19) */
#define AZX_ZCRX_CTRL_EXPORT      1          /* ZCRX_CTRL_EXPORT (6.19) */
#define AZX_ZCRX_CTRL_ARM_NOTIFICATION 2     /* ZCRX_CTRL_ARM_NOTIFICATION (7.2) */
#define AZX_ZCRX_NOTIF_NO_BUFFERS (1U << 0)  /* zcrx notification types (7.2) */
#define AZX_ZCRX_NOTIF_COPY       (1U << 1)  /* (7.2) */
#define AZX_ZCRX_FEATURE_RX_PAGE_SIZE (1U << 0)  /* io_uring_query_zcrx.features: rx_buf_len (7.0) */
#define AZX_ZCRX_FEATURE_NOTIFICATION (1U << 1)  /* io_uring_query_zcrx.features (7.2) */
#define AZX_ZCRX_NOTIF_DESC_FLAG_STATS (1U << 0)  /* zcrx_event_desc.flags: stats_offset is valid (7.2) */
/* what a notification CQE's res says: an event *type*, not a mask (7.2) */
#define AZX_ZCRX_EVENT_ALLOC_FAIL 0          /* the area ran dry */
#define AZX_ZCRX_EVENT_COPY       1          /* the kernel copied instead of placing data in the area */

/* ---- memory regions: IORING_MEM_REGION_TYPE_* ---- */
#define AZX_MEM_REGION_TYPE_USER  1          /* (6.13) */

/* ---- structs ---- */

/* struct io_sqring_offsets, struct io_cqring_offsets (5.1; user_addr 6.5) */
struct azx_sqring_offsets { uint32_t head, tail, ring_mask, ring_entries, flags, dropped, array, resv1; uint64_t user_addr; };
struct azx_cqring_offsets { uint32_t head, tail, ring_mask, ring_entries, overflow, cqes, flags, resv1; uint64_t user_addr; };

/* struct io_uring_params (5.1) */
struct azx_params {
    uint32_t sq_entries, cq_entries, flags, sq_thread_cpu, sq_thread_idle, features, wq_fd, resv[3];
    struct azx_sqring_offsets sq_off;
    struct azx_cqring_offsets cq_off;
};

/* struct io_uring_sqe (5.1), the union members we use named: op_flags is the
 * rw_flags/msg_flags/... union, zcrx_ifq_idx (6.15) shares file_index's slot */
struct azx_sqe {
    uint8_t opcode, flags; uint16_t ioprio; int32_t fd;
    uint64_t off, addr; uint32_t len, op_flags; uint64_t user_data;
    uint16_t buf_index, personality; uint32_t zcrx_ifq_idx;
    uint64_t addr3, pad2;
};

/* struct io_uring_cqe (5.1; big_cqe 5.19): 16 bytes, 32 with IORING_SETUP_CQE32 */
struct azx_cqe {
    uint64_t user_data;
    int32_t res;
    uint32_t flags;
    uint64_t big_cqe[];
};

/* struct io_uring_buf (5.19): one provided-buffer ring entry. In struct
 * io_uring_buf_ring the ring's tail overlays entry 0's resv (u16 at byte 14). */
struct azx_buf { uint64_t addr; uint32_t len; uint16_t bid, resv; };

/* struct io_uring_buf_reg (5.19) */
struct azx_buf_reg { uint64_t ring_addr; uint32_t ring_entries; uint16_t bgid, flags; uint64_t resv[3]; };

/* struct io_uring_probe_op, struct io_uring_probe (5.6) */
struct azx_probe_op { uint8_t op, resv; uint16_t flags; uint32_t resv2; };
struct azx_probe { uint8_t last_op, ops_len; uint16_t resv; uint32_t resv2[3]; struct azx_probe_op ops[256]; };

/* struct io_uring_region_desc (6.13) */
struct azx_region_desc { uint64_t user_addr, size; uint32_t flags, id; uint64_t mmap_offset, resv[4]; };

/* struct io_uring_zcrx_rqe (6.15): one refill ring entry */
struct azx_zcrx_rqe { uint64_t off; uint32_t len, pad; };

/* struct io_uring_zcrx_cqe (6.15): the second half of a 32-byte RECV_ZC CQE */
struct azx_zcrx_cqe { uint64_t off, pad; };

/* struct io_uring_zcrx_offsets (6.15) */
struct azx_zcrx_offsets { uint32_t head, tail, rqes, resv2; uint64_t resv[2]; };

/* struct io_uring_zcrx_area_reg (6.15) */
struct azx_zcrx_area_reg { uint64_t addr, len, rq_area_token; uint32_t flags, dmabuf_fd; uint64_t resv2[2]; };

/* struct io_uring_zcrx_ifq_reg (6.15; rx_buf_len 7.0, notif_desc 7.2) */
struct azx_zcrx_ifq_reg {
    uint32_t if_idx, if_rxq, rq_entries, flags;
    uint64_t area_ptr, region_ptr;
    struct azx_zcrx_offsets offsets;
    uint32_t zcrx_id, rx_buf_len;
    uint64_t notif_desc;          /* 7.2: struct zcrx_notification_desc * */
    uint64_t resv[2];
};

/* struct zcrx_notification_desc (7.2; the kernel's zcrx_event_desc) */
struct azx_zcrx_notif_desc { uint64_t user_data; uint32_t type_mask, flags; uint64_t stats_offset, resv2[9]; };

/* struct zcrx_stats (7.2): the statistics the kernel keeps, at stats_offset in the
 * refill region; cumulative, written by the kernel as it copies (copy fallback) */
struct azx_zcrx_stats { uint64_t copy_count, copy_bytes; };

/* struct io_uring_zcrx_ctrl (6.19): u is the per-op union */
struct azx_zcrx_ctrl { uint32_t zcrx_id, op; uint64_t resv[2]; uint64_t u[6]; };

/* struct io_uring_query_hdr (6.18), struct io_uring_query_zcrx (6.19) */
struct azx_query_hdr { uint64_t next_entry, query_data; uint32_t query_op, size; int32_t result; uint32_t resv[3]; };
struct azx_query_zcrx_raw { uint64_t register_flags, area_flags; uint32_t nr_ctrl_opcodes, features, rq_hdr_size, rq_hdr_alignment; uint64_t resv2; };

/* ---- layout checks ---- */
_Static_assert(sizeof(struct azx_sqring_offsets) == 40, "sqring_offsets");
_Static_assert(sizeof(struct azx_cqring_offsets) == 40, "cqring_offsets");
_Static_assert(sizeof(struct azx_params) == 120, "params");
_Static_assert(offsetof(struct azx_params, sq_off) == 40, "params.sq_off");
_Static_assert(offsetof(struct azx_params, cq_off) == 80, "params.cq_off");
_Static_assert(sizeof(struct azx_sqe) == 64, "sqe");
_Static_assert(offsetof(struct azx_sqe, addr) == 16, "sqe.addr");
_Static_assert(offsetof(struct azx_sqe, user_data) == 32, "sqe.user_data");
_Static_assert(offsetof(struct azx_sqe, buf_index) == 40, "sqe.buf_index");
_Static_assert(offsetof(struct azx_sqe, zcrx_ifq_idx) == 44, "sqe.zcrx_ifq_idx");
_Static_assert(sizeof(struct azx_cqe) == 16, "cqe");
_Static_assert(offsetof(struct azx_cqe, res) == 8, "cqe.res");
_Static_assert(offsetof(struct azx_cqe, flags) == 12, "cqe.flags");
_Static_assert(offsetof(struct azx_cqe, big_cqe) == 16, "cqe.big_cqe");
_Static_assert(sizeof(struct azx_buf) == 16, "buf");
_Static_assert(offsetof(struct azx_buf, len) == 8, "buf.len");
_Static_assert(offsetof(struct azx_buf, bid) == 12, "buf.bid");
_Static_assert(offsetof(struct azx_buf, resv) == 14, "buf.resv (the ring tail)");
_Static_assert(sizeof(struct azx_buf_reg) == 40, "buf_reg");
_Static_assert(sizeof(struct azx_probe_op) == 8, "probe_op");
_Static_assert(sizeof(struct azx_probe) == 16 + 256 * 8, "probe");
_Static_assert(sizeof(struct azx_region_desc) == 64, "region");
_Static_assert(offsetof(struct azx_region_desc, mmap_offset) == 24, "region.mmap_offset");
_Static_assert(sizeof(struct azx_zcrx_rqe) == 16, "zcrx_rqe");
_Static_assert(offsetof(struct azx_zcrx_rqe, len) == 8, "zcrx_rqe.len");
_Static_assert(sizeof(struct azx_zcrx_cqe) == 16, "zcrx_cqe");
_Static_assert(sizeof(struct azx_zcrx_offsets) == 32, "zcrx_offsets");
_Static_assert(sizeof(struct azx_zcrx_area_reg) == 48, "area_reg");
_Static_assert(offsetof(struct azx_zcrx_area_reg, rq_area_token) == 16, "area_reg.rq_area_token");
_Static_assert(sizeof(struct azx_zcrx_ifq_reg) == 96, "ifq_reg");
_Static_assert(offsetof(struct azx_zcrx_ifq_reg, offsets) == 32, "ifq_reg.offsets");
_Static_assert(offsetof(struct azx_zcrx_ifq_reg, zcrx_id) == 64, "ifq_reg.zcrx_id");
_Static_assert(offsetof(struct azx_zcrx_ifq_reg, notif_desc) == 72, "ifq_reg.notif_desc");
_Static_assert(sizeof(struct azx_zcrx_notif_desc) == 96, "notif_desc");
_Static_assert(offsetof(struct azx_zcrx_notif_desc, stats_offset) == 16, "notif_desc.stats_offset");
_Static_assert(sizeof(struct azx_zcrx_stats) == 16, "zcrx_stats");
_Static_assert(sizeof(struct azx_zcrx_ctrl) == 72, "ctrl");
_Static_assert(offsetof(struct azx_zcrx_ctrl, u) == 24, "ctrl.u");
_Static_assert(sizeof(struct azx_query_hdr) == 40, "query_hdr");
_Static_assert(offsetof(struct azx_query_hdr, result) == 24, "query_hdr.result");
_Static_assert(sizeof(struct azx_query_zcrx_raw) == 40, "query_zcrx");

#endif /* AIOZCRX_UAPI_H */
