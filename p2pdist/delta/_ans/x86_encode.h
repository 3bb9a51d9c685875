/* The x86-64 vector passes of the delta encoder (AVX-512 and AVX2), included by
 * encode.c after the encoder's types (EncSym, BitWriter) where the compiler has the
 * x86 intrinsics. Each function does what the portable C of encode.c does, on 16 or
 * 8 words at once, and
 * must produce the same bytes: the tests compare every level. Not a standalone header. */

/* The encoder's rANS pass over whole groups, last group first: the steps of ENC_PUT for
 * states 31..16 as one vector, then 15..0, with symbols packed by pack_sym. A vector's lanes
 * that renormalise write their low 16 bits below ptr in lane order (a compress and a masked
 * store), as the scalar encoder does one state at a time. Returns 0, or -1 if the stream would
 * reach floor. */
AVX512 static int avx512_encode_groups(const uint16_t *codes, const uint64_t *packed, size_t ng,
                                       uint32_t *x, uint16_t **pptr, const uint16_t *floor) {
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    const __m512i freq_mask = _mm512_set1_epi32(0x1fff), start_mask = _mm512_set1_epi32(0xfff);
    const __m512i scale = _mm512_set1_epi32(SCALE), two = _mm512_set1_epi32(2);
    const long long *table = (const long long *)packed;
    _Static_assert(((RANS_L >> SCALE_BITS) << 16) == 1u << 19, "x_max is freq << 19");
    __m512i xs[NSTATES / 16];
    for (int k = 0; k < NSTATES / 16; k++) xs[k] = _mm512_loadu_si512((const void *)(x + 16 * k));
    uint16_t *ptr = *pptr;
    for (size_t g = ng; g > 0; g -= NSTATES) {
        if (ptr < floor) return -1;
        for (int k = NSTATES / 16; k-- > 0;) {
            __m512i c = _mm512_cvtepu16_epi32(
                _mm256_loadu_si256((const __m256i *)(codes + g - NSTATES + 16 * (size_t)k)));
            __m512i a0 = _mm512_i32gather_epi64(_mm512_castsi512_si256(c), table, 8);
            __m512i a1 = _mm512_i32gather_epi64(_mm512_extracti64x4_epi64(c, 1), table, 8);
            __m512i rcp = _mm512_permutex2var_epi32(a0, even, a1);
            __m512i meta = _mm512_permutex2var_epi32(a0, odd, a1);
            __m512i freq = _mm512_and_si512(meta, freq_mask);
            __m512i start = _mm512_and_si512(_mm512_srli_epi32(meta, 13), start_mask);
            __m512i x_max = _mm512_slli_epi32(freq, 19); /* enc_sym_init's x_max */
            __m512i cmpl = _mm512_sub_epi32(scale, freq);
            __m512i bias = _mm512_mask_add_epi32(start, _mm512_cmplt_epu32_mask(freq, two), start,
                                                 _mm512_set1_epi32(SCALE - 1));
            __m512i v = xs[k];
            __mmask16 need = _mm512_cmpge_epu32_mask(v, x_max);
            unsigned cnt = (unsigned)__builtin_popcount((unsigned)need);
            ptr -= cnt;
            _mm256_mask_storeu_epi16(ptr, (__mmask16)((1u << cnt) - 1),
                                     _mm512_cvtepi32_epi16(_mm512_maskz_compress_epi32(need, v)));
            v = _mm512_mask_srli_epi32(v, need, v, 16);
            /* q = (v * rcp) >> 32 >> rcp_shift, even and odd lanes apart */
            __m512i lo = _mm512_srli_epi64(_mm512_mul_epu32(v, rcp), 32);
            __m512i hi = _mm512_mul_epu32(_mm512_srli_epi64(v, 32), _mm512_srli_epi64(rcp, 32));
            __m512i q = _mm512_srlv_epi32(_mm512_mask_blend_epi32(0xaaaa, lo, hi), _mm512_srli_epi32(meta, 25));
            xs[k] = _mm512_add_epi32(_mm512_add_epi32(v, bias), _mm512_mullo_epi32(q, cmpl));
        }
    }
    for (int k = 0; k < NSTATES / 16; k++) _mm512_storeu_si512((void *)(x + 16 * k), xs[k]);
    *pptr = ptr;
    return 0;
}

/* Pass 1 of the encoder for 32-bit words [0, n16), 16 at a time: the tokens, contexts and
 * extra bits of the TOKEN macro, computed as vectors; the extra bits are then written in word
 * order, lane by lane. (32-bit words never get classes: use_classes.) Returns the OR of every
 * z (zero when nothing moved). */
AVX512 static uint64_t avx512_tokens32(const uint8_t *nw, const uint8_t *bs, size_t n16,
                                       uint64_t kmask, unsigned shift, int64_t lo, int alphabet,
                                       uint16_t *codes, BitWriter *out_bw) {
    /* a local copy, kept in registers: stores through the stream could otherwise alias the
     * caller's writer, and the compiler would reload it for every write */
    BitWriter local = *out_bw, *bw = &local;
    const __m512i zero = _mm512_setzero_si512(), one = _mm512_set1_epi32(1);
    const __m512i km = _mm512_set1_epi32((int)kmask), l = _mm512_set1_epi32((int)lo);
    const __m512i top = _mm512_set1_epi32(MAX_CTX - 1);
    const __m128i sh = _mm_cvtsi32_si128((int)shift);
    const __m128i unit_bits = _mm_cvtsi32_si128(__builtin_ctz((unsigned)alphabet));
    __m512i any = zero;
    uint32_t xs[16], nbs[16];
    for (size_t i = 0; i < n16; i += 16) {
        PREFETCH(bs + i * 4, PREFETCH_AHEAD);
        PREFETCH(nw + i * 4, PREFETCH_AHEAD);
        __m512i b = _mm512_loadu_si512((const void *)(bs + i * 4));
        __m512i d = _mm512_sub_epi32(_mm512_loadu_si512((const void *)(nw + i * 4)), b);
        __m512i z = _mm512_xor_si512(_mm512_slli_epi32(d, 1), _mm512_srai_epi32(d, 31));
        any = _mm512_or_si512(any, z);
        /* z >= 16: p = floor(log2 z), token 4p + the two bits below the leading one, p - 2
         * extra bits; else token z */
        __mmask16 big = _mm512_cmpge_epu32_mask(z, _mm512_set1_epi32(SMALL));
        __m512i p = _mm512_sub_epi32(_mm512_set1_epi32(31), _mm512_lzcnt_epi32(z));
        __m512i nb = _mm512_maskz_sub_epi32(big, p, _mm512_set1_epi32(2));
        __m512i tb = _mm512_add_epi32(_mm512_slli_epi32(p, 2),
                                      _mm512_and_si512(_mm512_srlv_epi32(z, nb), _mm512_set1_epi32(3)));
        __m512i t = _mm512_mask_blend_epi32(big, z, tb);
        __m512i c = _mm512_sub_epi32(_mm512_and_si512(_mm512_srl_epi32(b, sh), km), l);
        c = _mm512_min_epi32(_mm512_max_epi32(c, zero), top);
        __m512i ct = _mm512_add_epi32(_mm512_sll_epi32(c, unit_bits), t);
        _mm256_storeu_si256((__m256i *)(codes + i), _mm512_cvtepi32_epi16(ct));
        if (big) {
            __m512i x = _mm512_and_si512(z, _mm512_sub_epi32(_mm512_sllv_epi32(one, nb), one));
            _mm512_storeu_si512((void *)xs, x);
            _mm512_storeu_si512((void *)nbs, nb);
            for (unsigned m = big; m; m &= m - 1) {
                int k = __builtin_ctz(m);
                bw_put(bw, xs[k], nbs[k]);
            }
        }
    }
    *out_bw = local;
    return (uint32_t)_mm512_reduce_or_epi32(any);
}

/* Pass 1 of the encoder for 16-bit words [0, n32), 32 at a time in 16-bit lanes: the tokens,
 * contexts and extra bits of the TOKEN macro, and with classes (L > 0) the rows' and columns'
 * activity sums. floor(log2 z) comes
 * from the 32-bit leading-zero count of each word moved to the top of a 32-bit lane (a small z
 * needs none), and the extra bits are joined in pairs, then in fours (at most 13 bits a word:
 * 52 in a 64-bit lane) and written with 8 writes per 32 words. */
AVX512 static uint64_t avx512_tokens16(const uint8_t *nw, const uint8_t *bs, size_t n32,
                                       uint64_t kmask, unsigned shift, int64_t lo, int alphabet,
                                       uint16_t *codes, BitWriter *out_bw, size_t L,
                                       uint32_t *rowsum, uint32_t *colsum) {
    BitWriter local = *out_bw, *bw = &local; /* in registers, as in avx512_tokens32 */
    const __m512i zero = _mm512_setzero_si512(), one = _mm512_set1_epi16(1);
    const __m512i low16 = _mm512_set1_epi32(0xffff), small = _mm512_set1_epi16(SMALL - 1);
    const __m512i km = _mm512_set1_epi16((short)kmask), l = _mm512_set1_epi16((short)lo);
    const __m512i top = _mm512_set1_epi16(MAX_CTX - 1), three = _mm512_set1_epi16(3);
    const __m512i fifteen = _mm512_set1_epi16(15), cap = _mm512_set1_epi16(24);
    const __m128i sh = _mm_cvtsi32_si128((int)shift);
    const __m128i unit_bits = _mm_cvtsi32_si128(__builtin_ctz((unsigned)alphabet));
    __m512i any = zero, row_act = zero;
    uint64_t joined[8], nbits[8];
    size_t row = 0, col = 0;
    for (size_t i = 0; i < n32; i += 32) {
        PREFETCH(bs + i * 2, PREFETCH_AHEAD);
        PREFETCH(nw + i * 2, PREFETCH_AHEAD);
        __m512i b = _mm512_loadu_si512((const void *)(bs + i * 2));
        __m512i d = _mm512_sub_epi16(_mm512_loadu_si512((const void *)(nw + i * 2)), b);
        __m512i z = _mm512_xor_si512(_mm512_slli_epi16(d, 1), _mm512_srai_epi16(d, 15));
        any = _mm512_or_si512(any, z);
        __mmask32 big = _mm512_cmpgt_epu16_mask(z, small);
        /* 15 - lzcnt16: the odd words' count as is, the even words' shifted up first */
        __m512i lz_odd = _mm512_lzcnt_epi32(z);
        __m512i lz_even = _mm512_lzcnt_epi32(_mm512_slli_epi32(z, 16));
        __m512i lz = _mm512_mask_blend_epi16(0xaaaaaaaau, lz_even, _mm512_slli_epi32(lz_odd, 16));
        __m512i p = _mm512_sub_epi16(fifteen, lz);
        __m512i nb = _mm512_maskz_sub_epi16(big, p, _mm512_set1_epi16(2));
        __m512i tb = _mm512_add_epi16(_mm512_slli_epi16(p, 2),
                                      _mm512_and_si512(_mm512_srlv_epi16(z, nb), three));
        __m512i t = _mm512_mask_blend_epi16(big, z, tb);
        __m512i c = _mm512_subs_epu16(_mm512_and_si512(_mm512_srl_epi16(b, sh), km), l);
        c = _mm512_min_epu16(c, top);
        _mm512_storeu_si512((void *)(codes + i), _mm512_add_epi16(_mm512_sll_epi16(c, unit_bits), t));
        if (L) { /* row and column activity for the classes (32 words never straddle a row) */
            __m512i act = _mm512_min_epu16(t, cap);
            row_act = _mm512_add_epi32(row_act, _mm512_madd_epi16(act, one));
            __m512i c0 = _mm512_loadu_si512((const void *)(colsum + col));
            __m512i c1 = _mm512_loadu_si512((const void *)(colsum + col + 16));
            c0 = _mm512_add_epi32(c0, _mm512_cvtepu16_epi32(_mm512_castsi512_si256(act)));
            c1 = _mm512_add_epi32(c1, _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(act, 1)));
            _mm512_storeu_si512((void *)(colsum + col), c0);
            _mm512_storeu_si512((void *)(colsum + col + 16), c1);
            if ((col += 32) == L) {
                rowsum[row++] = (uint32_t)_mm512_reduce_add_epi32(row_act);
                col = 0, row_act = zero;
            }
        }
        if (!big) continue;
        /* extra bits: the low nb bits of z; pairs in 32-bit lanes, then fours in 64-bit ones */
        __m512i x = _mm512_and_si512(z, _mm512_sub_epi16(_mm512_sllv_epi16(one, nb), one));
        __m512i nb_even = _mm512_and_si512(nb, low16);
        __m512i pair = _mm512_or_si512(_mm512_and_si512(x, low16),
                                       _mm512_sllv_epi32(_mm512_srli_epi32(x, 16), nb_even));
        __m512i pair_n = _mm512_add_epi32(nb_even, _mm512_srli_epi32(nb, 16));
        __m512i pn_even = _mm512_maskz_mov_epi32(0x5555, pair_n);
        __m512i four = _mm512_or_si512(_mm512_maskz_mov_epi32(0x5555, pair),
                                       _mm512_sllv_epi64(_mm512_srli_epi64(pair, 32), pn_even));
        __m512i four_n = _mm512_add_epi64(pn_even, _mm512_srli_epi64(pair_n, 32));
        _mm512_storeu_si512((void *)joined, four);
        _mm512_storeu_si512((void *)nbits, four_n);
        for (int q = 0; q < 8; q++) bw_put(bw, joined[q], (unsigned)nbits[q]);
    }
    *out_bw = local;
    return (uint32_t)_mm512_reduce_or_epi32(any);
}

/* For each 8-bit mask of encoder lanes that renormalise: a permutation that puts those lanes,
 * in lane order, at the top of the vector (positions 8 - count .. 7). */
static uint32_t renorm_pack[256][8];

INTERNAL void init_renorm_pack(void) {
    for (int m = 0; m < 256; m++) {
        int count = __builtin_popcount((unsigned)m), at = 8 - count;
        for (int k = 0; k < 8; k++) renorm_pack[m][k] = 0;
        for (int k = 0; k < 8; k++)
            if ((m >> k) & 1) renorm_pack[m][at++] = (uint32_t)k;
    }
}

/* x >= y for unsigned 32-bit lanes */
AVX2 INLINE __m256i avx2_ge_epu32(__m256i x, __m256i y) {
    return _mm256_cmpeq_epi32(_mm256_max_epu32(x, y), x);
}

/* The encoder's rANS pass with AVX2, as avx512_encode_groups with 8-lane vectors. A vector's
 * renormalising lanes are packed, in lane order, to the top of an 8-word store that ends at
 * ptr: the words below the new ptr are free stream space, overwritten later. */
AVX2 static int avx2_encode_groups(const uint16_t *codes, const EncSym *enc, size_t ng,
                                   uint32_t *x, uint16_t **pptr, const uint16_t *floor) {
    const int *table = (const int *)enc; /* a symbol is 4 32-bit fields */
    __m256i xs[NSTATES / 8];
    for (int k = 0; k < NSTATES / 8; k++) xs[k] = _mm256_loadu_si256((const __m256i *)(x + 8 * k));
    uint16_t *ptr = *pptr;
    for (size_t g = ng; g > 0; g -= NSTATES) {
        if (ptr < floor) return -1;
        for (int k = NSTATES / 8; k-- > 0;) {
            __m256i c = _mm256_slli_epi32(
                _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(codes + g - NSTATES + 8 * (size_t)k))), 2);
            __m256i x_max = _mm256_i32gather_epi32(table, c, 4);
            __m256i rcp = _mm256_i32gather_epi32(table + 1, c, 4);
            __m256i bias = _mm256_i32gather_epi32(table + 2, c, 4);
            __m256i cs = _mm256_i32gather_epi32(table + 3, c, 4); /* cmpl_freq | rcp_shift << 16 */
            __m256i v = xs[k];
            __m256i need = avx2_ge_epu32(v, x_max);
            unsigned mask = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(need));
            __m256i packed = _mm256_permutevar8x32_epi32(
                _mm256_and_si256(v, _mm256_set1_epi32(0xffff)),
                _mm256_loadu_si256((const __m256i *)renorm_pack[mask]));
            packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(packed, packed), 0x08);
            _mm_storeu_si128((__m128i *)(ptr - 8), _mm256_castsi256_si128(packed));
            ptr -= __builtin_popcount(mask);
            v = _mm256_blendv_epi8(v, _mm256_srli_epi32(v, 16), need);
            /* q = (v * rcp) >> 32 >> rcp_shift, even and odd lanes apart */
            __m256i lo = _mm256_srli_epi64(_mm256_mul_epu32(v, rcp), 32);
            __m256i hi = _mm256_mul_epu32(_mm256_srli_epi64(v, 32), _mm256_srli_epi64(rcp, 32));
            __m256i q = _mm256_srlv_epi32(_mm256_blend_epi32(lo, hi, 0xaa), _mm256_srli_epi32(cs, 16));
            __m256i cmpl = _mm256_and_si256(cs, _mm256_set1_epi32(0xffff));
            xs[k] = _mm256_add_epi32(_mm256_add_epi32(v, bias), _mm256_mullo_epi32(q, cmpl));
        }
    }
    for (int k = 0; k < NSTATES / 8; k++) _mm256_storeu_si256((__m256i *)(x + 8 * k), xs[k]);
    *pptr = ptr;
    return 0;
}

/* Pass 1 of the encoder with AVX2, as avx512_tokens with 8-lane vectors (floor(log2 z) from
 * the float exponent of z's leading bit, which AVX2 has no instruction for). */
AVX2 static uint64_t avx2_tokens(int w, const uint8_t *nw, const uint8_t *bs, size_t n8,
                                 uint64_t kmask, unsigned shift, int64_t lo, int alphabet,
                                 uint16_t *codes, BitWriter *out_bw, size_t L, uint32_t *rowsum,
                                 uint32_t *colsum) {
    BitWriter local = *out_bw, *bw = &local; /* in registers, as in avx512_tokens32 */
    const __m256i zero = _mm256_setzero_si256(), one = _mm256_set1_epi32(1);
    const __m256i km = _mm256_set1_epi32((int)kmask), l = _mm256_set1_epi32((int)lo);
    const __m256i top = _mm256_set1_epi32(MAX_CTX - 1), three = _mm256_set1_epi32(3);
    const __m128i sh = _mm_cvtsi32_si128((int)shift);
    const __m128i unit_bits = _mm_cvtsi32_si128(__builtin_ctz((unsigned)alphabet));
    __m256i any = zero, row_act = zero;
    uint32_t xs[8], nbs[8];
    size_t row = 0, col = 0, bigs = 0;
    for (size_t i = 0; i < n8; i += 8) {
        PREFETCH(bs + i * w, PREFETCH_AHEAD);
        PREFETCH(nw + i * w, PREFETCH_AHEAD);
        __m256i b, z;
        if (w == 2) {
            b = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(bs + i * 2)));
            __m256i a = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(nw + i * 2)));
            __m256i d = _mm256_and_si256(_mm256_sub_epi32(a, b), _mm256_set1_epi32(0xffff));
            __m256i neg = _mm256_sub_epi32(zero, _mm256_srli_epi32(d, 15));
            z = _mm256_and_si256(_mm256_xor_si256(_mm256_slli_epi32(d, 1), neg), _mm256_set1_epi32(0xffff));
        } else {
            b = _mm256_loadu_si256((const __m256i *)(bs + i * 4));
            __m256i d = _mm256_sub_epi32(_mm256_loadu_si256((const __m256i *)(nw + i * 4)), b);
            z = _mm256_xor_si256(_mm256_slli_epi32(d, 1), _mm256_srai_epi32(d, 31));
        }
        any = _mm256_or_si256(any, z);
        __m256i big = avx2_ge_epu32(z, _mm256_set1_epi32(SMALL));
        /* the leading bit alone converts to a float exactly; its exponent is floor(log2 z)
         * (2^31 converts as -2^31: same exponent) */
        __m256i s = _mm256_or_si256(z, _mm256_srli_epi32(z, 1));
        s = _mm256_or_si256(s, _mm256_srli_epi32(s, 2));
        s = _mm256_or_si256(s, _mm256_srli_epi32(s, 4));
        s = _mm256_or_si256(s, _mm256_srli_epi32(s, 8));
        s = _mm256_or_si256(s, _mm256_srli_epi32(s, 16));
        __m256i lead = _mm256_andnot_si256(_mm256_srli_epi32(s, 1), s);
        __m256i p = _mm256_sub_epi32(
            _mm256_and_si256(_mm256_srli_epi32(_mm256_castps_si256(_mm256_cvtepi32_ps(lead)), 23),
                             _mm256_set1_epi32(0xff)),
            _mm256_set1_epi32(127));
        __m256i nb = _mm256_and_si256(big, _mm256_sub_epi32(p, _mm256_set1_epi32(2)));
        __m256i tb = _mm256_add_epi32(_mm256_slli_epi32(p, 2), _mm256_and_si256(_mm256_srlv_epi32(z, nb), three));
        __m256i t = _mm256_blendv_epi8(z, tb, big);
        __m256i c = _mm256_sub_epi32(_mm256_and_si256(_mm256_srl_epi32(b, sh), km), l);
        c = _mm256_min_epi32(_mm256_max_epi32(c, zero), top);
        __m256i ct = _mm256_add_epi32(_mm256_sll_epi32(c, unit_bits), t);
        __m256i ct16 = _mm256_permute4x64_epi64(_mm256_packus_epi32(ct, ct), 0x08);
        _mm_storeu_si128((__m128i *)(codes + i), _mm256_castsi256_si128(ct16));
        if (L) { /* row and column activity for the classes (8 words never straddle a row) */
            __m256i act = _mm256_min_epu32(t, _mm256_set1_epi32(24));
            row_act = _mm256_add_epi32(row_act, act);
            __m256i cs = _mm256_loadu_si256((const __m256i *)(colsum + col));
            _mm256_storeu_si256((__m256i *)(colsum + col), _mm256_add_epi32(cs, act));
            if ((col += 8) == L) {
                __m128i h = _mm_add_epi32(_mm256_castsi256_si128(row_act),
                                          _mm256_extracti128_si256(row_act, 1));
                h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0x4e));
                h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0xb1));
                rowsum[row++] = (uint32_t)_mm_cvtsi128_si32(h);
                col = 0, row_act = zero;
            }
        }
        unsigned mbig = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(big));
        __m256i x = _mm256_and_si256(z, _mm256_sub_epi32(_mm256_sllv_epi32(one, nb), one));
        bigs += (size_t)__builtin_popcount(mbig);
        if (w == 2 && bigs * 16 > 3 * (i + 8)) { /* as in avx512_tokens: 4 words joined */
            __m256i incl = _mm256_add_epi32(nb, _mm256_bslli_epi128(nb, 4));
            incl = _mm256_add_epi32(incl, _mm256_bslli_epi128(incl, 8));
            __m256i at = _mm256_sub_epi32(incl, nb);
            __m256i lo = _mm256_sllv_epi64(_mm256_cvtepu32_epi64(_mm256_castsi256_si128(x)),
                                           _mm256_cvtepu32_epi64(_mm256_castsi256_si128(at)));
            __m256i hi = _mm256_sllv_epi64(_mm256_cvtepu32_epi64(_mm256_extracti128_si256(x, 1)),
                                           _mm256_cvtepu32_epi64(_mm256_extracti128_si256(at, 1)));
            lo = _mm256_or_si256(lo, _mm256_permute4x64_epi64(lo, 0xb1));
            hi = _mm256_or_si256(hi, _mm256_permute4x64_epi64(hi, 0xb1));
            lo = _mm256_or_si256(lo, _mm256_permute4x64_epi64(lo, 0x4e));
            hi = _mm256_or_si256(hi, _mm256_permute4x64_epi64(hi, 0x4e));
            _mm256_storeu_si256((__m256i *)nbs, incl);
            bw_put(bw, (uint64_t)_mm256_extract_epi64(lo, 0), nbs[3]);
            bw_put(bw, (uint64_t)_mm256_extract_epi64(hi, 0), nbs[7]);
        } else if (mbig) {
            _mm256_storeu_si256((__m256i *)xs, x);
            _mm256_storeu_si256((__m256i *)nbs, nb);
            for (unsigned m = mbig; m; m &= m - 1) {
                int k = __builtin_ctz(m);
                bw_put(bw, xs[k], nbs[k]);
            }
        }
    }
    *out_bw = local;
    __m128i a = _mm_or_si128(_mm256_castsi256_si128(any), _mm256_extracti128_si256(any, 1));
    a = _mm_or_si128(a, _mm_shuffle_epi32(a, 0x4e));
    a = _mm_or_si128(a, _mm_shuffle_epi32(a, 0xb1));
    return (uint32_t)_mm_cvtsi128_si32(a);
}
