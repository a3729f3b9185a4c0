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
 *       the native decoder can only be stricter, never more lenient. ``pv_valid`` is the one
 *       judgement of a payload, shared with the events-row writer (sqlite_rows.c).
 *
 * Layouts: docs/FORMAT.md ("Record", "EVENT payload"). Untrusted bytes: every length is
 * checked against the buffer before it is read; every loop is bounded by the buffer.
 */
#include "native.h"

#include <structmember.h>

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

static PyObject *RecordType, *escape_fn;

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
PyObject *pv_escape(const uint8_t *p, Py_ssize_t n)
{
    return PyObject_CallFunction(escape_fn, "y#", (const char *)p, n);
}

/* guest text as a str: printable ASCII without a backslash is itself (guesttext.escape) */
static PyObject *text(const uint8_t *p, Py_ssize_t n)
{
    if (!pv_plain(p, n))
        return pv_escape(p, n);
    PyObject *s = PyUnicode_New(n, 127);
    if (s)
        memcpy(PyUnicode_DATA(s), p, (size_t)n);
    return s;
}

/* every refusal of decode_py, and nothing else (its messages are the Python code's to give) */
int pv_valid(const uint8_t *d, Py_ssize_t end, struct pv_shape *s)
{
    if (end < FIXED_SIZE || d[0] != EVENT_VERSION || d[1] > 1 ||
        ((rd64(d + 8) | rd64(d + 16) | rd64(d + 40) | rd64(d + 56)) >> 63))
        return 0;  /* (entry_seq, ts_ns, start_time, cwd_mnt: the store's ints are signed) */
    long long last_file = -1, nfiles = 0;  /* the file index of the last SOCK field */
    int cred = 0, addr = 0;
    s->comm = s->cwd = -1;
    s->comm_len = s->cwd_len = s->npaths = 0;
    Py_ssize_t off = FIXED_SIZE;
    while (off < end) {
        if (off + 3 > end)
            return 0;
        unsigned tag = d[off];
        Py_ssize_t n = rd16(d + off + 1);
        off += 3;
        if (off + n > end)
            return 0;
        const uint8_t *f = d + off;
        switch (tag) {
        case T_PATH:
            s->npaths++;
            break;
        case T_FILE:
            if (n < 16 || ((rd64(f) | rd64(f + 8)) >> 63))
                return 0;
            nfiles++;
            break;
        case T_COMM:
            s->comm = off;
            s->comm_len = n;
            break;
        case T_CWD:
            s->cwd = off;
            s->cwd_len = n;
            break;
        case T_OUTFD:
            if (n != 4)
                return 0;
            break;
        case T_ARGV:
        case T_ENVP:
            break;
        case T_CRED:
            if (n != 32 || cred)
                return 0;
            cred = 1;
            break;
        case T_SOCK: {
            if (n < SOCK_SIZE)
                return 0;
            unsigned fi = rd16(f), ln = rd16(f + 6);
            if ((Py_ssize_t)ln > n - SOCK_SIZE || (long long)fi <= last_file)
                return 0;
            last_file = fi;
            break;
        }
        case T_ADDR: {
            unsigned fam = n >= 2 ? rd16(f) : 0;
            if (n < 2 || n > 2 + MAX_SOCK_ADDR || addr || (fam != 1 && fam != 2 && fam != 10))
                return 0;
            addr = 1;
            break;
        }
        default:
            return 0;
        }
        off += n;
    }
    return last_file < nfiles;
}

/* A slots dataclass built as its __init__ would, without running it: each field's slot is
 * set directly (the offsets are taken from the type's member descriptors at setup, and the
 * setup checks the fields are the ones named here, in order). */
struct slots {
    PyTypeObject *type;
    int n;
    const char *const *names;
    Py_ssize_t off[32];
};

static const char *const EVENT_FIELDS[] = {
    "nr", "phase", "ts_ns", "vcpu", "entry_seq", "tgid", "pid", "ppid", "uid", "start_time",
    "ret", "cwd_mnt", "args", "flags", "comm", "cwd", "paths", "argv", "envp", "files",
    "out_fds", "seq", "payload", "cred", "endpoints", "addr", "addr_family"};
static const char *const FILEID_FIELDS[] = {"dev", "ino", "path"};
static const char *const ENDPOINT_FIELDS[] = {"file", "family", "type", "local", "remote",
                                              "sk", "peer"};
static struct slots EventS = {NULL, 27, EVENT_FIELDS, {0}},
                    FileIdS = {NULL, 3, FILEID_FIELDS, {0}},
                    EndpointS = {NULL, 7, ENDPOINT_FIELDS, {0}};
PyTypeObject *pv_event_type;
Py_ssize_t pv_off_seq, pv_off_payload;

/* steals the references in v; NULL (and every v released) when any is NULL */
static PyObject *make(struct slots *s, PyObject **v)
{
    int ok = 1;
    for (int i = 0; i < s->n; i++)
        ok &= v[i] != NULL;
    PyObject *o = ok ? s->type->tp_alloc(s->type, 0) : NULL;
    for (int i = 0; i < s->n; i++) {
        if (o)
            *(PyObject **)((char *)o + s->off[i]) = v[i];
        else
            Py_XDECREF(v[i]);
    }
    return o;
}

static int append_new(PyObject *list, PyObject *item)
{
    if (!item)
        return -1;
    int rc = PyList_Append(list, item);
    Py_DECREF(item);
    return rc;
}

#define CHECK(x) do { if (!(x)) goto fail; } while (0)

static PyObject *decode(PyObject *self, PyObject *args)
{
    PyObject *data, *seq;
    struct pv_shape shape;
    (void)self;
    if (!PyArg_ParseTuple(args, "SO", &data, &seq))
        return NULL;
    if (!EventS.type) {
        PyErr_SetString(PyExc_RuntimeError, "decode: setup_event() was not called");
        return NULL;
    }
    const uint8_t *d = (const uint8_t *)PyBytes_AS_STRING(data);
    Py_ssize_t end = PyBytes_GET_SIZE(data);
    if (!pv_valid(d, end, &shape))
        Py_RETURN_NONE;
    PyObject *comm = NULL, *cwd = NULL, *paths = NULL, *files = NULL, *out_fds = NULL,
             *argv = NULL, *envp = NULL, *cred = NULL, *eps = NULL, *addr = NULL, *ev = NULL;
    unsigned addr_family = 0;
    CHECK(paths = PyList_New(0));
    CHECK(files = PyList_New(0));
    CHECK(out_fds = PyList_New(0));
    CHECK(eps = PyList_New(0));
    for (Py_ssize_t off = FIXED_SIZE; off < end;) {  /* every field fits: pv_valid */
        unsigned tag = d[off];
        Py_ssize_t n = rd16(d + off + 1);
        const uint8_t *f = d + off + 3;
        off += 3 + n;
        switch (tag) {
        case T_PATH:
            CHECK(append_new(paths, text(f, n)) == 0);
            break;
        case T_FILE: {
            PyObject *v[3] = {PyLong_FromUnsignedLongLong(rd64(f)),
                              PyLong_FromUnsignedLongLong(rd64(f + 8)), text(f + 16, n - 16)};
            CHECK(append_new(files, make(&FileIdS, v)) == 0);
            break;
        }
        case T_OUTFD:
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
            CHECK(cred = Py_BuildValue("(IIIIIIII)", rd32(f), rd32(f + 4), rd32(f + 8),
                                       rd32(f + 12), rd32(f + 16), rd32(f + 20), rd32(f + 24),
                                       rd32(f + 28)));
            break;
        case T_SOCK: {
            unsigned ln = rd16(f + 6);
            const uint8_t *a = f + SOCK_SIZE;
            PyObject *v[7] = {
                PyLong_FromUnsignedLong(rd16(f)), PyLong_FromUnsignedLong(rd16(f + 2)),
                PyLong_FromUnsignedLong(rd16(f + 4)), text(a, ln),
                text(a + ln, n - SOCK_SIZE - ln), PyLong_FromUnsignedLongLong(rd64(f + 8)),
                PyLong_FromUnsignedLongLong(rd64(f + 16))};
            CHECK(append_new(eps, make(&EndpointS, v)) == 0);
            break;
        }
        case T_ADDR:
            addr_family = rd16(f);
            CHECK(addr = text(f + 2, n - 2));
            break;
        default:  /* T_COMM, T_CWD: the last of each, from the shape */
            break;
        }
    }
    if (shape.comm >= 0)
        CHECK(comm = text(d + shape.comm, shape.comm_len));
    if (shape.cwd >= 0)
        CHECK(cwd = text(d + shape.cwd, shape.cwd_len));
    unsigned flags = rd16(d + 6);
    /* Event's fields in order (EVENT_FIELDS) */
    PyObject *v[27] = {
        PyLong_FromUnsignedLong(rd16(d + 4)), PyLong_FromUnsignedLong(d[1]),
        PyLong_FromUnsignedLongLong(rd64(d + 16)), PyLong_FromUnsignedLong(rd16(d + 2)),
        PyLong_FromUnsignedLongLong(rd64(d + 8)), PyLong_FromUnsignedLong(rd32(d + 24)),
        PyLong_FromUnsignedLong(rd32(d + 28)), PyLong_FromUnsignedLong(rd32(d + 32)),
        PyLong_FromUnsignedLong(rd32(d + 36)), PyLong_FromUnsignedLongLong(rd64(d + 40)),
        flags & F_HAS_RET ? PyLong_FromLongLong((long long)rd64(d + 48)) : Py_NewRef(Py_None),
        PyLong_FromUnsignedLongLong(rd64(d + 56)),
        Py_BuildValue("(KKKKKK)", rd64(d + 64), rd64(d + 72), rd64(d + 80), rd64(d + 88),
                      rd64(d + 96), rd64(d + 104)),
        PyLong_FromUnsignedLong(flags & ~F_HAS_RET),
        comm ? Py_NewRef(comm) : PyUnicode_New(0, 127), Py_NewRef(cwd ? cwd : Py_None),
        Py_NewRef(paths), Py_NewRef(argv ? argv : Py_None), Py_NewRef(envp ? envp : Py_None),
        Py_NewRef(files), Py_NewRef(out_fds), Py_NewRef(seq), Py_NewRef(data),
        Py_NewRef(cred ? cred : Py_None), Py_NewRef(eps), Py_NewRef(addr ? addr : Py_None),
        PyLong_FromUnsignedLong(addr_family)};
    ev = make(&EventS, v);
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

/* ``t`` must be a slots class whose fields are exactly ``s->names`` (``fields``: the names
 * dataclasses.fields gives, in order), each an object slot and nothing else in the object */
static int take_slots(struct slots *s, PyObject *t, PyObject *fields)
{
    if (!PyType_Check(t) || !PyTuple_Check(fields) || PyTuple_GET_SIZE(fields) != s->n)
        goto bad;
    PyTypeObject *tp = (PyTypeObject *)t;
    if (tp->tp_basicsize != (Py_ssize_t)(sizeof(PyObject) + s->n * sizeof(PyObject *)) ||
        tp->tp_dictoffset || tp->tp_itemsize)
        goto bad;
    for (int i = 0; i < s->n; i++) {
        PyObject *name = PyTuple_GET_ITEM(fields, i);
        if (!PyUnicode_Check(name) || strcmp(PyUnicode_AsUTF8(name), s->names[i]))
            goto bad;
        PyObject *d = PyObject_GetAttr(t, name);
        if (!d)
            return -1;
        int ok = Py_IS_TYPE(d, &PyMemberDescr_Type) &&
                 ((PyMemberDescrObject *)d)->d_member->type == T_OBJECT_EX;
        if (ok)
            s->off[i] = ((PyMemberDescrObject *)d)->d_member->offset;
        Py_DECREF(d);
        if (!ok)
            goto bad;
    }
    Py_XSETREF(s->type, (PyTypeObject *)Py_NewRef(t));
    return 0;
bad:
    PyErr_Format(PyExc_RuntimeError, "setup_event: %R is not the slots dataclass native.c "
                 "builds (update provisor/native/native.c with provisor/events.py)", t);
    return -1;
}

static PyObject *setup_event(PyObject *self, PyObject *args)
{
    PyObject *e, *ef, *f, *ff, *p, *pf, *esc;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOOOOO", &e, &ef, &f, &ff, &p, &pf, &esc))
        return NULL;
    if (take_slots(&EventS, e, ef) < 0 || take_slots(&FileIdS, f, ff) < 0 ||
        take_slots(&EndpointS, p, pf) < 0)
        return NULL;
    Py_XSETREF(escape_fn, Py_NewRef(esc));
    pv_event_type = EventS.type;
    pv_off_seq = EventS.off[21];
    pv_off_payload = EventS.off[22];
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"collect", collect, METH_VARARGS, "layout.scan gathered (see the module docstring)."},
    {"decode", decode, METH_VARARGS, "events.decode of a well-formed payload, else None."},
    {"setup_record", setup_record, METH_O, "setup_record(layout.Record)"},
    {"setup_event", setup_event, METH_VARARGS,
     "setup_event(Event, its fields, FileId, its fields, Endpoint, its fields, escape)"},
    {"setup_sqlite", pv_setup_sqlite, METH_VARARGS, "(see sqlite_rows.c)"},
    {"insert_events", pv_insert_events, METH_VARARGS, "(see sqlite_rows.c)"},
    {"insert_rows", pv_insert_rows, METH_VARARGS, "(see sqlite_rows.c)"},
    {"rows_bin", pv_rows_bin, METH_O, "(see canon.c)"},
    {"seq_payloads", pv_seq_payloads, METH_O, "(see canon.c)"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native",
                                    "The daemon's hot loop in C (provisor/native/native.c).",
                                    -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&module); }
