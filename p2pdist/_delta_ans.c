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

#define PY_SSIZE_T_CLEAN
#include <Python.h>

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
#define MAX_KEYS (1u << 16) /* context keys have at most 16 bits */
#define MAX_ROW_CLASSES 4
#define MAX_COL_CLASSES 2
#define MAX_TABLES (MAX_CTX * MAX_ROW_CLASSES * MAX_COL_CLASSES)
#define ROW_CLASSES 2 /* what the encoder uses (2 x 2 measured best on bench/delta.py's pairs) */
#define COL_CLASSES 2
#define TABLE_BYTES (MAX_TABLES * (2 + ALPHABET_MAX * 4)) /* varint tables, worst case */

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "p2pdist._delta_ans reads little-endian words with memcpy: little-endian hosts only"
#endif

/* ------------------------------------------------------------------------ scratch */

/* Scratch memory comes from the caller, a buffer each thread reuses from segment to segment:
 * fresh allocations of a few MiB per segment cost a page fault per 4 KiB, which measured as
 * 30 % of the encoder's time. */
typedef struct {
    uint8_t *p, *end;
} Arena;

static void *take(Arena *a, size_t size) {
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
static uint32_t *context_lut(Arena *a, int use_ctx, unsigned bits, int64_t lo, uint32_t unit) {
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

static void init_short_tokens(void) {
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

typedef struct {
    uint32_t x_max, rcp_freq, bias;
    uint16_t cmpl_freq, rcp_shift;
} EncSym;

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

/* Which vector code runs: 0 portable C, 1 AVX2, 2 AVX-512 (encoder and decoder, 16- and
 * 32-bit words; only the portable C where the vector code is not compiled in). The best the
 * CPU has is chosen when the module loads; the tests switch between them and check that all
 * code the same bytes. */
enum { SIMD_NONE = 0, SIMD_AVX2 = 1, SIMD_AVX512 = 2 };
static int simd_level = SIMD_NONE;

/* P2PDIST_NO_VECTOR builds the portable C alone, as on hosts other than x86-64 (the tests
 * compile it so, to keep that build working). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(P2PDIST_NO_VECTOR)
#define HAVE_VECTOR_CODERS 1
#include <immintrin.h>
#define AVX2 __attribute__((target("avx2,bmi2")))
#define AVX512 __attribute__((target("avx2,bmi2,avx512f,avx512bw,avx512cd,avx512vl,avx512vbmi")))
#endif

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

typedef enum { ENC_OK = 0, ENC_UNCHANGED = 1, ENC_TOO_BIG = 2, ENC_NOMEM = 3 } EncResult;

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
#include "_delta_ans_x86_encode.h" /* the encoder's AVX-512 and AVX2 passes */
#endif

/* The payload, in pieces that live in the scratch arena: concatenated, they are the payload. */
typedef struct {
    const uint8_t *part[5];
    size_t len[5];
} Pieces;

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

INLINE unsigned class_bits(unsigned k) { return k > 2 ? 2 : k > 1 ? 1 : 0; }

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
    uint32_t(*hist)[MAX_TABLES * ALPHABET_MAX] = take(&a, 4 * sizeof *hist);
    EncSym *enc = take(&a, MAX_TABLES * ALPHABET_MAX * sizeof *enc);
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
    if (!codes || !extra || !ans || !tables || !hist || !enc || !freq || !cl || !rowsum ||
        !colsum || !sorted || !rowcls || !colcls || !offs || !classbuf)
        return ENC_NOMEM;
    for (int k = 0; k < 4; k++) memset(hist[k], 0, (size_t)ntables * (size_t)alphabet * 4);
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
        if (simd_level >= SIMD_AVX512) {
            g0 = n & ~(size_t)15;
            any |= avx512_tokens(w, nw, bs, g0, kmask, shift, use_ctx ? lo : 0, alphabet, codes,
                                 &bw, L, rowsum, colsum);
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
     * table is class * nctx + its context. Then the histograms (4 copies: no store-to-load
     * stalls). */
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
        for (size_t r = 0; r < nruns; r++) {
            uint16_t *cr = codes + r * L;
            const uint16_t *o = offs + rowcls[r] * L;
            for (size_t c = 0; c < L; c++) cr[c] = (uint16_t)(cr[c] + o[c]);
        }
    }
    for (size_t i = 0; i < n; i++) hist[i & 3][codes[i]]++;
    for (int k = 1; k < 4; k++)
        for (int j = 0; j < ntables * alphabet; j++) hist[0][j] += hist[k][j];

    /* tables */
    Out to = {tables, tables + TABLE_BYTES};
    for (int c = 0; c < ntables; c++) {
        uint64_t total = 0;
        const uint32_t *h = hist[0] + c * alphabet;
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
        if (avx512_encode_groups(codes, enc, ng, x, &ptr, floor_ptr)) return ENC_TOO_BIG;
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

/* ------------------------------------------------------------------------ decoder */

typedef struct {
    const uint8_t *buf;
    size_t len;     /* bytes */
    uint64_t pos;   /* bits read */
} BitReader;

INLINE uint64_t br_get(BitReader *br, unsigned nb) { /* nb <= 56 */
    size_t byte = (size_t)(br->pos >> 3);
    unsigned off = (unsigned)(br->pos & 7);
    uint64_t v;
    if (byte + 8 <= br->len) {
        memcpy(&v, br->buf + byte, 8);
    } else { /* tail: zero beyond the end; the caller checks pos <= len * 8 at the end */
        v = 0;
        for (size_t k = 0; k < 8 && byte + k < br->len; k++) v |= (uint64_t)br->buf[byte + k] << (8 * k);
    }
    br->pos += nb;
    return (v >> off) & ((1ull << nb) - 1);
}

INLINE uint64_t br_get_wide(BitReader *br, unsigned nb) {
    if (nb > 32) {
        uint64_t lo = br_get(br, 32);
        return lo | (br_get(br, nb - 32) << 32);
    }
    return br_get(br, nb);
}

/* Decoder slot entry: token (8 bits) | freq - 1 (12 bits) | slot - start (12 bits). */
typedef uint32_t Slot;

/* A word's tables start at table (rowo[its row] + colo[its column]) (row and column classes
 * times their table counts); without classes (L = 0) both are 0. Rows are a whole number of
 * groups long, so a group lies in one row. */
typedef struct {
    size_t L; /* words per row, 0: no classes */
    const uint8_t *rowo, *colo;
} Classes;

/* Where group after group is in its row: its row's offset and its columns' (one division when
 * it starts, none per group). */
typedef struct {
    const uint8_t *row, *col, *col0, *col_end; /* col_end NULL: no classes */
} ClassCursor;

INLINE ClassCursor class_cursor(const Classes *c, size_t g) {
    if (!c->L) return (ClassCursor){c->rowo, c->colo, c->colo, NULL}; /* NSTATES zeros */
    return (ClassCursor){c->rowo + g / c->L, c->colo + g % c->L, c->colo, c->colo + c->L};
}

INLINE void class_next(ClassCursor *k) {
    if (k->col_end && (k->col += NSTATES) == k->col_end) k->col = k->col0, k->row++;
}

/* Read ``count`` classes of ceil(log2 k) bits (least significant first, the last byte
 * zero-padded), each below k; out[i] = class * mult. */
static const char *get_classes(In *in, size_t count, unsigned k, uint8_t mult, uint8_t *out) {
    unsigned bits = class_bits(k);
    if (!bits) {
        memset(out, 0, count);
        return NULL;
    }
    size_t nbytes = (count * bits + 7) / 8;
    if ((size_t)(in->end - in->p) < nbytes) return "truncated classes";
    for (size_t i = 0; i < count; i++) {
        size_t at = i * bits;
        unsigned c = (in->p[at / 8] >> (at % 8)) & ((1u << bits) - 1);
        if (c >= k) return "class out of range";
        out[i] = (uint8_t)(c * mult);
    }
    if ((count * bits) % 8 && in->p[nbytes - 1] >> ((count * bits) % 8)) return "nonzero class padding";
    in->p += nbytes;
    return NULL;
}

static const char *read_tables(In *in, int ntables, int alphabet, Slot (*lut)[SCALE]) {
    for (int c = 0; c < ntables; c++) {
        uint32_t k;
        if (get_varint(in, &k) || k > (uint32_t)alphabet) return "bad frequency table";
        if (k == 0) { /* unused context: any word that claims it decodes to garbage */
            for (uint32_t slot = 0; slot < SCALE; slot++) lut[c][slot] = ((SCALE - 1u) << 8) | (slot << 20);
            continue;
        }
        uint32_t start = 0;
        int prev = -1;
        for (uint32_t j = 0; j < k; j++) {
            uint32_t gap, f1;
            if (get_varint(in, &gap) || get_varint(in, &f1)) return "truncated frequency table";
            if (gap >= (uint32_t)alphabet || (uint32_t)prev + 1 + gap >= (uint32_t)alphabet)
                return "frequency table symbol out of range";
            if (f1 >= SCALE || start + f1 + 1 > SCALE) return "frequencies exceed the scale";
            int s = prev + 1 + (int)gap;
            for (uint32_t slot = start; slot <= start + f1; slot++)
                lut[c][slot] = (uint32_t)s | (f1 << 8) | ((slot - start) << 20);
            start += f1 + 1;
            prev = s;
        }
        if (start != SCALE) return "frequencies do not add up to the scale";
    }
    return NULL;
}

#ifdef HAVE_VECTOR_CODERS
#include "_delta_ans_x86_decode.h" /* the AVX2 and AVX-512 decoders */
#endif

INLINE const char *ans_decode_w(const uint8_t *payload, size_t plen, const uint8_t *bs, uint8_t *out,
                                size_t n, int w, int use_ctx, unsigned shift, unsigned bits,
                                int64_t lo, Arena a) {
    int alphabet = 32 * w, nctx = use_ctx ? MAX_CTX : 1;
    uint64_t kmask = use_ctx ? ((1ull << bits) - 1) : 0;
    In in = {payload, payload + plen};
    /* classes: a word's tables are (rowo[its row] + colo[its column]) * SCALE on */
    uint32_t L32;
    if (get_varint(&in, &L32)) return "truncated class header";
    size_t L = L32, nruns = 0;
    unsigned nrow = 1, ncol = 1;
    static const uint8_t no_classes[NSTATES] = {0};
    uint8_t zero_row = 0, *rowo = &zero_row, *colo = (uint8_t *)no_classes;
    if (L) {
        if (L % NSTATES || L > n || n % L) return "bad class row length";
        if (in.p >= in.end) return "truncated class header";
        nrow = *in.p >> 4, ncol = *in.p & 15;
        in.p++;
        if (nrow < 1 || nrow > MAX_ROW_CLASSES || ncol < 1 || ncol > MAX_COL_CLASSES)
            return "bad class counts";
        nruns = n / L;
        rowo = take(&a, nruns), colo = take(&a, L);
        if (!rowo || !colo) return "scratch buffer too small";
        const char *e1 = get_classes(&in, nruns, nrow, (uint8_t)(ncol * (unsigned)nctx), rowo);
        const char *e2 = e1 ? e1 : get_classes(&in, L, ncol, (uint8_t)nctx, colo);
        if (e2) return e2;
    }
    int ntables = nctx * (int)(nrow * ncol);
    Slot(*lut)[SCALE] = take(&a, (size_t)ntables * sizeof *lut);
    uint32_t *cl = context_lut(&a, use_ctx, bits, lo, SCALE);
    const char *err = NULL;
    if (!lut || !cl) return "scratch buffer too small";
    if ((err = read_tables(&in, ntables, alphabet, lut))) return err;
    uint32_t ans_bytes;
    if (get_varint(&in, &ans_bytes) || ans_bytes % 2 || ans_bytes < 4 * NSTATES ||
        ans_bytes > (size_t)(in.end - in.p))
        return "bad rANS stream length";
    /* copy the stream into a padded buffer: reads past its end see zeros, never memory */
    size_t nwords = ans_bytes / 2;
    uint16_t *words = take(&a, (nwords + 8) * sizeof *words);
    if (!words) return "scratch buffer too small";
    memcpy(words, in.p, nwords * 2); /* little-endian words (checked when compiling) */
    memset(words + nwords, 0, 8 * sizeof *words);
    in.p += ans_bytes;
    BitReader br = {in.p, (size_t)(in.end - in.p), 0};

    uint32_t x[NSTATES];
    for (int j = 0; j < NSTATES; j++) x[j] = words[2 * j] | ((uint32_t)words[2 * j + 1] << 16);
    for (int j = 0; j < NSTATES; j++)
        if (x[j] < RANS_L || x[j] >= (RANS_L << 16)) return "bad rANS state";
    size_t rp = 2 * NSTATES;
    uint32_t bad = 0;
    /* value of the smallest z of each token, and its number of extra bits */
    uint64_t zbase[ALPHABET_MAX];
    uint8_t nbits[ALPHABET_MAX];
    for (int t = 0; t < alphabet; t++) {
        if (t < SMALL) {
            zbase[t] = (uint64_t)t, nbits[t] = 0;
        } else {
            int p = 4 + (t - SMALL) / 4;
            zbase[t] = (uint64_t)(4 + (t & 3)) << (p - 2), nbits[t] = (uint8_t)(p - 2);
        }
    }
    const Slot *lut0 = lut[0];
    const uint8_t *xb = br.buf;
    size_t xlen = br.len;
    uint64_t pos = 0; /* extra bits read */
    /* One word: its context from the base, its token from state j, then its extra bits. The
     * fast form reads the streams unchecked: the caller made sure a group fits in both. */
#define DEC(i, j, SAFE, CLS)                                                                     \
    do {                                                                                         \
        uint64_t b_ = load_word(bs + (i) * w, w);                                                \
        const Slot *l_ = lut0 + cl[(b_ >> shift) & kmask] + (size_t)(CLS) * SCALE;               \
        uint32_t v_ = x[j];                                                                      \
        Slot e_ = l_[v_ & (SCALE - 1)];                                                          \
        unsigned t_ = e_ & 0xff;                                                                 \
        v_ = (((e_ >> 8) & 0xfff) + 1) * (v_ >> SCALE_BITS) + (e_ >> 20);                        \
        uint32_t need_ = v_ < RANS_L;                                                            \
        if (SAFE) {                                                                              \
            uint32_t avail_ = rp < nwords;                                                       \
            bad |= need_ & !avail_;                                                              \
            need_ &= avail_;                                                                     \
        }                                                                                        \
        /* shifts and masks, not a branch: renormalisation is a coin toss for the predictor */  \
        x[j] = (v_ << (need_ << 4)) | (words[rp] & (0u - need_));                                \
        rp += need_;                                                                             \
        unsigned nb_ = nbits[t_];                                                                \
        uint64_t r_;                                                                             \
        if (SAFE) {                                                                              \
            BitReader br_ = {xb, xlen, pos};                                                     \
            r_ = w == 8 ? br_get_wide(&br_, nb_) : br_get(&br_, nb_);                            \
        } else if (w == 8 && nb_ > 32) {                                                         \
            uint64_t a_, c_;                                                                     \
            memcpy(&a_, xb + (pos >> 3), 8);                                                     \
            memcpy(&c_, xb + ((pos + 32) >> 3), 8);                                              \
            r_ = ((a_ >> (pos & 7)) & 0xffffffffu) |                                             \
                 (((c_ >> ((pos + 32) & 7)) & ((1ull << (nb_ - 32)) - 1)) << 32);                \
        } else {                                                                                 \
            uint64_t a_;                                                                         \
            memcpy(&a_, xb + (pos >> 3), 8);                                                     \
            r_ = (a_ >> (pos & 7)) & ((1ull << nb_) - 1);                                        \
        }                                                                                        \
        pos += nb_;                                                                              \
        store_word(out + (i) * w, w, b_ + unzigzag(zbase[t_] | r_));                             \
    } while (0)
    size_t ng = n & ~(size_t)(NSTATES - 1), g = 0;
    Classes cls = {L, rowo, colo};
#ifdef HAVE_VECTOR_CODERS
    if ((w == 2 || w == 4) && simd_level >= SIMD_AVX512)
        g = avx512_decode_groups(w, bs, out, ng, lut0, use_ctx ? kmask : 0, shift, use_ctx ? lo : 0,
                                 &cls, x, words, nwords, &rp, xb, xlen, &pos);
    else if ((w == 2 || w == 4) && simd_level >= SIMD_AVX2)
        g = avx2_decode_groups(w, bs, out, ng, lut0, use_ctx ? kmask : 0, shift, use_ctx ? lo : 0,
                               &cls, x, words, nwords, &rp, xb, xlen, &pos);
#endif
    for (ClassCursor at = class_cursor(&cls, g); g < ng; g += NSTATES, class_next(&at)) {
        /* a group reads at most NSTATES stream words and NSTATES * 62 extra bits (+ 8 bytes
         * of load) */
        int fast = rp + NSTATES <= nwords && (pos >> 3) + 8 * NSTATES + 8 <= xlen;
        if (!at.col_end && fast) {
            for (int j = 0; j < NSTATES; j++) DEC(g + (size_t)j, j, 0, 0);
        } else if (fast) {
            for (int j = 0; j < NSTATES; j++) DEC(g + (size_t)j, j, 0, *at.row + at.col[j]);
        } else {
            for (int j = 0; j < NSTATES; j++) DEC(g + (size_t)j, j, 1, *at.row + at.col[j]);
        }
    }
    for (size_t i = ng; i < n; i++) DEC(i, i % NSTATES, 1, 0); /* no classes: n % L == 0 */
#undef DEC
    br.pos = pos;
    if (bad || rp != nwords) return "rANS stream does not match its length (truncated or tampered)";
    for (int j = 0; j < NSTATES; j++)
        if (x[j] != RANS_L) return "rANS final state mismatch (tampered payload)";
    if (br.pos > (uint64_t)br.len * 8 || (br.pos + 7) / 8 != br.len)
        return "extra bits do not match their length (truncated or tampered)";
    if (br.pos % 8 && (br.buf[br.len - 1] >> (br.pos % 8))) return "nonzero padding after the extra bits";
    return NULL;
}

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

CLONES static int64_t choose_lo(const uint8_t *base, size_t n, int w, unsigned shift,
                                unsigned bits, Arena a) {
    BY_WORD(choose_lo_w(base, n, w, shift, bits, a))
}

CLONES static EncResult ans_encode(const uint8_t *nw, const uint8_t *bs, size_t n, int w,
                                   int use_ctx, unsigned shift, unsigned bits, int64_t lo,
                                   size_t row_len, Arena a, Pieces *out) {
    BY_WORD(ans_encode_w(nw, bs, n, w, use_ctx, shift, bits, lo, row_len, a, out))
}

CLONES static const char *ans_decode(const uint8_t *payload, size_t plen, const uint8_t *bs,
                                     uint8_t *out, size_t n, int w, int use_ctx, unsigned shift,
                                     unsigned bits, int64_t lo, Arena a) {
    BY_WORD(ans_decode_w(payload, plen, bs, out, n, w, use_ctx, shift, bits, lo, a))
}

/* Scratch bytes that encoding or decoding ``nbytes`` of ``w``-byte words needs (64-byte
 * alignment of each piece included). */
static size_t scratch_need(size_t nbytes, int w) {
    size_t n = nbytes / (size_t)w, align = 10 * 64;
    /* classes: n / L <= n / 32 rows, L <= n / 16 columns (use_classes) */
    size_t classes = (n / 32 + 1) * 4 + 2 * (n / 16 + 1) * 4 + (n / 32 + 1) + (n / 16 + 1) +
                     (MAX_ROW_CLASSES * (n / 16) + 1) * 2 + 8 + (n / 32 * 2 + 7) / 8 +
                     (n / 16 + 7) / 8;
    size_t enc = (n + 1) * 2 + (nbytes + 8) + (nbytes + 4 * NSTATES) + TABLE_BYTES + 8 +
                 4 * MAX_TABLES * ALPHABET_MAX * 4 + MAX_TABLES * ALPHABET_MAX * sizeof(EncSym) +
                 MAX_TABLES * ALPHABET_MAX * 4 + MAX_KEYS * 4 + classes + 2 * align;
    /* the decoder's class offsets: n / L <= n / 32 rows, L <= n columns */
    size_t dec = MAX_TABLES * SCALE * sizeof(Slot) + MAX_KEYS * 4 + (nbytes + 16) +
                 (n / 32 + 1) + (n + 1) + 2 * align;
    return enc > dec ? enc : dec;
}

/* ------------------------------------------------------------------------ Python glue */

static int parse_key(int w, PyObject *context, int *use_ctx, unsigned *shift, unsigned *bits,
                     int64_t *lo, int need_lo) {
    *use_ctx = 0, *shift = 0, *bits = 0, *lo = 0;
    if (context == Py_None) return 0;
    if (!PyTuple_Check(context)) {
        PyErr_SetString(PyExc_TypeError, "context must be None or a tuple");
        return -1;
    }
    long long s, b, l = 0;
    if (need_lo) {
        if (!PyArg_ParseTuple(context, "LLL", &s, &b, &l)) return -1;
    } else if (!PyArg_ParseTuple(context, "LL", &s, &b)) {
        return -1;
    }
    if (s < 0 || b < 1 || b > 16 || s + b > 8 * w || l < 0 || l >= (1LL << b)) {
        PyErr_SetString(PyExc_ValueError, "invalid context key");
        return -1;
    }
    *use_ctx = 1, *shift = (unsigned)s, *bits = (unsigned)b, *lo = l;
    return 0;
}

static int check_word(int w) {
    if (w == 1 || w == 2 || w == 4 || w == 8) return 0;
    PyErr_SetString(PyExc_ValueError, "word size must be 1, 2, 4 or 8");
    return -1;
}

static int get_arena(Py_buffer *sb, size_t nbytes, int w, Arena *a) {
    if ((size_t)sb->len < scratch_need(nbytes, w)) {
        PyErr_SetString(PyExc_ValueError, "scratch buffer smaller than scratch_size()");
        return -1;
    }
    *a = (Arena){sb->buf, (uint8_t *)sb->buf + sb->len};
    return 0;
}

PyDoc_STRVAR(scratch_size_doc,
"scratch_size(nbytes, word) -> int\n\n"
"Bytes of the writable scratch buffer that encode() and decode() need for a segment of\n"
"``nbytes`` bytes of ``word``-byte words. Reuse one buffer per thread: fresh memory costs a\n"
"page fault per 4 KiB.");

static PyObject *py_scratch_size(PyObject *self, PyObject *args) {
    Py_ssize_t nbytes;
    int w;
    if (!PyArg_ParseTuple(args, "ni", &nbytes, &w)) return NULL;
    if (check_word(w)) return NULL;
    if (nbytes < 0) {
        PyErr_SetString(PyExc_ValueError, "nbytes must be >= 0");
        return NULL;
    }
    return PyLong_FromSize_t(scratch_need((size_t)nbytes, w));
}

PyDoc_STRVAR(encode_doc,
"encode(new, base, word, key, scratch, row=0) -> (lo, payload) | None | False\n\n"
"Code the words of buffer ``new`` against ``base`` (same length, a multiple of ``word``).\n"
"``key`` is None or (shift, bits): the context is read from the base words. ``row``: words\n"
"per row of the tensor (0: none), for row and column classes. Returns the\n"
"chosen context offset ``lo`` (None without a key) and the payload; None when new == base;\n"
"False when the payload would not be smaller than the raw bytes. ``scratch`` is a writable\n"
"buffer of at least scratch_size(len(new), word) bytes.");

static PyObject *py_encode(PyObject *self, PyObject *args) {
    Py_buffer nb, bb, sb;
    int w;
    PyObject *key;
    Py_ssize_t row = 0;
    if (!PyArg_ParseTuple(args, "y*y*iOw*|n", &nb, &bb, &w, &key, &sb, &row)) return NULL;
    PyObject *res = NULL;
    int use_ctx;
    unsigned shift, bits;
    int64_t lo;
    Arena a;
    if (check_word(w) || parse_key(w, key, &use_ctx, &shift, &bits, &lo, 0)) goto done;
    if (nb.len != bb.len || nb.len % w) {
        PyErr_SetString(PyExc_ValueError, "new and base must have the same length, a multiple of word");
        goto done;
    }
    if (get_arena(&sb, (size_t)nb.len, w, &a)) goto done;
    size_t n = (size_t)nb.len / (size_t)w;
    Pieces pieces;
    EncResult r;
    Py_BEGIN_ALLOW_THREADS
    if (use_ctx) lo = choose_lo(bb.buf, n, w, shift, bits, a);
    r = ans_encode(nb.buf, bb.buf, n, w, use_ctx, shift, bits, lo, row > 0 ? (size_t)row : 0, a,
                   &pieces);
    Py_END_ALLOW_THREADS
    if (r == ENC_NOMEM) {
        PyErr_SetString(PyExc_ValueError, "scratch buffer too small");
    } else if (r == ENC_UNCHANGED) {
        res = Py_NewRef(Py_None);
    } else if (r == ENC_TOO_BIG) {
        res = Py_NewRef(Py_False);
    } else {
        size_t total = 0;
        for (int k = 0; k < 5; k++) total += pieces.len[k];
        PyObject *payload = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
        if (payload) {
            uint8_t *q = (uint8_t *)PyBytes_AS_STRING(payload);
            Py_BEGIN_ALLOW_THREADS
            for (int k = 0; k < 5; k++) {
                memcpy(q, pieces.part[k], pieces.len[k]);
                q += pieces.len[k];
            }
            Py_END_ALLOW_THREADS
            res = use_ctx ? Py_BuildValue("(LN)", (long long)lo, payload)
                          : Py_BuildValue("(ON)", Py_None, payload);
        }
    }
done:
    PyBuffer_Release(&nb);
    PyBuffer_Release(&bb);
    PyBuffer_Release(&sb);
    return res;
}

PyDoc_STRVAR(decode_doc,
"decode(payload, base, out, word, context, scratch) -> None\n\n"
"Rebuild into writable buffer ``out`` the words coded in ``payload`` against ``base`` (same\n"
"length as out). ``context`` is None or (shift, bits, lo); ``scratch`` as for encode().\n"
"ValueError on a malformed payload.");

static PyObject *py_decode(PyObject *self, PyObject *args) {
    Py_buffer pb, bb, ob, sb;
    int w;
    PyObject *context;
    if (!PyArg_ParseTuple(args, "y*y*w*iOw*", &pb, &bb, &ob, &w, &context, &sb)) return NULL;
    PyObject *res = NULL;
    int use_ctx;
    unsigned shift, bits;
    int64_t lo;
    Arena a;
    if (check_word(w) || parse_key(w, context, &use_ctx, &shift, &bits, &lo, 1)) goto done;
    if (ob.len != bb.len || ob.len % w || ob.len == 0) {
        PyErr_SetString(PyExc_ValueError, "out and base must have the same nonzero length, a multiple of word");
        goto done;
    }
    if (pb.len > ob.len) {
        PyErr_SetString(PyExc_ValueError, "payload larger than its segment");
        goto done;
    }
    if (get_arena(&sb, (size_t)ob.len, w, &a)) goto done;
    const char *err;
    Py_BEGIN_ALLOW_THREADS
    err = ans_decode(pb.buf, (size_t)pb.len, bb.buf, ob.buf, (size_t)ob.len / (size_t)w, w,
                     use_ctx, shift, bits, lo, a);
    Py_END_ALLOW_THREADS
    if (err) {
        PyErr_SetString(PyExc_ValueError, err);
    } else {
        res = Py_NewRef(Py_None);
    }
done:
    PyBuffer_Release(&pb);
    PyBuffer_Release(&bb);
    PyBuffer_Release(&ob);
    PyBuffer_Release(&sb);
    return res;
}

/* The best decoder this CPU runs (the libgcc checks include the OS's support of the registers). */
static int best_simd_level(void) {
#ifdef HAVE_VECTOR_CODERS
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("bmi2")) return SIMD_NONE;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512vbmi"))
        return SIMD_AVX512;
    return SIMD_AVX2;
#else
    return SIMD_NONE;
#endif
}

PyDoc_STRVAR(set_simd_doc,
"set_simd(level) -> int\n\n"
"Let decode() use vector decoders up to ``level`` (0 portable C, 1 AVX2, 2 AVX-512) where the\n"
"CPU has them; returns the level now in use. For tests and benchmarks: all decode the same\n"
"bytes, and the best one is chosen when the module loads.");

static PyObject *py_set_simd(PyObject *self, PyObject *arg) {
    long level = PyLong_AsLong(arg);
    if (level == -1 && PyErr_Occurred()) return NULL;
    int best = best_simd_level();
    simd_level = level < 0 ? SIMD_NONE : level > best ? best : (int)level;
    return PyLong_FromLong(simd_level);
}

static PyMethodDef methods[] = {
    {"set_simd", py_set_simd, METH_O, set_simd_doc},
    {"scratch_size", py_scratch_size, METH_VARARGS, scratch_size_doc},
    {"encode", py_encode, METH_VARARGS, encode_doc},
    {"decode", py_decode, METH_VARARGS, decode_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_delta_ans",
    .m_doc = "rANS coding of weight moves against a base, by exponent context (see delta_codec).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__delta_ans(void) {
    init_short_tokens();
#ifdef HAVE_VECTOR_CODERS
    init_renorm_shuffle();
    init_renorm_pack();
#endif
    simd_level = best_simd_level();
    return PyModule_Create(&module);
}
