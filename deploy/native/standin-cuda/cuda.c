/*
 * STAND-IN libcuda.so.1 for tests (see standin.h): the driver API calls the Kybernate agent binds, with the
 * signatures, argument structs, process states and error codes of NVIDIA's driver API documentation
 * (CUDA 12.8+ checkpoint API), over a per-process state machine:
 *   RUNNING -lock-> LOCKED -checkpoint-> CHECKPOINTED -restore-> LOCKED -unlock-> RUNNING
 * A wrong transition returns CUDA_ERROR_ILLEGAL_STATE; a restore that runs out of memory leaves the process
 * FAILED (every later step fails), as the real driver does.
 *
 * Like the real driver, the work is done by the target process's own driver code: a workload that "holds a
 * context" (cuInit + standinAlloc) runs a helper thread that serves requests from its control file; the
 * controller (the agent) calling cuCheckpointProcess*(pid) writes the request and waits for the answer.
 * Checkpoint copies the device-memory file into the process's own heap and removes the file (so CRIU dumps
 * it); restore writes it back into the device dir of the node that asks (after a CRIU restore elsewhere).
 */
#define _GNU_SOURCE
#include "standin.h"
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

typedef int CUresult;
typedef int CUdevice;
typedef struct { char bytes[16]; } CUuuid;
typedef enum { CU_PROCESS_STATE_RUNNING = 0, CU_PROCESS_STATE_LOCKED = 1, CU_PROCESS_STATE_CHECKPOINTED = 2, CU_PROCESS_STATE_FAILED = 3 } CUprocessState;
typedef struct { unsigned int timeoutMs; unsigned int reserved0; uint64_t reserved1[7]; } CUcheckpointLockArgs;
typedef struct { uint64_t reserved[8]; } CUcheckpointCheckpointArgs;
typedef struct { uint64_t reserved[8]; } CUcheckpointRestoreArgs; /* CUDA 12.8: all reserved */
/* CUDA 13 (driver 580+): GPU UUID pairs for device remapping on restore (cuda.h, CUcheckpointRestoreArgs). */
typedef struct { CUuuid oldUuid; CUuuid newUuid; } CUcheckpointGpuPair;
typedef struct {
  CUcheckpointGpuPair *gpuPairs;
  unsigned int gpuPairsCount;
  unsigned int padding0;
  void **customStorageInfo_out;
  char reserved[64 - sizeof(CUcheckpointGpuPair *) - 2 * sizeof(unsigned int) - sizeof(void **)];
} CUcheckpointRestoreArgs13;
_Static_assert(sizeof(CUcheckpointRestoreArgs13) == 64, "restore args are 64 bytes");
_Static_assert(sizeof(CUcheckpointGpuPair) == 32, "a GPU pair is two 16-byte UUIDs");
typedef struct { uint64_t reserved[8]; } CUcheckpointUnlockArgs;

enum {
  CUDA_SUCCESS = 0, CUDA_ERROR_INVALID_VALUE = 1, CUDA_ERROR_OUT_OF_MEMORY = 2, CUDA_ERROR_NOT_INITIALIZED = 3,
  CUDA_ERROR_NO_DEVICE = 100, CUDA_ERROR_INVALID_DEVICE = 101, CUDA_ERROR_OPERATING_SYSTEM = 304,
  CUDA_ERROR_ILLEGAL_STATE = 401, CUDA_ERROR_NOT_FOUND = 500, CUDA_ERROR_NOT_READY = 600,
  CUDA_ERROR_NOT_SUPPORTED = 801, CUDA_ERROR_TIMEOUT = 909, CUDA_ERROR_UNKNOWN = 999,
};

static const struct { int code; const char *text; } ERRORS[] = {
  {CUDA_SUCCESS, "no error"},
  {CUDA_ERROR_INVALID_VALUE, "invalid argument"},
  {CUDA_ERROR_OUT_OF_MEMORY, "out of memory"},
  {CUDA_ERROR_NOT_INITIALIZED, "initialization error"},
  {CUDA_ERROR_NO_DEVICE, "no CUDA-capable device is detected"},
  {CUDA_ERROR_INVALID_DEVICE, "invalid device ordinal"},
  {CUDA_ERROR_OPERATING_SYSTEM, "OS call failed or operation not supported on this OS"},
  {CUDA_ERROR_ILLEGAL_STATE, "the operation cannot be performed in the present state"},
  {CUDA_ERROR_NOT_FOUND, "named symbol not found"},
  {CUDA_ERROR_NOT_READY, "device not ready"},
  {CUDA_ERROR_NOT_SUPPORTED, "operation not supported"},
  {CUDA_ERROR_TIMEOUT, "the operation timed out"},
  {CUDA_ERROR_UNKNOWN, "unknown error"},
};

static int initialized;

const char *kybernateStandinVersion(void) { return STANDIN_VERSION; }

CUresult cuInit(unsigned int flags) {
  if (flags != 0) return CUDA_ERROR_INVALID_VALUE;
  initialized = 1;
  return CUDA_SUCCESS;
}

CUresult cuGetErrorString(CUresult error, const char **pStr) {
  if (!pStr) return CUDA_ERROR_INVALID_VALUE;
  for (size_t i = 0; i < sizeof ERRORS / sizeof ERRORS[0]; i++) {
    if (ERRORS[i].code == error) {
      *pStr = ERRORS[i].text;
      return CUDA_SUCCESS;
    }
  }
  *pStr = NULL;
  return CUDA_ERROR_INVALID_VALUE;
}

CUresult cuGetErrorName(CUresult error, const char **pStr) {
  static const struct { int code; const char *name; } NAMES[] = {
    {0, "CUDA_SUCCESS"}, {1, "CUDA_ERROR_INVALID_VALUE"}, {2, "CUDA_ERROR_OUT_OF_MEMORY"}, {3, "CUDA_ERROR_NOT_INITIALIZED"},
    {100, "CUDA_ERROR_NO_DEVICE"}, {101, "CUDA_ERROR_INVALID_DEVICE"}, {304, "CUDA_ERROR_OPERATING_SYSTEM"},
    {401, "CUDA_ERROR_ILLEGAL_STATE"}, {500, "CUDA_ERROR_NOT_FOUND"}, {600, "CUDA_ERROR_NOT_READY"},
    {801, "CUDA_ERROR_NOT_SUPPORTED"}, {909, "CUDA_ERROR_TIMEOUT"}, {999, "CUDA_ERROR_UNKNOWN"},
  };
  if (!pStr) return CUDA_ERROR_INVALID_VALUE;
  for (size_t i = 0; i < sizeof NAMES / sizeof NAMES[0]; i++) {
    if (NAMES[i].code == error) {
      *pStr = NAMES[i].name;
      return CUDA_SUCCESS;
    }
  }
  *pStr = NULL;
  return CUDA_ERROR_INVALID_VALUE;
}

/* ---- devices: `gpus` stand-in GPUs per node (default 1), present when KYBERNATE_STANDIN_DIR is set ---- */

static int device_count(void) {
  if (!standin_dir()) return 0;
  struct standin_conf c;
  standin_read_conf(standin_dir(), &c);
  return c.gpus;
}

/* CUDA_VERSION style: 1000 * major + 10 * minor (12080 = 12.8, 13000 = 13.0). Needs no cuInit, like the driver's. */
CUresult cuDriverGetVersion(int *driverVersion) {
  if (!driverVersion) return CUDA_ERROR_INVALID_VALUE;
  struct standin_conf c;
  standin_read_conf(standin_dir(), &c);
  *driverVersion = c.cuda_version;
  return CUDA_SUCCESS;
}

CUresult cuDeviceGetCount(int *count) {
  if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
  if (!count) return CUDA_ERROR_INVALID_VALUE;
  *count = device_count();
  return CUDA_SUCCESS;
}

CUresult cuDeviceGet(CUdevice *device, int ordinal) {
  if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
  if (!device) return CUDA_ERROR_INVALID_VALUE;
  if (ordinal < 0 || ordinal >= device_count()) return CUDA_ERROR_INVALID_DEVICE;
  *device = ordinal;
  return CUDA_SUCCESS;
}

CUresult cuDeviceGetName(char *name, int len, CUdevice dev) {
  if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
  if (!name || len <= 0) return CUDA_ERROR_INVALID_VALUE;
  if (dev < 0 || dev >= device_count()) return CUDA_ERROR_INVALID_DEVICE;
  struct standin_conf c;
  standin_read_conf(standin_dir(), &c);
  snprintf(name, (size_t)len, "%s", standin_gpu_name(&c, dev));
  return CUDA_SUCCESS;
}

CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice dev) {
  if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
  if (!bytes) return CUDA_ERROR_INVALID_VALUE;
  if (dev < 0 || dev >= device_count()) return CUDA_ERROR_INVALID_DEVICE;
  struct standin_conf c;
  standin_read_conf(standin_dir(), &c);
  *bytes = (size_t)standin_gpu_total(&c, dev);
  return CUDA_SUCCESS;
}

/* The 16 bytes behind NVML's "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx": both derive from the device dir. */
CUresult cuDeviceGetUuid_v2(CUuuid *uuid, CUdevice dev) {
  if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
  if (!uuid) return CUDA_ERROR_INVALID_VALUE;
  if (dev < 0 || dev >= device_count()) return CUDA_ERROR_INVALID_DEVICE;
  standin_uuid(dev, (unsigned char *)uuid->bytes);
  return CUDA_SUCCESS;
}
CUresult cuDeviceGetUuid(CUuuid *uuid, CUdevice dev) { return cuDeviceGetUuid_v2(uuid, dev); }

/* ---- the workload side: a context, its device memory, the helper thread that serves the controller ---- */

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER; /* held by CUDA work and by a lock, like the driver's own */
static pthread_mutex_t state_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t state_cv = PTHREAD_COND_INITIALIZER;
static int ctx_state = -1; /* -1: no context */
static int lock_held;      /* the helper holds mu for a controller's lock */
static char vram_path[4200];
static uint64_t vram_bytes;
static uint32_t vram_seed;
static unsigned char *host_copy; /* the VRAM's contents while checkpointed: in this process's memory */
static int cur_pid;
static volatile int helper_tid; /* the helper thread's host tid: with the pid, names this very process */

static int host_pid(void) {
  /* /proc is the host's inside our PID namespaces, so /proc/self names the host pid (re-read after a CRIU restore). */
  char buf[32];
  ssize_t n = readlink("/proc/self", buf, sizeof buf - 1);
  if (n <= 0) return getpid();
  buf[n] = 0;
  return atoi(buf);
}

/* The calling thread's host tid, from /proc/thread-self ("<pid>/task/<tid>"). */
static int host_tid(void) {
  char buf[64];
  ssize_t n = readlink("/proc/thread-self", buf, sizeof buf - 1);
  if (n <= 0) return 0;
  buf[n] = 0;
  char *t = strstr(buf, "/task/");
  return t ? atoi(t + 6) : 0;
}

static unsigned char pattern(uint64_t i, uint32_t seed) {
  uint64_t x = (i >> 3) * 0x9E3779B97F4A7C15ULL + seed;
  return (unsigned char)((x >> 29) ^ i);
}

static void publish(void) {
  char path[4200], text[128];
  snprintf(path, sizeof path, "%s/%d.state", standin_ctl_dir(), cur_pid);
  snprintf(text, sizeof text, "%d %d %llu\n", ctx_state, helper_tid, (unsigned long long)vram_bytes);
  standin_write_file(path, text);
}

static void set_state(int s) {
  pthread_mutex_lock(&state_mu);
  ctx_state = s;
  pthread_cond_broadcast(&state_cv);
  pthread_mutex_unlock(&state_mu);
  if (helper_tid) publish();
}

static long ms_since(const struct timespec *t0) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (t.tv_sec - t0->tv_sec) * 1000 + (t.tv_nsec - t0->tv_nsec) / 1000000;
}

/* Time proportional to the size, as the real copy over PCIe is: the rest of bytes * ns_per_byte. */
static void take_time(const struct timespec *t0, double ns_per_byte, long extra_ms) {
  long want = (long)((double)vram_bytes * ns_per_byte / 1e6) + extra_ms;
  standin_sleep_ms(want - ms_since(t0));
}

struct request {
  char seq[96], op[32], devdir[4096];
  unsigned timeout_ms, restore_oom, lock_hang;
  unsigned long long total;
  double ns_per_byte;
  long checkpoint_delay_ms, restore_delay_ms;
};

static int serve_lock(const struct request *r) {
  if (ctx_state != CU_PROCESS_STATE_RUNNING) return CUDA_ERROR_ILLEGAL_STATE;
  if (r->lock_hang) {
    /* CUDA work that never finishes: the lock waits for it, up to timeoutMs (0: for ever). */
    if (r->timeout_ms == 0) for (;;) standin_sleep_ms(1000);
    standin_sleep_ms(r->timeout_ms);
    return CUDA_ERROR_TIMEOUT; /* left RUNNING, as documented */
  }
  int rc;
  if (r->timeout_ms == 0) {
    rc = pthread_mutex_lock(&mu);
  } else {
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += r->timeout_ms / 1000;
    dl.tv_nsec += (long)(r->timeout_ms % 1000) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) dl.tv_sec++, dl.tv_nsec -= 1000000000L;
    rc = pthread_mutex_timedlock(&mu, &dl);
  }
  if (rc == ETIMEDOUT) return CUDA_ERROR_TIMEOUT;
  if (rc != 0) return CUDA_ERROR_UNKNOWN;
  lock_held = 1;
  set_state(CU_PROCESS_STATE_LOCKED);
  return CUDA_SUCCESS;
}

static int serve_checkpoint(const struct request *r) {
  if (ctx_state != CU_PROCESS_STATE_LOCKED) return CUDA_ERROR_ILLEGAL_STATE;
  struct timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  unsigned char *copy = malloc(vram_bytes ? vram_bytes : 1);
  if (!copy) return CUDA_ERROR_OUT_OF_MEMORY;
  int fd = open(vram_path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    free(copy);
    return CUDA_ERROR_UNKNOWN;
  }
  uint64_t got = 0;
  while (got < vram_bytes) {
    ssize_t n = read(fd, copy + got, vram_bytes - got > (1 << 20) ? (1 << 20) : vram_bytes - got);
    if (n <= 0) break;
    got += (uint64_t)n;
  }
  close(fd);
  if (got != vram_bytes) {
    free(copy);
    return CUDA_ERROR_UNKNOWN;
  }
  take_time(&t0, r->ns_per_byte, r->checkpoint_delay_ms);
  host_copy = copy;
  unlink(vram_path); /* the device memory is released: its contents now live in this process's memory */
  set_state(CU_PROCESS_STATE_CHECKPOINTED);
  return CUDA_SUCCESS;
}

static int serve_restore(const struct request *r) {
  if (ctx_state != CU_PROCESS_STATE_CHECKPOINTED || !host_copy) return CUDA_ERROR_ILLEGAL_STATE;
  struct timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  if (r->restore_oom || standin_used_bytes(r->devdir) + vram_bytes > r->total) {
    /* The real driver leaves such a process unrecoverable: restore and unlock fail from now on. */
    free(host_copy);
    host_copy = NULL;
    set_state(CU_PROCESS_STATE_FAILED);
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  char path[4200];
  snprintf(path, sizeof path, "%s/vram-%d", r->devdir, cur_pid);
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  if (fd < 0) return CUDA_ERROR_OPERATING_SYSTEM;
  uint64_t put = 0;
  while (put < vram_bytes) {
    ssize_t n = write(fd, host_copy + put, vram_bytes - put > (1 << 20) ? (1 << 20) : vram_bytes - put);
    if (n <= 0) break;
    put += (uint64_t)n;
  }
  close(fd);
  if (put != vram_bytes) {
    unlink(path);
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  take_time(&t0, r->ns_per_byte, r->restore_delay_ms);
  snprintf(vram_path, sizeof vram_path, "%s", path);
  free(host_copy);
  host_copy = NULL;
  set_state(CU_PROCESS_STATE_LOCKED);
  return CUDA_SUCCESS;
}

static int serve_unlock(void) {
  if (ctx_state != CU_PROCESS_STATE_LOCKED) return CUDA_ERROR_ILLEGAL_STATE;
  set_state(CU_PROCESS_STATE_RUNNING);
  if (lock_held) {
    lock_held = 0;
    pthread_mutex_unlock(&mu);
  }
  return CUDA_SUCCESS;
}

static int serve(const struct request *r) {
  if (strcmp(r->op, "lock") == 0) return serve_lock(r);
  if (strcmp(r->op, "checkpoint") == 0) return serve_checkpoint(r);
  if (strcmp(r->op, "restore") == 0) return serve_restore(r);
  if (strcmp(r->op, "unlock") == 0) return serve_unlock();
  return CUDA_ERROR_INVALID_VALUE;
}

static int read_request(const char *path, struct request *r) {
  FILE *f = fopen(path, "re");
  if (!f) return -1;
  memset(r, 0, sizeof *r);
  int n = fscanf(f, "%95s %31s %u %llu %lf %u %u %ld %ld %4095[^\n]", r->seq, r->op, &r->timeout_ms, &r->total, &r->ns_per_byte,
                 &r->restore_oom, &r->lock_hang, &r->checkpoint_delay_ms, &r->restore_delay_ms, r->devdir);
  fclose(f);
  return n == 10 ? 0 : -1;
}

static void *helper(void *arg) {
  (void)arg;
  for (;;) {
    int pid = host_pid();
    if (pid != cur_pid || !helper_tid) {
      /*
       * First run, or a CRIU restore: this process has a new host pid (and this thread a new tid); register
       * under it. The tid, not the start time, tells the controller it is this process: a start time read
       * in /proc is shifted by the reader's time namespace, which CRIU may give a restored process.
       */
      cur_pid = pid;
      helper_tid = host_tid();
      publish();
    }
    char req[4200];
    snprintf(req, sizeof req, "%s/%d.req", standin_ctl_dir(), cur_pid);
    struct request r;
    if (access(req, F_OK) == 0 && read_request(req, &r) == 0) {
      unlink(req);
      int rc = serve(&r);
      char resp[4200], text[160];
      snprintf(resp, sizeof resp, "%s/%d.resp", standin_ctl_dir(), cur_pid);
      snprintf(text, sizeof text, "%s %d\n", r.seq, rc);
      standin_write_file(resp, text);
      continue;
    }
    standin_sleep_ms(5);
  }
  return NULL;
}

/*
 * Test-only entry point (not a driver function): creates this process's context and `bytes` of device memory
 * filled with a pattern derived from seed, in $KYBERNATE_STANDIN_DIR/vram-<hostpid>. One allocation per process.
 */
CUresult standinAlloc(uint64_t bytes, uint32_t seed) {
  if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
  const char *dir = standin_dir();
  if (!dir) return CUDA_ERROR_NO_DEVICE;
  if (ctx_state != -1) return CUDA_ERROR_INVALID_VALUE;
  struct standin_conf c;
  standin_read_conf(dir, &c);
  if (standin_used_bytes(dir) + bytes > c.total_bytes) return CUDA_ERROR_OUT_OF_MEMORY;
  cur_pid = host_pid();
  snprintf(vram_path, sizeof vram_path, "%s/vram-%d", dir, cur_pid);
  int fd = open(vram_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  if (fd < 0) return CUDA_ERROR_OPERATING_SYSTEM;
  unsigned char *buf = malloc(1 << 20);
  for (uint64_t off = 0; off < bytes;) {
    size_t n = bytes - off > (1 << 20) ? (1 << 20) : (size_t)(bytes - off);
    for (size_t i = 0; i < n; i++) buf[i] = pattern(off + i, seed);
    if (write(fd, buf, n) != (ssize_t)n) {
      free(buf);
      close(fd);
      unlink(vram_path);
      return CUDA_ERROR_OUT_OF_MEMORY;
    }
    off += n;
  }
  free(buf);
  close(fd);
  vram_bytes = bytes;
  vram_seed = seed;
  set_state(CU_PROCESS_STATE_RUNNING);
  /* The helper takes no signals: they stay with the workload's own threads. */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pthread_t t;
  int rc = pthread_create(&t, NULL, helper, NULL);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (rc != 0) return CUDA_ERROR_OPERATING_SYSTEM;
  pthread_detach(t);
  /* Returns once a controller can see the context, as cuCtxCreate returns with it usable. */
  for (int i = 0; i < 1000 && !helper_tid; i++) standin_sleep_ms(1);
  return CUDA_SUCCESS;
}

/*
 * Test-only: a "CUDA call" that reads the device memory back and checks the pattern. Like any CUDA call it
 * waits while the process is locked or checkpointed. 1: intact, 0: not, -1: no context or a failed process.
 */
int standinVerify(void) {
  pthread_mutex_lock(&state_mu);
  while (ctx_state == CU_PROCESS_STATE_LOCKED || ctx_state == CU_PROCESS_STATE_CHECKPOINTED) pthread_cond_wait(&state_cv, &state_mu);
  int s = ctx_state;
  pthread_mutex_unlock(&state_mu);
  if (s != CU_PROCESS_STATE_RUNNING) return -1;
  pthread_mutex_lock(&mu);
  int ok = 1;
  int fd = open(vram_path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) ok = 0;
  unsigned char *buf = malloc(1 << 20);
  uint64_t off = 0;
  while (ok && off < vram_bytes) {
    ssize_t n = read(fd, buf, vram_bytes - off > (1 << 20) ? (1 << 20) : vram_bytes - off);
    if (n <= 0) {
      ok = 0;
      break;
    }
    for (ssize_t i = 0; i < n; i++)
      if (buf[i] != pattern(off + (uint64_t)i, vram_seed)) {
        ok = 0;
        break;
      }
    off += (uint64_t)n;
  }
  free(buf);
  if (fd >= 0) close(fd);
  pthread_mutex_unlock(&mu);
  return ok;
}

/* Test-only: the device-memory file of this process right now ("" while checkpointed). */
const char *standinVramPath(void) { return ctx_state == CU_PROCESS_STATE_CHECKPOINTED ? "" : vram_path; }

/* ---- the controller side (the agent): cuCheckpointProcess* on another process ---- */

struct registration { int state, tid; unsigned long long bytes; };

static int thread_alive(int pid, int tid) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/task/%d", pid, tid);
  return tid > 0 && access(path, F_OK) == 0;
}

static int read_registration(int pid, struct registration *reg) {
  char path[4200];
  snprintf(path, sizeof path, "%s/%d.state", standin_ctl_dir(), pid);
  FILE *f = fopen(path, "re");
  if (!f) return -1;
  int n = fscanf(f, "%d %d %llu", &reg->state, &reg->tid, &reg->bytes);
  fclose(f);
  /* Valid only for the very process that wrote it: its helper thread must still be there under that pid. */
  if (n != 3 || !thread_alive(pid, reg->tid)) return -1;
  return 0;
}

/* A process just restored by CRIU registers under its new pid within a few ms: wait a moment for it. */
static int find_process(int pid, struct registration *reg) {
  for (int i = 0; i < 200; i++) {
    if (read_registration(pid, reg) == 0) return 0;
    if (standin_start_time(pid) == 0) return -1;
    standin_sleep_ms(10);
  }
  return -1;
}

CUresult cuCheckpointProcessGetState(int pid, CUprocessState *state) {
  if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
  if (pid <= 0 || !state) return CUDA_ERROR_INVALID_VALUE;
  struct registration reg;
  if (read_registration(pid, &reg) != 0) return CUDA_ERROR_NOT_FOUND;
  *state = (CUprocessState)reg.state;
  return CUDA_SUCCESS;
}

/* gpu: the device the request is for (a restore remapped onto another GPU); -1: GPU 0, the node's dir. */
static CUresult request_on(int pid, const char *op, unsigned timeout_ms, int gpu);
static CUresult request(int pid, const char *op, unsigned timeout_ms) { return request_on(pid, op, timeout_ms, -1); }

static CUresult request_on(int pid, const char *op, unsigned timeout_ms, int gpu) {
  if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
  if (pid <= 0) return CUDA_ERROR_INVALID_VALUE;
  struct registration reg;
  if (find_process(pid, &reg) != 0) return CUDA_ERROR_NOT_FOUND;
  const char *dir = standin_dir();
  if (!dir) return CUDA_ERROR_NO_DEVICE;
  struct standin_conf c;
  standin_read_conf(dir, &c);
  static unsigned counter;
  char seq[96];
  struct timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  snprintf(seq, sizeof seq, "%d-%ld%09ld-%u", getpid(), (long)now.tv_sec, now.tv_nsec, __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED));
  char path[4200], resp[4200];
  snprintf(path, sizeof path, "%s/%d.req", standin_ctl_dir(), pid);
  snprintf(resp, sizeof resp, "%s/%d.resp", standin_ctl_dir(), pid);
  char *text;
  char gpudir[4200];
  standin_gpu_dir(dir, gpu < 0 ? 0 : gpu, gpudir, sizeof gpudir);
  if (gpu > 0) mkdir(gpudir, 0777);
  if (asprintf(&text, "%s %s %u %llu %f %d %d %ld %ld %s\n", seq, op, timeout_ms, (unsigned long long)standin_gpu_total(&c, gpu < 0 ? 0 : gpu), c.ns_per_byte,
               c.restore_oom, c.lock_hang, c.checkpoint_delay_ms, c.restore_delay_ms, gpudir) < 0)
    return CUDA_ERROR_OUT_OF_MEMORY;
  int w = standin_write_file(path, text);
  free(text);
  if (w != 0) return CUDA_ERROR_OPERATING_SYSTEM;
  for (unsigned long i = 0;; i++) {
    FILE *f = fopen(resp, "re");
    if (f) {
      char got[96];
      int rc;
      int n = fscanf(f, "%95s %d", got, &rc);
      fclose(f);
      if (n == 2 && strcmp(got, seq) == 0) {
        unlink(resp);
        return rc;
      }
    }
    if (i % 50 == 49 && !thread_alive(pid, reg.tid)) {
      /* The process is gone (or was never answering): no driver left to do the work. */
      unlink(path);
      return CUDA_ERROR_NOT_FOUND;
    }
    standin_sleep_ms(2);
  }
}

static int reserved_zero(const uint64_t *r, int n) {
  for (int i = 0; i < n; i++)
    if (r[i] != 0) return 0;
  return 1;
}

CUresult cuCheckpointProcessLock(int pid, CUcheckpointLockArgs *args) {
  if (args && (args->reserved0 != 0 || !reserved_zero(args->reserved1, 7))) return CUDA_ERROR_INVALID_VALUE;
  return request(pid, "lock", args ? args->timeoutMs : 0);
}

CUresult cuCheckpointProcessCheckpoint(int pid, CUcheckpointCheckpointArgs *args) {
  if (args && !reserved_zero(args->reserved, 8)) return CUDA_ERROR_INVALID_VALUE;
  return request(pid, "checkpoint", 0);
}

/*
 * Before CUDA 13 every field is reserved (non-zero: INVALID_VALUE). From CUDA 13 (cuda_version >= 13000) the
 * args may carry GPU pairs: each newUuid must name a GPU of this node (else INVALID_DEVICE), and the VRAM is
 * restored onto it. The stand-in cannot check oldUuid (the source GPU is on another node); it needs one pair,
 * as the process had one GPU. Custom storage is not modelled (NOT_SUPPORTED).
 */
CUresult cuCheckpointProcessRestore(int pid, CUcheckpointRestoreArgs *args) {
  struct standin_conf c;
  standin_read_conf(standin_dir(), &c);
  if (!args || c.cuda_version < 13000) {
    if (args && !reserved_zero(args->reserved, 8)) return CUDA_ERROR_INVALID_VALUE;
    return request(pid, "restore", 0);
  }
  const CUcheckpointRestoreArgs13 *a = (const CUcheckpointRestoreArgs13 *)args;
  for (size_t i = 0; i < sizeof a->reserved; i++)
    if (a->reserved[i] != 0 || a->padding0 != 0) return CUDA_ERROR_INVALID_VALUE;
  if (a->customStorageInfo_out) return CUDA_ERROR_NOT_SUPPORTED;
  if (!a->gpuPairs || a->gpuPairsCount == 0) return a->gpuPairsCount == 0 && !a->gpuPairs ? request(pid, "restore", 0) : CUDA_ERROR_INVALID_VALUE;
  if (a->gpuPairsCount != 1) return CUDA_ERROR_INVALID_VALUE;
  for (int i = 0; i < c.gpus; i++) {
    unsigned char u[16];
    standin_uuid(i, u);
    if (memcmp(u, a->gpuPairs[0].newUuid.bytes, 16) == 0) return request_on(pid, "restore", 0, i);
  }
  return CUDA_ERROR_INVALID_DEVICE;
}

CUresult cuCheckpointProcessUnlock(int pid, CUcheckpointUnlockArgs *args) {
  if (args && !reserved_zero(args->reserved, 8)) return CUDA_ERROR_INVALID_VALUE;
  return request(pid, "unlock", 0);
}
