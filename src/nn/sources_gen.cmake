# Generation: KV-cached decoding, sampling and beam search (paths relative to src/).
list(APPEND MOE_AREA_SOURCES
  nn/generate.c
  nn/generate_sample.c
  nn/generate_search.c
  cpu/attention_decode.c
)
