/* A batch's rows written into SQLite by the SQLite C API on the store's own connection (so
 * inside its transaction): the SQLite backend's hot path (store/sqlite.py). sqlite3's
 * executemany of the same rows is the specification (tests/test_native.py holds the tables
 * equal); it spends 2-3 us a row on its own bookkeeping, three times what SQLite takes.
 *
 *   setup_sqlite(Connection, probe, probe_path, sqlite3_module_file, Error) -> bool
 *       Whether insert_events may use the connections of this Python: it reads the sqlite3*
 *       handle of a ``sqlite3.Connection`` where CPython's _sqlite3 keeps it (the first field
 *       after the object head, from pysqlite 2 to CPython 3.14), and only after checking,
 *       on ``probe`` (a connection to the file ``probe_path``), that the handle found there
 *       names that file, and that _sqlite3 and this module call one and the same SQLite
 *       library. False when anything differs: the caller then writes rows with executemany.
 *   insert_events(conn, sql, events, names) -> [index, ...]
 *       Runs ``sql`` (the events INSERT, 18 parameters) for each Event of the list, inside
 *       the caller's transaction, binding the row schema.event_row makes of it straight from
 *       its payload; ``names`` is the syscall name by number. Returns the indices of the
 *       events it did not write (a payload native.c would not decode, a number past
 *       ``names``), for the caller to write from Python. A failed step raises ``Error``.
 *   insert_rows(conn, sql, rows) -> int
 *       Runs ``sql`` for each tuple of the list, in order, binding int (64-bit), str, bytes,
 *       None and float as sqlite3 binds them; stops at the first row holding anything else
 *       (or a row of the wrong length) and returns its index (len(rows) when all went), for
 *       the caller to write the rest with executemany: the order of the rows is kept.
 */
#include "native.h"

#include <dlfcn.h>
#include <sqlite3.h>
#include <stdlib.h>

static PyTypeObject *ConnType;
static PyObject *ErrorType;

static sqlite3 *handle_of(PyObject *conn)
{
    return *(sqlite3 **)((char *)conn + sizeof(PyObject));
}

PyObject *pv_setup_sqlite(PyObject *self, PyObject *args)
{
    PyObject *type, *probe, *err;
    const char *path, *modfile;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOssO", &type, &probe, &path, &modfile, &err))
        return NULL;
    if (!PyType_Check(type) || !PyObject_TypeCheck(probe, (PyTypeObject *)type))
        Py_RETURN_FALSE;
    /* one library: the symbol _sqlite3 resolves is the one this module calls */
    void *h = dlopen(modfile, RTLD_NOW | RTLD_NOLOAD);
    if (!h)
        Py_RETURN_FALSE;
    void *theirs = dlsym(h, "sqlite3_db_filename");
    dlclose(h);
    if (theirs != (void *)sqlite3_db_filename)
        Py_RETURN_FALSE;
    sqlite3 *db = handle_of(probe);
    const char *name = db ? sqlite3_db_filename(db, "main") : NULL;
    if (!name || strcmp(name, path))
        Py_RETURN_FALSE;
    Py_XSETREF(ConnType, (PyTypeObject *)Py_NewRef(type));
    Py_XSETREF(ErrorType, Py_NewRef(err));
    Py_RETURN_TRUE;
}

/* a growable byte buffer (the joined paths, an escaped text) */
struct buf {
    char *p;
    size_t n, cap;
};

static int put(struct buf *b, const void *s, size_t n)
{
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n)
            cap *= 2;
        char *q = realloc(b->p, cap);
        if (!q) {
            PyErr_NoMemory();
            return -1;
        }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    return 0;
}

/* guest text appended to ``b``: its bytes when plain, else guesttext.escape's UTF-8 */
static int put_text(struct buf *b, const uint8_t *p, Py_ssize_t n)
{
    if (pv_plain(p, n))
        return put(b, p, (size_t)n);
    PyObject *s = pv_escape(p, n);
    if (!s)
        return -1;
    Py_ssize_t len;
    const char *u = PyUnicode_AsUTF8AndSize(s, &len);
    int rc = u ? put(b, u, (size_t)len) : -1;
    Py_DECREF(s);
    return rc;
}

/* bind guest text: plain bytes in place (they outlive the step), an escape as a copy */
static int bind_text(sqlite3_stmt *st, int col, const uint8_t *p, Py_ssize_t n,
                     struct buf *tmp)
{
    if (pv_plain(p, n))
        return sqlite3_bind_text(st, col, (const char *)p, (int)n, SQLITE_STATIC);
    tmp->n = 0;
    if (put_text(tmp, p, n) < 0)
        return -1;
    return sqlite3_bind_text(st, col, tmp->p, (int)tmp->n, SQLITE_TRANSIENT);
}

#define BIND(x) do { if ((x) != SQLITE_OK) goto bind_failed; } while (0)

PyObject *pv_insert_events(PyObject *self, PyObject *args)
{
    PyObject *conn, *events, *names;
    const char *sql;
    (void)self;
    if (!PyArg_ParseTuple(args, "OsO!O!", &conn, &sql, &PyList_Type, &events, &PyTuple_Type,
                          &names))
        return NULL;
    if (!ConnType || !pv_event_type || !PyObject_TypeCheck(conn, ConnType)) {
        PyErr_SetString(PyExc_RuntimeError, "insert_events: setup_sqlite() did not accept "
                        "this connection's type");
        return NULL;
    }
    sqlite3 *db = handle_of(conn);
    if (!db) {
        PyErr_SetString(ErrorType, "Cannot operate on a closed database.");
        return NULL;
    }
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK ||
        sqlite3_bind_parameter_count(st) != 18) {
        PyErr_Format(ErrorType, "insert_events: %s", st ? "not the events INSERT"
                                                        : sqlite3_errmsg(db));
        sqlite3_finalize(st);
        return NULL;
    }
    PyObject *left = PyList_New(0);
    struct buf tmp = {0}, paths = {0}, comm = {0}, cwd = {0};
    Py_ssize_t nnames = PyTuple_GET_SIZE(names);
    for (Py_ssize_t i = 0; left && i < PyList_GET_SIZE(events); i++) {
        PyObject *ev = PyList_GET_ITEM(events, i);
        PyObject *seqo = NULL, *data = NULL;
        if (Py_IS_TYPE(ev, pv_event_type)) {
            seqo = *(PyObject **)((char *)ev + pv_off_seq);
            data = *(PyObject **)((char *)ev + pv_off_payload);
        }
        struct pv_shape s;
        long long seq = seqo && PyLong_CheckExact(seqo) ? PyLong_AsLongLong(seqo) : -1;
        if (seq == -1 && PyErr_Occurred())
            PyErr_Clear();  /* past 64 bits: Python's row and executemany decide */
        const uint8_t *d = data && PyBytes_CheckExact(data)
                               ? (const uint8_t *)PyBytes_AS_STRING(data) : NULL;
        unsigned nr = d && PyBytes_GET_SIZE(data) >= FIXED_SIZE ? rd16(d + 4) : 0;
        if (seq < 0 || !d || !pv_valid(d, PyBytes_GET_SIZE(data), &s) || nr >= nnames ||
            !PyUnicode_Check(PyTuple_GET_ITEM(names, nr))) {
            PyObject *ix = PyLong_FromSsize_t(i);
            if (!ix || PyList_Append(left, ix) < 0)
                Py_CLEAR(left);
            Py_XDECREF(ix);
            continue;
        }
        Py_ssize_t end = PyBytes_GET_SIZE(data);
        Py_ssize_t nlen;
        const char *name = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(names, nr), &nlen);
        if (!name) {
            Py_CLEAR(left);
            break;
        }
        unsigned flags = rd16(d + 6);
        uint64_t entry = rd64(d + 8);
        BIND(sqlite3_bind_int64(st, 1, seq));
        BIND(sqlite3_bind_int64(st, 2, (sqlite3_int64)rd64(d + 16)));
        BIND(sqlite3_bind_int64(st, 3, rd16(d + 2)));
        BIND(sqlite3_bind_text(st, 4, d[1] ? "exit" : "entry", -1, SQLITE_STATIC));
        BIND(entry ? sqlite3_bind_int64(st, 5, (sqlite3_int64)entry) : sqlite3_bind_null(st, 5));
        BIND(sqlite3_bind_int64(st, 6, nr));
        BIND(sqlite3_bind_text(st, 7, name, (int)nlen, SQLITE_STATIC));
        BIND(sqlite3_bind_int64(st, 8, rd32(d + 24)));
        BIND(sqlite3_bind_int64(st, 9, rd32(d + 28)));
        BIND(sqlite3_bind_int64(st, 10, rd32(d + 32)));
        BIND(sqlite3_bind_int64(st, 11, rd32(d + 36)));
        BIND(sqlite3_bind_int64(st, 12, (sqlite3_int64)rd64(d + 40)));
        /* an escaped text is copied by its bind; comm and cwd keep buffers of their own */
        if (s.comm < 0)
            BIND(sqlite3_bind_text(st, 13, "", 0, SQLITE_STATIC));
        else
            BIND(bind_text(st, 13, d + s.comm, s.comm_len, &comm));
        if (s.cwd < 0)
            BIND(sqlite3_bind_null(st, 14));
        else
            BIND(bind_text(st, 14, d + s.cwd, s.cwd_len, &cwd));
        if (!s.npaths) {
            BIND(sqlite3_bind_null(st, 15));
        } else {
            paths.n = 0;
            Py_ssize_t k = 0;
            for (Py_ssize_t off = FIXED_SIZE; off < end;) {  /* every field fits: pv_valid */
                Py_ssize_t n = rd16(d + off + 1);
                if (d[off] == T_PATH && ((k++ && put(&paths, "\n", 1) < 0) ||
                                         put_text(&paths, d + off + 3, n) < 0))
                    goto bind_failed;
                off += 3 + n;
            }
            BIND(sqlite3_bind_text(st, 15, paths.n ? paths.p : "", (int)paths.n,
                                   SQLITE_STATIC));
        }
        BIND(flags & F_HAS_RET ? sqlite3_bind_int64(st, 16, (sqlite3_int64)rd64(d + 48))
                               : sqlite3_bind_null(st, 16));
        BIND(sqlite3_bind_int64(st, 17, flags & ~F_HAS_RET));
        BIND(sqlite3_bind_blob(st, 18, d, (int)end, SQLITE_STATIC));
        if (sqlite3_step(st) != SQLITE_DONE) {
            PyErr_Format(ErrorType, "%s", sqlite3_errmsg(db));
            Py_CLEAR(left);
        }
        sqlite3_reset(st);
        continue;
    bind_failed:
        if (!PyErr_Occurred())
            PyErr_Format(ErrorType, "%s", sqlite3_errmsg(db));
        Py_CLEAR(left);
    }
    sqlite3_finalize(st);
    free(tmp.p);
    free(paths.p);
    free(comm.p);
    free(cwd.p);
    return left;
}

/* one value as sqlite3 binds it; 1 when it is not a type bound here (the caller stops) */
static int bind_value(sqlite3_stmt *st, int col, PyObject *v, int *rc)
{
    if (v == Py_None) {
        *rc = sqlite3_bind_null(st, col);
    } else if (PyLong_Check(v)) {
        int over;
        long long x = PyLong_AsLongLongAndOverflow(v, &over);
        if (over || (x == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return 1;  /* sqlite3 raises OverflowError: its message, from executemany */
        }
        *rc = sqlite3_bind_int64(st, col, x);
    } else if (PyUnicode_Check(v)) {
        Py_ssize_t n;
        const char *u = PyUnicode_AsUTF8AndSize(v, &n);
        if (!u) {
            PyErr_Clear();
            return 1;
        }
        *rc = sqlite3_bind_text(st, col, u, (int)n, SQLITE_STATIC);
    } else if (PyBytes_CheckExact(v)) {
        *rc = sqlite3_bind_blob(st, col, PyBytes_AS_STRING(v), (int)PyBytes_GET_SIZE(v),
                                SQLITE_STATIC);
    } else if (PyFloat_CheckExact(v)) {
        *rc = sqlite3_bind_double(st, col, PyFloat_AS_DOUBLE(v));
    } else {
        return 1;
    }
    return 0;
}

PyObject *pv_insert_rows(PyObject *self, PyObject *args)
{
    PyObject *conn, *rows;
    const char *sql;
    (void)self;
    if (!PyArg_ParseTuple(args, "OsO!", &conn, &sql, &PyList_Type, &rows))
        return NULL;
    if (!ConnType || !PyObject_TypeCheck(conn, ConnType)) {
        PyErr_SetString(PyExc_RuntimeError, "insert_rows: setup_sqlite() did not accept "
                        "this connection's type");
        return NULL;
    }
    sqlite3 *db = handle_of(conn);
    if (!db) {
        PyErr_SetString(ErrorType, "Cannot operate on a closed database.");
        return NULL;
    }
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK || !st) {
        PyErr_Format(ErrorType, "insert_rows: %s", sqlite3_errmsg(db));
        sqlite3_finalize(st);
        return NULL;
    }
    int ncol = sqlite3_bind_parameter_count(st);
    Py_ssize_t i = 0, n = PyList_GET_SIZE(rows);
    for (; i < n; i++) {
        PyObject *row = PyList_GET_ITEM(rows, i);
        if (!PyTuple_Check(row) || PyTuple_GET_SIZE(row) != ncol)
            break;
        int stop = 0, rc = SQLITE_OK;
        for (int c = 0; c < ncol && !stop && rc == SQLITE_OK; c++)
            stop = bind_value(st, c + 1, PyTuple_GET_ITEM(row, c), &rc);
        if (stop) {
            sqlite3_clear_bindings(st);
            break;
        }
        if (rc != SQLITE_OK || sqlite3_step(st) != SQLITE_DONE) {
            PyErr_Format(ErrorType, "%s", sqlite3_errmsg(db));
            sqlite3_finalize(st);
            return NULL;
        }
        sqlite3_reset(st);
    }
    sqlite3_finalize(st);
    return PyLong_FromSsize_t(i);
}
