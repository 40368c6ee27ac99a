/* The pgoutput decoder's hot path in C: row-change messages and their TupleData.
 *
 * Optional: cdc.protocol.decoder uses it when it was built and falls back to the same
 * code in Python otherwise. It never raises on malformed input: it returns None, and the
 * Python decoder then decodes the message again to say exactly what is wrong.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* One TupleData at buf[*pos]: the values, with *pos moved past it. NULL without an
 * exception set if it is malformed (cut short, unknown column kind).
 *
 * Column kinds: 'n' NULL -> None, 'u' unchanged TOAST -> `unchanged`, 't' text -> bytes,
 * 'b' binary -> binary(bytes). */
static PyObject *
read_tuple(const unsigned char *buf, Py_ssize_t size, Py_ssize_t *at, PyObject *unchanged,
           PyObject *binary)
{
    Py_ssize_t pos = *at;
    if (pos < 0 || size - pos < 2) {
        return NULL;
    }
    Py_ssize_t ncols = ((Py_ssize_t)buf[pos] << 8) | buf[pos + 1];
    pos += 2;
    PyObject *values = PyTuple_New(ncols);
    if (values == NULL) {
        return NULL;
    }
    for (Py_ssize_t col = 0; col < ncols; col++) {
        if (pos >= size) {
            goto malformed;
        }
        unsigned char kind = buf[pos];
        PyObject *item;
        if (kind == 't' || kind == 'b') {
            if (size - pos < 5) {
                goto malformed;
            }
            Py_ssize_t length = ((Py_ssize_t)buf[pos + 1] << 24) | ((Py_ssize_t)buf[pos + 2] << 16)
                                | ((Py_ssize_t)buf[pos + 3] << 8) | (Py_ssize_t)buf[pos + 4];
            Py_ssize_t start = pos + 5;
            if (length > size - start) {
                goto malformed;
            }
            item = PyBytes_FromStringAndSize((const char *)buf + start, length);
            if (item == NULL) {
                Py_DECREF(values);
                return NULL;
            }
            if (kind == 'b') {
                PyObject *wrapped = PyObject_CallOneArg(binary, item);
                Py_DECREF(item);
                if (wrapped == NULL) {
                    Py_DECREF(values);
                    return NULL;
                }
                item = wrapped;
            }
            pos = start + length;
        }
        else if (kind == 'n') {
            item = Py_NewRef(Py_None);
            pos += 1;
        }
        else if (kind == 'u') {
            item = Py_NewRef(unchanged);
            pos += 1;
        }
        else {
            goto malformed;
        }
        PyTuple_SET_ITEM(values, col, item);
    }
    *at = pos;
    /* Bytes, None, the unchanged sentinel and binary wrappers never refer back to the
     * tuple, so it can be in no reference cycle: the cyclic GC need not track it. */
    PyObject_GC_UnTrack(values);
    return values;

malformed:
    Py_DECREF(values);
    return NULL;
}

/* A message: `type((items...))` for a tuple subclass (a NamedTuple), stealing the items.
 * Like its values, it is in no reference cycle: untracked by the cyclic GC. */
static PyObject *
message(PyObject *type, Py_ssize_t n, PyObject **items)
{
    PyTypeObject *tp = (PyTypeObject *)type;
    PyObject *made = tp->tp_alloc(tp, n);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (made == NULL) {
            Py_XDECREF(items[i]);
        }
        else {
            PyTuple_SET_ITEM(made, i, items[i]);
        }
    }
    if (made != NULL) {
        PyObject_GC_UnTrack(made);
    }
    return made;
}

static uint32_t
uint32_at(const unsigned char *buf)
{
    return ((uint32_t)buf[0] << 24) | ((uint32_t)buf[1] << 16) | ((uint32_t)buf[2] << 8) | buf[3];
}

/* parse_row(insert, update, delete, key, old, unchanged, binary, streaming: bool,
 *           data: bytes) -> Insert | Update | Delete | None
 *
 * One row-change message ('I', 'U' or 'D'): the message type called with (xid,
 * relation_oid, new) for an insert, (xid, relation_oid, old_kind, old, new) for an update
 * and (xid, relation_oid, old_kind, old) for a delete; `key` and `old` are the old kinds
 * of markers 'K' and 'O'. None for anything else or anything malformed (the Python decoder
 * then says what is wrong). The message types and kinds come first, to be bound once. */
static PyObject *
parse_row(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 9 || !PyType_Check(args[0]) || !PyType_Check(args[1]) || !PyType_Check(args[2])
        || !PyBytes_CheckExact(args[8])) {
        PyErr_SetString(PyExc_TypeError, "parse_row(insert, update, delete, key, old, "
                                         "unchanged, binary, streaming, data: bytes)");
        return NULL;
    }
    PyObject *insert_t = args[0], *update_t = args[1], *delete_t = args[2];
    PyObject *key_kind = args[3], *old_kind = args[4], *unchanged = args[5], *binary = args[6];
    int streaming = PyObject_IsTrue(args[7]);
    const unsigned char *buf = (const unsigned char *)PyBytes_AS_STRING(args[8]);
    Py_ssize_t size = PyBytes_GET_SIZE(args[8]);
    if (streaming < 0) {
        return NULL;
    }
    Py_ssize_t head = 1 + (streaming ? 4 : 0) + 4;
    if (size < head + 1 || (buf[0] != 'I' && buf[0] != 'U' && buf[0] != 'D')) {
        Py_RETURN_NONE;
    }
    unsigned char tag = buf[0];
    PyObject *xid = streaming ? PyLong_FromUnsignedLong(uint32_at(buf + 1)) : Py_NewRef(Py_None);
    PyObject *oid = PyLong_FromUnsignedLong(uint32_at(buf + head - 4));
    PyObject *old = NULL, *kind = NULL, *new = NULL;
    Py_ssize_t pos = head + 1;
    unsigned char marker = buf[head];
    if (xid == NULL || oid == NULL) {
        goto fail;
    }
    if ((tag == 'U' || tag == 'D') && (marker == 'K' || marker == 'O')) {
        kind = Py_NewRef(marker == 'K' ? key_kind : old_kind);
        old = read_tuple(buf, size, &pos, unchanged, binary);
        if (old == NULL) {
            goto fail;
        }
        if (tag == 'U') {
            if (pos >= size) {
                goto fail;
            }
            marker = buf[pos++];
        }
    }
    if (tag == 'I' || tag == 'U') {
        if (marker != 'N') {
            goto fail;
        }
        new = read_tuple(buf, size, &pos, unchanged, binary);
        if (new == NULL) {
            goto fail;
        }
    }
    else if (tag != 'D' || old == NULL) {
        goto fail;
    }
    if (pos != size) {
        goto fail;
    }
    if (tag == 'I') {
        PyObject *items[] = {xid, oid, new};
        return message(insert_t, 3, items);
    }
    if (tag == 'U') {
        PyObject *items[] = {xid, oid, kind == NULL ? Py_NewRef(Py_None) : kind,
                             old == NULL ? Py_NewRef(Py_None) : old, new};
        return message(update_t, 5, items);
    }
    PyObject *items[] = {xid, oid, kind, old};
    return message(delete_t, 4, items);

fail:
    Py_XDECREF(xid);
    Py_XDECREF(oid);
    Py_XDECREF(kind);
    Py_XDECREF(old);
    Py_XDECREF(new);
    if (PyErr_Occurred()) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"parse_row", (PyCFunction)(void (*)(void))parse_row, METH_FASTCALL,
     "parse_row(insert, update, delete, key, old, unchanged, binary, streaming, data) -> "
     "message | None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "_speedups",
    .m_doc = "The pgoutput decoder's hot path in C.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModule_Create(&module);
}
