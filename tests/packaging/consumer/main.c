/* A consumer of an installed libmoe: uses a few calls from each handle family. */
#include <moe/moe.h>
#include <stdio.h>

int main(void)
{
    moe_ctx *ctx = NULL;
    if (moe_ctx_create(NULL, &ctx) != MOE_OK) {
        fprintf(stderr, "ctx: %s\n", moe_last_error());
        return 1;
    }
    const int64_t shape[1] = {3};
    moe_tensor *t = NULL;
    float out[3] = {0};
    int ok = moe_tensor_create(ctx, MOE_DTYPE_F32, 1, shape, &t) == MOE_OK && moe_tensor_fill(t, 2.5) == MOE_OK &&
             moe_tensor_copy_to(t, out, sizeof out) == MOE_OK && out[2] == 2.5f;
    moe_tensor_destroy(t);
    moe_ctx_destroy(ctx);
    if (!ok) return 1;
    printf("consumer ok: libmoe %s\n", moe_version(NULL, NULL, NULL));
    return 0;
}
