"""Output folders: a marker says "this project wrote it", so replacing it can never destroy someone else's files.

Every stage writes its output folder whole and replaces the previous one (``core.io.atomic_directory``).
That is right for a folder the project wrote, and wrong for a folder a user pointed a stage at by mistake
(``output_dir=~/data``): the replacement would delete everything in it. So every output folder gets
:data:`MARKER`, and before any work a stage calls :func:`check_output_dir`: a missing or empty folder, or
one holding the marker, may be replaced; anything else is refused (exit 2) with a short list of what
would be lost, unless the user set ``overwrite=true``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from core.errors import ConfigError
from core.io import atomic_write_text

MARKER = ".safe-diffusion-dpo-output"
LISTED_ENTRIES = 8  # entries named in the refusal; the rest are counted


def write_marker(folder: str | Path, kind: str) -> Path:
    """Mark ``folder`` as written by this project (``kind`` says what it holds: "lora", "preference_set", ...)."""
    path = Path(folder) / MARKER
    atomic_write_text(path, json.dumps({"written_by": "safe-diffusion-dpo", "kind": kind}) + "\n")
    return path


def has_marker(folder: str | Path) -> bool:
    return (Path(folder) / MARKER).is_file()


def folder_entries(folder: str | Path, limit: int = LISTED_ENTRIES) -> tuple[list[str], int]:
    """(the first ``limit`` entry names, folders first (with a trailing "/"), then files, each by name; the
    total entry count). Folders lead because they usually hold the most."""
    entries = sorted(Path(folder).iterdir(), key=lambda p: (not p.is_dir(), p.name))
    names = [p.name + ("/" if p.is_dir() else "") for p in entries[:limit]]
    return names, len(entries)


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output_dir(folder: str | Path, overwrite: bool, setting: str,
                     keep: Iterable[tuple[str, str | Path | None]] = ()) -> None:
    """ConfigError unless the stage may replace ``folder`` when it finishes.

    ``setting`` names the config key that chose the folder (for the message). ``keep``: (setting, path) of
    folders the run reads or writes while it runs (its work folder, its data); the output folder must not
    hold them, whatever ``overwrite`` says, since replacing it at the end would delete them.
    """
    folder = Path(folder).resolve()
    for name, path in keep:
        if path is not None and _inside(Path(path).resolve(), folder):
            raise ConfigError(
                f"{name} ({path}) lies inside {setting} ({folder}), which is replaced when the run finishes: "
                f"it would be deleted. Give {setting} a folder of its own."
            )
    if not folder.exists():
        return
    if not folder.is_dir():
        raise ConfigError(f"{setting} {folder} is a file, not a folder; choose a folder path")
    if has_marker(folder):
        return
    names, total = folder_entries(folder)
    if total == 0 or overwrite:
        return
    listed = "\n".join(f"  {name}" for name in names)
    more = f"\n  ... and {total - len(names)} more" if total > len(names) else ""
    raise ConfigError(
        f"{setting} {folder} is not empty and was not written by this project (it has no {MARKER} file). "
        f"The run replaces its output folder when it finishes, which would delete these {total} entries:\n"
        f"{listed}{more}\n"
        f"Choose a new or empty folder for {setting}, or set overwrite=true to replace this one."
    )


def check_not_overlapping(out: str | Path, inputs: Iterable[str | Path], what: str) -> None:
    """ConfigError if ``out`` is an input or holds one: writing ``out`` replaces the folder, input included."""
    out = Path(out).resolve()
    for source in inputs:
        source = Path(source).resolve()
        if _inside(source, out) or _inside(out, source):
            raise ConfigError(
                f"{what}: the output {out} and the input {source} overlap; the output folder is replaced "
                "when it is written, which would delete the input. Write to a separate folder."
            )
