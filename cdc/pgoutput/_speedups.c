/* The pgoutput decoder's hot loop in C: one TupleData into a tuple of Python values.
 *
 * Optional: cdc.pgoutput.decoder uses it when it was built and falls back to the same
 * loop in Python otherwise. It never raises on malformed input: it returns None, and the
 * Python parser then parses the tuple again to say exactly what is wrong.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* parse_tuple(data: bytes, pos: int, unchanged, binary) -> (tuple, int) | None
 *
 * Column kinds: 'n' NULL -> None, 'u' unchanged TOAST -> `unchanged`, 't' text -> bytes,
 * 'b' binary -> binary(bytes). Returns the values and the offset after the tuple. */
static PyObject *
parse_tuple(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyBytes_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "parse_tuple(data: bytes, pos, unchanged, binary)");
        return NULL;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred()) {
        return NULL;
    }
    const unsigned char *buf = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]);
    PyObject *unchanged = args[2];
    PyObject *binary = args[3];
    if (pos < 0 || size - pos < 2) {
        Py_RETURN_NONE;
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
    return Py_BuildValue("(Nn)", values, pos);

malformed:
    Py_DECREF(values);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"parse_tuple", (PyCFunction)(void (*)(void))parse_tuple, METH_FASTCALL,
     "parse_tuple(data, pos, unchanged, binary) -> (values, end) | None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "_speedups",
    .m_doc = "The pgoutput decoder's hot loop in C.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModule_Create(&module);
}
