/* The encoder of the delta codec's "ans" segments (the format: ans.h and
 * docs/FORMAT_DELTA.md): tokens and extra bits, contexts and classes, frequency tables, and
 * the rANS pass, portable C with AVX-512 and AVX2 passes (x86_encode.h). */

#include "ans.h"

/* Reorder a[0, n) so that a[k] is the value a sort would put there, nothing larger before
 * it and nothing smaller after it (Hoare's selection: a sort cost ~3 % of encoding). */
static void select_kth(uint32_t *a, size_t n, size_t k) {
    ptrdiff_t lo = 0, hi = (ptrdiff_t)n - 1, want = (ptrdiff_t)k;
    while (lo < hi) { /* partition around the middle value (Wirth), keep the side with k */
        uint32_t pivot = a[lo + (hi - lo) / 2];
        ptrdiff_t i = lo, j = hi;
        while (i <= j) {
            while (a[i] < pivot) i++;
            while (a[j] > pivot) j--;
            if (i <= j) {
                uint32_t t = a[i];
                a[i++] = a[j], a[j--] = t;
            }
        }
        if (want <= j) hi = j;
        else if (want >= i) lo = i;
        else return;
    }
}

/* Token (low byte) and number of extra bits (high byte) of every z below 2^16, filled once
 * when the module loads. */
static uint16_t short_tokens[1 << 16];

INTERNAL void init_short_tokens(void) {
    for (uint32_t z = 0; z < (1u << 16); z++) {
        if (z < SMALL) {
            short_tokens[z] = (uint16_t)z;
            continue;
        }
        int p = floor_log2(z);
        unsigned t = SMALL + 4u * (unsigned)(p - 4) + ((z >> (p - 2)) & 3);
        short_tokens[z] = (uint16_t)(t | (unsigned)(p - 2) << 8);
    }
}

/* ------------------------------------------------------------------------ frequency tables */

/* Scale counts to frequencies summing to SCALE, every present symbol at least 1. */
static void normalize(const uint32_t *count, int alphabet, uint64_t total, uint32_t *freq) {
    int64_t sum = 0;
    int largest = -1;
    for (int s = 0; s < alphabet; s++) {
        if (!count[s]) {
            freq[s] = 0;
            continue;
        }
        uint64_t f = ((uint64_t)count[s] * SCALE + total / 2) / total;
        freq[s] = f ? (uint32_t)f : 1;
        sum += freq[s];
        if (largest < 0 || count[s] > count[largest]) largest = s;
    }
    /* give or take the difference, largest frequencies first, never below 1 */
    while (sum != SCALE) {
        if (sum < SCALE) {
            freq[largest] += (uint32_t)(SCALE - sum);
            sum = SCALE;
        } else {
            int best = -1;
            for (int s = 0; s < alphabet; s++)
                if (freq[s] > 1 && (best < 0 || freq[s] > freq[best])) best = s;
            uint32_t take = (uint32_t)(sum - SCALE);
            uint32_t room = freq[best] - 1;
            if (take > room / 2 + 1) take = room / 2 + 1;
            if (take > room) take = room;
            freq[best] -= take;
            sum -= take;
        }
    }
}

static void enc_sym_init(EncSym *s, uint32_t start, uint32_t freq) {
    s->x_max = ((RANS_L >> SCALE_BITS) << 16) * freq;
    s->cmpl_freq = (uint16_t)(SCALE - freq);
    if (freq < 2) {
        s->rcp_freq = ~0u;
        s->rcp_shift = 0;
        s->bias = start + SCALE - 1;
    } else {
        uint32_t shift = 0;
        while (freq > (1u << shift)) shift++;
        s->rcp_freq = (uint32_t)(((1ull << (shift + 31)) + freq - 1) / freq);
        s->rcp_shift = (uint16_t)(shift - 1);
        s->bias = start;
    }
}

/* A symbol in 8 bytes for the AVX-512 encoder (half the gathers of an EncSym): the reciprocal
 * in the low half; frequency, start and reciprocal shift in the high half, from which it
 * computes x_max, bias and cmpl_freq as enc_sym_init does. */
static uint64_t pack_sym(const EncSym *s, uint32_t start, uint32_t freq) {
    uint64_t meta = freq | start << 13 | (uint32_t)s->rcp_shift << 25; /* 13 + 12 + 5 bits */
    return s->rcp_freq | meta << 32;
}

/* ------------------------------------------------------------------------ encoder */

/* Extra bits, least significant first. A word's extra bits are fewer than its own bits, so the
 * stream never exceeds the raw size; the buffer has 8 bytes of slack for the 8-byte stores. */
typedef struct {
    uint8_t *buf;
    size_t pos; /* whole bytes written */
    uint64_t acc;
    unsigned nacc; /* pending bits in acc, < 8 between calls */
} BitWriter;

INLINE void bw_put(BitWriter *bw, uint64_t v, unsigned nb) { /* nb <= 57, v < 2^nb */
    bw->acc |= v << bw->nacc;
    bw->nacc += nb;
    memcpy(bw->buf + bw->pos, &bw->acc, 8);
    unsigned bytes = bw->nacc >> 3;
    bw->pos += bytes;
    bw->acc >>= 8 * bytes;
    bw->nacc &= 7;
}

INLINE void bw_put_wide(BitWriter *bw, uint64_t v, unsigned nb) { /* nb <= 62 */
    if (nb > 32) {
        bw_put(bw, v & 0xffffffffu, 32);
        bw_put(bw, v >> 32, nb - 32);
    } else {
        bw_put(bw, v, nb);
    }
}

static void bw_flush(BitWriter *bw) {
    if (bw->nacc) bw->pos++; /* the last store already wrote the partial byte, zero-padded */
    bw->nacc = 0;
}

/* Pick lo so that the 16 contexts cover the largest keys that hold at least 1/1024 of the
 * words (the weights that matter); smaller keys share context 0. */
INLINE int64_t choose_lo_w(const uint8_t *base, size_t n, int w, unsigned shift, unsigned bits,
                           Arena a) {
    size_t nkeys = (size_t)1 << bits;
    uint32_t *hist = take(&a, nkeys * sizeof *hist);
    if (!hist) return 0;
    memset(hist, 0, nkeys * sizeof *hist);
    uint64_t kmask = nkeys - 1;
    /* a word in 512 (64 in segments under 512 Ki words, 8 under 64 Ki) is sample enough, at
     * least 1024 of them, and leaves most of the base's cache lines to be read once, by pass 1 */
    size_t step = n >= (512u << 10) ? 512 : n >= (64u << 10) ? 64 : 8;
    size_t samples = (n + step - 1) / step;
    for (size_t i = 0; i < n; i += step) hist[(load_word(base + i * w, w) >> shift) & kmask]++;
    size_t threshold = samples / 1024 + 1;
    int64_t top = (int64_t)nkeys - 1;
    while (top > 0 && hist[top] < threshold) top--;
    int64_t lo = top - (MAX_CTX - 1);
    return lo < 0 ? 0 : lo;
}

#ifdef HAVE_VECTOR_CODERS
#include "x86_encode.h" /* the encoder's AVX-512 and AVX2 passes */
#endif

/* Classes of n/L values (row or column activity) by quantile: class = how many of the k - 1
 * thresholds lie below the value. ``sorted`` is scratch for count values. */
static void classify(const uint32_t *value, size_t count, unsigned k, uint32_t *sorted,
                     uint8_t *cls) { /* count >= 1 */
    uint32_t thr[MAX_ROW_CLASSES];
    memcpy(sorted, value, count * sizeof *sorted);
    /* thresholds in increasing order: after a selection, the next lies at or after it */
    size_t from = 0;
    for (unsigned j = 0; j + 1 < k; j++) {
        size_t at = (j + 1) * count / k;
        select_kth(sorted + from, count - from, at - from);
        thr[j] = sorted[at], from = at;
    }
    for (size_t i = 0; i < count; i++) {
        uint8_t c = 0;
        for (unsigned j = 0; j + 1 < k; j++) c += thr[j] < value[i];
        cls[i] = c;
    }
}

/* Append ``count`` classes of ``bits`` bits, least significant first, zero-padded to a byte. */
static void put_classes(Out *o, const uint8_t *cls, size_t count, unsigned bits) {
    uint32_t acc = 0;
    unsigned nacc = 0;
    for (size_t i = 0; i < count; i++) {
        acc |= (uint32_t)cls[i] << nacc;
        nacc += bits;
        while (nacc >= 8) *o->p++ = (uint8_t)acc, acc >>= 8, nacc -= 8;
    }
    if (nacc) *o->p++ = (uint8_t)acc;
}

/* Whether a segment of n w-byte words in rows of row_len gets row and column classes: rows a
 * multiple of a group long (a group never straddles two), enough of them, a segment large
 * enough to pay for 4x the tables, and words of at most 16 bits (on the fp32 pairs of
 * bench/delta.py classes saved nothing: their raw extra bits dominate, and decoding with 4x
 * the tables is about 15 % slower). */
INLINE int use_classes(size_t n, int w, size_t row_len) {
    return w <= 2 && row_len && row_len % NSTATES == 0 && n % row_len == 0 &&
           n / row_len >= 16 && n >= (64u << 10);
}

/* Encode n words. ENC_TOO_BIG when the payload would not be smaller than the raw n*w bytes. */
INLINE EncResult ans_encode_w(const uint8_t *nw, const uint8_t *bs, size_t n, int w, int use_ctx,
                              unsigned shift, unsigned bits, int64_t lo, size_t row_len, Arena a,
                              Pieces *out) {
    size_t raw = n * (size_t)w;
    int alphabet = 32 * w, nctx = use_ctx ? MAX_CTX : 1;
    size_t L = use_classes(n, w, row_len) ? row_len : 0, nruns = L ? n / L : 0;
    unsigned nrow = L ? ROW_CLASSES : 1, ncol = L ? COL_CLASSES : 1;
    int ntables = nctx * (int)(nrow * ncol);
    uint64_t kmask = use_ctx ? ((1ull << bits) - 1) : 0;
    uint16_t *codes = take(&a, (n ? n : 1) * sizeof *codes); /* table * alphabet + token */
    uint8_t *extra = take(&a, raw + 8);                        /* extra bits, forward */
    uint16_t *ans = take(&a, raw + 4 * NSTATES); /* rANS words, written backward; capped at raw */
    uint8_t *tables = take(&a, TABLE_BYTES + 8); /* + the varint of the stream's length */
    /* 4 histograms (no store-to-load stalls between neighbours), HIST_STRIDE apart */
    uint32_t *hist = take(&a, 4 * HIST_STRIDE * sizeof *hist);
    EncSym *enc = take(&a, MAX_TABLES * ALPHABET_MAX * sizeof *enc);
    uint64_t *packed = take(&a, MAX_TABLES * ALPHABET_MAX * sizeof *packed); /* see pack_sym */
    uint32_t(*freq)[ALPHABET_MAX] = take(&a, MAX_TABLES * sizeof *freq);
    uint32_t *cl = context_lut(&a, use_ctx, bits, lo, (uint32_t)alphabet);
    /* classes: activity sums per row and per column, a sorted copy, the classes, the header */
    size_t ncls_max = nruns > L ? nruns : L;
    uint32_t *rowsum = take(&a, (nruns + 1) * 4), *colsum = take(&a, (L + 1) * 4);
    uint32_t *sorted = take(&a, (ncls_max + 1) * 4);
    uint8_t *rowcls = take(&a, nruns + 1), *colcls = take(&a, L + 1);
    uint16_t *offs = take(&a, (MAX_ROW_CLASSES * L + 1) * 2); /* code offsets by row class */
    size_t class_cap = 8 + (nruns * 2 + 7) / 8 + (L + 7) / 8;
    uint8_t *classbuf = take(&a, class_cap);
    if (!codes || !extra || !ans || !tables || !hist || !enc || !packed || !freq || !cl || !rowsum ||
        !colsum || !sorted || !rowcls || !colcls || !offs || !classbuf)
        return ENC_NOMEM;
    size_t used = (size_t)ntables * (size_t)alphabet;
    for (int k = 0; k < 4; k++) memset(hist + k * HIST_STRIDE, 0, used * sizeof *hist);
    memset(freq, 0, (size_t)ntables * sizeof *freq);

    /* pass 1: tokens, contexts and extra bits (the histograms wait for the classes). Written
     * with masks, not branches: whether a word is small is a coin toss. */
    BitWriter bw = {extra, 0, 0, 0};
    uint64_t any = 0;
#define TOKEN(i)                                                                                 \
    do {                                                                                         \
        uint64_t b_ = load_word(bs + (i) * w, w);                                                \
        uint64_t z_ = zigzag(load_word(nw + (i) * w, w) - b_, w);                                \
        any |= z_;                                                                               \
        unsigned t_, nb_;                                                                        \
        if (w <= 2) { /* a table: 15 % faster for 16-bit words */                                \
            t_ = short_tokens[z_] & 0xff;                                                        \
            nb_ = short_tokens[z_] >> 8;                                                         \
        } else {                                                                                 \
            int p_ = floor_log2(z_ | SMALL);                                                     \
            unsigned big_ = 0u - (unsigned)(z_ >= SMALL);                                        \
            unsigned tb_ = SMALL + 4u * (unsigned)(p_ - 4) + (unsigned)((z_ >> (p_ - 2)) & 3);   \
            t_ = (tb_ & big_) | ((unsigned)z_ & ~big_);                                          \
            nb_ = (unsigned)(p_ - 2) & big_;                                                     \
        }                                                                                        \
        unsigned ct_ = cl[(b_ >> shift) & kmask] + t_;                                           \
        uint64_t x_ = z_ & ((1ull << nb_) - 1);                                                  \
        if (w == 8) {                                                                            \
            bw_put_wide(&bw, x_, nb_);                                                           \
        } else if (w == 4) {                                                                     \
            bw_put(&bw, x_, nb_);                                                                \
        } else { /* 4 words of at most 13 extra bits fit the accumulator: flush per group */    \
            bw.acc |= x_ << bw.nacc;                                                             \
            bw.nacc += nb_;                                                                      \
        }                                                                                        \
        codes[i] = (uint16_t)ct_;                                                                \
    } while (0)
    size_t n4 = n & ~(size_t)3, g0 = 0;
#ifdef HAVE_VECTOR_CODERS
    if ((w == 2 || w == 4) && simd_level >= SIMD_AVX2) {
        if (L) {
            memset(rowsum, 0, nruns * 4);
            memset(colsum, 0, L * 4);
        }
        if (simd_level >= SIMD_AVX512 && w == 2) {
            g0 = n & ~(size_t)31;
            any |= avx512_tokens16(nw, bs, g0, kmask, shift, use_ctx ? lo : 0, alphabet, codes,
                                   &bw, L, rowsum, colsum);
        } else if (simd_level >= SIMD_AVX512) { /* w == 4: never classes */
            g0 = n & ~(size_t)15;
            any |= avx512_tokens32(nw, bs, g0, kmask, shift, use_ctx ? lo : 0, alphabet, codes,
                                   &bw);
        } else {
            g0 = n & ~(size_t)7;
            any |= avx2_tokens(w, nw, bs, g0, kmask, shift, use_ctx ? lo : 0, alphabet, codes,
                               &bw, L, rowsum, colsum);
        }
    }
#endif
    for (size_t g = g0; g < n4; g += 4) {
        TOKEN(g);
        TOKEN(g + 1);
        TOKEN(g + 2);
        TOKEN(g + 3);
        if (w <= 2) bw_put(&bw, 0, 0);
    }
    for (size_t i = n4; i < n; i++) {
        TOKEN(i);
        if (w <= 2) bw_put(&bw, 0, 0);
    }
#undef TOKEN
    if (!any) return ENC_UNCHANGED;
    bw_flush(&bw);

    /* classes: rows (and columns) by how much their weights moved, in quantiles; a word's
     * table is class * nctx + its context. The histograms are counted as the codes get their
     * class offsets, or on their own without classes. */
    Out co = {classbuf, classbuf + class_cap};
    put_varint(&co, (uint32_t)L);
    if (L) {
        if (g0 == 0) { /* the vector pass 1 sums activity as it goes; the portable one not */
            uint32_t amask = (uint32_t)alphabet - 1;
            memset(colsum, 0, L * 4);
            for (size_t r = 0; r < nruns; r++) {
                const uint16_t *cr = codes + r * L;
                uint32_t sum = 0;
                for (size_t c = 0; c < L; c++) {
                    uint32_t t = cr[c] & amask;
                    t = t < 24 ? t : 24;
                    sum += t;
                    colsum[c] += t;
                }
                rowsum[r] = sum;
            }
        }
        classify(rowsum, nruns, nrow, sorted, rowcls);
        classify(colsum, L, ncol, sorted, colcls);
        *co.p++ = (uint8_t)(nrow << 4 | ncol);
        put_classes(&co, rowcls, nruns, class_bits(nrow));
        put_classes(&co, colcls, L, class_bits(ncol));
        /* each row class's offsets of the codes along a row, then one vectorisable add */
        for (unsigned rc = 0; rc < nrow; rc++)
            for (size_t c = 0; c < L; c++)
                offs[rc * L + c] = (uint16_t)((rc * ncol + colcls[c]) * (unsigned)(nctx * alphabet));
        for (size_t r = 0; r < nruns; r++) { /* L is a multiple of NSTATES */
            uint16_t *cr = codes + r * L;
            const uint16_t *o = offs + rowcls[r] * L;
            for (size_t c = 0; c < L; c += 4) {
                uint16_t c0 = (uint16_t)(cr[c] + o[c]), c1 = (uint16_t)(cr[c + 1] + o[c + 1]);
                uint16_t c2 = (uint16_t)(cr[c + 2] + o[c + 2]), c3 = (uint16_t)(cr[c + 3] + o[c + 3]);
                cr[c] = c0, cr[c + 1] = c1, cr[c + 2] = c2, cr[c + 3] = c3;
                hist[c0]++, hist[HIST_STRIDE + c1]++;
                hist[2 * HIST_STRIDE + c2]++, hist[3 * HIST_STRIDE + c3]++;
            }
        }
    } else {
        for (size_t i = 0; i < n4; i += 4) {
            hist[codes[i]]++, hist[HIST_STRIDE + codes[i + 1]]++;
            hist[2 * HIST_STRIDE + codes[i + 2]]++, hist[3 * HIST_STRIDE + codes[i + 3]]++;
        }
        for (size_t i = n4; i < n; i++) hist[codes[i]]++;
    }
    for (int k = 1; k < 4; k++)
        for (size_t j = 0; j < used; j++) hist[j] += hist[k * HIST_STRIDE + j];

    /* tables */
    Out to = {tables, tables + TABLE_BYTES};
    for (int c = 0; c < ntables; c++) {
        uint64_t total = 0;
        const uint32_t *h = hist + c * alphabet;
        for (int s = 0; s < alphabet; s++) total += h[s];
        if (!total) {
            put_varint(&to, 0);
            continue;
        }
        normalize(h, alphabet, total, freq[c]);
        uint32_t k = 0, start = 0;
        for (int s = 0; s < alphabet; s++) k += freq[c][s] != 0;
        put_varint(&to, k);
        int prev = -1;
        for (int s = 0; s < alphabet; s++) {
            if (!freq[c][s]) continue;
            put_varint(&to, (uint32_t)(s - prev - 1));
            put_varint(&to, freq[c][s] - 1);
            enc_sym_init(&enc[c * alphabet + s], start, freq[c][s]);
            packed[c * alphabet + s] = pack_sym(&enc[c * alphabet + s], start, freq[c][s]);
            start += freq[c][s];
            prev = s;
        }
    }

    /* pass 2: rANS, last word first, state i % NSTATES codes word i */
    uint32_t x[NSTATES];
    for (int j = 0; j < NSTATES; j++) x[j] = RANS_L;
    size_t cap_words = raw / 2 + 2 * NSTATES;
    /* each group of NSTATES words writes at most NSTATES words below ptr; 2 * NSTATES stay
     * free for the states */
    uint16_t *ptr = ans + cap_words, *floor_ptr = ans + 3 * NSTATES;
#define ENC_PUT(i, j)                                                                            \
    do {                                                                                         \
        const EncSym *s_ = &enc[codes[i]];                                                       \
        uint32_t v_ = x[j];                                                                      \
        uint32_t need_ = v_ >= s_->x_max;                                                        \
        ptr[-1] = (uint16_t)v_;                                                                  \
        ptr -= need_;                                                                            \
        v_ >>= need_ << 4;                                                                       \
        uint32_t q_ = (uint32_t)(((uint64_t)v_ * s_->rcp_freq) >> 32) >> s_->rcp_shift;          \
        x[j] = v_ + s_->bias + q_ * s_->cmpl_freq;                                               \
    } while (0)
    if (ptr < floor_ptr) return ENC_TOO_BIG;
    size_t ng = n & ~(size_t)(NSTATES - 1);
    for (size_t i = n; i-- > ng;) ENC_PUT(i, i % NSTATES);
#ifdef HAVE_VECTOR_CODERS
    if (simd_level >= SIMD_AVX512) {
        if (avx512_encode_groups(codes, packed, ng, x, &ptr, floor_ptr)) return ENC_TOO_BIG;
    } else if (simd_level >= SIMD_AVX2) {
        if (avx2_encode_groups(codes, enc, ng, x, &ptr, floor_ptr)) return ENC_TOO_BIG;
    } else
#endif
        for (size_t g = ng; g > 0; g -= NSTATES) {
            if (ptr < floor_ptr) return ENC_TOO_BIG;
            for (int j = NSTATES; j-- > 0;) ENC_PUT(g - NSTATES + (size_t)j, j);
        }
#undef ENC_PUT
    for (int j = NSTATES; j-- > 0;) {
        *--ptr = (uint16_t)(x[j] >> 16);
        *--ptr = (uint16_t)(x[j] & 0xffff);
    }
    size_t ans_bytes = (size_t)(ans + cap_words - ptr) * 2;

    /* payload: classes, tables, varint ans length, ans stream (little-endian words), extra bits */
    uint8_t *len_buf = tables + TABLE_BYTES;
    Out lo_ = {len_buf, len_buf + 8};
    if (ans_bytes > 0xffffffffu) return ENC_TOO_BIG;
    put_varint(&lo_, (uint32_t)ans_bytes);
    size_t table_bytes = (size_t)(to.p - tables), len_bytes = (size_t)(lo_.p - len_buf);
    size_t class_bytes = (size_t)(co.p - classbuf);
    if (class_bytes + table_bytes + len_bytes + ans_bytes + bw.pos >= raw) return ENC_TOO_BIG;
    *out = (Pieces){{classbuf, tables, len_buf, (const uint8_t *)ptr, extra},
                    {class_bytes, table_bytes, len_bytes, ans_bytes, bw.pos}};
    return ENC_OK;
}

CLONES INTERNAL int64_t choose_lo(const uint8_t *base, size_t n, int w, unsigned shift,
                                unsigned bits, Arena a) {
    BY_WORD(choose_lo_w(base, n, w, shift, bits, a))
}

CLONES INTERNAL EncResult ans_encode(const uint8_t *nw, const uint8_t *bs, size_t n, int w,
                                   int use_ctx, unsigned shift, unsigned bits, int64_t lo,
                                   size_t row_len, Arena a, Pieces *out) {
    BY_WORD(ans_encode_w(nw, bs, n, w, use_ctx, shift, bits, lo, row_len, a, out))
}
