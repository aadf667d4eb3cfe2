/*
 * aiozcrx._abi: memory for receive buffers and rings: anonymous mappings,
 * munmap, and keeping pinned memory out of forked children.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sys/mman.h>

#include "abi.h"

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

int azx_munmap(uintptr_t addr, size_t len)
{
    return munmap((void *)addr, len) < 0 ? -errno : 0;
}
