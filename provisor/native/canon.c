/* The canonical binary encoding of rows (hash chain encoding 5), in C.
 *
 *   rows_bin(rows) -> bytes
 *       store/chain.py ``rows_bin_py`` (its specification, and the fallback): u32 row count,
 *       then per row a u16 value count and each value tagged: N (None), I (int in i64, 8
 *       bytes), J (any other int: u32 length, decimal text), S (str: u32 length, UTF-8 with
 *       surrogatepass), B (bytes-like: u32 length, raw), F (float: 8 bytes IEEE 754). All
 *       little-endian. A value of any other type, or a count out of range, raises TypeError
 *       or OverflowError exactly where the Python code does.
 *
 * One output buffer per call, no Python object per value: the chain of a batch costs a few
 * copies of its rows, not a repr of each.
 */
#include "native.h"

struct out {
    char *p;
    Py_ssize_t n, cap;
};

static int reserve(struct out *o, Py_ssize_t more)
{
    if (o->n + more <= o->cap)
        return 0;
    Py_ssize_t cap = o->cap ? o->cap : 4096;
    while (cap < o->n + more) {
        if (cap > PY_SSIZE_T_MAX / 2) {
            PyErr_NoMemory();
            return -1;
        }
        cap *= 2;
    }
    char *p = PyMem_Realloc(o->p, (size_t)cap);
    if (!p) {
        PyErr_NoMemory();
        return -1;
    }
    o->p = p;
    o->cap = cap;
    return 0;
}

static int put(struct out *o, const void *src, Py_ssize_t n)
{
    if (reserve(o, n) < 0)
        return -1;
    memcpy(o->p + o->n, src, (size_t)n);
    o->n += n;
    return 0;
}

static int put_le(struct out *o, uint64_t v, int width)
{
    uint8_t b[8];
    for (int i = 0; i < width; i++)
        b[i] = (uint8_t)(v >> (8 * i));
    return put(o, b, width);
}

/* tag, u32 length, the bytes */
static int put_blob(struct out *o, char tag, const char *p, Py_ssize_t n)
{
    if ((uint64_t)n > UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "rows_bin: a value longer than 2^32-1 bytes");
        return -1;
    }
    if (put(o, &tag, 1) < 0 || put_le(o, (uint64_t)n, 4) < 0)
        return -1;
    return put(o, p, n);
}

static int put_owned_bytes(struct out *o, char tag, PyObject *b)
{
    if (!b)
        return -1;
    int r = put_blob(o, tag, PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b));
    Py_DECREF(b);
    return r;
}

static int put_value(struct out *o, PyObject *v)
{
    if (v == Py_None)
        return put(o, "N", 1);
    if (PyLong_Check(v)) {
        int over = 0;
        long long x = PyLong_AsLongLongAndOverflow(v, &over);
        if (x == -1 && PyErr_Occurred())
            return -1;
        if (!over) {
            if (put(o, "I", 1) < 0)
                return -1;
            return put_le(o, (uint64_t)x, 8);
        }
        PyObject *s = PyObject_Str(v);
        if (!s)
            return -1;
        PyObject *b = PyUnicode_AsASCIIString(s);
        Py_DECREF(s);
        return put_owned_bytes(o, 'J', b);
    }
    if (PyUnicode_Check(v)) {
        Py_ssize_t n;
        const char *u = PyUnicode_AsUTF8AndSize(v, &n);  /* cached; fails on a surrogate */
        if (u)
            return put_blob(o, 'S', u, n);
        PyErr_Clear();
        return put_owned_bytes(o, 'S', PyUnicode_AsEncodedString(v, "utf-8", "surrogatepass"));
    }
    if (PyBytes_Check(v))
        return put_blob(o, 'B', PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v));
    if (PyByteArray_Check(v))
        return put_blob(o, 'B', PyByteArray_AS_STRING(v), PyByteArray_GET_SIZE(v));
    if (PyMemoryView_Check(v))
        return put_owned_bytes(o, 'B', PyBytes_FromObject(v));
    if (PyFloat_Check(v)) {
        double d = PyFloat_AS_DOUBLE(v);
        uint64_t bits;
        memcpy(&bits, &d, 8);
        if (put(o, "F", 1) < 0)
            return -1;
        return put_le(o, bits, 8);
    }
    PyErr_Format(PyExc_TypeError, "rows_bin: cannot encode a value of type %.100s",
                 Py_TYPE(v)->tp_name);
    return -1;
}

PyObject *pv_rows_bin(PyObject *self, PyObject *arg)
{
    (void)self;
    PyObject *rows = PySequence_Fast(arg, "rows_bin: rows must be iterable");
    if (!rows)
        return NULL;
    struct out o = {NULL, 0, 0};
    Py_ssize_t nrows = PySequence_Fast_GET_SIZE(rows);
    if ((uint64_t)nrows > UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "rows_bin: more than 2^32-1 rows");
        goto fail;
    }
    if (put_le(&o, (uint64_t)nrows, 4) < 0)
        goto fail;
    for (Py_ssize_t i = 0; i < nrows; i++) {
        PyObject *row = PySequence_Fast(PySequence_Fast_GET_ITEM(rows, i),
                                        "rows_bin: a row must be a sequence");
        if (!row)
            goto fail;
        Py_ssize_t nv = PySequence_Fast_GET_SIZE(row);
        int bad = nv > 0xFFFF;
        if (bad)
            PyErr_SetString(PyExc_OverflowError, "rows_bin: a row of more than 65535 values");
        else
            bad = put_le(&o, (uint64_t)nv, 2) < 0;
        for (Py_ssize_t j = 0; !bad && j < nv; j++)
            bad = put_value(&o, PySequence_Fast_GET_ITEM(row, j)) < 0;
        Py_DECREF(row);
        if (bad)
            goto fail;
    }
    Py_DECREF(rows);
    PyObject *r = PyBytes_FromStringAndSize(o.p, o.n);
    PyMem_Free(o.p);
    return r;
fail:
    Py_DECREF(rows);
    PyMem_Free(o.p);
    return NULL;
}

/*   seq_payloads(items) -> bytes
 *       store/chain.py ``seq_payloads_py``: per item its seq (u64) and payload length (u32),
 *       then the payload; an item is an Event (its slots) or a sequence (seq first, payload
 *       last). What encodings 4 and 5 chain of the events: a copy of each payload, once.
 */
PyObject *pv_seq_payloads(PyObject *self, PyObject *arg)
{
    (void)self;
    PyObject *items = PySequence_Fast(arg, "seq_payloads: items must be iterable");
    if (!items)
        return NULL;
    struct out o = {NULL, 0, 0};
    Py_ssize_t n = PySequence_Fast_GET_SIZE(items);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *it = PySequence_Fast_GET_ITEM(items, i), *seqo, *data, *row = NULL;
        if (pv_event_type && Py_IS_TYPE(it, pv_event_type)) {
            seqo = *(PyObject **)((char *)it + pv_off_seq);
            data = *(PyObject **)((char *)it + pv_off_payload);
        } else {
            row = PySequence_Fast(it, "seq_payloads: an item must be an Event or a sequence");
            if (!row)
                goto fail;
            Py_ssize_t k = PySequence_Fast_GET_SIZE(row);
            if (k < 1) {
                PyErr_SetString(PyExc_TypeError, "seq_payloads: an empty row");
                Py_DECREF(row);
                goto fail;
            }
            seqo = PySequence_Fast_GET_ITEM(row, 0);
            data = PySequence_Fast_GET_ITEM(row, k - 1);
        }
        int bad = 1;
        if (!seqo || !data || !PyLong_Check(seqo) || !PyBytes_Check(data)) {
            PyErr_SetString(PyExc_TypeError, "seq_payloads: a seq must be an int and a payload "
                            "bytes");
        } else {
            uint64_t seq = PyLong_AsUnsignedLongLong(seqo);
            Py_ssize_t len = PyBytes_GET_SIZE(data);
            if (!PyErr_Occurred()) {
                if ((uint64_t)len > UINT32_MAX)
                    PyErr_SetString(PyExc_OverflowError, "seq_payloads: a payload longer than "
                                    "2^32-1 bytes");
                else
                    bad = put_le(&o, seq, 8) < 0 || put_le(&o, (uint64_t)len, 4) < 0 ||
                          put(&o, PyBytes_AS_STRING(data), len) < 0;
            }
        }
        Py_XDECREF(row);
        if (bad)
            goto fail;
    }
    Py_DECREF(items);
    PyObject *r = PyBytes_FromStringAndSize(o.p, o.n);
    PyMem_Free(o.p);
    return r;
fail:
    Py_DECREF(items);
    PyMem_Free(o.p);
    return NULL;
}
