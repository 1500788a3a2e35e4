/*
 * The part of the CVI runtime's C API (libcviruntime.so, sophgo/cviruntime include/cviruntime.h)
 * that duotpu_app.c calls, declared here so the app compiles without the SDK's headers. The
 * layout of CVI_TENSOR is the runtime's ABI (the same on riscv64, aarch64 and x86_64).
 */
#ifndef DUOTPU_CVI_H
#define DUOTPU_CVI_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
  CVI_FMT_FP32 = 0, CVI_FMT_INT32 = 1, CVI_FMT_UINT32 = 2, CVI_FMT_BF16 = 3,
  CVI_FMT_INT16 = 4, CVI_FMT_UINT16 = 5, CVI_FMT_INT8 = 6, CVI_FMT_UINT8 = 7
} CVI_FMT;

typedef struct {
  int32_t dim[6];
  size_t dim_size;
} CVI_SHAPE;

typedef struct {
  char *name;
  CVI_SHAPE shape;
  CVI_FMT fmt;
  size_t count;
  size_t mem_size;
  uint8_t *sys_mem;
  uint64_t paddr;
  int mem_type;
  float qscale;
  int zero_point;
  int pixel_format;
  bool aligned;
  float mean[3];
  float scale[3];
  void *owner;
  char reserved[32];
} CVI_TENSOR;

typedef void *CVI_MODEL_HANDLE;
typedef int CVI_RC;

CVI_RC CVI_NN_RegisterModel(const char *model_file, CVI_MODEL_HANDLE *model);
CVI_RC CVI_NN_GetInputOutputTensors(CVI_MODEL_HANDLE model, CVI_TENSOR **inputs,
                                    int32_t *input_num, CVI_TENSOR **outputs,
                                    int32_t *output_num);
CVI_RC CVI_NN_Forward(CVI_MODEL_HANDLE model, CVI_TENSOR inputs[], int32_t input_num,
                      CVI_TENSOR outputs[], int32_t output_num);
CVI_RC CVI_NN_CleanupModel(CVI_MODEL_HANDLE model);
char *CVI_NN_TensorName(CVI_TENSOR *tensor);
void *CVI_NN_TensorPtr(CVI_TENSOR *tensor);
size_t CVI_NN_TensorSize(CVI_TENSOR *tensor);
size_t CVI_NN_TensorCount(CVI_TENSOR *tensor);
float CVI_NN_TensorQuantScale(CVI_TENSOR *tensor);
int CVI_NN_TensorQuantZeroPoint(CVI_TENSOR *tensor);

#endif
