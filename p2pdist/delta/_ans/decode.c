/* The decoder of the delta codec's "ans" segments (the format: ans.h and
 * docs/FORMAT_DELTA.md): it trusts nothing in the payload; portable C, with AVX-512 and AVX2
 * decoders (x86_decode.h) for whole groups of 16- and 32-bit words. */

#include "ans.h"

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
#include "x86_decode.h" /* the AVX2 and AVX-512 decoders */
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

CLONES INTERNAL const char *ans_decode(const uint8_t *payload, size_t plen, const uint8_t *bs,
                                     uint8_t *out, size_t n, int w, int use_ctx, unsigned shift,
                                     unsigned bits, int64_t lo, Arena a) {
    BY_WORD(ans_decode_w(payload, plen, bs, out, n, w, use_ctx, shift, bits, lo, a))
}
