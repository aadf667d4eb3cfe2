/* wakefloor: what the kernel alone charges a receiver per wake-up, in C, with no
 * Python and no event loop library, for each way of being woken. Driven by
 * benchmarks/wakefloor.py, which runs it against records.py's sender beside the
 * Python receivers in the same rounds.
 *
 *   wakefloor MODE LISTEN_FD NCONNS
 *
 * MODE:
 *   read         epoll on the sockets (level-triggered), one read(2) per readiness
 *                into a 256 KiB buffer, again only if it came back full: what
 *                uvloop/libuv does for a stream.
 *   uring-evfd   what aiozcrx does: SINGLE_ISSUER | DEFER_TASKRUN ring, multishot
 *                recv into a provided buffer ring, the ring's registered eventfd in
 *                epoll; a wake-up is epoll_wait and one io_uring_enter(GETEVENTS)
 *                that also carries the eventfd's reset as an IORING_OP_READ SQE,
 *                the eventfd switched off (IORING_CQ_EVENTFD_DISABLED) while we
 *                work, so the completions our own enter posts do not signal it.
 *   uring-evfd-read2  the same, the eventfd reset by read(2) instead.
 *   uring-ringfd the ring fd itself in epoll, no eventfd, no DEFER_TASKRUN: task
 *                work runs when the kernel interrupts the sleeping task, so
 *                completions are already posted when epoll_wait returns.
 *
 * Prints one JSON line with the keys records.py's receivers print. Each
 * connection gets one byte 'g' once everything is set up (the sender's start),
 * and the window ends at the last EOF. getrusage(RUSAGE_SELF) brackets it.
 *
 * Raw syscalls and our own ring set-up: no liburing, so nothing to install. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/io_uring.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#ifndef IORING_SETUP_SINGLE_ISSUER
#define IORING_SETUP_SINGLE_ISSUER (1U << 12)
#endif
#ifndef IORING_SETUP_DEFER_TASKRUN
#define IORING_SETUP_DEFER_TASKRUN (1U << 13)
#endif
#ifndef RWF_NOWAIT
#define RWF_NOWAIT 0x00000008
#endif

#define MAXCONN 256
#define MAXBUFS 1024
#ifndef IOU_PBUF_RING_INC
#define IOU_PBUF_RING_INC 2
#endif
#ifndef IORING_CQE_F_BUF_MORE
#define IORING_CQE_F_BUF_MORE (1U << 4)
#endif
/* struct io_uring_buf_reg (5.19), declared here: the 16-bit field after bgid is
 * "pad" in older <linux/io_uring.h> and "flags" in 6.12+ ones, so neither name
 * compiles everywhere. */
struct buf_reg {
    uint64_t ring_addr;
    uint32_t ring_entries;
    uint16_t bgid, flags;
    uint64_t resv[3];
};
/* Buffer ring shape, from the environment (defaults: 64 buffers of 64 KiB,
 * aiozcrx's buf_size): WF_BUFS (a power of two), WF_SIZE, WF_INC=1 for
 * incremental buffers (IOU_PBUF_RING_INC, 6.12+), WF_REWIND=1 to point the
 * kernel's current buffer back at its start after each wake-up (inc only). */
static unsigned NBUFS = 64, BUFSZ = 64 * 1024, INC, REWIND;
/* WF_TIMEOUT: epoll_wait's timeout in ms (default -1, none): an event loop with
 * a timer pending sleeps with one, and arming it costs on every wake-up. */
static int TIMEOUT = -1;
/* WF_THP=1: the buffers on 2 MiB-aligned memory with MADV_HUGEPAGE, so the
 * kernel's copies into them need few TLB entries. */
static int THP;
/* WF_TIMING=1: thread CPU time around each io_uring_enter (two clock syscalls
 * each), to compare with aiozcrx's own set_timing figure. */
static int TIMING;
static unsigned long long enter_cpu_ns;

static unsigned long long thread_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ULL + (unsigned long long)ts.tv_nsec;
}
static unsigned posted_at[MAXBUFS];   /* ring index each buffer was last posted at */
static int head_bid = -1;             /* inc: the buffer the kernel is filling */
#define READSZ (256 * 1024)      /* the BufferedProtocol's buffer in records.py */
#define UD_EVFD (~0ULL)

static void die(const char *what, int err)
{
    fprintf(stderr, "wakefloor: %s: %s\n", what, strerror(err));
    exit(1);
}

static double tv(struct timeval t) { return t.tv_sec + t.tv_usec / 1e6; }

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

struct counters {
    unsigned long long bytes, calls, wakeups, completions, enters;
    int open;
};

static int accept_all(int lfd, int n, int *socks)
{
    for (int i = 0; i < n; i++) {
        socks[i] = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (socks[i] < 0)
            die("accept", errno);
    }
    close(lfd);
    return n;
}

static struct rusage u0;
static double t0;

/* The sender's start, and the start of the measured window. */
static void go(int *socks, int n)
{
    getrusage(RUSAGE_SELF, &u0);
    t0 = now();
    for (int i = 0; i < n; i++)
        if (write(socks[i], "g", 1) != 1)
            die("write g", errno);
}

/* An epoll instance watching fd for input. */
static int epoll_on(int fd)
{
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN};
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev))
        die("epoll", errno);
    return ep;
}

/* Sleeps until the one fd of ep is ready (or TIMEOUT); counts a wake-up. */
static void wait_one(int ep, struct counters *c)
{
    struct epoll_event ev;
    while (epoll_wait(ep, &ev, 1, TIMEOUT) < 0) {
        if (errno != EINTR)
            die("epoll_wait", errno);
    }
    c->wakeups++;
}

/* ------------------------------------------------------------ readiness + read */
static void run_read(int *socks, int n, struct counters *c)
{
    static char buf[READSZ];
    int ep = epoll_create1(EPOLL_CLOEXEC);
    for (int i = 0; i < n; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, socks[i], &ev))
            die("epoll_ctl", errno);
    }
    go(socks, n);
    struct epoll_event evs[MAXCONN];
    while (c->open) {
        int k = epoll_wait(ep, evs, MAXCONN, TIMEOUT);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait", errno);
        }
        c->wakeups++;
        for (int j = 0; j < k; j++) {
            int fd = socks[evs[j].data.u32];
            for (;;) {
                ssize_t r = read(fd, buf, sizeof buf);
                if (r < 0 && errno == EAGAIN)
                    break;
                if (r < 0)
                    die("read", errno);
                if (r == 0) {
                    epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
                    c->open--;
                    break;
                }
                c->bytes += r;
                c->calls++;
                if (r < (ssize_t)sizeof buf)
                    break;
            }
        }
    }
    close(ep);
}

/* ------------------------------------------------------------------ io_uring */
struct ring {
    int fd;
    unsigned *sq_head, *sq_tail, *sq_mask, *sq_array, *sq_flags;
    unsigned *cq_head, *cq_tail, *cq_mask, *cq_flags;
    struct io_uring_sqe *sqes;
    struct io_uring_cqe *cqes;
    unsigned sq_pending;
    struct io_uring_buf_ring *br;
    char *bufs;
};

static int ring_setup(struct ring *r, unsigned flags)
{
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    p.flags = flags | IORING_SETUP_CQSIZE;
    p.cq_entries = 4096;
    r->fd = (int)syscall(__NR_io_uring_setup, 64, &p);
    if (r->fd < 0)
        return -errno;
    size_t sq_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    size_t cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    size_t len = sq_len > cq_len ? sq_len : cq_len; /* IORING_FEAT_SINGLE_MMAP (5.4+) */
    char *sq = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd,
                    IORING_OFF_SQ_RING);
    if (sq == MAP_FAILED)
        die("mmap sq", errno);
    r->sqes = mmap(NULL, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQES);
    if (r->sqes == MAP_FAILED)
        die("mmap sqes", errno);
    r->sq_head = (unsigned *)(sq + p.sq_off.head);
    r->sq_tail = (unsigned *)(sq + p.sq_off.tail);
    r->sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
    r->sq_array = (unsigned *)(sq + p.sq_off.array);
    r->sq_flags = (unsigned *)(sq + p.sq_off.flags);
    r->cq_head = (unsigned *)(sq + p.cq_off.head);
    r->cq_tail = (unsigned *)(sq + p.cq_off.tail);
    r->cq_mask = (unsigned *)(sq + p.cq_off.ring_mask);
    r->cq_flags = (unsigned *)(sq + p.cq_off.flags);
    r->cqes = (struct io_uring_cqe *)(sq + p.cq_off.cqes);
    r->sq_pending = 0;
    return 0;
}

static struct io_uring_sqe *sqe_get(struct ring *r)
{
    unsigned tail = *r->sq_tail, idx = tail & *r->sq_mask;
    struct io_uring_sqe *s = &r->sqes[idx];
    memset(s, 0, sizeof *s);
    r->sq_array[idx] = idx;
    __atomic_store_n(r->sq_tail, tail + 1, __ATOMIC_RELEASE);
    r->sq_pending++;
    return s;
}

static int enter(struct ring *r, unsigned flags, struct counters *c)
{
    unsigned n = r->sq_pending;
    r->sq_pending = 0;
    c->enters++;
    unsigned long long t0 = TIMING ? thread_ns() : 0;
    int ret = (int)syscall(__NR_io_uring_enter, r->fd, n, 0, flags, NULL, 0);
    if (TIMING)
        enter_cpu_ns += thread_ns() - t0;
    if (ret < 0 && errno != EINTR && errno != EAGAIN && errno != EBUSY)
        die("io_uring_enter", errno);
    return ret;
}

static void buf_give(struct ring *r, unsigned bid)
{
    /* one buffer back at the tail; published right away (the receiver's own
     * batching is not what this measures) */
    unsigned short tail = r->br->tail;
    struct io_uring_buf *b = &r->br->bufs[tail & (NBUFS - 1)];
    posted_at[bid] = tail & (NBUFS - 1);
    b->addr = (uint64_t)(uintptr_t)(r->bufs + (size_t)bid * BUFSZ);
    b->len = BUFSZ;
    b->bid = (unsigned short)bid;
    __atomic_store_n(&r->br->tail, (unsigned short)(tail + 1), __ATOMIC_RELEASE);
}

static void pbuf_setup(struct ring *r)
{
    r->br = mmap(NULL, NBUFS * sizeof(struct io_uring_buf), PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    size_t len = (size_t)NBUFS * BUFSZ, huge = 2u << 20;
    if (THP) {
        char *p = mmap(NULL, len + huge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            die("mmap buffers", errno);
        r->bufs = (char *)(((uintptr_t)p + huge - 1) & ~(uintptr_t)(huge - 1));
        if (madvise(r->bufs, len, MADV_HUGEPAGE))
            die("madvise", errno);
        memset(r->bufs, 0, len);
    } else {
        r->bufs = mmap(NULL, len, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    }
    if (r->br == MAP_FAILED || r->bufs == MAP_FAILED)
        die("mmap buffers", errno);
    struct buf_reg reg;
    memset(&reg, 0, sizeof reg);
    reg.ring_addr = (uint64_t)(uintptr_t)r->br;
    reg.ring_entries = NBUFS;
    reg.bgid = 1;
    reg.flags = INC ? IOU_PBUF_RING_INC : 0;
    if (syscall(__NR_io_uring_register, r->fd, IORING_REGISTER_PBUF_RING, &reg, 1) < 0)
        die("IORING_REGISTER_PBUF_RING", errno);
    r->br->tail = 0;
    for (unsigned i = 0; i < NBUFS; i++)
        buf_give(r, i);
}

static void arm_recv(struct ring *r, int fd, unsigned i)
{
    struct io_uring_sqe *s = sqe_get(r);
    s->opcode = IORING_OP_RECV;
    s->fd = fd;
    s->ioprio = IORING_RECV_MULTISHOT;
    s->flags = IOSQE_BUFFER_SELECT;
    s->buf_group = 1;
    s->user_data = i;
}

static void arm_evfd_read(struct ring *r, int efd, uint64_t *val)
{
    struct io_uring_sqe *s = sqe_get(r);
    s->opcode = IORING_OP_READ;
    s->fd = efd;
    s->addr = (uint64_t)(uintptr_t)val;
    s->len = sizeof *val;
    s->off = (uint64_t)-1;
    s->rw_flags = RWF_NOWAIT;
    s->user_data = UD_EVFD;
}

/* Reaps every posted completion; returns how many. */
static unsigned drain(struct ring *r, int *socks, struct counters *c)
{
    unsigned head = *r->cq_head, tail = __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE), n = 0;
    for (; head != tail; head++, n++) {
        struct io_uring_cqe *e = &r->cqes[head & *r->cq_mask];
        if (e->user_data == UD_EVFD)
            continue;
        unsigned i = (unsigned)e->user_data;
        c->completions++;
        if (e->res > 0) {
            unsigned bid = e->flags >> IORING_CQE_BUFFER_SHIFT;
            c->bytes += (unsigned)e->res;
            c->calls++;
            if (INC && (e->flags & IORING_CQE_F_BUF_MORE))
                head_bid = (int)bid;      /* the kernel keeps filling it */
            else {
                if (head_bid == (int)bid)
                    head_bid = -1;
                buf_give(r, bid);
            }
        } else if (e->res == 0) {
            c->open--;
            continue;
        } else if (e->res != -ENOBUFS) {
            die("recv completion", -e->res);
        }
        if (!(e->flags & IORING_CQE_F_MORE))
            arm_recv(r, socks[i], i);
    }
    __atomic_store_n(r->cq_head, head, __ATOMIC_RELEASE);
    if (REWIND && head_bid >= 0) {
        /* Everything in it has been consumed, and with DEFER_TASKRUN the kernel
         * touches the ring only inside our io_uring_enter: start it over. */
        struct io_uring_buf *b = &r->br->bufs[posted_at[head_bid]];
        b->addr = (uint64_t)(uintptr_t)(r->bufs + (size_t)head_bid * BUFSZ);
        b->len = BUFSZ;
    }
    return n;
}

static void run_uring_evfd(int *socks, int n, struct counters *c, int sqe_reset)
{
    struct ring r;
    unsigned base = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
    unsigned extra[] = {IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN |
                        IORING_SETUP_TASKRUN_FLAG, 0};
    int ret = -EINVAL;
    for (unsigned k = 0; k < 2 && ret == -EINVAL; k++)
        ret = ring_setup(&r, base | extra[k]);
    if (ret < 0)
        die("io_uring_setup", -ret);
    int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (syscall(__NR_io_uring_register, r.fd, IORING_REGISTER_EVENTFD, &efd, 1) < 0)
        die("IORING_REGISTER_EVENTFD", errno);
    pbuf_setup(&r);
    for (int i = 0; i < n; i++)
        arm_recv(&r, socks[i], (unsigned)i);
    enter(&r, IORING_ENTER_GETEVENTS, c);
    int ep = epoll_on(efd);
    go(socks, n);
    uint64_t val;
    while (c->open) {
        wait_one(ep, c);
        if (sqe_reset)
            arm_evfd_read(&r, efd, &val);
        else if (read(efd, &val, sizeof val) < 0 && errno != EAGAIN)
            die("eventfd read", errno);
        /* as aiozcrx's pump: enter, drain, and enter again while the kernel
         * says task work is left (IORING_SQ_TASKRUN) */
        do {
            __atomic_fetch_or(r.cq_flags, IORING_CQ_EVENTFD_DISABLED, __ATOMIC_SEQ_CST);
            enter(&r, IORING_ENTER_GETEVENTS, c);
            drain(&r, socks, c);
            __atomic_fetch_and(r.cq_flags, ~IORING_CQ_EVENTFD_DISABLED, __ATOMIC_SEQ_CST);
        } while (c->open &&
                 (__atomic_load_n(r.sq_flags, __ATOMIC_ACQUIRE) & IORING_SQ_TASKRUN));
        if (r.sq_pending)
            enter(&r, 0, c);
    }
    close(ep);
    close(efd);
    close(r.fd);
}

static void run_uring_ringfd(int *socks, int n, struct counters *c)
{
    struct ring r;
    int ret = ring_setup(&r, IORING_SETUP_SUBMIT_ALL);
    if (ret == -EINVAL)
        ret = ring_setup(&r, 0);
    if (ret < 0)
        die("io_uring_setup", -ret);
    pbuf_setup(&r);
    for (int i = 0; i < n; i++)
        arm_recv(&r, socks[i], (unsigned)i);
    enter(&r, 0, c);
    int ep = epoll_on(r.fd);
    go(socks, n);
    while (c->open) {
        wait_one(ep, c);
        drain(&r, socks, c);
        if (r.sq_pending)
            enter(&r, 0, c);
    }
    close(ep);
    close(r.fd);
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: wakefloor MODE LISTEN_FD NCONNS\n");
        return 2;
    }
    const char *mode = argv[1], *v;
    if ((v = getenv("WF_BUFS")))
        NBUFS = (unsigned)atoi(v);
    if ((v = getenv("WF_SIZE")))
        BUFSZ = (unsigned)atoi(v);
    THP = (v = getenv("WF_THP")) && *v == '1';
    TIMING = (v = getenv("WF_TIMING")) && *v == '1';
    if ((v = getenv("WF_TIMEOUT")))
        TIMEOUT = atoi(v);
    INC = (v = getenv("WF_INC")) && *v == '1';
    REWIND = INC && (v = getenv("WF_REWIND")) && *v == '1';
    if (NBUFS < 1 || NBUFS > MAXBUFS || (NBUFS & (NBUFS - 1)) || BUFSZ < 4096)
        die("WF_BUFS / WF_SIZE", EINVAL);
    int n = atoi(argv[3]);
    if (n < 1 || n > MAXCONN)
        die("NCONNS", EINVAL);
    int socks[MAXCONN];
    accept_all(atoi(argv[2]), n, socks);
    struct counters c = {.open = n};
    struct rusage u1;
    if (!strcmp(mode, "read"))
        run_read(socks, n, &c);
    else if (!strcmp(mode, "uring-evfd"))
        run_uring_evfd(socks, n, &c, 1);
    else if (!strcmp(mode, "uring-evfd-read2"))
        run_uring_evfd(socks, n, &c, 0);
    else if (!strcmp(mode, "uring-ringfd"))
        run_uring_ringfd(socks, n, &c);
    else
        die(mode, EINVAL);
    double t1 = now();
    getrusage(RUSAGE_SELF, &u1);
    for (int i = 0; i < n; i++)
        close(socks[i]);
    printf("{\"name\": \"c-%s\", \"bytes\": %llu, \"calls\": %llu, \"wall\": %.6f, \"user\": %.6f, "
           "\"sys\": %.6f, \"wakeups\": %llu, \"completions\": %llu, \"enters\": %llu, "
           "\"syscall_cpu_ns\": %llu}\n",
           mode, c.bytes, c.calls, t1 - t0, tv(u1.ru_utime) - tv(u0.ru_utime),
           tv(u1.ru_stime) - tv(u0.ru_stime), c.wakeups, c.completions, c.enters, enter_cpu_ns);
    return 0;
}
