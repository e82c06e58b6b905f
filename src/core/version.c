/* Run-time version; the string is built from the same macros as the header, so they cannot drift. */
#include "moe/version.h"

#define MOEI_STR2(x) #x
#define MOEI_STR(x) MOEI_STR2(x)

MOE_API const char *moe_version(int32_t *major, int32_t *minor, int32_t *patch)
{
    if (major) *major = MOE_VERSION_MAJOR;
    if (minor) *minor = MOE_VERSION_MINOR;
    if (patch) *patch = MOE_VERSION_PATCH;
    return MOEI_STR(MOE_VERSION_MAJOR) "." MOEI_STR(MOE_VERSION_MINOR) "." MOEI_STR(MOE_VERSION_PATCH);
}
