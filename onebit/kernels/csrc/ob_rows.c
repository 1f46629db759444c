/* Row kernels of transformer graphs: softmax / log-softmax and layer normalization over
 * contiguous rows (the runtime's softmax, layer_norm and attention ops). One body,
 * ob_rows_body.h, compiled for the portable, AVX2 and AVX-512 instruction sets through target
 * attributes (this file, like the others, is built without -m flags); the ISA tables point at
 * the variant of their set. */
#include "ob_kernels.h"

/* Floating-point comparisons raise no traps here (nothing reads the flags), which lets the
 * compiler turn the selects of the exp clamp and the NaN guard into vector blends. */
#pragma GCC optimize("no-trapping-math")

#include <math.h>
#include <string.h>

#define OB_ROWS_ATTR
#define OB_ROWS(name) name##_generic
#include "ob_rows_body.h"
#undef OB_ROWS_ATTR
#undef OB_ROWS

#if OB_X86
#define OB_ROWS_ATTR __attribute__((target("avx2,fma")))
#define OB_ROWS(name) name##_avx2
#include "ob_rows_body.h"
#undef OB_ROWS_ATTR
#undef OB_ROWS

#include <immintrin.h>
#define OB_ROWS_AVX512
#define OB_ROWS_ATTR __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")))
#define OB_ROWS(name) name##_avx512
#include "ob_rows_body.h"
#undef OB_ROWS_ATTR
#undef OB_ROWS
#undef OB_ROWS_AVX512
#endif
