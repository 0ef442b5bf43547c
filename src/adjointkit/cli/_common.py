"""What `compare` and `train` share: checking where they will write."""

import os
import pathlib
import tempfile


def unwritable(flag: str, folder: pathlib.Path) -> str | None:
    """Why `folder` cannot be created or written to, in one line, or `None` when it
    can.

    Checked before a command does any work, so that a run fails in its first second
    rather than losing its results at the end. Nothing is left behind: the folder
    is not created here (a run that stops early for another reason leaves no empty
    one); instead a temporary file is made and removed in the folder, or, where it
    does not exist yet, in its nearest existing parent, where it would be created.
    """
    folder = pathlib.Path(folder)
    existing = folder
    while not os.path.lexists(existing):
        existing = existing.parent
    if not existing.is_dir():
        if existing == folder:
            return f"{flag} {folder} exists and is not a folder"
        return f"{flag} {folder} cannot be created: {existing} is not a folder"
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".adjointkit-probe-"):
            pass
    except OSError as e:
        where = "" if existing == folder else f" (to create {folder} in it)"
        return f"{flag} {folder}: cannot write to {existing}{where}: {e.strerror or e}"
    return None
