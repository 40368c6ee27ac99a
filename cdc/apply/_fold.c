/* The batcher's hot loop in C: fold received row changes into their tables' rows.
 *
 * Optional: cdc.apply.batch uses it when it was built and folds in Python otherwise. It takes
 * only the common changes (an insert; an update that kept its key and resent every value;
 * a delete) of tables whose layout is the relation's, and stops at the first record it
 * does not take: Python folds that one and calls back. Both give the same rows (a property
 * test folds random transactions both ways).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

enum { INSERT = 0, UPDATE = 1, DELETE = 2, OPS = 3 };

typedef struct {
    PyObject *rows;      /* dict: key tuple -> row image */
    PyObject *positions; /* tuple of key positions (ints) */
    Py_ssize_t *keys;    /* the same, as C integers */
    Py_ssize_t nkeys;
    Py_ssize_t ncols;
} Route;

/* A row image: `image_type((version, deleted, values, inserted))`, a tuple subclass.
 *
 * Images, keys and tombstone values hold only an int, bools and a tuple of a row's values
 * (bytes, None, the unchanged sentinel): they can be in no reference cycle, so the cyclic
 * GC need not track them (it would scan every row of every batch in flight). */
static PyObject *
row_image(PyTypeObject *image_type, PyObject *version, int deleted, PyObject *values,
          int inserted)
{
    PyObject *row = image_type->tp_alloc(image_type, 4);
    if (row == NULL) {
        return NULL;
    }
    PyTuple_SET_ITEM(row, 0, Py_NewRef(version));
    PyTuple_SET_ITEM(row, 1, Py_NewRef(deleted ? Py_True : Py_False));
    PyTuple_SET_ITEM(row, 2, Py_NewRef(values));
    PyTuple_SET_ITEM(row, 3, Py_NewRef(inserted ? Py_True : Py_False));
    PyObject_GC_UnTrack(row);
    return row;
}

static PyObject *
key_of(const Route *route, PyObject *values)
{
    PyObject *key = PyTuple_New(route->nkeys);
    if (key == NULL) {
        return NULL;
    }
    for (Py_ssize_t k = 0; k < route->nkeys; k++) {
        PyTuple_SET_ITEM(key, k, Py_NewRef(PyTuple_GET_ITEM(values, route->keys[k])));
    }
    PyObject_GC_UnTrack(key);
    return key;
}

/* A tombstone's values when the batch has no earlier image: the key, the rest unchanged. */
static PyObject *
key_only(const Route *route, PyObject *old, PyObject *unchanged)
{
    PyObject *values = PyTuple_New(route->ncols);
    if (values == NULL) {
        return NULL;
    }
    for (Py_ssize_t c = 0; c < route->ncols; c++) {
        PyTuple_SET_ITEM(values, c, Py_NewRef(unchanged));
    }
    for (Py_ssize_t k = 0; k < route->nkeys; k++) {
        Py_ssize_t p = route->keys[k];
        PyObject *placeholder = PyTuple_GET_ITEM(values, p);
        PyTuple_SET_ITEM(values, p, Py_NewRef(PyTuple_GET_ITEM(old, p)));
        Py_DECREF(placeholder);
    }
    PyObject_GC_UnTrack(values);
    return values;
}

static int
contains(PyObject *values, PyObject *item)
{
    for (Py_ssize_t c = 0, n = PyTuple_GET_SIZE(values); c < n; c++) {
        if (PyTuple_GET_ITEM(values, c) == item) {
            return 1;
        }
    }
    return 0;
}

/* Routes: per relation index, None (Python folds its changes) or (rows, key positions,
 * column count). Returns the number of routes read, or -1 with an exception set. */
static Py_ssize_t
read_routes(PyObject *routes, Route *out, Py_ssize_t n)
{
    for (Py_ssize_t r = 0; r < n; r++) {
        PyObject *item = PyList_GET_ITEM(routes, r);
        out[r].rows = NULL;
        if (item == Py_None) {
            continue;
        }
        if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 3
            || !PyDict_CheckExact(PyTuple_GET_ITEM(item, 0))
            || !PyTuple_CheckExact(PyTuple_GET_ITEM(item, 1))) {
            PyErr_SetString(PyExc_TypeError, "route: (rows: dict, positions: tuple, ncols)");
            return -1;
        }
        Route *route = &out[r];
        route->positions = PyTuple_GET_ITEM(item, 1);
        route->nkeys = PyTuple_GET_SIZE(route->positions);
        route->ncols = PyLong_AsSsize_t(PyTuple_GET_ITEM(item, 2));
        if (route->ncols == -1 && PyErr_Occurred()) {
            return -1;
        }
        route->keys = PyMem_New(Py_ssize_t, route->nkeys ? route->nkeys : 1);
        if (route->keys == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        route->rows = PyTuple_GET_ITEM(item, 0);
        for (Py_ssize_t k = 0; k < route->nkeys; k++) {
            Py_ssize_t p = PyLong_AsSsize_t(PyTuple_GET_ITEM(route->positions, k));
            if (p < 0 || p >= route->ncols) {
                if (!PyErr_Occurred()) {
                    PyErr_SetString(PyExc_ValueError, "route: key position out of range");
                }
                return -1;
            }
            route->keys[k] = p;
        }
    }
    return n;
}

/* fold(records, start, stop, routes, first_ordinal, commit_high, counts,
 *      insert, update, delete, image, unchanged) -> int
 *
 * Folds records[start:stop] (each (subxid, relation index, message)) into the routes' rows,
 * versioned `commit_high | ordinal` (records[i] has ordinal first_ordinal + i), and adds
 * to counts[3 * relation index + op]. Returns the index of the first record not folded. */
static PyObject *
fold(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 12 || !PyList_CheckExact(args[0]) || !PyList_CheckExact(args[3])
        || !PyList_CheckExact(args[6]) || !PyType_Check(args[7]) || !PyType_Check(args[8])
        || !PyType_Check(args[9]) || !PyType_Check(args[10])) {
        PyErr_SetString(PyExc_TypeError,
                        "fold(records: list, start, stop, routes: list, first_ordinal, "
                        "commit_high, counts: list, insert, update, delete, image, unchanged)");
        return NULL;
    }
    PyObject *records = args[0], *routes = args[3], *commit_high = args[5], *counts = args[6];
    PyTypeObject *insert_t = (PyTypeObject *)args[7], *update_t = (PyTypeObject *)args[8];
    PyTypeObject *delete_t = (PyTypeObject *)args[9], *image_t = (PyTypeObject *)args[10];
    PyObject *unchanged = args[11];
    Py_ssize_t start = PyLong_AsSsize_t(args[1]);
    Py_ssize_t stop = PyLong_AsSsize_t(args[2]);
    Py_ssize_t first = PyLong_AsSsize_t(args[4]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    Py_ssize_t nroutes = PyList_GET_SIZE(routes);
    if (PyList_GET_SIZE(counts) != OPS * nroutes || start < 0
        || stop > PyList_GET_SIZE(records)) {
        PyErr_SetString(PyExc_ValueError, "fold: counts need 3 per route; 0 <= start, stop <= len");
        return NULL;
    }
    Route *table = PyMem_New(Route, nroutes ? nroutes : 1);
    Py_ssize_t *added = PyMem_Calloc(OPS * nroutes + 1, sizeof(Py_ssize_t));
    if (table == NULL || added == NULL) {
        PyMem_Free(table);
        PyMem_Free(added);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t r = 0; r < nroutes; r++) {
        table[r].rows = NULL;
        table[r].keys = NULL;
    }
    int failed = read_routes(routes, table, nroutes) < 0;
    Py_ssize_t i = start;
    for (; !failed && i < stop; i++) {
        PyObject *record = PyList_GET_ITEM(records, i);
        if (!PyTuple_Check(record) || PyTuple_GET_SIZE(record) != 3) {
            break;
        }
        Py_ssize_t index = PyLong_AsSsize_t(PyTuple_GET_ITEM(record, 1));
        if (index < 0 || index >= nroutes) {
            PyErr_Clear();
            break;
        }
        Route *route = &table[index];
        if (route->rows == NULL) {
            break;
        }
        PyObject *message = PyTuple_GET_ITEM(record, 2);
        PyTypeObject *kind = Py_TYPE(message);
        PyObject *values;
        int op;
        if (kind == insert_t && PyTuple_GET_SIZE(message) == 3) {
            op = INSERT;
            values = PyTuple_GET_ITEM(message, 2);
        }
        else if (kind == update_t && PyTuple_GET_SIZE(message) == 5
                 && PyTuple_GET_ITEM(message, 3) == Py_None) {
            op = UPDATE;
            values = PyTuple_GET_ITEM(message, 4);
        }
        else if (kind == delete_t && PyTuple_GET_SIZE(message) == 4) {
            op = DELETE;
            values = PyTuple_GET_ITEM(message, 3);
        }
        else {
            break;
        }
        if (!PyTuple_CheckExact(values) || PyTuple_GET_SIZE(values) != route->ncols) {
            break;
        }
        int toasted = op != DELETE && contains(values, unchanged);
        if (op == UPDATE && toasted) {
            break; /* merged with the earlier image in Python */
        }
        PyObject *key = key_of(route, values);
        if (key == NULL) {
            failed = 1;
            break;
        }
        PyObject *earlier = PyDict_GetItemWithError(route->rows, key); /* borrowed */
        if (earlier == NULL && PyErr_Occurred()) {
            Py_DECREF(key);
            failed = 1;
            break;
        }
        if (op == INSERT && earlier != NULL && toasted) {
            Py_DECREF(key);
            break;
        }
        PyObject *ordinal = PyLong_FromSsize_t(first + i);
        PyObject *version = ordinal == NULL ? NULL : PyNumber_Or(commit_high, ordinal);
        Py_XDECREF(ordinal);
        PyObject *image = NULL;
        if (version != NULL) {
            if (op != DELETE) {
                image = row_image(image_t, version, 0, values, op == INSERT && earlier == NULL);
            }
            else {
                int live = earlier != NULL && PyTuple_Check(earlier)
                           && PyTuple_GET_SIZE(earlier) == 4
                           && PyTuple_GET_ITEM(earlier, 1) == Py_False;
                PyObject *kept = live ? Py_NewRef(PyTuple_GET_ITEM(earlier, 2))
                                      : key_only(route, values, unchanged);
                if (kept != NULL) {
                    image = row_image(image_t, version, 1, kept, 0);
                    Py_DECREF(kept);
                }
            }
            Py_DECREF(version);
        }
        int stored = image != NULL && PyDict_SetItem(route->rows, key, image) == 0;
        Py_DECREF(key);
        Py_XDECREF(image);
        if (!stored) {
            failed = 1;
            break;
        }
        added[OPS * index + op] += 1;
    }
    for (Py_ssize_t c = 0; c < OPS * nroutes; c++) {
        if (added[c] == 0) {
            continue;
        }
        Py_ssize_t before = PyLong_AsSsize_t(PyList_GET_ITEM(counts, c));
        PyObject *total = PyLong_FromSsize_t(before + added[c]);
        if (total == NULL || PyList_SetItem(counts, c, total) < 0) {
            failed = 1;
            break;
        }
    }
    for (Py_ssize_t r = 0; r < nroutes; r++) {
        PyMem_Free(table[r].keys);
    }
    PyMem_Free(table);
    PyMem_Free(added);
    if (failed) {
        return NULL;
    }
    return PyLong_FromSsize_t(i);
}

static PyMethodDef methods[] = {
    {"fold", (PyCFunction)(void (*)(void))fold, METH_FASTCALL,
     "fold(records, start, stop, routes, first_ordinal, commit_high, counts, insert, update, "
     "delete, image, unchanged) -> index of the first record not folded"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "_fold",
    .m_doc = "The batcher's hot loop in C.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__fold(void)
{
    return PyModule_Create(&module);
}
