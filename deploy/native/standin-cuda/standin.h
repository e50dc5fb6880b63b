/*
 * Kybernate's STAND-IN for the NVIDIA driver (libcuda.so.1 + libnvidia-ml.so.1), for tests on machines
 * without a GPU. It proves the agent's calls, their order, error handling and timing; it is not the driver.
 *
 * Layout on disk:
 *   $KYBERNATE_STANDIN_DIR (one per node, i.e. per agent): the node's stand-in "device".
 *     standin.conf      optional key=value lines, re-read on every call (they win over the environment):
 *                       total_bytes, name, ns_per_byte, faults, gpus, driver_version, cuda_version,
 *                       and per GPU i: name.<i>, total_bytes.<i>
 *     vram-<hostpid>    a process's "device memory" on GPU 0 (outside its address space: CRIU does not dump it)
 *     gpu<i>/vram-<hostpid>  the same on GPU i (i >= 1)
 *   $KYBERNATE_STANDIN_CTL (default /tmp/kybernate-standin-ctl, one per host, like the real driver):
 *     <hostpid>.state   "<state> <starttime> <bytes>", published by the process's stand-in helper thread
 *     <hostpid>.req     a request from a controller (the agent), served by that helper thread
 *     <hostpid>.resp    its answer
 */
#ifndef KYBERNATE_STANDIN_H
#define KYBERNATE_STANDIN_H
#include <stddef.h>
#include <stdint.h>

#define STANDIN_VERSION "kybernate-standin-cuda 1"
#define STANDIN_DEFAULT_CTL "/tmp/kybernate-standin-ctl"
#define STANDIN_DEFAULT_NAME "Kybernate stand-in GPU (not a real device)"
#define STANDIN_DEFAULT_TOTAL (80ULL << 30)
/* The real H100 moved VRAM to host at ~2.2 GB/s (shared/gpu/README.md): 1/2.2 ns per byte. */
#define STANDIN_DEFAULT_NS_PER_BYTE 0.4545
#define STANDIN_MAX_GPUS 8
/* A driver 570 / CUDA 12.8 node by default: the checkpoint API without GPU remapping on restore. */
#define STANDIN_DEFAULT_DRIVER "570.172.08"
#define STANDIN_DEFAULT_CUDA 12080

struct standin_conf {
  uint64_t total_bytes;
  double ns_per_byte;
  char name[128];
  /* faults (comma separated): restore-oom, lock-hang, checkpoint-delay-ms=N, restore-delay-ms=N */
  int restore_oom;
  int lock_hang;
  long checkpoint_delay_ms;
  long restore_delay_ms;
  int gpus;                    /* devices on this node, 1..STANDIN_MAX_GPUS */
  char driver_version[32];     /* nvmlSystemGetDriverVersion */
  int cuda_version;            /* cuDriverGetVersion, e.g. 12080 */
  char gpu_name[STANDIN_MAX_GPUS][128];  /* per GPU; "" = name */
  uint64_t gpu_total[STANDIN_MAX_GPUS];  /* per GPU; 0 = total_bytes */
};

#pragma GCC visibility push(hidden)
/* The node's device dir ($KYBERNATE_STANDIN_DIR), or NULL when unset. */
const char *standin_dir(void);
const char *standin_ctl_dir(void);
void standin_read_conf(const char *dir, struct standin_conf *c);
/* Bytes of stand-in device memory held by live processes in dir (files of dead ones are removed). */
uint64_t standin_used_bytes(const char *dir);
/* GPU i's device dir: the node's dir for GPU 0, <dir>/gpu<i> for the others. */
void standin_gpu_dir(const char *dir, int i, char *out, size_t len);
const char *standin_gpu_name(const struct standin_conf *c, int i);
uint64_t standin_gpu_total(const struct standin_conf *c, int i);
/* Bytes of GPU-i device memory held by pid (0 when none). */
uint64_t standin_pid_bytes(const char *gpudir, int pid);
/* Field 22 of /proc/<pid>/stat (start time in clock ticks), 0 when the process is gone. */
unsigned long long standin_start_time(int pid);
void standin_sleep_ms(long ms);
int standin_write_file(const char *path, const char *text);
uint64_t standin_fnv(const char *s);
/* GPU i's 16 UUID bytes, derived from the node's device dir and the index (GPU 0's as before several GPUs). */
void standin_uuid(int i, unsigned char out[16]);
/* Removes control files left by processes that are gone (older than a minute): SIGKILL leaves them behind. */
void standin_gc_ctl(void);
#pragma GCC visibility pop
#endif
