/*
 * STAND-IN libnvidia-ml.so.1 for tests (see standin.h): the NVML calls the agent binds. `gpus` devices per
 * node (standin.conf, default 1); GPU i's free memory is its total minus the device-memory files of live
 * processes in its dir (the node's dir for GPU 0, <dir>/gpu<i> for the others), and those files are what
 * nvmlDeviceGetComputeRunningProcesses reports per process.
 */
#define _GNU_SOURCE
#include "standin.h"
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

typedef int nvmlReturn_t;
typedef struct standin_nvml_device *nvmlDevice_t;
typedef struct { unsigned long long total, free, used; } nvmlMemory_t;
/* nvml.h's nvmlProcessInfo_t (nvmlProcessInfo_v2_t), as nvmlDeviceGetComputeRunningProcesses_v3 fills it: 24 bytes. */
typedef struct {
  unsigned int pid;
  unsigned long long usedGpuMemory;
  unsigned int gpuInstanceId;
  unsigned int computeInstanceId;
} nvmlProcessInfo_t;

enum { NVML_SUCCESS = 0, NVML_ERROR_UNINITIALIZED = 1, NVML_ERROR_INVALID_ARGUMENT = 2, NVML_ERROR_INSUFFICIENT_SIZE = 7,
       NVML_ERROR_DRIVER_NOT_LOADED = 9 };

static int initialized;
static struct standin_nvml_device { int index; } devices[STANDIN_MAX_GPUS] = {{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}};

const char *kybernateStandinVersion(void) { return STANDIN_VERSION; }

static int gpu_count(void) {
  struct standin_conf c;
  standin_read_conf(standin_dir(), &c);
  return c.gpus;
}

/* The device's index, or -1 for a handle that is not one of this node's devices. */
static int index_of(nvmlDevice_t device) {
  if (!device || device < &devices[0] || device >= &devices[STANDIN_MAX_GPUS]) return -1;
  int i = device->index;
  return i < gpu_count() ? i : -1;
}

nvmlReturn_t nvmlInit_v2(void) {
  /* Like NVML without a driver: no device dir, no driver. */
  if (!standin_dir()) return NVML_ERROR_DRIVER_NOT_LOADED;
  initialized = 1;
  standin_gc_ctl(); /* once per controller (the agent), not in every workload */
  return NVML_SUCCESS;
}
nvmlReturn_t nvmlInit(void) { return nvmlInit_v2(); }

nvmlReturn_t nvmlShutdown(void) {
  if (!initialized) return NVML_ERROR_UNINITIALIZED;
  initialized = 0;
  return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
  if (!initialized) return NVML_ERROR_UNINITIALIZED;
  if (!count) return NVML_ERROR_INVALID_ARGUMENT;
  *count = (unsigned int)gpu_count();
  return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
  if (!initialized) return NVML_ERROR_UNINITIALIZED;
  if (!device || index >= (unsigned int)gpu_count()) return NVML_ERROR_INVALID_ARGUMENT;
  *device = &devices[index];
  return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory) {
  if (!initialized) return NVML_ERROR_UNINITIALIZED;
  int i = index_of(device);
  if (i < 0 || !memory) return NVML_ERROR_INVALID_ARGUMENT;
  struct standin_conf c;
  standin_read_conf(standin_dir(), &c);
  char dir[4200];
  standin_gpu_dir(standin_dir(), i, dir, sizeof dir);
  unsigned long long used = standin_used_bytes(dir), total = standin_gpu_total(&c, i);
  memory->total = total;
  memory->used = used;
  memory->free = used > total ? 0 : total - used;
  return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
  if (!initialized) return NVML_ERROR_UNINITIALIZED;
  int i = index_of(device);
  if (i < 0 || !uuid) return NVML_ERROR_INVALID_ARGUMENT;
  unsigned char u[16];
  standin_uuid(i, u);
  char text[96];
  snprintf(text, sizeof text, "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0], u[1], u[2], u[3], u[4], u[5],
           u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
  if (strlen(text) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
  memcpy(uuid, text, strlen(text) + 1);
  return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
  if (!initialized) return NVML_ERROR_UNINITIALIZED;
  int i = index_of(device);
  if (i < 0 || !name) return NVML_ERROR_INVALID_ARGUMENT;
  struct standin_conf c;
  standin_read_conf(standin_dir(), &c);
  const char *n = standin_gpu_name(&c, i);
  if (strlen(n) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
  memcpy(name, n, strlen(n) + 1);
  return NVML_SUCCESS;
}

/* "570.172.08"; NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE is 80. Like NVML, it needs init. */
nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
  if (!initialized) return NVML_ERROR_UNINITIALIZED;
  if (!version) return NVML_ERROR_INVALID_ARGUMENT;
  struct standin_conf c;
  standin_read_conf(standin_dir(), &c);
  if (strlen(c.driver_version) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
  memcpy(version, c.driver_version, strlen(c.driver_version) + 1);
  return NVML_SUCCESS;
}

/* The CUDA version the driver supports, as cuDriverGetVersion gives it (12080). */
nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *cudaDriverVersion) {
  if (!initialized) return NVML_ERROR_UNINITIALIZED;
  if (!cudaDriverVersion) return NVML_ERROR_INVALID_ARGUMENT;
  struct standin_conf c;
  standin_read_conf(standin_dir(), &c);
  *cudaDriverVersion = c.cuda_version;
  return NVML_SUCCESS;
}
nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *v) { return nvmlSystemGetCudaDriverVersion_v2(v); }

/*
 * Processes with a context on the device and their used memory: each live process's device-memory file in the
 * GPU's dir. As documented: with *infoCount too small (or infos NULL) it sets *infoCount to the number needed
 * and returns NVML_ERROR_INSUFFICIENT_SIZE (SUCCESS when there are none).
 */
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device, unsigned int *infoCount, nvmlProcessInfo_t *infos) {
  if (!initialized) return NVML_ERROR_UNINITIALIZED;
  int i = index_of(device);
  if (i < 0 || !infoCount) return NVML_ERROR_INVALID_ARGUMENT;
  char dir[4200];
  standin_gpu_dir(standin_dir(), i, dir, sizeof dir);
  DIR *d = opendir(dir);
  unsigned int n = 0, cap = infos ? *infoCount : 0;
  if (d) {
    struct dirent *e;
    while ((e = readdir(d))) {
      int pid;
      char rest;
      if (sscanf(e->d_name, "vram-%d%c", &pid, &rest) != 1 || pid <= 0) continue;
      if (kill(pid, 0) != 0 && errno == ESRCH) continue;
      if (n < cap) {
        infos[n].pid = (unsigned int)pid;
        infos[n].usedGpuMemory = standin_pid_bytes(dir, pid);
        infos[n].gpuInstanceId = 0xFFFFFFFFu; /* not a MIG device */
        infos[n].computeInstanceId = 0xFFFFFFFFu;
      }
      n++;
    }
    closedir(d);
  }
  int fits = n <= cap;
  *infoCount = n;
  return fits ? NVML_SUCCESS : NVML_ERROR_INSUFFICIENT_SIZE;
}
