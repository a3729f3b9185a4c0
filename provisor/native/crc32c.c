/* CRC-32C with the SSE4.2 crc32 instruction when the host has it, else a table. */
#include "crc32c.h"

#include <nmmintrin.h>

static uint32_t table[256];
static int have_sse42;

__attribute__((constructor)) static void init_table(void)
{
    __builtin_cpu_init();
    have_sse42 = __builtin_cpu_supports("sse4.2") ? 1 : 0;
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        table[i] = c;
    }
}

__attribute__((target("sse4.2")))
static uint32_t hw(uint32_t crc, const uint8_t *p, size_t n)
{
    uint64_t c = crc;
    while (n >= 8) {
        uint64_t v;
        __builtin_memcpy(&v, p, 8);
        c = _mm_crc32_u64(c, v);
        p += 8;
        n -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (n--)
        c32 = _mm_crc32_u8(c32, *p++);
    return c32;
}

uint32_t pv_crc32c(uint32_t crc, const void *data, size_t len)
{
    const uint8_t *p = data;
    crc = ~crc;
    if (have_sse42)
        crc = hw(crc, p, len);
    else
        while (len--)
            crc = table[(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return ~crc;
}
