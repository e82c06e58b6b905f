/* Versioned config structs (API_STYLE rule 7): the caller's struct_size says how much of the struct
 * it knows; the library writes or reads only that much and gives newer fields their defaults. */
#ifndef MOEI_CORE_CONFIG_H
#define MOEI_CORE_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "moe/common.h"

/* Write the defaults in `defaults` (a full struct of `full_size` bytes) into the caller's `cfg` of
 * `struct_size` bytes, then set its struct_size field. */
moe_status moei_config_init(void *cfg, uint32_t struct_size, const void *defaults, size_t full_size, const char *fn);

/* Copy the caller's config (its first field is its struct_size) over `full`, which holds the
 * defaults, reading no more than the caller's struct_size bytes. */
moe_status moei_config_read(void *full, size_t full_size, const void *user, const char *type_name, const char *fn);

#endif
