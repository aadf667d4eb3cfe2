/*
 * aiozcrx._abi: io_uring_register and what it sets up: the ring's eventfd, the
 * opcode probe, zcrx instances (register, import, export, control, query) and
 * provided buffer rings.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/syscall.h>

#include "abi.h"

static long azx_sys_register(int fd, unsigned op, void *arg, unsigned nr)
{
    long r = syscall(__NR_io_uring_register, fd, op, arg, nr);
    return r < 0 ? -errno : r;
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
    memcpy(&c.u[0], &arg0, sizeof arg0);   /* the union member's first u32 */
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
    uint32_t zcrx_fd;
    memcpy(&zcrx_fd, &c.u[0], sizeof zcrx_fd);
    return ret > 0 ? (int)ret : (int)zcrx_fd;
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
