# Elementwise CPU ops: embeddings, cross-entropy, activations, optimizer kernels (paths relative to src/).
list(APPEND MOE_AREA_SOURCES cpu/embed.c cpu/loss.c cpu/activation.c cpu/optim_kernels.c)
