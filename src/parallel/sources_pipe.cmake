# Pipeline parallelism: the stage layout and the schedule executor behind moe_train_step.
list(APPEND MOE_AREA_SOURCES parallel/pipeline.c)
