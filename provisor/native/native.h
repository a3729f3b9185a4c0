/* What native.c (the decoder) shares with sqlite_rows.c (the events-row writer): one
 * validation of an EVENT payload, so both accept exactly the same payloads. */
#ifndef PV_NATIVE_H
#define PV_NATIVE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* provisor/events.py */
#define EVENT_VERSION 1
#define FIXED_SIZE 112
#define F_HAS_RET 1
enum { T_COMM = 1, T_CWD, T_PATH, T_ARGV, T_ENVP, T_FILE, T_OUTFD, T_CRED, T_SOCK, T_ADDR };
#define MAX_SOCK_ADDR 108
#define SOCK_SIZE 24

static inline uint16_t rd16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t rd64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* the fields of a valid payload that the events row needs (offsets into the payload) */
struct pv_shape {
    Py_ssize_t comm, comm_len;  /* the last COMM field, comm = -1 when none */
    Py_ssize_t cwd, cwd_len;    /* the last CWD field, cwd = -1 when none */
    Py_ssize_t npaths;
};

/* 1 when ``d[0:end]`` is a payload provisor/events.py ``decode_py`` accepts and the
 * native decoder builds, 0 when not (then the Python code decides) */
int pv_valid(const uint8_t *d, Py_ssize_t end, struct pv_shape *s);

/* guest text (provisor/guesttext.py ``escape``): 1 when the bytes are their own text */
static inline int pv_plain(const uint8_t *p, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++)
        if (p[i] < 0x20 || p[i] > 0x7e || p[i] == '\\')
            return 0;
    return 1;
}

/* guesttext.escape through the Python function (the one definition of the escapes) */
PyObject *pv_escape(const uint8_t *p, Py_ssize_t n);

/* module-level setup of the writer (sqlite_rows.c), and its entry point */
PyObject *pv_setup_sqlite(PyObject *self, PyObject *args);
PyObject *pv_insert_events(PyObject *self, PyObject *args);
PyObject *pv_insert_rows(PyObject *self, PyObject *args);
/* the canonical row encoding of the hash chain (canon.c) */
PyObject *pv_rows_bin(PyObject *self, PyObject *rows);
PyObject *pv_seq_payloads(PyObject *self, PyObject *items);
/* the Event type's slot offsets of ``seq`` and ``payload`` (set by setup_event) */
extern PyTypeObject *pv_event_type;
extern Py_ssize_t pv_off_seq, pv_off_payload;

#endif
