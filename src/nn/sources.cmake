list(APPEND MOE_AREA_SOURCES
  nn/buffers.c
  nn/params.c
  nn/model_config.c
  nn/norm_layer.c
  nn/mlp.c
  nn/attention_layer.c
  nn/moe_layer.c
  nn/model.c
  nn/layer.c
)
