/* The "ans" segment codec of p2pdist deltas: docs/FORMAT_DELTA.md is the specification.
 *
 * A segment of n little-endian words of w bytes (w = 1, 2, 4, 8) is coded against a base
 * segment of the same length (the parent's tensor bytes):
 *
 *   d = new - base (mod 2^(8w)), z = zigzag(d)           small moves -> small z
 *   z < 16: token z, no extra bits
 *   else:   p = floor(log2 z) (4..8w-1), token = 16 + 4(p - 4) + the two bits of z below
 *           its leading one, and the p - 2 lowest bits of z are "extra bits", stored raw
 *   context = clamp(((base >> shift) & (2^bits - 1)) - lo, 0, 15)   (a float's exponent)
 *
 * Tokens are entropy coded by rANS (32-bit states, 16-bit I/O, 32 interleaved states, 12-bit
 * probabilities) with one static frequency table per context; the tables are stored in the
 * payload. Weights of one exponent move by similar numbers of units in the last place, so the
 * exponent context does what sorting by exponent did for zstd, without moving any data. A
 * segment of whole rows of a weight matrix also has row and column classes (which rows, and
 * which positions along a row, moved further: 2 x 2 by quantiles, stored as bits), each with
 * its own set of tables.
 *
 * Everything here works on caller-owned buffers, allocates only small fixed tables and
 * per-segment scratch bounded by the segment's size, and releases the GIL while it computes,
 * so a thread pool keeps every core busy. Decoding 16- and 32-bit words runs on AVX-512 or
 * AVX2 where the CPU has them (chosen when the module loads; the portable decoder finishes
 * each segment's last groups, and the tests check that all three decode the same bytes).
 * The decoder trusts nothing in the payload: every table, length and read is checked (the
 * vector decoders run only while a whole group's reads surely fit), and it never reads or
 * writes outside the buffers it was given. A malformed payload (bad table, stream too short
 * or too long, final rANS states not the initial ones, nonzero padding) is refused with
 * ValueError; a well-formed but wrong one decodes to bytes that the caller's blake3 check
 * then refuses.
 */

/* What the codec's C files share (encode.c, decode.c, and module.c,
 * the Python module): the constants of the format, scratch arenas, words, varints, and the
 * entry points of the encoder and the decoder. */

#ifndef P2PDIST_DELTA_ANS_H
#define P2PDIST_DELTA_ANS_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define SCALE_BITS 12
#define SCALE (1u << SCALE_BITS)
#define RANS_L (1u << 15) /* states live in [2^15, 2^31): the reciprocal division is exact */
#define NSTATES 32 /* word i is coded by state i % 32: two AVX-512 vectors, four of AVX2 */
#define MAX_CTX 16
#define ALPHABET_MAX 256 /* 32 * w tokens for w-byte words */
#define SMALL 16
#define INLINE static inline __attribute__((always_inline))
#define INTERNAL __attribute__((visibility("hidden")))
#define MAX_KEYS (1u << 16) /* context keys have at most 16 bits */
#define MAX_ROW_CLASSES 4
#define MAX_COL_CLASSES 2
#define MAX_TABLES (MAX_CTX * MAX_ROW_CLASSES * MAX_COL_CLASSES)
#define ROW_CLASSES 2 /* what the encoder uses (2 x 2 measured best on bench/delta.py's pairs) */
#define COL_CLASSES 2
#define TABLE_BYTES (MAX_TABLES * (2 + ALPHABET_MAX * 4)) /* varint tables, worst case */
/* Bytes ahead of a pass's loads that it asks the CPU to fetch: the hardware prefetcher alone
 * left the encoder's first pass waiting on memory for ~40 % of its time (bench pairs, one
 * thread; 512 B to 4 KiB ahead measured the same). */
#define PREFETCH_AHEAD 1024

/* The encoder's histograms lie this many counters apart: 64 bytes more than the largest, so
 * that the counts of one code in neighbouring histograms never sit a multiple of 4 KiB apart
 * (which the CPU takes for the same address, stalling a load until the store retires; with
 * the tables' size as the stride, a run of one code, the commonest case, stalled every time;
 * codes 16 apart still can). */
#define HIST_STRIDE (MAX_TABLES * ALPHABET_MAX + 16)

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "p2pdist.delta._ans reads little-endian words with memcpy: little-endian hosts only"
#endif

/* ------------------------------------------------------------------------ scratch */

/* Scratch memory comes from the caller, a buffer reused from segment to segment (and kept
 * between encodes, delta_codec._scratch): fresh allocations of a few MiB per segment cost a
 * page fault per 4 KiB, which measured as 30 % of the encoder's time. */
typedef struct {
    uint8_t *p, *end;
} Arena;

static inline void *take(Arena *a, size_t size) {
    uintptr_t at = ((uintptr_t)a->p + 63) & ~(uintptr_t)63;
    if (at < (uintptr_t)a->p || at > (uintptr_t)a->end || size > (uintptr_t)a->end - at) return NULL;
    a->p = (uint8_t *)(at + size);
    return (void *)at;
}

/* ------------------------------------------------------------------------ words */

INLINE uint64_t load_word(const uint8_t *p, int w) {
    switch (w) {
    case 1: return p[0];
    case 2: { uint16_t v; memcpy(&v, p, 2); return v; }
    case 4: { uint32_t v; memcpy(&v, p, 4); return v; }
    default: { uint64_t v; memcpy(&v, p, 8); return v; }
    }
}

INLINE void store_word(uint8_t *p, int w, uint64_t v) {
    switch (w) {
    case 1: p[0] = (uint8_t)v; break;
    case 2: { uint16_t x = (uint16_t)v; memcpy(p, &x, 2); break; }
    case 4: { uint32_t x = (uint32_t)v; memcpy(p, &x, 4); break; }
    default: memcpy(p, &v, 8); break;
    }
}

INLINE uint64_t word_mask(int w) { return w == 8 ? ~0ull : (1ull << (8 * w)) - 1; }

INLINE uint64_t zigzag(uint64_t d, int w) {
    unsigned bits = 8u * (unsigned)w;
    uint64_t neg = (d >> (bits - 1)) & 1; /* sign bit of the w-byte value */
    return ((d << 1) ^ (0 - neg)) & word_mask(w);
}

INLINE uint64_t unzigzag(uint64_t z) { return (z >> 1) ^ (0 - (z & 1)); }

/* For every key (2^bits values; one without a context), its context times ``unit``. */
static inline uint32_t *context_lut(Arena *a, int use_ctx, unsigned bits, int64_t lo, uint32_t unit) {
    size_t nkeys = use_ctx ? (size_t)1 << bits : 1;
    uint32_t *cl = take(a, nkeys * sizeof *cl);
    if (!cl) return NULL;
    for (size_t key = 0; key < nkeys; key++) {
        int64_t c = use_ctx ? (int64_t)key - lo : 0;
        c = c < 0 ? 0 : c > MAX_CTX - 1 ? MAX_CTX - 1 : c;
        cl[key] = (uint32_t)c * unit;
    }
    return cl;
}

INLINE int floor_log2(uint64_t z) { return 63 - __builtin_clzll(z); }

INLINE unsigned class_bits(unsigned k) { return k > 2 ? 2 : k > 1 ? 1 : 0; }

/* ------------------------------------------------------------------------ varints */

typedef struct {
    uint8_t *p, *end;
} Out;

INLINE int put_varint(Out *o, uint32_t v) {
    do {
        if (o->p >= o->end) return -1;
        uint8_t byte = v & 0x7f;
        v >>= 7;
        *o->p++ = byte | (v ? 0x80 : 0);
    } while (v);
    return 0;
}

typedef struct {
    const uint8_t *p, *end;
} In;

INLINE int get_varint(In *in, uint32_t *v) {
    uint32_t r = 0;
    for (int i = 0; i < 5; i++) {
        if (in->p >= in->end) return -1;
        uint8_t byte = *in->p++;
        if (i == 4 && byte > 0x0f) return -1;
        r |= (uint32_t)(byte & 0x7f) << (7 * i);
        if (!(byte & 0x80)) {
            if (i > 0 && byte == 0) return -1; /* not minimal */
            *v = r;
            return 0;
        }
    }
    return -1;
}

typedef struct {
    uint32_t x_max, rcp_freq, bias;
    uint16_t cmpl_freq, rcp_shift;
} EncSym;

/* Decoder slot entry: token (8 bits) | freq - 1 (12 bits) | slot - start (12 bits). */
typedef uint32_t Slot;

typedef enum { ENC_OK = 0, ENC_UNCHANGED = 1, ENC_TOO_BIG = 2, ENC_NOMEM = 3 } EncResult;

/* The payload, in pieces that live in the scratch arena: concatenated, they are the payload. */
typedef struct {
    const uint8_t *part[5];
    size_t len[5];
} Pieces;

/* Which vector code runs: 0 portable C, 1 AVX2, 2 AVX-512 (encoder and decoder, 16- and
 * 32-bit words; only the portable C where the vector code is not compiled in). The best the
 * CPU has is chosen when the module loads; the tests switch between them and check that all
 * code the same bytes. */
enum { SIMD_NONE = 0, SIMD_AVX2 = 1, SIMD_AVX512 = 2 };
extern INTERNAL int simd_level; /* defined in module.c */

/* P2PDIST_NO_VECTOR builds the portable C alone, as on hosts other than x86-64 (the tests
 * compile it so, to keep that build working). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(P2PDIST_NO_VECTOR)
#define HAVE_VECTOR_CODERS 1
#include <immintrin.h>
#define AVX2 __attribute__((target("avx2,bmi2")))
#define AVX512 __attribute__((target("avx2,bmi2,avx512f,avx512bw,avx512cd,avx512vl,avx512vbmi")))
/* Ask for the cache line ``ahead`` bytes past p, computed as an integer: it may lie past the
 * end of the buffer (a prefetch never faults, but such a pointer would be undefined C). */
#define PREFETCH(p, ahead) _mm_prefetch((const char *)((uintptr_t)(p) + (ahead)), _MM_HINT_T0)
#endif

/* One copy of each loop per word size, so that loads, stores and shifts are constants; on
 * x86-64 with GCC, a second copy for AVX2-era CPUs (BMI2 shifts: 15-20 % faster), chosen at
 * load time by the dynamic linker. */
#if defined(__x86_64__) && defined(__GLIBC__) && defined(__GNUC__) && !defined(__clang__) && \
    __GNUC__ >= 11
#define CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define CLONES
#endif
#define BY_WORD(call)                                                                            \
    switch (w) {                                                                                 \
    case 1: { const int w = 1; return call; }                                                    \
    case 2: { const int w = 2; return call; }                                                    \
    case 4: { const int w = 4; return call; }                                                    \
    default: { const int w = 8; return call; }                                                   \
    }

/* The entry points (one clone per CPU generation, see CLONES): the encoder's in
 * encode.c, the decoder's in decode.c. */
INTERNAL int64_t choose_lo(const uint8_t *base, size_t n, int w, unsigned shift, unsigned bits,
                           Arena a);
INTERNAL EncResult ans_encode(const uint8_t *nw, const uint8_t *bs, size_t n, int w, int use_ctx,
                              unsigned shift, unsigned bits, int64_t lo, size_t row_len, Arena a,
                              Pieces *out);
INTERNAL const char *ans_decode(const uint8_t *payload, size_t plen, const uint8_t *bs,
                                uint8_t *out, size_t n, int w, int use_ctx, unsigned shift,
                                unsigned bits, int64_t lo, Arena a);
/* Tables filled once when the module loads. */
INTERNAL void init_short_tokens(void);
#ifdef HAVE_VECTOR_CODERS
INTERNAL void init_renorm_shuffle(void);
INTERNAL void init_renorm_pack(void);
#endif

#endif
