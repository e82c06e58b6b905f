/* See config.h. struct_size is always the first field (uint32_t) of every public config struct. */
#include "core/config.h"

#include <string.h>

#include "core/error.h"

moe_status moei_config_init(void *cfg, uint32_t struct_size, const void *defaults, size_t full_size, const char *fn)
{
    MOEI_CHECK_NOT_NULL(NULL, cfg, fn);
    if (struct_size < sizeof(uint32_t))
        return moei_fail(NULL, MOE_ERR_INVALID_ARG, "%s: struct_size = %u is smaller than the struct_size field", fn,
                         (unsigned)struct_size);
    size_t n = struct_size < full_size ? struct_size : full_size;
    memcpy(cfg, defaults, n);
    memcpy(cfg, &struct_size, sizeof struct_size);
    return MOE_OK;
}

moe_status moei_config_read(void *full, size_t full_size, const void *user, const char *type_name, const char *fn)
{
    uint32_t user_size;
    memcpy(&user_size, user, sizeof user_size);
    if (user_size < sizeof(uint32_t))
        return moei_fail(NULL, MOE_ERR_INVALID_ARG,
                         "%s: %s.struct_size = %u; fill the config with its _config_init function first", fn,
                         type_name, (unsigned)user_size);
    size_t n = user_size < full_size ? user_size : full_size;
    memcpy(full, user, n);
    uint32_t fs = (uint32_t)full_size;
    memcpy(full, &fs, sizeof fs);
    return MOE_OK;
}
