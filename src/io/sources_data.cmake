# io/datasets: byte-level text and Megatron indexed datasets (reader, sampler, writer).
list(APPEND MOE_AREA_SOURCES io/dataset.c io/dataset_writer.c)
