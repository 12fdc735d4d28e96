/*
 * No traffic off the machine: an LD_PRELOAD shim for the test runs (scripts/offline/run).
 *
 * connect(), and sendto()/sendmsg()/sendmmsg() with a destination, are allowed to Unix
 * sockets, netlink, loopback (127.0.0.0/8, ::1, ::ffff:127.0.0.0/104) and the unspecified
 * address (0.0.0.0 and :: reach this host); anything else fails with ENETUNREACH and appends
 * one line to the file named by AUTHPIPE_OFFLINE_LOG:
 *
 *   denied connect pid=1234 program=node to 203.0.113.1 port 443
 *
 * A datagram socket's line says "udp" instead of "denied": it is refused all the same (and a UDP
 * socket whose connect() failed cannot send), but the wrapper does not fail the run for it.
 * What tries that is name lookups and reachability checks (c-ares, Chromium's resolver and its
 * IPv6 probe, a UDP connect that sends nothing), not a request to a provider, which is TCP.
 *
 * One destination is the guard's self-check: 203.0.113.9 port 9 (TEST-NET-3, discard) is refused
 * like any other but logged as "probe", which the wrapper does not count, so that a test can
 * check from inside a guarded run that the guard is there.
 *
 * What it cannot see: calls made inside the C library itself (glibc's DNS resolver sends its
 * queries through internal aliases, so name lookups still reach the configured nameserver: a
 * lookup is not a connection to a provider), raw syscalls that bypass libc, and processes
 * started with an environment that drops LD_PRELOAD.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* 127.0.0.0/8, or 0.0.0.0 (which Linux connects to this host). */
static int local_ipv4(uint32_t ip) { return (ip >> 24) == 127 || ip == INADDR_ANY; }

static int allowed(const struct sockaddr *addr, socklen_t len) {
  if (addr == NULL || len < (socklen_t)sizeof(sa_family_t)) return 1; /* no destination: a connected socket */
  switch (addr->sa_family) {
  case AF_UNIX:
  case AF_NETLINK:
  case AF_UNSPEC: /* connect(AF_UNSPEC) dissolves a UDP socket's association */
    return 1;
  case AF_INET: {
    if (len < (socklen_t)sizeof(struct sockaddr_in)) return 0;
    return local_ipv4(ntohl(((const struct sockaddr_in *)addr)->sin_addr.s_addr));
  }
  case AF_INET6: {
    if (len < (socklen_t)sizeof(struct sockaddr_in6)) return 0;
    const struct in6_addr *ip = &((const struct sockaddr_in6 *)addr)->sin6_addr;
    if (IN6_IS_ADDR_LOOPBACK(ip) || IN6_IS_ADDR_UNSPECIFIED(ip)) return 1;
    uint32_t mapped;
    memcpy(&mapped, &ip->s6_addr[12], sizeof mapped);
    return IN6_IS_ADDR_V4MAPPED(ip) && local_ipv4(ntohl(mapped));
  }
  default:
    return 0;
  }
}

/* Appends one line per refusal, in one write (O_APPEND keeps lines of concurrent processes whole). */
static void note(const char *verdict, const char *call, const struct sockaddr *addr) {
  const char *path = getenv("AUTHPIPE_OFFLINE_LOG");
  char where[INET6_ADDRSTRLEN] = "?";
  unsigned port = 0;
  if (addr->sa_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)addr;
    inet_ntop(AF_INET, &in->sin_addr, where, sizeof where);
    port = ntohs(in->sin_port);
  } else if (addr->sa_family == AF_INET6) {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)addr;
    inet_ntop(AF_INET6, &in6->sin6_addr, where, sizeof where);
    port = ntohs(in6->sin6_port);
  } else {
    snprintf(where, sizeof where, "family %d", addr->sa_family);
  }
  char line[512];
  int n = snprintf(line, sizeof line, "%s %s pid=%d program=%s to %s port %u\n", verdict, call, (int)getpid(), program_invocation_short_name, where, port);
  if (n <= 0) return;
  if (n >= (int)sizeof line) n = sizeof line - 1;
  int fd = path && *path ? open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600) : STDERR_FILENO;
  if (fd < 0) return;
  ssize_t written = write(fd, line, (size_t)n);
  (void)written;
  if (fd != STDERR_FILENO) close(fd);
}

static int is_probe(const struct sockaddr *addr) {
  const struct sockaddr_in *in = (const struct sockaddr_in *)addr;
  return addr->sa_family == AF_INET && ntohl(in->sin_addr.s_addr) == 0xCB007109 /* 203.0.113.9 */ && ntohs(in->sin_port) == 9;
}

static int is_datagram(int fd) {
  int type = 0;
  socklen_t len = sizeof type;
  return getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0 && type == SOCK_DGRAM;
}

static int refuse(int fd, const char *call, const struct sockaddr *addr) {
  note(is_probe(addr) ? "probe" : is_datagram(fd) ? "udp" : "denied", call, addr);
  errno = ENETUNREACH;
  return -1;
}

#define REAL(name) ((__typeof__(&name))dlsym(RTLD_NEXT, #name))

int connect(int fd, const struct sockaddr *addr, socklen_t len) {
  if (!allowed(addr, len)) return refuse(fd, "connect", addr);
  return REAL(connect)(fd, addr, len);
}

ssize_t sendto(int fd, const void *buf, size_t size, int flags, const struct sockaddr *addr, socklen_t len) {
  if (!allowed(addr, len)) return refuse(fd, "sendto", addr);
  return REAL(sendto)(fd, buf, size, flags, addr, len);
}

ssize_t sendmsg(int fd, const struct msghdr *msg, int flags) {
  if (msg && !allowed(msg->msg_name, msg->msg_namelen)) return refuse(fd, "sendmsg", msg->msg_name);
  return REAL(sendmsg)(fd, msg, flags);
}

int sendmmsg(int fd, struct mmsghdr *msgs, unsigned int count, int flags) {
  for (unsigned int i = 0; msgs && i < count; i++) {
    if (!allowed(msgs[i].msg_hdr.msg_name, msgs[i].msg_hdr.msg_namelen)) return refuse(fd, "sendmmsg", msgs[i].msg_hdr.msg_name);
  }
  return REAL(sendmmsg)(fd, msgs, count, flags);
}
