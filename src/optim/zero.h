/* ZeRO-1 (zero_stage = 1): the communication and norm of a sharded optimizer step. Each parameter
 * region (padded by moe_model_create to a multiple of its replica group's size) is cut into equal
 * contiguous chunks, chunk r owned by group rank r; a step reduce-scatters the gradients (each rank
 * gets the summed gradient of its chunk), computes the global norm from the chunks (every element
 * counted once over the whole mesh), updates its chunk, and all-gathers the parameters. */
#ifndef MOEI_OPTIM_ZERO_H
#define MOEI_OPTIM_ZERO_H

#include "optim/optimizer.h"

/* Fill opt->own_*, opt->state_offset and opt->count for opt->cfg.zero_stage (0 or 1). Fails with
 * MOE_ERR_INVALID_ARG when a region does not split evenly over its group (a model whose regions
 * were not padded for ZeRO). */
moe_status moei_zero_layout(moe_optimizer *opt, const char *fn);

/* Sum the gradients of every rank's chunk over its replica group (reduce-scatter; tensors whose
 * gradients are partial over tp are all-reduced over tp first). Collective over the mesh. */
moe_status moei_zero_reduce(moe_optimizer *opt);

/* Global squared norm of the summed gradients from this rank's chunks, and whether every rank's
 * chunks are finite and no rank asked to skip (force_skip): the same values on every rank
 * (a rank-ordered sum over the world). Collective over the world. */
moe_status moei_zero_grad_sumsq(moe_optimizer *opt, int force_skip, double *sumsq, int32_t *finite);

/* All-gather the updated chunks so every replica holds the whole region again. Collective. */
moe_status moei_zero_gather(moe_optimizer *opt);

#endif
