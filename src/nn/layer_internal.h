/* moe_layer handles: standalone layers own a parameter store; borrowed ones point into a model. */
#ifndef MOEI_NN_LAYER_INTERNAL_H
#define MOEI_NN_LAYER_INTERNAL_H

#include "moe/layer.h"

/* Free a borrowed handle when its model dies (moe_layer_destroy ignores borrowed handles). */
void moei_layer_handle_free(struct moe_layer *layer);

#endif
