"""Stage scripts, run by dvc.yaml as `python -m stages.<name>` so that they import this checkout's `llmshrink`
(a queued experiment's copy under .dvc/tmp/exps, not an editable install's folder).

Under `python -m llmshrink.warm` (LLMSHRINK_WARM set), a stage process hands itself to the warm server, which runs
it in a fork with the heavy libraries already imported, and exits with its status."""
import os
import sys

if os.environ.get("LLMSHRINK_WARM") and sys.orig_argv[1:2] == ["-m"]:
    from llmshrink.warm import delegate

    delegate(os.environ["LLMSHRINK_WARM"], sys.orig_argv[2], sys.orig_argv[3:])
