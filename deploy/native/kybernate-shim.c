/*
 * kybernate-shim: runs a job's command inside its PID namespace, as the child of tini:
 *   kybernate-shim --log <file> --exit <file> [--cgroup <dir>]... -- <exe> <args...>
 * Joins the job's cgroups before forking (so the workload and everything it starts is limited), writes the
 * workload's stdout and stderr to <log> in the CRI log format kubelet writes, and records how the workload
 * ended in <exit> (JSON, written atomically) once it is gone. The agent reads both; neither needs the agent
 * to be up while the job runs, so a run's exit status survives an agent restart.
 * Plain poll() on pipes and regular files only: CRIU dumps and restores the shim with its workload.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_LINE 16384 /* kubelet's limit: a longer line is written as P parts */
#define MAX_CGROUPS 16
#define PIPE_GRACE_NS 2000000000LL /* after the workload exits: how long descendants may keep its pipes open */

struct stream {
  int fd;
  const char *name;
  size_t len;
  char buf[MAX_LINE];
};

static int log_fd = -1;
static volatile pid_t child = 0;

/* tini -g forwards a stop to the process group: the workload gets it and exits, the shim stays to record it.
 * Only when the shim is itself pid 1 (no tini) does it forward the signal, as an init would. */
static void on_signal(int sig) {
  if (getpid() == 1 && child > 0) kill(child, sig);
}

static long long now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* RFC3339 UTC with `digits` fractional digits (9: kubelet's RFC3339Nano, 3: the exit record). */
static size_t rfc3339(char *out, size_t n, int digits) {
  struct timespec ts;
  struct tm tm;
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  size_t k = strftime(out, n, "%Y-%m-%dT%H:%M:%S", &tm);
  long frac = ts.tv_nsec;
  for (int i = digits; i < 9; i++) frac /= 10;
  return k + (size_t)snprintf(out + k, n - k, ".%0*ldZ", digits, frac);
}

static void write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return; /* a full disk loses log lines, never the workload */
    p += w;
    n -= (size_t)w;
  }
}

/* One write() per line on an O_APPEND fd: a reader never sees half a line. */
static void emit(struct stream *s, char tag) {
  static char out[MAX_LINE + 64];
  size_t k = rfc3339(out, sizeof out, 9);
  k += (size_t)snprintf(out + k, sizeof out - k, " %s %c ", s->name, tag);
  memcpy(out + k, s->buf, s->len);
  k += s->len;
  out[k++] = '\n';
  write_all(log_fd, out, k);
  s->len = 0;
}

static void feed(struct stream *s, const char *data, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (data[i] == '\n') {
      emit(s, 'F');
      continue;
    }
    if (s->len == MAX_LINE) emit(s, 'P');
    s->buf[s->len++] = data[i];
  }
}

static void drain(struct stream *s) {
  char chunk[65536];
  ssize_t r = read(s->fd, chunk, sizeof chunk);
  if (r < 0 && (errno == EINTR || errno == EAGAIN)) return;
  if (r <= 0) {
    if (s->len > 0) emit(s, 'P'); /* the last bytes before EOF, without a newline */
    close(s->fd);
    s->fd = -1;
    return;
  }
  feed(s, chunk, (size_t)r);
}

static const char *signame(int sig) {
  static const char *names[] = {NULL, "SIGHUP", "SIGINT", "SIGQUIT", "SIGILL", "SIGTRAP", "SIGABRT", "SIGBUS",
    "SIGFPE", "SIGKILL", "SIGUSR1", "SIGSEGV", "SIGUSR2", "SIGPIPE", "SIGALRM", "SIGTERM", "SIGSTKFLT",
    "SIGCHLD", "SIGCONT", "SIGSTOP", "SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGURG", "SIGXCPU", "SIGXFSZ",
    "SIGVTALRM", "SIGPROF", "SIGWINCH", "SIGIO", "SIGPWR", "SIGSYS"};
  static char other[16];
  if (sig > 0 && sig < (int)(sizeof names / sizeof names[0])) return names[sig];
  snprintf(other, sizeof other, "SIG%d", sig);
  return other;
}

/* tmp file + fsync + rename: the agent reads either no record or a whole one. */
static int write_exit_record(const char *path, int status) {
  char json[256], when[64], tmp[PATH_MAX];
  rfc3339(when, sizeof when, 3);
  int n = WIFSIGNALED(status)
    ? snprintf(json, sizeof json, "{\"signal\":\"%s\",\"signo\":%d,\"endedAt\":\"%s\"}\n", signame(WTERMSIG(status)), WTERMSIG(status), when)
    : snprintf(json, sizeof json, "{\"exitCode\":%d,\"endedAt\":\"%s\"}\n", WEXITSTATUS(status), when);
  if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) return -1;
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return -1;
  write_all(fd, json, (size_t)n);
  if (fsync(fd) != 0 || close(fd) != 0) return -1;
  return rename(tmp, path);
}

static void usage(void) {
  fprintf(stderr, "usage: kybernate-shim --log <file> --exit <file> [--cgroup <dir>]... -- <exe> <args...>\n");
  exit(125);
}

int main(int argc, char **argv) {
  const char *log_path = NULL, *exit_path = NULL, *cgroups[MAX_CGROUPS];
  int ncg = 0, i = 1;
  for (; i < argc; i++) {
    if (strcmp(argv[i], "--") == 0) { i++; break; }
    if (i + 1 >= argc) usage();
    if (strcmp(argv[i], "--log") == 0) log_path = argv[++i];
    else if (strcmp(argv[i], "--exit") == 0) exit_path = argv[++i];
    else if (strcmp(argv[i], "--cgroup") == 0 && ncg < MAX_CGROUPS) cgroups[ncg++] = argv[++i];
    else usage();
  }
  if (!log_path || !exit_path || i >= argc) usage();

  log_fd = open(log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (log_fd < 0) { fprintf(stderr, "kybernate-shim: cannot open log %s: %s\n", log_path, strerror(errno)); return 125; }
  /* Joined before the fork: the workload and all its descendants start inside the limits. */
  for (int c = 0; c < ncg; c++) {
    char procs[PATH_MAX];
    snprintf(procs, sizeof procs, "%s/cgroup.procs", cgroups[c]);
    int fd = open(procs, O_WRONLY | O_CLOEXEC);
    if (fd < 0 || write(fd, "0", 1) != 1) {
      fprintf(stderr, "kybernate-shim: cannot join cgroup %s: %s\n", cgroups[c], strerror(errno));
      return 125;
    }
    close(fd);
  }

  /* Handlers, not SIG_IGN: exec resets handled signals to their default, so the workload keeps them. */
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  int stops[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
  for (size_t s = 0; s < sizeof stops / sizeof stops[0]; s++) sigaction(stops[s], &sa, NULL);

  int out[2], err[2];
  if (pipe2(out, O_CLOEXEC) != 0 || pipe2(err, O_CLOEXEC) != 0) { fprintf(stderr, "kybernate-shim: pipe: %s\n", strerror(errno)); return 125; }
  pid_t pid = fork();
  if (pid < 0) { fprintf(stderr, "kybernate-shim: fork: %s\n", strerror(errno)); return 125; }
  if (pid == 0) {
    int null = open("/dev/null", O_RDONLY);
    if (null < 0 || dup2(null, 0) < 0 || dup2(out[1], 1) < 0 || dup2(err[1], 2) < 0) _exit(127);
    execvp(argv[i], argv + i);
    fprintf(stderr, "kybernate-shim: cannot run %s: %s\n", argv[i], strerror(errno));
    _exit(127);
  }
  child = pid;
  close(out[1]);
  close(err[1]);

  static struct stream streams[2];
  streams[0].fd = out[0]; streams[0].name = "stdout";
  streams[1].fd = err[0]; streams[1].name = "stderr";
  int status = 0, reaped = 0;
  long long exited_at = 0;
  while (streams[0].fd >= 0 || streams[1].fd >= 0) {
    if (!reaped) {
      pid_t w = waitpid(pid, &status, WNOHANG);
      if (w == pid) { reaped = 1; exited_at = now_ns(); }
    }
    if (reaped && now_ns() - exited_at > PIPE_GRACE_NS) break; /* descendants hold the pipes: stop waiting */
    struct pollfd fds[2];
    int n = 0;
    for (int s = 0; s < 2; s++) if (streams[s].fd >= 0) { fds[n].fd = streams[s].fd; fds[n].events = POLLIN; fds[n].revents = 0; n++; }
    if (poll(fds, (nfds_t)n, 200) <= 0) continue;
    for (int k = 0; k < n; k++) {
      if (!fds[k].revents) continue;
      for (int s = 0; s < 2; s++) if (streams[s].fd == fds[k].fd) drain(&streams[s]);
    }
  }
  for (int s = 0; s < 2; s++) if (streams[s].fd >= 0 && streams[s].len > 0) emit(&streams[s], 'P');
  while (!reaped) {
    pid_t w = waitpid(pid, &status, 0);
    if (w == pid) reaped = 1;
    else if (w < 0 && errno != EINTR) { fprintf(stderr, "kybernate-shim: waitpid: %s\n", strerror(errno)); return 125; }
  }
  if (write_exit_record(exit_path, status) != 0) fprintf(stderr, "kybernate-shim: cannot write %s: %s\n", exit_path, strerror(errno));
  return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
}
