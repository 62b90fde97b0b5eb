"""Stage scripts, run by dvc.yaml as `python -m stages.<name>` so that they import this checkout's `llmshrink`
(a queued experiment's copy under .dvc/tmp/exps, not an editable install's folder)."""
