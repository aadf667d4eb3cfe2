/*
 * aiozcrx._abi: does this kernel signal a DEFER_TASKRUN ring's eventfd inside the
 * wake-up that queues a completion, or later?
 *
 * Why it matters: aiozcrx's rings run with SINGLE_ISSUER | DEFER_TASKRUN (RECV_ZC
 * requires it), and by default the event loop learns of new completions from the
 * ring's registered eventfd. Some kernels (seen on 6.18.44-fc builds; newer
 * io_uring code carries the same deferral, to avoid a lock recursion through
 * epoll) signal that eventfd from an RCU callback when the completion starts in a
 * socket's wake-up (io_poll_wake: multishot recv, RECV_ZC, POLL_ADD), one grace
 * period (12-20 ms) after the data arrived. Nothing is lost, everything is late.
 * The engines then wake on the sockets' own readiness instead (engines/ring.py).
 *
 * How: a throwaway ring with a registered eventfd, a POLL_ADD on one end of a
 * socketpair, a write() to the other end. A kernel that signals inline has made
 * the eventfd readable before write() returns; one that defers has not. No timing
 * threshold decides: only whether the counter is non-zero right after write().
 * The two answers are not equally certain. An unreadable eventfd proves deferral:
 * a kernel that signals inline never leaves it unreadable. A readable one does not
 * prove the signal was inline: a grace period can end between the two syscalls
 * (on the one-CPU 7.2 guest a timer tick is enough: 9 trials in 3000 read so).
 * So one unreadable trial answers "deferred", and "inline" takes PROBE_INLINE_TRIALS
 * readable trials in a row, each on a fresh ring. A readable trial whose syscalls
 * were far apart (the thread was preempted) counts for neither; a probe that never
 * settles answers "deferred", whose wake path (the sockets') works on either kernel.
 *
 * Returns 1 (inline), 0 (deferred), or -errno where the probe could not run
 * (no io_uring, no DEFER_TASKRUN, out of fds): the caller then has no eventfd
 * question to answer, or says why it could not ask.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>

#include "abi.h"

#define PROBE_INLINE_TRIALS 5       /* readable right after write() this many times: inline */
#define PROBE_MAX_ATTEMPTS 15        /* trials at most, preempted ones included */
#define PROBE_MAX_GAP_NS 1000000LL   /* write() -> check further apart than this: counts for neither */

static long long probe_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* One trial. 1 inline, 0 deferred, 2 inconclusive (preempted), -errno. */
static int probe_once(void)
{
    struct azx_params p;
    int ring = -1, efd = -1, sv[2] = {-1, -1}, ret;
    void *sq = MAP_FAILED, *sqes = MAP_FAILED;
    size_t sq_len = 0, sqes_len = 0;

    memset(&p, 0, sizeof p);
    p.flags = AZX_SETUP_SINGLE_ISSUER | AZX_SETUP_DEFER_TASKRUN;
    ring = (int)syscall(__NR_io_uring_setup, 4, &p);
    if (ring < 0) { ret = -errno; goto out; }
    efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (efd < 0) { ret = -errno; goto out; }
    if (syscall(__NR_io_uring_register, ring, AZX_REGISTER_EVENTFD, &efd, 1) < 0) { ret = -errno; goto out; }
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0) { ret = -errno; goto out; }

    sq_len = p.sq_off.array + p.sq_entries * sizeof(uint32_t);
    sq = mmap(NULL, sq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring, AZX_OFF_SQ_RING);
    if (sq == MAP_FAILED) { ret = -errno; goto out; }
    sqes_len = p.sq_entries * sizeof(struct azx_sqe);
    sqes = mmap(NULL, sqes_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring, AZX_OFF_SQES);
    if (sqes == MAP_FAILED) { ret = -errno; goto out; }

    /* one POLL_ADD (POLLIN) on sv[0], in SQ slot 0 */
    struct azx_sqe *s = sqes;
    memset(s, 0, sizeof *s);
    s->opcode = AZX_OP_POLL_ADD;
    s->fd = sv[0];
    s->op_flags = POLLIN;            /* poll32_events shares the word with rw_flags */
    s->user_data = 1;
    uint32_t *array = (uint32_t *)((char *)sq + p.sq_off.array);
    uint32_t *ktail = (uint32_t *)((char *)sq + p.sq_off.tail);
    array[0] = 0;
    __atomic_store_n(ktail, *ktail + 1, __ATOMIC_RELEASE);
    long sub = syscall(__NR_io_uring_enter, ring, 1, 0, 0, NULL, 0);
    if (sub != 1) { ret = sub < 0 ? -errno : -EIO; goto out; }

    /* the poll is armed on an empty socket: nothing has been signalled yet */
    uint64_t v;
    if (read(efd, &v, sizeof v) == (ssize_t)sizeof v) { ret = -EPROTO; goto out; }

    long long t0 = probe_now_ns();
    if (write(sv[1], "x", 1) != 1) { ret = -errno; goto out; }
    int readable = read(efd, &v, sizeof v) == (ssize_t)sizeof v;
    long long gap = probe_now_ns() - t0;
    ret = readable ? (gap > PROBE_MAX_GAP_NS ? 2 : 1) : 0;
out:
    if (sqes != MAP_FAILED) munmap(sqes, sqes_len);
    if (sq != MAP_FAILED) munmap(sq, sq_len);
    if (sv[0] >= 0) close(sv[0]);
    if (sv[1] >= 0) close(sv[1]);
    if (ring >= 0) close(ring);    /* cancels the poll request */
    if (efd >= 0) close(efd);
    return ret;
}

int azx_probe_eventfd_inline(void)
{
    int inline_trials = 0;
    for (int i = 0; i < PROBE_MAX_ATTEMPTS && inline_trials < PROBE_INLINE_TRIALS; i++) {
        int ret = probe_once();
        if (ret <= 0)
            return ret;              /* unreadable once: deferred; or -errno */
        if (ret == 1)
            inline_trials++;
    }
    return inline_trials == PROBE_INLINE_TRIALS;
}
