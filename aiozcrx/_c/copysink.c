/*
 * aiozcrx._fastpath, CopySink: feeds a protocol that takes bytes, not views (the
 * drop-in loop's default: aiohttp, uvicorn and every other stock protocol).
 *
 * As a sink called from Python (a backlog drained after a pause, the socket
 * engine) it is `copied[0] += len(view); data_received(bytes(view))`. The
 * dispatcher recognises the type and skips the view altogether: it copies the
 * completion's bytes straight out of the buffer, gives the buffer back at once and
 * calls data_received itself. Per delivery that saves making (or reusing) a
 * memoryview and a Python frame, which matters where deliveries are small
 * (small HTTP requests).
 *
 * With a context (contextvars.Context; the transport's: where its connection was
 * made) data_received runs in it, as the base loops run a transport's reads in a
 * context of its own; without (None), in the caller's.
 *
 * Not compiled on its own: fastpath.c #includes it, so everything stays static in
 * one translation unit.
 */

typedef struct {
    PyObject_HEAD
    PyObject *data_received;    /* the protocol's bound method */
    PyObject *copied;           /* the Receiver's one-item list: bytes copied so far */
    PyObject *context;          /* contextvars.Context data_received runs in, or NULL */
} CopySink;

static PyTypeObject CopySinkType;

static int
CopySink_init(CopySink *s, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"data_received", "copied", "context", NULL};
    PyObject *fn, *copied, *context = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO!|O", kwlist, &fn, &PyList_Type, &copied,
                                     &context))
        return -1;
    if (context != Py_None && !PyContext_CheckExact(context)) {
        PyErr_SetString(PyExc_TypeError, "CopySink: context must be a contextvars.Context or None");
        return -1;
    }
    if (!PyCallable_Check(fn)) {
        PyErr_SetString(PyExc_TypeError, "CopySink: data_received must be callable");
        return -1;
    }
    if (PyList_GET_SIZE(copied) != 1) {
        PyErr_SetString(PyExc_ValueError, "CopySink: copied must be a one-item list");
        return -1;
    }
    Py_INCREF(fn);
    Py_XSETREF(s->data_received, fn);
    Py_INCREF(copied);
    Py_XSETREF(s->copied, copied);
    Py_XSETREF(s->context, context == Py_None ? NULL : Py_NewRef(context));
    return 0;
}

/* data_received(b) in the sink's context. A context already entered (a delivery
 * from inside a callback that runs in it: none does today) is not entered again:
 * the call then runs where it is, which is that context already. */
static PyObject *
copysink_deliver(CopySink *s, PyObject *b)
{
    PyObject *ctx = s->context;
    if (ctx && PyContext_Enter(ctx) < 0) {
        PyErr_Clear();
        ctx = NULL;
    }
    PyObject *r = PyObject_CallOneArg(s->data_received, b);
    if (ctx && PyContext_Exit(ctx) < 0) {
        Py_XDECREF(r);
        return NULL;
    }
    return r;
}

/* copied[0] += n; never fails the delivery (a counter that cannot be updated is
 * left as it was) */
static void
copysink_count(CopySink *s, Py_ssize_t n)
{
    if (!s->copied)
        return;     /* made without __init__, or cleared */
    PyObject *old = PyList_GET_ITEM(s->copied, 0);
    PyObject *add = PyLong_FromSsize_t(n);
    PyObject *sum = add ? PyNumber_Add(old, add) : NULL;
    Py_XDECREF(add);
    if (sum)
        PyList_SetItem(s->copied, 0, sum);   /* steals sum, drops old */
    else
        PyErr_Clear();
}

/* The dispatcher's path: bytes from (ptr, n), which the caller may reuse as soon
 * as this returns. New reference, or NULL with an exception set. */
static PyObject *
copysink_copy(CopySink *s, const char *ptr, Py_ssize_t n)
{
    PyObject *b = PyBytes_FromStringAndSize(ptr, n);
    if (b)
        copysink_count(s, n);
    return b;
}

static PyObject *
CopySink_call(CopySink *s, PyObject *args, PyObject *kw)
{
    PyObject *view;
    if (!PyArg_ParseTuple(args, "O:CopySink", &view))
        return NULL;
    if (!s->data_received) {
        PyErr_SetString(PyExc_RuntimeError, "CopySink is not initialised");
        return NULL;
    }
    Py_buffer pb;
    if (PyObject_GetBuffer(view, &pb, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *b = copysink_copy(s, pb.buf, pb.len);
    PyBuffer_Release(&pb);
    if (!b)
        return NULL;
    PyObject *r = copysink_deliver(s, b);
    Py_DECREF(b);
    return r;
}

static int
CopySink_traverse(CopySink *s, visitproc visit, void *arg)
{
    Py_VISIT(s->data_received);
    Py_VISIT(s->copied);
    Py_VISIT(s->context);
    return 0;
}

static int
CopySink_clear(CopySink *s)
{
    Py_CLEAR(s->data_received);
    Py_CLEAR(s->copied);
    Py_CLEAR(s->context);
    return 0;
}

static void
CopySink_dealloc(CopySink *s)
{
    PyObject_GC_UnTrack(s);
    CopySink_clear(s);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static PyObject *
CopySink_get_data_received(CopySink *s, void *c)
{
    PyObject *fn = s->data_received ? s->data_received : Py_None;
    Py_INCREF(fn);
    return fn;
}

static PyGetSetDef CopySink_getset[] = {
    {"data_received", (getter)CopySink_get_data_received, NULL, "the protocol method fed", NULL},
    {NULL},
};

static PyTypeObject CopySinkType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aiozcrx._fastpath.CopySink",
    .tp_basicsize = sizeof(CopySink),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)CopySink_init,
    .tp_call = (ternaryfunc)CopySink_call,
    .tp_traverse = (traverseproc)CopySink_traverse,
    .tp_clear = (inquiry)CopySink_clear,
    .tp_dealloc = (destructor)CopySink_dealloc,
    .tp_getset = CopySink_getset,
    .tp_doc = "CopySink(data_received, copied, context=None): data_received(bytes(view)) "
              "(in context, a contextvars.Context, when given), counting copied[0].",
};
