"""The run-cache through a DVC remote, so another machine reuses a stage's results instead of rerunning it.

    python -m llmshrink.sweep push-run-cache [-r REMOTE]
"""
from __future__ import annotations


def push(remote: str | None = None) -> tuple[int, int]:
    """`dvc push --run-cache` plus the outputs its entries point at; returns (entries, objects pushed). DVC 3's own
    push sends the entries but only the outputs of the pushed revisions, and never a git-tracked (`cache: false`)
    output such as each stage's metrics file: another machine then finds an entry whose objects no remote has and
    reruns the stage. Its `dvc exp run --pull` / `dvc repro --pull` fetches them."""
    from dvc.repo import Repo

    repo = Repo()
    entries = repo.stage_cache.push(remote)
    pushed = failed = 0
    for objs in repo.stage_cache.get_used_objs(entries).values():
        result = repo.cloud.push(objs, remote=remote)
        pushed, failed = pushed + len(result.transferred), failed + len(result.failed)
    if failed:
        raise SystemExit(f"{failed} objects of the run-cache are not in the local cache; push from the machine that ran them")
    return len(entries), pushed
