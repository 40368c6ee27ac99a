/* ClickHouse's value checks on a batch's rows, screened in C.
 *
 * Optional: cdc.sinks.clickhouse.values uses it when it was built. `screen` accepts only
 * values that the checks of cdc.sinks.clickhouse.limits accept on their first test (a date
 * of ten characters within the range, a timestamp whose year is strictly inside it, a
 * decimal ending in a digit, an unbounded decimal that is also short); it returns the
 * positions of every other row, which the Python checks then judge value by value. So
 * the rows it passes are a subset of those Python passes, and the result is the same (a
 * property test compares both on random values).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

enum {
    CHECK_DATE = 0,       /* limits._date */
    CHECK_TIMESTAMP = 1,  /* limits._timestamp */
    CHECK_DECIMAL = 2,    /* limits._bounded_decimal */
    CHECK_UNBOUNDED = 3,  /* limits._unbounded_decimal */
    CHECK_OTHER = 4,      /* every value goes to Python */
};

static int
passes(int kind, const char *value, Py_ssize_t size, Py_ssize_t short_decimal)
{
    switch (kind) {
    case CHECK_DATE:
        return size == 10 && memcmp(value, "1900-01-01", 10) >= 0
               && memcmp(value, "2299-12-31", 10) <= 0;
    case CHECK_TIMESTAMP:
        return size >= 5 && value[4] == '-' && memcmp(value, "1900", 4) > 0
               && memcmp(value, "2299", 4) < 0 && (unsigned char)value[size - 1] <= '9';
    case CHECK_DECIMAL:
        return size >= 1 && (unsigned char)value[size - 1] <= '9';
    case CHECK_UNBOUNDED:
        return size >= 1 && size <= short_decimal && (unsigned char)value[size - 1] <= '9';
    default:
        return 0;
    }
}

/* Whether one row passes: every checked value, and a value in every not-nullable column. */
static int
row_passes(PyObject *values, const long *indexes, const long *kinds, Py_ssize_t checks,
           const long *required, Py_ssize_t nrequired, Py_ssize_t short_decimal)
{
    if (!PyTuple_CheckExact(values)) {
        return 0;
    }
    Py_ssize_t width = PyTuple_GET_SIZE(values);
    for (Py_ssize_t c = 0; c < checks; c++) {
        if (indexes[c] >= width) {
            return 0;
        }
        PyObject *value = PyTuple_GET_ITEM(values, indexes[c]);
        if (value == Py_None) {
            continue;
        }
        if (!PyBytes_CheckExact(value)
            || !passes((int)kinds[c], PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value),
                       short_decimal)) {
            return 0;
        }
    }
    for (Py_ssize_t r = 0; r < nrequired; r++) {
        if (required[r] >= width || PyTuple_GET_ITEM(values, required[r]) == Py_None) {
            return 0;
        }
    }
    return 1;
}

static int
read_indexes(PyObject *tuple, const char *what, long **out, Py_ssize_t *count)
{
    if (!PyTuple_Check(tuple)) {
        PyErr_Format(PyExc_TypeError, "%s must be a tuple", what);
        return -1;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(tuple);
    long *items = PyMem_Malloc(sizeof(long) * (size_t)(n ? n : 1));
    if (items == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        items[i] = PyLong_AsLong(PyTuple_GET_ITEM(tuple, i));
        if ((items[i] == -1 && PyErr_Occurred()) || items[i] < 0) {
            PyMem_Free(items);
            if (!PyErr_Occurred()) {
                PyErr_Format(PyExc_ValueError, "%s must not be negative", what);
            }
            return -1;
        }
    }
    *out = items;
    *count = n;
    return 0;
}

static PyObject *
screen(PyObject *self, PyObject *args)
{
    PyObject *images, *index_tuple, *kind_tuple, *required_tuple;
    Py_ssize_t values_at, short_decimal;
    if (!PyArg_ParseTuple(args, "O!nO!O!O!n:screen", &PyList_Type, &images, &values_at,
                          &PyTuple_Type, &index_tuple, &PyTuple_Type, &kind_tuple,
                          &PyTuple_Type, &required_tuple, &short_decimal)) {
        return NULL;
    }
    long *indexes = NULL, *kinds = NULL, *required = NULL;
    Py_ssize_t checks, nkinds, nrequired;
    PyObject *result = NULL;
    if (read_indexes(index_tuple, "indexes", &indexes, &checks) < 0
        || read_indexes(kind_tuple, "kinds", &kinds, &nkinds) < 0
        || read_indexes(required_tuple, "required", &required, &nrequired) < 0) {
        goto done;
    }
    if (nkinds != checks) {
        PyErr_SetString(PyExc_ValueError, "one kind per checked index");
        goto done;
    }
    result = PyList_New(0);
    if (result == NULL) {
        goto done;
    }
    Py_ssize_t n = PyList_GET_SIZE(images);
    for (Py_ssize_t position = 0; position < n; position++) {
        PyObject *image = PyList_GET_ITEM(images, position);
        PyObject *values = (PyTuple_Check(image) && values_at < PyTuple_GET_SIZE(image))
                               ? PyTuple_GET_ITEM(image, values_at)
                               : NULL;
        if (values != NULL
            && row_passes(values, indexes, kinds, checks, required, nrequired, short_decimal)) {
            continue;
        }
        PyObject *number = PyLong_FromSsize_t(position);
        if (number == NULL || PyList_Append(result, number) < 0) {
            Py_XDECREF(number);
            Py_CLEAR(result);
            goto done;
        }
        Py_DECREF(number);
    }
done:
    PyMem_Free(indexes);
    PyMem_Free(kinds);
    PyMem_Free(required);
    return result;
}

static PyMethodDef methods[] = {
    {"screen", screen, METH_VARARGS,
     "screen(images, values_at, indexes, kinds, required, short_decimal): the positions "
     "of the rows whose values the Python checks must judge."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_screen", "ClickHouse's value checks, screened in C.", -1, methods,
};

PyMODINIT_FUNC
PyInit__screen(void)
{
    return PyModule_Create(&module);
}
