/* bf16 and f16 conversions (round to nearest even, NaN kept quiet), used for tensor fill, file
 * import/export and the CUDA path's reference. */
#ifndef MOEI_CORE_HALF_H
#define MOEI_CORE_HALF_H

#include <stdint.h>

uint16_t moei_f32_to_bf16(float f);
float moei_bf16_to_f32(uint16_t h);
uint16_t moei_f32_to_f16(float f);
float moei_f16_to_f32(uint16_t h);

#endif
