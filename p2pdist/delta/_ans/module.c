/* The Python module p2pdist.delta._ans: argument checks, scratch sizes, the choice of vector
 * code, and the GIL released around the encoder (encode.c) and the decoder
 * (decode.c). The format: ans.h and docs/FORMAT_DELTA.md. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "ans.h"

/* The vector code in use (see SIMD_NONE); set when the module loads, and by set_simd(). */
INTERNAL int simd_level = SIMD_NONE;

/* Scratch bytes that encoding or decoding ``nbytes`` of ``w``-byte words needs (64-byte
 * alignment of each piece included). */
static size_t scratch_need(size_t nbytes, int w) {
    size_t n = nbytes / (size_t)w, align = 11 * 64;
    /* classes: n / L <= n / 32 rows, L <= n / 16 columns (use_classes) */
    size_t classes = (n / 32 + 1) * 4 + 2 * (n / 16 + 1) * 4 + (n / 32 + 1) + (n / 16 + 1) +
                     (MAX_ROW_CLASSES * (n / 16) + 1) * 2 + 8 + (n / 32 * 2 + 7) / 8 +
                     (n / 16 + 7) / 8;
    size_t enc = (n + 1) * 2 + (nbytes + 8) + (nbytes + 4 * NSTATES) + TABLE_BYTES + 8 +
                 4 * HIST_STRIDE * 4 + MAX_TABLES * ALPHABET_MAX * (sizeof(EncSym) + 8) +
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
    .m_name = "_ans",
    .m_doc = "rANS coding of weight moves against a base, by exponent context (see p2pdist.delta.codec).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__ans(void) {
    init_short_tokens();
#ifdef HAVE_VECTOR_CODERS
    init_renorm_shuffle();
    init_renorm_pack();
#endif
    simd_level = best_simd_level();
    return PyModule_Create(&module);
}
