/* moe-smoke: the smallest end-to-end use of the public API — ctx, mesh, tensor round trip — and a
 * report of what this libmoe build can do. Exit status 0 means every step worked. */
#include <stdio.h>
#include <string.h>

#include <moe/moe.h>

#define CHECK(call)                                                                                    \
    do {                                                                                               \
        moe_status st_ = (call);                                                                       \
        if (st_ != MOE_OK) {                                                                           \
            fprintf(stderr, "moe-smoke: %s failed: %s: %s\n", #call, moe_status_string(st_), moe_last_error()); \
            return 1;                                                                                  \
        }                                                                                              \
    } while (0)

int main(void)
{
    int32_t major, minor, patch, gpus;
    printf("libmoe %s (headers %d.%d.%d)\n", moe_version(&major, &minor, &patch), MOE_VERSION_MAJOR,
           MOE_VERSION_MINOR, MOE_VERSION_PATCH);
    CHECK(moe_cuda_device_count(&gpus));
    printf("CUDA devices visible: %d\n", (int)gpus);

    moe_ctx_config cfg;
    CHECK(moe_ctx_config_init(&cfg, sizeof cfg));
    moe_ctx *ctx = NULL;
    CHECK(moe_ctx_create(&cfg, &ctx));

    moe_mesh_config mcfg;
    CHECK(moe_mesh_config_init(&mcfg, sizeof mcfg));
    moe_mesh *mesh = NULL;
    CHECK(moe_mesh_create(ctx, &mcfg, &mesh));
    int32_t world = 0;
    CHECK(moe_mesh_group_size(mesh, MOE_AXIS_WORLD, &world));
    printf("mesh: world of %d rank(s)\n", (int)world);

    const int64_t shape[2] = {4, 8};
    moe_tensor *t = NULL;
    CHECK(moe_tensor_create(ctx, MOE_DTYPE_F32, 2, shape, &t));
    float in[32], out[32];
    for (int i = 0; i < 32; i++) in[i] = (float)i * 0.5f;
    CHECK(moe_tensor_copy_from(t, in, sizeof in));
    CHECK(moe_tensor_copy_to(t, out, sizeof out));
    int same = memcmp(in, out, sizeof in) == 0;
    printf("tensor round trip: %s\n", same ? "ok" : "MISMATCH");

    moe_tensor_destroy(t);
    moe_mesh_destroy(mesh);
    moe_ctx_destroy(ctx);
    return same ? 0 : 1;
}
