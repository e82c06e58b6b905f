/* moe_tensor internals: dense row-major storage in the ctx's memory space. Layers and ops read
 * `data` directly; only the public copy/fill entry points care whether it is host or device. */
#ifndef MOEI_CORE_TENSOR_H
#define MOEI_CORE_TENSOR_H

#include "moe/tensor.h"

struct moe_tensor {
    moe_ctx *ctx;
    int32_t dtype;
    int32_t ndim;
    int64_t shape[MOE_TENSOR_MAX_DIMS];
    int64_t numel;
    uint64_t nbytes;
    void *data;
};

#endif
