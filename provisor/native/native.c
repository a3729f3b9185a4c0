/* provisor.native._native: the daemon's hot loop in C, with the Python code as its specification.
 *
 *   collect(buf, uuid, data_size, expect, off, limit) -> (records, end, off, expect) | None
 *       pmem/layout.py ``scan`` gathered (None: a position it does not take, for the Python
 *       code to judge): the valid chain of records from (expect, off), each
 *       a layout.Record (PADs included), then why it ended (an index into layout._ENDS) and
 *       where. Each record's 32-byte header and payload are copied out of the shared buffer
 *       first and checked on the copies: a producer writing meanwhile cannot make a record
 *       pass its CRC with bytes it does not hold.
 *   decode(data, seq) -> Event | None
 *       provisor/events.py ``decode`` of a well-formed payload; None for anything it does not
 *       accept, and the caller then runs the Python decoder, which gives the exact error. So
 *       the native decoder can only be stricter, never more lenient.
 *
 * Layouts: docs/FORMAT.md ("Record", "EVENT payload"). Untrusted bytes: every length is
 * checked against the buffer before it is read; every loop is bounded by the buffer.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "crc32c.h"

/* pmem/layout.py */
#define DATA_OFFSET 12288
#define REC_HDR 32
#define ALIGN 32
#define MAX_PAYLOAD (16u * 1024 * 1024)
#define SEQ_LIMIT (1ull << 63)
#define REC_PAD 1
/* indices into pmem/layout.py _ENDS */
enum { END_LIMIT, END_CLEAN, END_TORN, END_GAP, END_STALE, END_CHECKSUM, END_FULL,
       END_EXHAUSTED };

/* provisor/events.py */
#define EVENT_VERSION 1
#define FIXED_SIZE 112
#define F_HAS_RET 1
enum { T_COMM = 1, T_CWD, T_PATH, T_ARGV, T_ENVP, T_FILE, T_OUTFD, T_CRED, T_SOCK, T_ADDR };
#define MAX_SOCK_ADDR 108
#define SOCK_SIZE 24

static PyObject *RecordType, *EventType, *FileIdType, *EndpointType, *escape_fn;

static inline uint16_t rd16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t rd64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

static uint64_t padded(uint64_t n) { return (REC_HDR + n + ALIGN - 1) & ~(uint64_t)(ALIGN - 1); }

/* a layout.Record (a NamedTuple: a tuple subclass, built as tuple.__new__ builds one) */
static PyObject *make_record(uint64_t seq, unsigned type, uint64_t off, PyObject *payload)
{
    PyTypeObject *t = (PyTypeObject *)RecordType;
    PyObject *r = t->tp_alloc(t, 4);
    if (!r) {
        Py_DECREF(payload);
        return NULL;
    }
    PyObject *a = PyLong_FromUnsignedLongLong(seq), *b = PyLong_FromUnsignedLong(type),
             *c = PyLong_FromUnsignedLongLong(off);
    PyTuple_SET_ITEM(r, 0, a);
    PyTuple_SET_ITEM(r, 1, b);
    PyTuple_SET_ITEM(r, 2, c);
    PyTuple_SET_ITEM(r, 3, payload);
    if (!a || !b || !c) {
        Py_DECREF(r);
        return NULL;
    }
    return r;
}

static PyObject *collect(PyObject *self, PyObject *args)
{
    Py_buffer view, uu;
    unsigned long long data_size, expect, off;
    long long limit;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*KKKL", &view, &uu, &data_size, &expect, &off, &limit))
        return NULL;
    PyObject *recs = NULL, *out = NULL;
    int end = -1;
    if (!RecordType) {
        PyErr_SetString(PyExc_RuntimeError, "collect: setup_record() was not called");
        goto done;
    }
    if (uu.len != 16 || data_size % ALIGN || off % ALIGN || off >= data_size ||
        (unsigned long long)view.len < DATA_OFFSET + data_size) {
        out = Py_NewRef(Py_None);  /* not a position the Python scan could take: its call */
        goto done;
    }
    if (!(recs = PyList_New(0)))
        goto done;
    const uint8_t *buf = view.buf;
    uint32_t ucrc = pv_crc32c(0, uu.buf, 16);
    uint64_t consumed = 0;
    long long n = 0;
    for (;;) {
        if (limit >= 0 && n >= limit) { end = END_LIMIT; break; }
        if (expect >= SEQ_LIMIT) { end = END_EXHAUSTED; break; }
        uint8_t h[REC_HDR];
        const uint8_t *base = buf + DATA_OFFSET + off;
        memcpy(h, base, REC_HDR);
        uint64_t seq = rd64(h);
        uint32_t length = rd32(h + 8), crc = rd32(h + 28);
        unsigned type = rd16(h + 12);
        uint64_t room = data_size - off - REC_HDR;
        if (seq != expect) {
            static const uint8_t zero[REC_HDR];
            if (seq == 0 && !memcmp(h, zero, REC_HDR)) { end = END_CLEAN; break; }
            end = END_CHECKSUM;
            if (length <= room) {  /* an intact record of another lap, or past a hole */
                uint8_t *tmp = PyMem_Malloc(length ? length : 1);
                if (!tmp) { PyErr_NoMemory(); goto done; }
                memcpy(tmp, base + REC_HDR, length);
                if (pv_crc32c(pv_crc32c(ucrc, h, 28), tmp, length) == crc)
                    end = seq < expect ? END_STALE : END_GAP;
                PyMem_Free(tmp);
            }
            break;
        }
        if (length > room || length > MAX_PAYLOAD) { end = END_TORN; break; }
        PyObject *payload = PyBytes_FromStringAndSize((const char *)base + REC_HDR, length);
        if (!payload)
            goto done;
        if (pv_crc32c(pv_crc32c(ucrc, h, 28), PyBytes_AS_STRING(payload), length) != crc ||
            (type == REC_PAD && off + padded(length) != data_size)) {
            Py_DECREF(payload);
            end = END_TORN;
            break;
        }
        uint64_t step = type == REC_PAD ? data_size - off : padded(length);
        consumed += step;
        if (consumed > data_size) {
            Py_DECREF(payload);
            end = END_FULL;
            break;
        }
        PyObject *r = make_record(seq, type, off, payload);
        if (!r || PyList_Append(recs, r) < 0) {
            Py_XDECREF(r);
            goto done;
        }
        Py_DECREF(r);
        off = (off + step) % data_size;
        if (type != REC_PAD) {
            expect++;
            n++;
        }
    }
    out = Py_BuildValue("OiKK", recs, end, off, expect);
done:
    Py_XDECREF(recs);
    PyBuffer_Release(&view);
    PyBuffer_Release(&uu);
    return out;
}

/* -- decode ------------------------------------------------------------------------------ */
/* guest text (provisor/guesttext.py ``escape``): printable ASCII without a backslash is
 * itself; anything else goes through the Python function, the one definition of the rest */
static PyObject *text(const uint8_t *p, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++)
        if (p[i] < 0x20 || p[i] > 0x7e || p[i] == '\\')
            return PyObject_CallFunction(escape_fn, "y#", (const char *)p, n);
    PyObject *s = PyUnicode_New(n, 127);
    if (s)
        memcpy(PyUnicode_DATA(s), p, (size_t)n);
    return s;
}

static int append_new(PyObject *list, PyObject *item)
{
    if (!item)
        return -1;
    int rc = PyList_Append(list, item);
    Py_DECREF(item);
    return rc;
}

#define REJECT do { rejected = 1; goto fail; } while (0)
#define CHECK(x) do { if (!(x)) goto fail; } while (0)

static PyObject *decode(PyObject *self, PyObject *args)
{
    const uint8_t *d;
    Py_ssize_t end;
    PyObject *data, *seq;
    (void)self;
    if (!PyArg_ParseTuple(args, "SO", &data, &seq))
        return NULL;
    if (!EventType) {
        PyErr_SetString(PyExc_RuntimeError, "decode: setup_event() was not called");
        return NULL;
    }
    d = (const uint8_t *)PyBytes_AS_STRING(data);
    end = PyBytes_GET_SIZE(data);
    if (end < FIXED_SIZE || d[0] != EVENT_VERSION || d[1] > 1 ||
        ((rd64(d + 8) | rd64(d + 16) | rd64(d + 40) | rd64(d + 56)) >> 63))
        Py_RETURN_NONE;  /* (entry_seq, ts_ns, start_time, cwd_mnt: the store's ints are signed) */
    int rejected = 0;
    PyObject *comm = NULL, *cwd = NULL, *paths = NULL, *files = NULL, *out_fds = NULL,
             *argv = NULL, *envp = NULL, *cred = NULL, *eps = NULL, *addr = NULL,
             *argt = NULL, *ev = NULL;
    unsigned addr_family = 0;
    long long last_file = -1;  /* the file index of the last SOCK field */
    CHECK(paths = PyList_New(0));
    CHECK(files = PyList_New(0));
    CHECK(out_fds = PyList_New(0));
    CHECK(eps = PyList_New(0));
    Py_ssize_t off = FIXED_SIZE;
    while (off < end) {
        if (off + 3 > end)
            REJECT;
        unsigned tag = d[off];
        Py_ssize_t n = rd16(d + off + 1);
        off += 3;
        Py_ssize_t nxt = off + n;
        if (nxt > end)
            REJECT;
        const uint8_t *f = d + off;
        switch (tag) {
        case T_PATH:
            CHECK(append_new(paths, text(f, n)) == 0);
            break;
        case T_FILE: {
            if (n < 16 || ((rd64(f) | rd64(f + 8)) >> 63))
                REJECT;
            PyObject *fid = PyObject_CallFunction(FileIdType, "KKN", rd64(f), rd64(f + 8),
                                                  text(f + 16, n - 16));
            CHECK(append_new(files, fid) == 0);
            break;
        }
        case T_COMM:
            Py_XDECREF(comm);
            CHECK(comm = text(f, n));
            break;
        case T_CWD:
            Py_XDECREF(cwd);
            CHECK(cwd = text(f, n));
            break;
        case T_OUTFD:
            if (n != 4)
                REJECT;
            CHECK(append_new(out_fds, PyLong_FromLong((int32_t)rd32(f))) == 0);
            break;
        case T_ARGV:
        case T_ENVP: {
            PyObject **l = tag == T_ARGV ? &argv : &envp;
            if (!*l)
                CHECK(*l = PyList_New(0));
            CHECK(append_new(*l, text(f, n)) == 0);
            break;
        }
        case T_CRED:
            if (n != 32 || cred)
                REJECT;
            CHECK(cred = Py_BuildValue("(IIIIIIII)", rd32(f), rd32(f + 4), rd32(f + 8),
                                       rd32(f + 12), rd32(f + 16), rd32(f + 20), rd32(f + 24),
                                       rd32(f + 28)));
            break;
        case T_SOCK: {
            if (n < SOCK_SIZE)
                REJECT;
            unsigned fi = rd16(f), ln = rd16(f + 6);
            if ((Py_ssize_t)ln > n - SOCK_SIZE || (long long)fi <= last_file)
                REJECT;
            last_file = fi;
            const uint8_t *a = f + SOCK_SIZE;
            PyObject *ep = PyObject_CallFunction(
                EndpointType, "IIINNKK", fi, (unsigned)rd16(f + 2), (unsigned)rd16(f + 4),
                text(a, ln), text(a + ln, n - SOCK_SIZE - ln), rd64(f + 8), rd64(f + 16));
            CHECK(append_new(eps, ep) == 0);
            break;
        }
        case T_ADDR:
            if (n < 2 || n > 2 + MAX_SOCK_ADDR || addr)
                REJECT;
            addr_family = rd16(f);
            if (addr_family != 1 && addr_family != 2 && addr_family != 10)
                REJECT;
            CHECK(addr = text(f + 2, n - 2));
            break;
        default:
            REJECT;
        }
        off = nxt;
    }
    if (last_file >= PyList_GET_SIZE(files))
        REJECT;
    unsigned flags = rd16(d + 6);
    CHECK(argt = Py_BuildValue("(KKKKKK)", rd64(d + 64), rd64(d + 72), rd64(d + 80),
                               rd64(d + 88), rd64(d + 96), rd64(d + 104)));
    PyObject *ret = flags & F_HAS_RET ? PyLong_FromLongLong((long long)rd64(d + 48))
                                      : Py_NewRef(Py_None);
    CHECK(ret);
    /* Event's fields in order (provisor/events.py) */
    PyObject *v[27] = {
        PyLong_FromUnsignedLong(rd16(d + 4)), PyLong_FromUnsignedLong(d[1]),
        PyLong_FromUnsignedLongLong(rd64(d + 16)), PyLong_FromUnsignedLong(rd16(d + 2)),
        PyLong_FromUnsignedLongLong(rd64(d + 8)), PyLong_FromUnsignedLong(rd32(d + 24)),
        PyLong_FromUnsignedLong(rd32(d + 28)), PyLong_FromUnsignedLong(rd32(d + 32)),
        PyLong_FromUnsignedLong(rd32(d + 36)), PyLong_FromUnsignedLongLong(rd64(d + 40)),
        ret, PyLong_FromUnsignedLongLong(rd64(d + 56)), Py_NewRef(argt),
        PyLong_FromUnsignedLong(flags & ~F_HAS_RET),
        comm ? Py_NewRef(comm) : PyUnicode_New(0, 127), Py_NewRef(cwd ? cwd : Py_None),
        Py_NewRef(paths), Py_NewRef(argv ? argv : Py_None), Py_NewRef(envp ? envp : Py_None),
        Py_NewRef(files), Py_NewRef(out_fds), Py_NewRef(seq), Py_NewRef(data),
        Py_NewRef(cred ? cred : Py_None), Py_NewRef(eps), Py_NewRef(addr ? addr : Py_None),
        PyLong_FromUnsignedLong(addr_family)};
    int ok = 1;
    for (int i = 0; i < 27; i++)
        ok &= v[i] != NULL;
    if (ok)
        ev = PyObject_Vectorcall(EventType, v, 27, NULL);
    for (int i = 0; i < 27; i++)
        Py_XDECREF(v[i]);
fail:
    Py_XDECREF(comm);
    Py_XDECREF(cwd);
    Py_XDECREF(paths);
    Py_XDECREF(files);
    Py_XDECREF(out_fds);
    Py_XDECREF(argv);
    Py_XDECREF(envp);
    Py_XDECREF(cred);
    Py_XDECREF(eps);
    Py_XDECREF(addr);
    Py_XDECREF(argt);
    if (rejected && !PyErr_Occurred())
        Py_RETURN_NONE;
    return ev;
}

static PyObject *setup_record(PyObject *self, PyObject *r)
{
    (void)self;
    if (!PyType_Check(r) || !PyType_IsSubtype((PyTypeObject *)r, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "setup_record: Record must be a tuple subclass");
        return NULL;
    }
    Py_XSETREF(RecordType, Py_NewRef(r));
    Py_RETURN_NONE;
}

static PyObject *setup_event(PyObject *self, PyObject *args)
{
    PyObject *e, *f, *p, *esc;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOO", &e, &f, &p, &esc))
        return NULL;
    Py_XSETREF(EventType, Py_NewRef(e));
    Py_XSETREF(FileIdType, Py_NewRef(f));
    Py_XSETREF(EndpointType, Py_NewRef(p));
    Py_XSETREF(escape_fn, Py_NewRef(esc));
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"collect", collect, METH_VARARGS, "layout.scan gathered (see the module docstring)."},
    {"decode", decode, METH_VARARGS, "events.decode of a well-formed payload, else None."},
    {"setup_record", setup_record, METH_O, "setup_record(layout.Record)"},
    {"setup_event", setup_event, METH_VARARGS, "setup_event(Event, FileId, Endpoint, escape)"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native",
                                    "The daemon's hot loop in C (provisor/native/native.c).",
                                    -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&module); }
