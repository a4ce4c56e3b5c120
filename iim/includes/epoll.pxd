# Linux readiness notification used by the relay core: epoll and eventfd,
# declared once (uvloop style). struct epoll_event is packed on x86-64; the
# layout is the header's, never Cython's. Callable without the GIL.

from libc.stdint cimport uint32_t, uint64_t

cdef extern from "<sys/epoll.h>" nogil:
    ctypedef union epoll_data_t:
        void *ptr
        int fd
        uint32_t u32
        uint64_t u64

    cdef struct epoll_event:
        uint32_t events
        epoll_data_t data

    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event *event)
    int epoll_wait(int epfd, epoll_event *events, int maxevents, int timeout)

cdef extern from *:
    """
    #include <sys/epoll.h>
    #include <sys/syscall.h>
    #include <unistd.h>
    #include <time.h>
    #include <errno.h>
    /* epoll_wait with a timeout in nanoseconds: epoll_pwait2 (Linux 5.11; called
       through syscall() so that older headers build too). A kernel without it
       (ENOSYS, remembered) gets epoll_wait with the timeout rounded up to the
       millisecond. */
    static int iim_epoll_pwait2_missing;
    static int iim_epoll_wait_ns(int epfd, struct epoll_event *events, int maxevents,
                                 long long ns) {
    #ifdef SYS_epoll_pwait2
        if (!iim_epoll_pwait2_missing) {
            struct timespec ts = { ns / 1000000000LL, ns % 1000000000LL };
            int r = (int)syscall(SYS_epoll_pwait2, epfd, events, maxevents, &ts, NULL, 0);
            if (r >= 0 || errno != ENOSYS)
                return r;
            iim_epoll_pwait2_missing = 1;
        }
    #endif
        return epoll_wait(epfd, events, maxevents, (int)((ns + 999999) / 1000000));
    }
    """
    int iim_epoll_wait_ns(int epfd, epoll_event *events, int maxevents, long long ns) nogil

    int EPOLL_CLOEXEC
    int EPOLL_CTL_ADD
    int EPOLL_CTL_DEL
    int EPOLL_CTL_MOD
    uint32_t EPOLLIN
    uint32_t EPOLLOUT
    uint32_t EPOLLERR
    uint32_t EPOLLHUP
    uint32_t EPOLLRDHUP
    uint32_t EPOLLET

cdef extern from "<sys/eventfd.h>" nogil:
    ctypedef uint64_t eventfd_t
    int eventfd(unsigned int initval, int flags)
    int eventfd_read(int fd, eventfd_t *value)
    int eventfd_write(int fd, eventfd_t value)
    int EFD_NONBLOCK
    int EFD_CLOEXEC
