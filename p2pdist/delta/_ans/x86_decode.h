/* The x86-64 vector decoders of the delta codec (AVX2 and AVX-512), included by
 * decode.c after the decoder's types (Slot, Classes, ClassCursor) where the compiler
 * has the x86 intrinsics. Each decodes whole groups while both streams surely hold a group's
 * reads, and must produce the same bytes as the portable DEC of decode.c: the tests
 * compare every level, valid and tampered payloads alike. Not a standalone header. */

/* For each 8-bit mask of lanes that renormalise, the stream word each lane takes: lane k
 * takes the next word number (lanes before k that also take one). */
static uint32_t renorm_shuffle[256][8];

INTERNAL void init_renorm_shuffle(void) {
    for (int m = 0; m < 256; m++) {
        uint32_t next = 0;
        for (int k = 0; k < 8; k++) renorm_shuffle[m][k] = (m >> k) & 1 ? next++ : 0;
    }
}

/* Decode 8 words [i, i + 8) with the 8 states in *x: the same steps as the scalar DEC, lane k
 * doing word i + k. Reads stream words at *rp (lanes in order) and extra bits at *pos. */
AVX2 INLINE void avx2_decode8(int w, const uint8_t *bs, uint8_t *out, size_t i, const Slot *lut,
                              __m256i kmask, __m128i shift, __m256i lo, __m256i cls, __m256i *x,
                              const uint16_t *words, size_t *rp, const uint8_t *xb,
                              uint64_t *pos) {
    const __m256i zero = _mm256_setzero_si256(), one = _mm256_set1_epi32(1);
    __m256i b = w == 2 ? _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(bs + i * 2)))
                       : _mm256_loadu_si256((const __m256i *)(bs + i * 4));
    /* context: clamp(key - lo, 0, 15), as the scalar context_lut */
    __m256i c = _mm256_sub_epi32(_mm256_and_si256(_mm256_srl_epi32(b, shift), kmask), lo);
    c = _mm256_min_epi32(_mm256_max_epi32(c, zero), _mm256_set1_epi32(MAX_CTX - 1));
    c = _mm256_add_epi32(c, cls);
    __m256i v = *x;
    __m256i slot = _mm256_or_si256(_mm256_slli_epi32(c, SCALE_BITS),
                                   _mm256_and_si256(v, _mm256_set1_epi32(SCALE - 1)));
    __m256i e = _mm256_i32gather_epi32((const int *)lut, slot, 4);
    __m256i t = _mm256_and_si256(e, _mm256_set1_epi32(0xff));
    __m256i f = _mm256_add_epi32(_mm256_and_si256(_mm256_srli_epi32(e, 8), _mm256_set1_epi32(0xfff)), one);
    v = _mm256_add_epi32(_mm256_mullo_epi32(f, _mm256_srli_epi32(v, SCALE_BITS)), _mm256_srli_epi32(e, 20));
    /* renormalise: lanes below RANS_L take the next stream words, in lane order */
    __m256i need = _mm256_cmpgt_epi32(_mm256_set1_epi32(RANS_L), v);
    unsigned mask = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(need));
    __m256i fresh = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(words + *rp)));
    fresh = _mm256_permutevar8x32_epi32(fresh, _mm256_loadu_si256((const __m256i *)renorm_shuffle[mask]));
    *x = _mm256_blendv_epi8(v, _mm256_or_si256(_mm256_slli_epi32(v, 16), fresh), need);
    *rp += (size_t)__builtin_popcount(mask);
    /* extra bits: token t >= 16 has nb = (t - 16) / 4 + 2 of them, z = (4 + t % 4) << nb | bits */
    __m256i big = _mm256_cmpgt_epi32(t, _mm256_set1_epi32(SMALL - 1));
    __m256i nb = _mm256_and_si256(big, _mm256_add_epi32(_mm256_srli_epi32(_mm256_sub_epi32(t, _mm256_set1_epi32(SMALL)), 2),
                                                        _mm256_set1_epi32(2)));
    /* bit offsets: an exclusive prefix sum of nb over the lanes, after *pos */
    __m256i sum = _mm256_add_epi32(nb, _mm256_slli_si256(nb, 4));
    sum = _mm256_add_epi32(sum, _mm256_slli_si256(sum, 8));
    __m256i carry = _mm256_shuffle_epi32(sum, 0xff);
    sum = _mm256_add_epi32(sum, _mm256_permute2x128_si256(carry, carry, 0x08));
    __m256i at = _mm256_add_epi32(_mm256_sub_epi32(sum, nb), _mm256_set1_epi32((int)(*pos & 7)));
    const uint8_t *from = xb + (*pos >> 3);
    __m256i byte = _mm256_srli_epi32(at, 3), off = _mm256_and_si256(at, _mm256_set1_epi32(7));
    __m256i bits;
    if (w == 2) {
        /* nb <= 13: the 8 lanes' bits lie in the 16 bytes from `from` (at most 7 + 8 * 13 bits),
         * and each lane's in the 3 bytes from its own byte: a byte shuffle of those 16 bytes,
         * not a gather (which measured as a fifth of the decoder's time) */
        __m256i window = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)from));
        const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12,
                                                0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12);
        __m256i pick = _mm256_add_epi8(_mm256_shuffle_epi8(byte, spread), _mm256_set1_epi32(0x03020100));
        bits = _mm256_srlv_epi32(_mm256_shuffle_epi8(window, pick), off);
    } else { /* nb <= 29: 64-bit loads */
        __m256i lo4 = _mm256_i32gather_epi64((const long long *)from, _mm256_castsi256_si128(byte), 1);
        __m256i hi4 = _mm256_i32gather_epi64((const long long *)from, _mm256_extracti128_si256(byte, 1), 1);
        lo4 = _mm256_srlv_epi64(lo4, _mm256_cvtepu32_epi64(_mm256_castsi256_si128(off)));
        hi4 = _mm256_srlv_epi64(hi4, _mm256_cvtepu32_epi64(_mm256_extracti128_si256(off, 1)));
        bits = _mm256_castps_si256(_mm256_shuffle_ps(_mm256_castsi256_ps(lo4), _mm256_castsi256_ps(hi4), 0x88));
        bits = _mm256_permute4x64_epi64(bits, 0xd8);
    }
    bits = _mm256_and_si256(bits, _mm256_sub_epi32(_mm256_sllv_epi32(one, nb), one));
    *pos += (uint32_t)_mm256_extract_epi32(sum, 7);
    __m256i zbig = _mm256_sllv_epi32(_mm256_add_epi32(_mm256_and_si256(t, _mm256_set1_epi32(3)), _mm256_set1_epi32(4)), nb);
    __m256i z = _mm256_or_si256(_mm256_blendv_epi8(t, zbig, big), bits);
    __m256i d = _mm256_xor_si256(_mm256_srli_epi32(z, 1), _mm256_sub_epi32(zero, _mm256_and_si256(z, one)));
    __m256i r = _mm256_add_epi32(b, d);
    if (w == 2) {
        r = _mm256_and_si256(r, _mm256_set1_epi32(0xffff));
        r = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
        _mm_storeu_si128((__m128i *)(out + i * 2), _mm256_castsi256_si128(r));
    } else {
        _mm256_storeu_si256((__m256i *)(out + i * 4), r);
    }
}

/* Decode whole groups of NSTATES words from word 0 while both streams surely hold a group's
 * reads (the scalar decoder checks the rest); returns the number of words decoded. Only for
 * 2- and 4-byte words. */
AVX2 static size_t avx2_decode_groups(int w, const uint8_t *bs, uint8_t *out, size_t ng,
                                      const Slot *lut, uint64_t kmask, unsigned shift, int64_t lo,
                                      const Classes *cls, uint32_t *x, const uint16_t *words, size_t nwords,
                                      size_t *rp, const uint8_t *xb, size_t xlen, uint64_t *pos) {
    __m256i xs[NSTATES / 8];
    for (int k = 0; k < NSTATES / 8; k++) xs[k] = _mm256_loadu_si256((const __m256i *)(x + 8 * k));
    __m256i km = _mm256_set1_epi32((int)kmask), l = _mm256_set1_epi32((int)lo);
    __m128i sh = _mm_cvtsi32_si128((int)shift);
    size_t g = 0, r = *rp;
    uint64_t p = *pos;
    /* a group: at most NSTATES stream words (the last vector's load reads 8 of them) and
     * NSTATES * 29 extra bits (+ 16 bytes of load) */
    size_t xbytes = (size_t)(w == 2 ? NSTATES * 13 : NSTATES * 29) / 8 + 16;
    ClassCursor at = class_cursor(cls, 0);
    /* one loop without classes and one with, so that the first carries nothing of them */
#define GROUPS(WITH_CLASSES)                                                                     \
    for (; g < ng; g += NSTATES, class_next(&at)) {                                              \
        if (r + NSTATES > nwords || (p >> 3) + xbytes > xlen) break;                             \
        PREFETCH(bs + g * (size_t)w, PREFETCH_AHEAD);                                            \
        if (w == 4) PREFETCH(bs + g * 4, PREFETCH_AHEAD + 64);                                   \
        for (int k = 0; k < NSTATES / 8; k++) {                                                  \
            __m256i c = _mm256_setzero_si256();                                                  \
            if (WITH_CLASSES)                                                                    \
                c = _mm256_add_epi32(_mm256_set1_epi32(*at.row),                                 \
                                     _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(at.col + 8 * k)))); \
            if (w == 2)                                                                          \
                avx2_decode8(2, bs, out, g + 8 * (size_t)k, lut, km, sh, l, c, &xs[k], words, &r, xb, &p); \
            else                                                                                 \
                avx2_decode8(4, bs, out, g + 8 * (size_t)k, lut, km, sh, l, c, &xs[k], words, &r, xb, &p); \
        }                                                                                        \
    }
    if (at.col_end) {
        GROUPS(1)
    } else {
        GROUPS(0)
    }
#undef GROUPS
    for (int k = 0; k < NSTATES / 8; k++) _mm256_storeu_si256((__m256i *)(x + 8 * k), xs[k]);
    *rp = r, *pos = p;
    return g;
}

/* Decode 16 words [i, i + 16) of w = 2 or 4 bytes with the 16 states in *x (half of a group's
 * 32; ``cls`` their class offsets, in tables): the steps of avx2_decode8, where lanes that renormalise take their stream words with one expand, and the
 * extra bits of all 16 lanes come from one load and a byte permutation. */
AVX512 INLINE void avx512_decode16(int w, const uint8_t *bs, uint8_t *out, size_t i, const Slot *lut,
                                   __m512i km, __m128i sh, __m512i l, __m512i cls, __m512i *x,
                                   const uint16_t *words, size_t *rp, const uint8_t *xb,
                                   uint64_t *pos) {
    const __m512i zero = _mm512_setzero_si512(), one = _mm512_set1_epi32(1);
    __m512i v = *x;
    __m512i b = w == 2 ? _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(bs + i * 2)))
                       : _mm512_loadu_si512((const void *)(bs + i * 4));
    __m512i c = _mm512_sub_epi32(_mm512_and_si512(_mm512_srl_epi32(b, sh), km), l);
    c = _mm512_add_epi32(_mm512_min_epi32(_mm512_max_epi32(c, zero), _mm512_set1_epi32(MAX_CTX - 1)), cls);
    __m512i slot = _mm512_or_si512(_mm512_slli_epi32(c, SCALE_BITS),
                                   _mm512_and_si512(v, _mm512_set1_epi32(SCALE - 1)));
    __m512i e = _mm512_i32gather_epi32(slot, (const void *)lut, 4);
    __m512i t = _mm512_and_si512(e, _mm512_set1_epi32(0xff));
    __m512i f = _mm512_add_epi32(_mm512_and_si512(_mm512_srli_epi32(e, 8), _mm512_set1_epi32(0xfff)), one);
    v = _mm512_add_epi32(_mm512_mullo_epi32(f, _mm512_srli_epi32(v, SCALE_BITS)), _mm512_srli_epi32(e, 20));
    __mmask16 need = _mm512_cmplt_epu32_mask(v, _mm512_set1_epi32(RANS_L));
    __m512i fresh = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(words + *rp)));
    *x = _mm512_mask_or_epi32(v, need, _mm512_slli_epi32(v, 16), _mm512_maskz_expand_epi32(need, fresh));
    *rp += (size_t)__builtin_popcount((unsigned)need);
    __mmask16 big = _mm512_cmpgt_epi32_mask(t, _mm512_set1_epi32(SMALL - 1));
    __m512i nb = _mm512_maskz_add_epi32(big, _mm512_srli_epi32(_mm512_sub_epi32(t, _mm512_set1_epi32(SMALL)), 2),
                                        _mm512_set1_epi32(2));
    __m512i sum = _mm512_add_epi32(nb, _mm512_alignr_epi32(nb, zero, 15));
    sum = _mm512_add_epi32(sum, _mm512_alignr_epi32(sum, zero, 14));
    sum = _mm512_add_epi32(sum, _mm512_alignr_epi32(sum, zero, 12));
    sum = _mm512_add_epi32(sum, _mm512_alignr_epi32(sum, zero, 8));
    __m512i at = _mm512_add_epi32(_mm512_sub_epi32(sum, nb), _mm512_set1_epi32((int)(*pos & 7)));
    /* each lane's bits start in byte at / 8 of a window of 32 (w = 2: at most 7 + 16 * 13 bits)
     * or 64 bytes (w = 4: 7 + 16 * 29 bits); a byte permutation gathers them */
    const __m512i spread = _mm512_set4_epi32(0x0c0c0c0c, 0x08080808, 0x04040404, 0);
    __m512i pick = _mm512_add_epi8(_mm512_shuffle_epi8(_mm512_srli_epi32(at, 3), spread), _mm512_set1_epi32(0x03020100));
    __m512i off = _mm512_and_si512(at, _mm512_set1_epi32(7)), bits;
    if (w == 2) { /* nb + off <= 20: the 4 bytes from at / 8 hold them */
        __m512i window = _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)(xb + (*pos >> 3))));
        bits = _mm512_srlv_epi32(_mm512_permutexvar_epi8(pick, window), off);
    } else { /* nb + off <= 36: 8 bytes, shifted as a pair of 32-bit halves */
        __m512i window = _mm512_loadu_si512((const void *)(xb + (*pos >> 3)));
        __m512i low = _mm512_permutexvar_epi8(pick, window);
        __m512i high = _mm512_permutexvar_epi8(_mm512_add_epi8(pick, _mm512_set1_epi8(4)), window);
        bits = _mm512_or_si512(_mm512_srlv_epi32(low, off),
                               _mm512_sllv_epi32(high, _mm512_sub_epi32(_mm512_set1_epi32(32), off)));
    }
    bits = _mm512_and_si512(bits, _mm512_sub_epi32(_mm512_sllv_epi32(one, nb), one));
    *pos += (uint32_t)_mm_extract_epi32(_mm512_extracti32x4_epi32(sum, 3), 3);
    __m512i zbig = _mm512_sllv_epi32(_mm512_add_epi32(_mm512_and_si512(t, _mm512_set1_epi32(3)), _mm512_set1_epi32(4)), nb);
    __m512i z = _mm512_or_si512(_mm512_mask_blend_epi32(big, t, zbig), bits);
    __m512i d = _mm512_xor_si512(_mm512_srli_epi32(z, 1), _mm512_sub_epi32(zero, _mm512_and_si512(z, one)));
    if (w == 2)
        _mm256_storeu_si256((__m256i *)(out + i * 2), _mm512_cvtepi32_epi16(_mm512_add_epi32(b, d)));
    else
        _mm512_storeu_si512((void *)(out + i * 4), _mm512_add_epi32(b, d));
}

AVX512 static size_t avx512_decode_groups(int w, const uint8_t *bs, uint8_t *out, size_t ng,
                                            const Slot *lut, uint64_t kmask, unsigned shift,
                                            int64_t lo, const Classes *cls, uint32_t *x,
                                            const uint16_t *words,
                                            size_t nwords, size_t *rp, const uint8_t *xb,
                                            size_t xlen, uint64_t *pos) {
    const __m512i km = _mm512_set1_epi32((int)kmask), l = _mm512_set1_epi32((int)lo);
    const __m128i sh = _mm_cvtsi32_si128((int)shift);
    __m512i xs[NSTATES / 16];
    for (int k = 0; k < NSTATES / 16; k++) xs[k] = _mm512_loadu_si512((const void *)(x + 16 * k));
    size_t g = 0, r = *rp;
    uint64_t p = *pos;
    /* a group: NSTATES stream words at most, and a vector's window of extra bits (32 or 64
     * bytes) at most NSTATES * 13 or 29 bits on */
    size_t xbytes = w == 2 ? NSTATES * 13 / 8 + 32 : NSTATES * 29 / 8 + 64;
    ClassCursor at = class_cursor(cls, 0);
    /* one loop without classes and one with, so that the first carries nothing of them */
#define GROUPS(WITH_CLASSES)                                                                     \
    for (; g < ng; g += NSTATES, class_next(&at)) {                                              \
        if (r + NSTATES > nwords || (p >> 3) + xbytes > xlen) break;                             \
        PREFETCH(bs + g * (size_t)w, PREFETCH_AHEAD);                                            \
        if (w == 4) PREFETCH(bs + g * 4, PREFETCH_AHEAD + 64);                                   \
        for (int k = 0; k < NSTATES / 16; k++) {                                                 \
            __m512i c = _mm512_setzero_si512();                                                  \
            if (WITH_CLASSES)                                                                    \
                c = _mm512_add_epi32(_mm512_set1_epi32(*at.row),                                 \
                                     _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(at.col + 16 * k)))); \
            if (w == 2)                                                                          \
                avx512_decode16(2, bs, out, g + 16 * (size_t)k, lut, km, sh, l, c, &xs[k], words, &r, xb, &p); \
            else                                                                                 \
                avx512_decode16(4, bs, out, g + 16 * (size_t)k, lut, km, sh, l, c, &xs[k], words, &r, xb, &p); \
        }                                                                                        \
    }
    if (at.col_end) {
        GROUPS(1)
    } else {
        GROUPS(0)
    }
#undef GROUPS
    for (int k = 0; k < NSTATES / 16; k++) _mm512_storeu_si512((void *)(x + 16 * k), xs[k]);
    *rp = r, *pos = p;
    return g;
}
