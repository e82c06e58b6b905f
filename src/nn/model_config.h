/* Model config defaults and validation (every field, with the field named in the message). */
#ifndef MOEI_NN_MODEL_CONFIG_H
#define MOEI_NN_MODEL_CONFIG_H

#include "moe/model.h"

void moei_model_config_defaults(moe_model_config *c);
/* Read a caller's config (versioned) over the defaults and validate it. ctx may be NULL. */
moe_status moei_model_config_load(moe_ctx *ctx, const moe_model_config *user, moe_model_config *out, const char *fn);
moe_status moei_model_config_check(moe_ctx *ctx, const moe_model_config *c, const char *fn);
/* The effective head size (head_dim, or d_model / num_heads when head_dim is 0). */
int32_t moei_model_head_dim(const moe_model_config *c);
/* Whether block `layer` has an MoE FFN (else a dense MLP). */
int moei_model_layer_is_moe(const moe_model_config *c, int32_t layer);

#endif
