"""Stand-in for modules/errors.py @ A1111 v1.10.1 (82a973c).

Same signatures as upstream; additionally every report()/display() is appended to
`reports` so tests can assert on it (upstream only prints to stderr and keeps the
last 5 exceptions in `exception_records`).
"""

import sys
import textwrap
import traceback

# mirrors modules/errors.py @ v1.10.1 (82a973c): exception_records (last 5 formatted exceptions)
exception_records = []

# stand-in only: every message passed to report()/display(), in order, as dicts
# {"message": str, "exc_info": bool, "exception": BaseException | None}
reports = []


# mirrors modules/errors.py @ v1.10.1 (82a973c): format_traceback / format_exception / record_exception
def format_traceback(tb):
    return [[f"{x.filename}, line {x.lineno}, {x.name}", x.line] for x in traceback.extract_tb(tb)]


def format_exception(e, tb):
    return {"exception": str(e), "traceback": format_traceback(tb)}


def record_exception():
    _, e, tb = sys.exc_info()
    if e is None:
        return

    if exception_records and exception_records[-1] == e:
        return

    exception_records.append(format_exception(e, tb))

    if len(exception_records) > 5:
        exception_records.pop(0)


# mirrors modules/errors.py @ v1.10.1 (82a973c): report(message, *, exc_info=False)
def report(message: str, *, exc_info: bool = False) -> None:
    """Print an error message to stderr, with optional traceback (and record it in `reports`)."""
    reports.append({"message": message, "exc_info": exc_info, "exception": sys.exc_info()[1]})

    record_exception()

    for line in message.splitlines():
        print("***", line, file=sys.stderr)
    if exc_info:
        print(textwrap.indent(traceback.format_exc(), "    "), file=sys.stderr)
        print("---", file=sys.stderr)


# mirrors modules/errors.py @ v1.10.1 (82a973c): display(e, task, *, full_traceback=False)
# (the SD2-config hint upstream prints for one specific message is trimmed)
def display(e: Exception, task, *, full_traceback=False):
    reports.append({"message": f"{task or 'error'}: {type(e).__name__}", "exc_info": True, "exception": e})

    record_exception()

    print(f"{task or 'error'}: {type(e).__name__}", file=sys.stderr)
    te = traceback.TracebackException.from_exception(e)
    if full_traceback:
        te.stack = traceback.StackSummary(traceback.extract_stack()[:-2] + te.stack)
    print(*te.format(), sep="", file=sys.stderr)


already_displayed = {}


# mirrors modules/errors.py @ v1.10.1 (82a973c): display_once(e, task)
def display_once(e: Exception, task):
    record_exception()

    if task in already_displayed:
        return

    display(e, task)

    already_displayed[task] = 1


def clear_reports():
    """Stand-in only: reset what tests assert on."""
    reports.clear()
    exception_records.clear()
    already_displayed.clear()
