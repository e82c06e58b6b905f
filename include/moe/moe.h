/**
 * @file moe/moe.h
 * @brief The libmoe umbrella header: everything in the stable C API.
 *
 * libmoe trains Mixture-of-Experts transformer language models on CPUs and NVIDIA GPUs with data,
 * tensor, sequence, expert and pipeline parallelism, behind a stable C ABI.
 * Link with `pkg-config --cflags --libs moe` or CMake `find_package(moe)` + `moe::moe`.
 */
#ifndef MOE_MOE_H
#define MOE_MOE_H

#include "moe/common.h"
#include "moe/version.h"
#include "moe/ctx.h"
#include "moe/tensor.h"
#include "moe/mesh.h"
#include "moe/model.h"
#include "moe/layer.h"
#include "moe/optim.h"
#include "moe/train.h"
#include "moe/hf.h"
#include "moe/generate.h"
#include "moe/data.h"
#include "moe/checkpoint.h"

#endif /* MOE_MOE_H */
