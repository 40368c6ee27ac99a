/* The row text of a table batch in C: one COPY text line per complete row.
 *
 * Optional: cdc.apply.rowtext uses it when it was built and makes the lines in Python
 * otherwise; both give the same lines, in the same order (a property test compares them on
 * random rows). A line is the row's values (escaped: backslash, newline, carriage return
 * and tab; NULL as \N), its version, its deleted flag (0 or 1) and its commit time's text
 * (\N if the batch has none), tab-separated, with a newline.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

typedef struct {
    char *data;
    Py_ssize_t len;
    Py_ssize_t cap;
} Buffer;

static int
reserve(Buffer *buffer, Py_ssize_t more)
{
    if (buffer->len + more <= buffer->cap) {
        return 0;
    }
    Py_ssize_t cap = buffer->cap ? buffer->cap : 512;
    while (cap < buffer->len + more) {
        cap *= 2;
    }
    char *data = PyMem_Realloc(buffer->data, (size_t)cap);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    buffer->data = data;
    buffer->cap = cap;
    return 0;
}

static int
put(Buffer *buffer, const char *bytes, Py_ssize_t size)
{
    if (reserve(buffer, size) < 0) {
        return -1;
    }
    memcpy(buffer->data + buffer->len, bytes, (size_t)size);
    buffer->len += size;
    return 0;
}

static int
put_escaped(Buffer *buffer, const char *bytes, Py_ssize_t size)
{
    /* Most values need no escape: four vectorised scans and a copy beat a loop per byte. */
    size_t n = (size_t)size;
    if (!memchr(bytes, '\\', n) && !memchr(bytes, '\n', n) && !memchr(bytes, '\r', n)
        && !memchr(bytes, '\t', n)) {
        return put(buffer, bytes, size);
    }
    if (reserve(buffer, 2 * size) < 0) {
        return -1;
    }
    char *out = buffer->data + buffer->len;
    for (Py_ssize_t i = 0; i < size; i++) {
        char c = bytes[i];
        switch (c) {
        case '\\': *out++ = '\\'; *out++ = '\\'; break;
        case '\n': *out++ = '\\'; *out++ = 'n'; break;
        case '\r': *out++ = '\\'; *out++ = 'r'; break;
        case '\t': *out++ = '\\'; *out++ = 't'; break;
        default: *out++ = c;
        }
    }
    buffer->len = out - buffer->data;
    return 0;
}

enum { COMPLETE = 0, INCOMPLETE = 1, OTHER = 2 };

/* What a row's values are: all bytes or NULL (COMPLETE), with an unchanged value
 * (INCOMPLETE), or with a value of another kind (OTHER: left to Python). */
static int
kind_of(PyObject *values, PyObject *unchanged, int *has_null)
{
    int other = 0;
    *has_null = 0;
    for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(values); j++) {
        PyObject *value = PyTuple_GET_ITEM(values, j);
        if (PyBytes_CheckExact(value)) {
            continue;
        }
        if (value == Py_None) {
            *has_null = 1;
        } else if (value == unchanged) {
            return INCOMPLETE;
        } else {
            other = 1;
        }
    }
    return other ? OTHER : COMPLETE;
}

/* The line of a complete row into `buffer`; -1 with an exception set on failure. */
static int
line_of(Buffer *buffer, PyObject *image, PyObject *values, PyObject *times, PyObject *shift)
{
    buffer->len = 0;
    for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(values); j++) {
        PyObject *value = PyTuple_GET_ITEM(values, j);
        if (j > 0 && put(buffer, "\t", 1) < 0) {
            return -1;
        }
        int failed = value == Py_None
            ? put(buffer, "\\N", 2)
            : put_escaped(buffer, PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value));
        if (failed < 0) {
            return -1;
        }
    }
    PyObject *version = PyTuple_GET_ITEM(image, 0);
    int deleted = PyObject_IsTrue(PyTuple_GET_ITEM(image, 1));
    if (deleted < 0) {
        return -1;
    }
    PyObject *commit = PyNumber_Rshift(version, shift);
    if (commit == NULL) {
        return -1;
    }
    /* The version in decimal: (commit << 64) | ordinal, both halves unsigned 64-bit. */
    unsigned long long high = PyLong_AsUnsignedLongLong(commit);
    unsigned long long low = PyLong_AsUnsignedLongLongMask(version);
    if (PyErr_Occurred()) {
        Py_DECREF(commit);
        return -1;
    }
    unsigned __int128 number = ((unsigned __int128)high << 64) | low;
    char digits[48];
    char *first = digits + sizeof(digits);
    do {
        *--first = (char)('0' + (int)(number % 10));
        number /= 10;
    } while (number);
    int failed = put(buffer, "\t", 1) < 0
        || put(buffer, first, digits + sizeof(digits) - first) < 0
        || put(buffer, deleted ? "\t1\t" : "\t0\t", 3) < 0;
    PyObject *time = failed ? NULL : PyDict_GetItemWithError(times, commit);
    Py_DECREF(commit);
    if (failed) {
        return -1;
    }
    if (time == NULL) {
        if (PyErr_Occurred()) {
            return -1;
        }
        failed = put(buffer, "\\N", 2);
    } else if (PyBytes_Check(time)) {
        failed = put(buffer, PyBytes_AS_STRING(time), PyBytes_GET_SIZE(time));
    } else {
        PyErr_SetString(PyExc_TypeError, "a commit time's text must be bytes");
        return -1;
    }
    return failed < 0 ? -1 : put(buffer, "\n", 1);
}

static int
append_line(PyObject *lines, PyObject *images, Buffer *buffer, PyObject *image)
{
    PyObject *line = PyBytes_FromStringAndSize(buffer->data, buffer->len);
    if (line == NULL) {
        return -1;
    }
    int failed = PyList_Append(lines, line) < 0 || PyList_Append(images, image) < 0;
    Py_DECREF(line);
    return failed ? -1 : 0;
}

/* row_lines(rows, times, shift, unchanged) -> (lines, images, incomplete keys) or None.
 *
 * `rows`: an iterable of (key, image) pairs, an image a tuple (version, deleted, values,
 * ...); `times`: the commit time's text by commit LSN (`version >> shift`). Rows without a
 * NULL come first, then those with one, each in the order given (as the Python code gives
 * them). None if a value is neither bytes, None nor `unchanged`: Python says what it is. */
static PyObject *
row_lines(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "row_lines(rows, times, shift, unchanged)");
        return NULL;
    }
    PyObject *times = args[1], *shift = args[2], *unchanged = args[3];
    if (!PyDict_Check(times)) {
        PyErr_SetString(PyExc_TypeError, "times must be a dict");
        return NULL;
    }
    if (PyLong_AsLong(shift) != 64) {  /* versions are (commit LSN << 64) | ordinal */
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ValueError, "row_lines: shift must be 64");
        }
        return NULL;
    }
    PyObject *iterator = PyObject_GetIter(args[0]);
    if (iterator == NULL) {
        return NULL;
    }
    PyObject *lines = PyList_New(0), *images = PyList_New(0), *incomplete = PyList_New(0);
    PyObject *null_lines = PyList_New(0), *null_images = PyList_New(0);
    PyObject *result = NULL, *item;
    Buffer buffer = {NULL, 0, 0};
    if (!lines || !images || !incomplete || !null_lines || !null_images) {
        goto done;
    }
    while ((item = PyIter_Next(iterator)) != NULL) {
        PyObject *image = PyTuple_Check(item) && PyTuple_GET_SIZE(item) == 2
            ? PyTuple_GET_ITEM(item, 1) : NULL;
        PyObject *values = image != NULL && PyTuple_Check(image) && PyTuple_GET_SIZE(image) >= 3
            ? PyTuple_GET_ITEM(image, 2) : NULL;
        if (values == NULL || !PyTuple_Check(values)) {
            Py_DECREF(item);
            PyErr_SetString(PyExc_TypeError, "rows must be (key, row image) pairs");
            goto done;
        }
        int has_null, failed;
        switch (kind_of(values, unchanged, &has_null)) {
        case INCOMPLETE:
            failed = PyList_Append(incomplete, PyTuple_GET_ITEM(item, 0));
            break;
        case OTHER:
            Py_DECREF(item);
            result = Py_NewRef(Py_None);
            goto done;
        default:
            failed = line_of(&buffer, image, values, times, shift) < 0
                || append_line(has_null ? null_lines : lines, has_null ? null_images : images,
                               &buffer, image) < 0;
        }
        Py_DECREF(item);
        if (failed) {
            goto done;
        }
    }
    if (PyErr_Occurred()) {
        goto done;
    }
    Py_ssize_t end = PyList_GET_SIZE(lines);
    if (PyList_SetSlice(lines, end, end, null_lines) < 0
        || PyList_SetSlice(images, end, end, null_images) < 0) {
        goto done;
    }
    result = PyTuple_Pack(3, lines, images, incomplete);
done:
    PyMem_Free(buffer.data);
    Py_DECREF(iterator);
    Py_XDECREF(lines);
    Py_XDECREF(images);
    Py_XDECREF(incomplete);
    Py_XDECREF(null_lines);
    Py_XDECREF(null_images);
    return result;
}

static PyMethodDef methods[] = {
    {"row_lines", (PyCFunction)(void (*)(void))row_lines, METH_FASTCALL,
     "The COPY text lines of a table batch's complete rows, and its incomplete keys."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_rowtext", "The row text of a table batch in C.", -1, methods,
};

PyMODINIT_FUNC
PyInit__rowtext(void)
{
    return PyModule_Create(&module);
}
