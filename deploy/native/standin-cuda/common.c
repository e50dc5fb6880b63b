/* Shared by the stand-in libcuda.so.1 and libnvidia-ml.so.1: configuration, paths, the device's usage. */
#define _GNU_SOURCE
#include "standin.h"
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

const char *standin_dir(void) {
  const char *d = getenv("KYBERNATE_STANDIN_DIR");
  return d && *d ? d : NULL;
}

const char *standin_ctl_dir(void) {
  const char *d = getenv("KYBERNATE_STANDIN_CTL");
  d = d && *d ? d : STANDIN_DEFAULT_CTL;
  /* World-writable and sticky like /tmp: workloads may run as another user than the agent. */
  if (mkdir(d, 01777) == 0) chmod(d, 01777);
  return d;
}

static void parse_faults(const char *s, struct standin_conf *c) {
  char buf[512];
  snprintf(buf, sizeof buf, "%s", s);
  char *save = NULL;
  for (char *t = strtok_r(buf, ", \t\n", &save); t; t = strtok_r(NULL, ", \t\n", &save)) {
    if (strcmp(t, "restore-oom") == 0) c->restore_oom = 1;
    else if (strcmp(t, "lock-hang") == 0) c->lock_hang = 1;
    else if (strncmp(t, "checkpoint-delay-ms=", 20) == 0) c->checkpoint_delay_ms = atol(t + 20);
    else if (strncmp(t, "restore-delay-ms=", 17) == 0) c->restore_delay_ms = atol(t + 17);
    else if (strcmp(t, "none") != 0) fprintf(stderr, "[kybernate stand-in cuda] unknown fault '%s' ignored\n", t);
  }
}

static void set_key(struct standin_conf *c, const char *k, const char *v) {
  if (strcmp(k, "total_bytes") == 0) c->total_bytes = strtoull(v, NULL, 10);
  else if (strcmp(k, "ns_per_byte") == 0) c->ns_per_byte = strtod(v, NULL);
  else if (strcmp(k, "name") == 0) snprintf(c->name, sizeof c->name, "%s", v);
  else if (strcmp(k, "gpus") == 0) {
    c->gpus = atoi(v);
    if (c->gpus < 1) c->gpus = 1;
    if (c->gpus > STANDIN_MAX_GPUS) c->gpus = STANDIN_MAX_GPUS;
  } else if (strcmp(k, "driver_version") == 0) snprintf(c->driver_version, sizeof c->driver_version, "%s", v);
  else if (strcmp(k, "cuda_version") == 0) c->cuda_version = atoi(v);
  else if (strncmp(k, "name.", 5) == 0 || strncmp(k, "total_bytes.", 12) == 0) {
    int per_name = k[0] == 'n';
    int i = atoi(k + (per_name ? 5 : 12));
    if (i < 0 || i >= STANDIN_MAX_GPUS) return;
    if (per_name) snprintf(c->gpu_name[i], sizeof c->gpu_name[i], "%s", v);
    else c->gpu_total[i] = strtoull(v, NULL, 10);
  }
  else if (strcmp(k, "faults") == 0) {
    c->restore_oom = c->lock_hang = 0;
    c->checkpoint_delay_ms = c->restore_delay_ms = 0;
    parse_faults(v, c);
  }
}

void standin_read_conf(const char *dir, struct standin_conf *c) {
  memset(c, 0, sizeof *c);
  c->total_bytes = STANDIN_DEFAULT_TOTAL;
  c->ns_per_byte = STANDIN_DEFAULT_NS_PER_BYTE;
  snprintf(c->name, sizeof c->name, "%s", STANDIN_DEFAULT_NAME);
  c->gpus = 1;
  snprintf(c->driver_version, sizeof c->driver_version, "%s", STANDIN_DEFAULT_DRIVER);
  c->cuda_version = STANDIN_DEFAULT_CUDA;
  const char *e;
  if ((e = getenv("KYBERNATE_STANDIN_GPUS"))) set_key(c, "gpus", e);
  if ((e = getenv("KYBERNATE_STANDIN_DRIVER_VERSION"))) set_key(c, "driver_version", e);
  if ((e = getenv("KYBERNATE_STANDIN_CUDA_VERSION"))) set_key(c, "cuda_version", e);
  if ((e = getenv("KYBERNATE_STANDIN_TOTAL_BYTES"))) set_key(c, "total_bytes", e);
  if ((e = getenv("KYBERNATE_STANDIN_NS_PER_BYTE"))) set_key(c, "ns_per_byte", e);
  if ((e = getenv("KYBERNATE_STANDIN_NAME"))) set_key(c, "name", e);
  if ((e = getenv("KYBERNATE_STANDIN_FAULTS"))) set_key(c, "faults", e);
  if (!dir) return;
  char path[4096];
  snprintf(path, sizeof path, "%s/standin.conf", dir);
  FILE *f = fopen(path, "re");
  if (!f) return;
  char line[1024];
  while (fgets(line, sizeof line, f)) {
    line[strcspn(line, "\r\n")] = 0;
    char *eq = strchr(line, '=');
    if (line[0] == '#' || !eq) continue;
    *eq = 0;
    set_key(c, line, eq + 1);
  }
  fclose(f);
}

uint64_t standin_used_bytes(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return 0;
  uint64_t used = 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    int pid;
    char rest;
    if (sscanf(e->d_name, "vram-%d%c", &pid, &rest) != 1 || pid <= 0) continue;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    if (kill(pid, 0) != 0 && errno == ESRCH) {
      /* The driver frees a dead process's memory. */
      unlink(path);
      continue;
    }
    struct stat st;
    if (stat(path, &st) == 0) used += (uint64_t)st.st_size;
  }
  closedir(d);
  return used;
}

void standin_gpu_dir(const char *dir, int i, char *out, size_t len) {
  if (i == 0) snprintf(out, len, "%s", dir);
  else snprintf(out, len, "%s/gpu%d", dir, i);
}

const char *standin_gpu_name(const struct standin_conf *c, int i) { return i >= 0 && i < STANDIN_MAX_GPUS && c->gpu_name[i][0] ? c->gpu_name[i] : c->name; }

uint64_t standin_gpu_total(const struct standin_conf *c, int i) { return i >= 0 && i < STANDIN_MAX_GPUS && c->gpu_total[i] ? c->gpu_total[i] : c->total_bytes; }

uint64_t standin_pid_bytes(const char *gpudir, int pid) {
  char path[4200];
  snprintf(path, sizeof path, "%s/vram-%d", gpudir, pid);
  struct stat st;
  return stat(path, &st) == 0 ? (uint64_t)st.st_size : 0;
}

unsigned long long standin_start_time(int pid) {
  char path[64], buf[2048];
  snprintf(path, sizeof path, "/proc/%d/stat", pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = 0;
  char *p = strrchr(buf, ')');
  if (!p) return 0;
  p += 2; /* field 3 (state) */
  for (int field = 3; field < 22 && p; field++) {
    p = strchr(p, ' ');
    if (p) p++;
  }
  return p ? strtoull(p, NULL, 10) : 0;
}

void standin_sleep_ms(long ms) {
  if (ms <= 0) return;
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

/* Written to a temporary name and renamed: a reader sees the old or the new text, never half of one. */
int standin_write_file(const char *path, const char *text) {
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.tmp%d", path, (int)syscall(SYS_gettid));
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  if (fd < 0) return -1;
  size_t len = strlen(text);
  int ok = write(fd, text, len) == (ssize_t)len;
  close(fd);
  if (!ok || rename(tmp, path) != 0) {
    unlink(tmp);
    return -1;
  }
  return 0;
}

uint64_t standin_fnv(const char *s) {
  uint64_t h = 1469598103934665603ULL;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ULL;
  return h;
}

void standin_uuid(int i, unsigned char out[16]) {
  uint64_t a = standin_fnv(standin_dir()) ^ ((uint64_t)i * 0x9E3779B97F4A7C15ULL), b = standin_fnv("kybernate-standin") ^ a;
  memcpy(out, &a, 8);
  memcpy(out + 8, &b, 8);
}

void standin_gc_ctl(void) {
  const char *ctl = standin_ctl_dir();
  DIR *d = opendir(ctl);
  if (!d) return;
  time_t now = time(NULL);
  struct dirent *e;
  while ((e = readdir(d))) {
    int pid, n = 0;
    if (sscanf(e->d_name, "%d.%n", &pid, &n) != 1 || n == 0) continue;
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", ctl, e->d_name);
    struct stat st;
    /* A minute old at least: a fresh registration under a reused pid is never taken for a stale one. */
    if (stat(path, &st) != 0 || now - st.st_mtime < 60) continue;
    const char *kind = e->d_name + n;
    int stale = 0;
    if (strcmp(kind, "resp") == 0 || strstr(kind, ".tmp") != NULL) {
      stale = 1; /* answers are read and removed at once; temporaries are renamed at once */
    } else if (strcmp(kind, "state") == 0 || strcmp(kind, "req") == 0) {
      char sp[4200];
      snprintf(sp, sizeof sp, "%s/%d.state", ctl, pid);
      FILE *f = fopen(sp, "re");
      int state = 0, tid = 0;
      if (f) {
        if (fscanf(f, "%d %d", &state, &tid) != 2) tid = 0;
        fclose(f);
      }
      char task[64];
      snprintf(task, sizeof task, "/proc/%d/task/%d", pid, tid);
      stale = tid <= 0 || access(task, F_OK) != 0;
    }
    if (stale) unlink(path);
  }
  closedir(d);
}
