/* CRC-32C (Castagnoli), as docs/FORMAT.md uses it: initial value 0, chainable like the
 * Python crc32c package (crc32c(b, crc32c(a)) == crc32c(a + b)). */
#ifndef PV_CRC32C_H
#define PV_CRC32C_H
#include <stddef.h>
#include <stdint.h>

uint32_t pv_crc32c(uint32_t crc, const void *data, size_t len);

#endif
