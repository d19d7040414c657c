"""Checks the MONAI model zoo runs on a submitted bundle, shared by the tests of the files that meet them."""

from __future__ import annotations

import shutil
from pathlib import Path

from pre_commit_hooks import end_of_file_fixer, pretty_format_json


def zoo_json_hooks_pass(paths, scratch: Path) -> bool:
    """The model zoo's pre-commit hooks for JSON files (its ``.pre-commit-config.yaml``): ``pretty-format-json
    --no-sort-keys --indent=4`` and ``end-of-file-fixer``, which rewrites in place, so it runs on copies."""
    scratch.mkdir(parents=True, exist_ok=True)
    copies = [str(shutil.copy(path, scratch / f"{i}.json")) for i, path in enumerate(paths)]
    return pretty_format_json.main(["--no-sort-keys", "--indent=4", *map(str, paths)]) == 0 \
        and end_of_file_fixer.main(copies) == 0
