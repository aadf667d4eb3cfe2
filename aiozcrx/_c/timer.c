/*
 * aiozcrx._abi: the periodic timerfd the engines watch (see _kernel.PeriodicTimer).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <time.h>
#include <sys/timerfd.h>

#include "abi.h"

/* A periodic timer the event loop watches as a reader (see _kernel.PeriodicTimer:
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
