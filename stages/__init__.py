"""Stage scripts, run by dvc.yaml as `python -m stages.<name>` so that they import this checkout's `llmshrink`
(a queued experiment's copy under .dvc/tmp/exps, not an editable install's folder).

Under `python -m llmshrink.warm` (LLMSHRINK_WARM set), a stage process hands itself to the warm server, which runs
it in a fork with the heavy libraries already imported, and exits with its status.

A bad parameter or input (ValueError, FileNotFoundError, llmshrink.params.InputError) ends a stage with its message
alone, one line on stderr, unless LLMSHRINK_VERBOSE=1 asks for the traceback."""
import os
import sys


def report(kind: type[BaseException], error: BaseException, tb: object) -> None:
    """`sys.excepthook` of stage processes (the warm runner's forks call it too)."""
    from llmshrink.params import InputError

    if issubclass(kind, (ValueError, FileNotFoundError, InputError)) and os.environ.get("LLMSHRINK_VERBOSE") != "1":
        print(f"error: {' '.join(str(error).split())}  (LLMSHRINK_VERBOSE=1 shows the traceback)", file=sys.stderr)
    else:
        sys.__excepthook__(kind, error, tb)


sys.excepthook = report

if os.environ.get("LLMSHRINK_WARM") and sys.orig_argv[1:2] == ["-m"]:
    from llmshrink.warm import delegate

    delegate(os.environ["LLMSHRINK_WARM"], sys.orig_argv[2], sys.orig_argv[3:])
