/*
 * Kybernate's STAND-IN for the NVIDIA driver (libcuda.so.1 + libnvidia-ml.so.1), for tests on machines
 * without a GPU. It proves the agent's calls, their order, error handling and timing; it is not the driver.
 *
 * Layout on disk:
 *   $KYBERNATE_STANDIN_DIR (one per node, i.e. per agent): the node's stand-in "device".
 *     standin.conf      optional key=value lines, re-read on every call (they win over the environment):
 *                       total_bytes, name, ns_per_byte, faults
 *     vram-<hostpid>    a process's "device memory" (outside its address space: CRIU does not dump it)
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

struct standin_conf {
  uint64_t total_bytes;
  double ns_per_byte;
  char name[128];
  /* faults (comma separated): restore-oom, lock-hang, checkpoint-delay-ms=N, restore-delay-ms=N */
  int restore_oom;
  int lock_hang;
  long checkpoint_delay_ms;
  long restore_delay_ms;
};

#pragma GCC visibility push(hidden)
/* The node's device dir ($KYBERNATE_STANDIN_DIR), or NULL when unset. */
const char *standin_dir(void);
const char *standin_ctl_dir(void);
void standin_read_conf(const char *dir, struct standin_conf *c);
/* Bytes of stand-in device memory held by live processes in dir (files of dead ones are removed). */
uint64_t standin_used_bytes(const char *dir);
/* Field 22 of /proc/<pid>/stat (start time in clock ticks), 0 when the process is gone. */
unsigned long long standin_start_time(int pid);
void standin_sleep_ms(long ms);
int standin_write_file(const char *path, const char *text);
uint64_t standin_fnv(const char *s);
/* Removes control files left by processes that are gone (older than a minute): SIGKILL leaves them behind. */
void standin_gc_ctl(void);
#pragma GCC visibility pop
#endif
