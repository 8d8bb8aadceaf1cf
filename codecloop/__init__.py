"""codecloop: codec-in-the-loop training and measurement (JPEG, H.264) in DALI pipelines.

Import names live under this package: `codecloop.dali_pipes`, `codecloop.tasks`, `codecloop.trainers`,
`codecloop.launch`. An installed copy holds them inside this folder; in a source checkout they are the
repository's top-level folders, beside it, and are found there (so a checkout runs without installing, as
on a bare GPU machine). Nothing named `tasks` or `launch` is ever imported from the top level, so a
user's own modules of those names cannot collide with ours.
"""

from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parent.parent
if not (Path(__file__).parent / "launch").is_dir() and (_CHECKOUT / "launch" / "cli.py").is_file():
    __path__.append(str(_CHECKOUT))
