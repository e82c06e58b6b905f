# io: file formats (safetensors) and durable file-system calls. The parser needs cJSON, which
# src/CMakeLists.txt links into the library targets.
list(APPEND MOE_AREA_SOURCES io/fsio.c io/safetensors.c)
