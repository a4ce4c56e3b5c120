# POSIX / Linux declarations used by the relay core (iim/_fastmux.pyx),
# declared once (uvloop style). Only what iim calls is declared; struct
# layouts come from the system headers (Cython emits the C names, never its
# own copy of a layout). Every function is callable without the GIL.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t

cdef extern from "<errno.h>" nogil:
    int errno
    int EAGAIN
    int EWOULDBLOCK
    int EINTR
    int EMFILE
    int ENFILE
    int ENOBUFS
    int ENOMEM
    int ECONNABORTED
    int EPROTO
    int EPERM

cdef extern from "<string.h>" nogil:
    char *strerror_r(int errnum, char *buf, size_t buflen)   # the GNU variant

cdef extern from "<unistd.h>" nogil:
    ctypedef long ssize_t
    ssize_t read(int fd, void *buf, size_t count)
    ssize_t write(int fd, const void *buf, size_t count)
    int close(int fd)

cdef extern from "<fcntl.h>" nogil:
    int open(const char *path, int flags)
    int fcntl(int fd, int cmd, ...)
    int F_GETFL
    int F_SETFL
    int O_NONBLOCK
    int O_RDONLY
    int O_CLOEXEC

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    ctypedef int clockid_t
    cdef struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(clockid_t clock, timespec *ts)
    clockid_t CLOCK_MONOTONIC

cdef extern from "<poll.h>" nogil:
    ctypedef unsigned long nfds_t
    cdef struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, nfds_t nfds, int timeout)
    int ppoll(pollfd *fds, nfds_t nfds, const timespec *tmo, const void *sigmask)
    short POLLIN
    short POLLOUT

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    ctypedef unsigned short sa_family_t
    cdef struct sockaddr:
        sa_family_t sa_family
    cdef struct sockaddr_storage:
        sa_family_t ss_family
    int AF_INET
    int AF_INET6
    int SOCK_NONBLOCK
    int SOCK_CLOEXEC
    int MSG_NOSIGNAL
    int MSG_PEEK
    int SOL_SOCKET
    int accept4(int fd, sockaddr *addr, socklen_t *addrlen, int flags)
    int getsockname(int fd, sockaddr *addr, socklen_t *addrlen)
    int setsockopt(int fd, int level, int optname, const void *optval, socklen_t optlen)
    int getsockopt(int fd, int level, int optname, void *optval, socklen_t *optlen)
    ssize_t send(int fd, const void *buf, size_t n, int flags)
    ssize_t recv(int fd, void *buf, size_t n, int flags)

cdef extern from "<netinet/in.h>" nogil:
    cdef struct in_addr:
        uint32_t s_addr                      # network byte order
    cdef struct in6_addr:
        uint8_t s6_addr[16]
    cdef struct sockaddr_in:
        sa_family_t sin_family
        uint16_t sin_port                    # network byte order
        in_addr sin_addr
    cdef struct sockaddr_in6:
        sa_family_t sin6_family
        uint16_t sin6_port                   # network byte order
        in6_addr sin6_addr
    int IPPROTO_TCP
    uint16_t ntohs(uint16_t v)

cdef extern from "<netinet/tcp.h>" nogil:
    int TCP_NODELAY

cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_mutexattr_t:
        pass
    int pthread_mutex_init(pthread_mutex_t *mutex, const pthread_mutexattr_t *attr)
    int pthread_mutex_destroy(pthread_mutex_t *mutex)
    int pthread_mutex_lock(pthread_mutex_t *mutex)
    int pthread_mutex_unlock(pthread_mutex_t *mutex)

# GCC/Clang atomic builtins (type-generic in C; declared here for the one
# type each is used with). Counters shared between relay threads use them.
cdef extern from * nogil:
    int __ATOMIC_RELAXED
    int __ATOMIC_SEQ_CST
    long __atomic_add_fetch(long *ptr, long value, int order)
    long __atomic_sub_fetch(long *ptr, long value, int order)
    long __atomic_load_n(long *ptr, int order)
    void __atomic_store_n(long *ptr, long value, int order)
