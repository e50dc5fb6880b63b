/*
 * STAND-IN libnvidia-ml.so.1 for tests (see standin.h): the NVML calls the agent binds. One device per node;
 * its free memory is the declared total minus the device-memory files of live processes in the node's dir.
 */
#define _GNU_SOURCE
#include "standin.h"
#include <stdio.h>
#include <string.h>

typedef int nvmlReturn_t;
typedef struct standin_nvml_device *nvmlDevice_t;
typedef struct { unsigned long long total, free, used; } nvmlMemory_t;

enum { NVML_SUCCESS = 0, NVML_ERROR_UNINITIALIZED = 1, NVML_ERROR_INVALID_ARGUMENT = 2, NVML_ERROR_INSUFFICIENT_SIZE = 7,
       NVML_ERROR_DRIVER_NOT_LOADED = 9 };

static int initialized;
static struct standin_nvml_device { int index; } device0 = {0};

const char *kybernateStandinVersion(void) { return STANDIN_VERSION; }

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
  *count = 1;
  return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
  if (!initialized) return NVML_ERROR_UNINITIALIZED;
  if (!device || index != 0) return NVML_ERROR_INVALID_ARGUMENT;
  *device = &device0;
  return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory) {
  if (!initialized) return NVML_ERROR_UNINITIALIZED;
  if (device != &device0 || !memory) return NVML_ERROR_INVALID_ARGUMENT;
  struct standin_conf c;
  standin_read_conf(standin_dir(), &c);
  unsigned long long used = standin_used_bytes(standin_dir());
  memory->total = c.total_bytes;
  memory->used = used;
  memory->free = used > c.total_bytes ? 0 : c.total_bytes - used;
  return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
  if (!initialized) return NVML_ERROR_UNINITIALIZED;
  if (device != &device0 || !uuid) return NVML_ERROR_INVALID_ARGUMENT;
  uint64_t a = standin_fnv(standin_dir()), b = standin_fnv("kybernate-standin") ^ a;
  unsigned char u[16];
  memcpy(u, &a, 8);
  memcpy(u + 8, &b, 8);
  char text[96];
  snprintf(text, sizeof text, "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0], u[1], u[2], u[3], u[4], u[5],
           u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
  if (strlen(text) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
  memcpy(uuid, text, strlen(text) + 1);
  return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
  if (!initialized) return NVML_ERROR_UNINITIALIZED;
  if (device != &device0 || !name) return NVML_ERROR_INVALID_ARGUMENT;
  struct standin_conf c;
  standin_read_conf(standin_dir(), &c);
  if (strlen(c.name) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
  memcpy(name, c.name, strlen(c.name) + 1);
  return NVML_SUCCESS;
}
