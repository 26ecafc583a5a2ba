"""A command's output folder: claimed before any work, written only with what the command creates.

Every command that writes a folder (``predict``, ``evaluate``, ``calibrate``, ``train``, ``synth``,
``demo``) goes through :class:`OutputFolder`, which enforces one set of rules:

- ``--out`` must be a folder (or not exist yet), and must not be or hold one of the command's
  inputs.
- A lock file (``.mambacontrol.lock``) keeps a second command from writing into the same folder
  at the same time; a lock left by a process that no longer runs on this host is taken over.
- A marker (``.mambacontrol-output.json``, written with the first entry) records which command
  owns the folder and every entry (top-level file or folder) it created. A non-empty folder is
  refused unless it is the same command's own earlier output and the command resumes (batch
  predict, evaluate, train) or ``--overwrite`` is given. ``--overwrite`` replaces only entries the
  marker lists; anything else in the folder is never replaced or deleted.
- Work is staged in hidden ``.staging-*`` folders inside ``--out`` and moved into place one entry
  at a time (a rename), so a failure leaves earlier entries as they were and nothing
  half-written; a folder the command created and never filled is removed again. An entry is
  recorded in the marker just before its rename, so a run killed in between leaves no entry
  that the marker does not list (a listed entry that is absent is simply dropped).

Several writers of one batch (``predict --manifest``, ``evaluate`` under ``accelerate launch``,
or job-array parts with ``--num-parts K --part-id I``) share one folder:

- The launch's main process claims the folder (:meth:`OutputFolder.claim`); the launch's other
  processes :meth:`OutputFolder.join` that claim once it holds (they take no lock of their own).
- A job-array part claims with ``part="part-I-of-K"``: its lock is ``.mambacontrol.<part>.lock``,
  so parts run side by side, while a whole-folder claim and a part claim refuse each other (and
  parts of another K are refused).
- Only a whole-folder claim's main process writes the marker. Every other writer records what it
  commits in its own side marker, ``.mambacontrol-output.<writer>.json``; the owned entries are
  the union of the marker and the side markers (of the same command). A whole-folder claim folds
  the side markers into the marker when it starts, and :meth:`OutputFolder.fold_writers` does so
  at the end of a launch.
- Each writer stages in its own ``.staging-<writer>.*`` folders; a part's claim removes only its
  own stale ones.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from mambacontrol.errors import InputFileError
from mambacontrol.io.atomic import remove_path, replace_dir, write_text_atomic

MARKER = ".mambacontrol-output.json"
LOCK = ".mambacontrol.lock"
STAGING = ".staging-"
_OWN_PREFIX = ".mambacontrol"
"""Every file of the folder's own bookkeeping (marker, side markers, locks) starts with it."""


def _side_marker(writer: str) -> str:
    return f".mambacontrol-output.{writer}.json"


def _part_lock(part: str) -> str:
    return f".mambacontrol.{part}.lock"


def _is_own_file(name: str) -> bool:
    return name.startswith(_OWN_PREFIX)


class OutputFolderError(InputFileError):
    """``--out`` cannot be used: a file, an input inside it, foreign content, or another writer."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def safe_name(text: str, max_len: int = 120) -> str:
    """A file name made from an id: letters, digits, ``-``, ``_`` and ``.`` kept, anything else
    ``_``; never empty, ``.``, ``..`` or hidden (a leading ``.`` becomes ``_``)."""
    name = "".join(c if (c.isascii() and c.isalnum()) or c in "-_." else "_" for c in str(text))
    name = name[:max_len]
    if not name:
        return "_"
    if name.startswith("."):
        name = "_" + name[1:]
    return name


def unique_names(ids: Iterable[tuple[str, str]], what: str = "id") -> dict[str, str]:
    """``{id: safe_name(id)}`` for ``(where, id)`` pairs; two ids that give one name are refused.

    Args:
        ids: ``(where, id)``, where ``where`` names the id's origin for the error (e.g. ``row 3``).
        what: what the ids are, for the error (e.g. ``image_uid``).

    Raises:
        InputFileError: naming both rows when two different ids map to one file name (e.g.
            ``scan/1`` and ``scan_1``; names are compared without case, for case-blind disks).
    """
    names: dict[str, str] = {}
    seen: dict[str, tuple[str, str]] = {}
    for where, ident in ids:
        if ident in names:
            continue
        name = safe_name(ident)
        key = name.lower()
        if key in seen and seen[key][1] != ident:
            other_where, other = seen[key]
            raise InputFileError(
                f"{what} '{other}' ({other_where}) and '{ident}' ({where}) give the same file name "
                f"'{name}'; make the ids differ in letters or digits")
        seen[key] = (where, ident)
        names[ident] = name
    return names


class OutputFolder:
    """A claimed output folder (see the module docstring). Use as a context manager:

        with OutputFolder.claim(out, "predict", inputs=[scan], overwrite=False) as folder:
            folder.check_free(["summary.json"])
            with folder.staging() as tmp:
                ...write into tmp...
                folder.commit(tmp / "summary.json", "summary.json")

    Attributes:
        path: the folder.
        command: the command that owns it.
        entries: top-level names this command created there (from the markers).
        created: whether this claim created the folder.
        writer: None for the whole folder's main writer (it writes the marker); else this
            writer's name (a job-array part, a launch's other process), whose records go to its
            side marker.
        part: the job-array part this claim is for (None: the whole folder).
    """

    def __init__(self, path: Path, command: str, created: bool, writer: str | None = None,
                 part: str | None = None):
        self.path = path
        self.command = command
        self.created = created
        self.writer = writer
        self.part = part
        self.entries: set[str] = set()
        self._lock_name: str | None = None

    # ---- claiming -------------------------------------------------------------------------
    @classmethod
    def claim(cls, path: str | os.PathLike, command: str, *,
              inputs: Iterable[str | os.PathLike | None] = (), overwrite: bool = False,
              resume: bool = False,
              earlier_run: Callable[[Path], bool] | None = None,
              part: str | None = None) -> OutputFolder:
        """Check ``path`` and take it for ``command``.

        Args:
            path: the output folder (created when missing).
            command: the owning command, e.g. ``predict``.
            inputs: files and folders the command reads; none that exists may lie inside
                ``path``.
            overwrite: allow replacing the command's own earlier outputs, and writing beside
                foreign files (which are never replaced).
            resume: allow continuing the command's own earlier output (batch predict, evaluate,
                train).
            earlier_run: for a command that owns its whole folder (``train``): recognises a
                folder without a marker as the command's own (written before markers existed,
                or copied), whose every entry is then the command's.
            part: a job-array part's label (``part-<I>-of-<K>``): the claim covers that part's
                writes only, beside the other parts (see the module docstring).

        Raises:
            OutputFolderError: one line naming the folder, the problem and the fix.
        """
        p = Path(path)
        if p.exists() and not p.is_dir():
            raise OutputFolderError(f"--out {p}: is a file, not a folder; give a folder path "
                                    "(it is created when missing)")
        _check_inputs(p, inputs)
        created = not p.exists()
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputFolderError(f"--out {p}: cannot create the folder ({exc.strerror}); "
                                    "choose a writable location") from None
        folder = cls(p, command, created, writer=None if part is None else f"{part}.rank-0",
                     part=part)
        folder._lock(LOCK if part is None else _part_lock(part))
        try:
            folder._check_other_writers()
            folder._adopt(overwrite, resume, earlier_run)
        except BaseException:
            folder.release(failed=True)
            raise
        return folder

    @classmethod
    def join(cls, path: str | os.PathLike, command: str, writer: str,
             part: str | None = None) -> OutputFolder:
        """Write into a folder that this launch's main process has claimed (and holds) for
        ``command``: no lock of its own; what it commits is recorded in its side marker.

        Args:
            writer: this process's name among the folder's writers, unique in the launch.
            part: the part the main process claimed (None: the whole folder).
        """
        folder = cls(Path(path), command, created=False,
                     writer=writer if part is None else f"{part}.{writer}", part=part)
        marker = folder._read_markers()
        if marker is None or marker["command"] != command:
            marker = {"entries": []}
        folder.entries = set(marker["entries"]) & set(folder._present())
        return folder

    def _lock(self, name: str) -> None:
        lock = self.path / name
        record = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._lock_holder(lock)
                if holder is None:  # stale: its process is gone
                    with contextlib.suppress(FileNotFoundError):
                        lock.unlink()
                    continue
                raise self._busy(lock, holder) from None
            except OSError as exc:
                raise OutputFolderError(f"--out {self.path}: cannot write there ({exc.strerror}); "
                                        "choose a writable --out") from None
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(record, fh)
            self._lock_name = name
            return
        raise OutputFolderError(f"--out {self.path}: could not take the lock {lock}; try again")

    def _busy(self, lock: Path, holder: dict) -> OutputFolderError:
        return OutputFolderError(
            f"--out {self.path}: another `mambacontrol {holder.get('command', '?')}` (pid "
            f"{holder.get('pid', '?')} on {holder.get('host', '?')}) is writing there; "
            "wait for it to finish or choose another --out (if none runs, delete "
            f"{lock})")

    def _check_other_writers(self) -> None:
        """Refuse a live lock that cannot share the folder with this claim: any part's, for a
        whole-folder claim; the whole folder's or another K's part, for a part's claim (both
        claims take their own lock first, so of two that start together one sees the other)."""
        locks = [self.path / LOCK] if self.part is not None else []
        locks += [p for p in self.path.glob(_part_lock("*")) if p.name != self._lock_name]
        k = None if self.part is None else self.part.rsplit("-of-", 1)[-1]
        for lock in locks:
            if not lock.is_file() or (k is not None and lock.name != LOCK
                                      and lock.name.endswith(f"-of-{k}.lock")):
                continue
            holder = self._lock_holder(lock)
            if holder is not None:
                raise self._busy(lock, holder)

    @staticmethod
    def _lock_holder(lock: Path) -> dict | None:
        """The lock's record, or None when it was left by a process gone from this host."""
        try:
            holder = json.loads(lock.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(holder, dict):
            return {}
        pid = holder.get("pid")
        if holder.get("host") == socket.gethostname() and isinstance(pid, int):
            if pid != os.getpid() and not _pid_alive(pid):
                return None
        return holder

    def _present(self) -> list[str]:
        """The folder's entries: everything but its bookkeeping and staging."""
        return [e for e in sorted(os.listdir(self.path))
                if not _is_own_file(e) and not e.startswith(STAGING)]

    def _adopt(self, overwrite: bool, resume: bool,
               earlier_run: Callable[[Path], bool] | None) -> None:
        marker = self._read_markers()
        present = self._present()
        if marker is not None and not present:  # everything it listed is gone: an empty folder
            marker = None
        if marker is None and present and earlier_run is not None and earlier_run(self.path):
            marker = {"command": self.command, "entries": present}
        if marker is None and not present:  # new, or left empty by a run of ours that died
            self._remove_stale_staging()
        if marker is None:
            if present and not overwrite:
                raise OutputFolderError(
                    f"--out {self.path}: is not empty and holds no mambacontrol output "
                    f"({len(present)} entries, e.g. '{present[0]}'); choose a new or empty --out, "
                    "or pass --overwrite to write beside them (nothing there is replaced or "
                    "deleted)")
        elif marker["command"] != self.command:
            raise OutputFolderError(
                f"--out {self.path}: holds the output of `mambacontrol {marker['command']}`, "
                f"not of `{self.command}`; choose another --out")
        else:
            self.entries = set(marker["entries"]) & set(present)
            if self.entries and not (resume or overwrite):
                raise OutputFolderError(
                    f"--out {self.path}: holds an earlier `mambacontrol {self.command}` output; "
                    "pass --overwrite to replace it, or choose another --out")
            self._remove_stale_staging()  # left by a run of ours that was killed
            if self.writer is None:
                self.fold_writers()

    def _remove_stale_staging(self) -> None:
        """Staging folders left by a killed run: all of them for a whole-folder claim, the
        part's own for a part's claim (the other parts may be writing)."""
        mine = STAGING if self.part is None else f"{STAGING}{self.part}."
        for stale in self.path.glob(f"{mine}*"):
            remove_path(stale)

    def _read_markers(self) -> dict | None:
        """The marker and the side markers as one ``{command, entries}`` (None: none there)."""
        paths = [self.path / MARKER, *sorted(self.path.glob(_side_marker("*")))]
        markers = [m for m in (self._read_marker(p) for p in paths) if m is not None]
        if not markers:
            return None
        other = next((m for m in markers if m["command"] != self.command), markers[0])
        return {"command": other["command"],
                "entries": sorted({e for m in markers for e in m["entries"]})}

    def _read_marker(self, path: Path) -> dict | None:
        if not path.is_file():
            return None
        try:
            marker = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            marker = None
        if (not isinstance(marker, dict) or not isinstance(marker.get("command"), str)
                or not isinstance(marker.get("entries"), list)):
            raise OutputFolderError(f"--out {self.path}: its {path.name} is unreadable; choose "
                                    "another --out (or delete the marker if the folder is yours)")
        return marker

    def _write_marker(self) -> None:
        name = MARKER if self.writer is None else _side_marker(self.writer)
        write_text_atomic(self.path / name, json.dumps(
            {"command": self.command, "entries": sorted(self.entries)}, indent=1) + "\n")

    def fold_writers(self) -> None:
        """Fold the side markers into the marker (the whole folder's main writer only, when no
        other writer runs: at its claim, and after the launch's processes have finished)."""
        if self.writer is not None:
            raise ValueError("only the whole folder's main writer folds the side markers")
        sides = sorted(self.path.glob(_side_marker("*")))
        marker = self._read_markers()
        if marker is not None and marker["command"] == self.command:
            self.entries |= set(marker["entries"]) & set(self._present())
        if self.entries:
            self._write_marker()
        for side in sides:
            side.unlink(missing_ok=True)

    # ---- writing ----------------------------------------------------------------------------
    def owns(self, name: str) -> bool:
        """Whether ``name`` (a top-level entry) was created by this command."""
        return name in self.entries

    def check_free(self, names: Iterable[str]) -> None:
        """Raise unless every name is absent or the command's own (call before expensive work)."""
        for name in names:
            _check_entry_name(name)
            target = self.path / name
            if (target.exists() or target.is_symlink()) and name not in self.entries:
                raise OutputFolderError(
                    f"{target}: exists and was not written by `mambacontrol {self.command}`; it is "
                    "never replaced: move it away or choose another --out")

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh hidden folder inside ``path`` to write into; removed afterwards (what was
        committed from it has moved out)."""
        tmp = self.path / f"{self._staging_prefix()}{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            yield tmp
        finally:
            remove_path(tmp)

    def _staging_prefix(self) -> str:
        return STAGING if self.writer is None else f"{STAGING}{self.writer}."

    def commit(self, source: Path, name: str) -> Path:
        """Move ``source`` (a staged file or folder) into place as ``name``, replacing only the
        command's own earlier entry of that name."""
        self.check_free([name])
        self.record(name)
        return replace_dir(source, self.path / name,
                           aside=self.path / f"{self._staging_prefix()}old-{uuid.uuid4().hex[:8]}")

    def commit_file(self, source: Path, relative: Path) -> Path:
        """Move a staged file to ``relative`` (a path inside the folder, e.g. a BIDS derivative
        ``sub-01/ses-bl/anat/x.nii.gz``) whose top-level entry is absent or the command's own;
        a file already there is replaced."""
        rel = Path(relative)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise ValueError(f"'{relative}' is not a path inside the output folder")
        self.check_free([rel.parts[0]])
        target = self.path / rel
        self.record(rel.parts[0])
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
        return target

    def record(self, name: str) -> None:
        """Note that ``name`` (written by this command, e.g. through a sub-command) is its own."""
        _check_entry_name(name)
        if name not in self.entries:
            self.entries.add(name)
            self._write_marker()

    def record_present(self) -> None:
        """Record every entry now in the folder as the command's own: for a command that owns
        its whole folder (``train``: the claim refused any foreign content)."""
        self.entries.update(self._present())
        self._write_marker()

    def remove_own(self, keep: Iterable[str]) -> None:
        """Delete this command's own entries that are not in ``keep`` (an earlier run's leftovers,
        e.g. horizons not predicted again)."""
        keep = set(keep)
        gone = [e for e in self.entries if e not in keep]
        for name in gone:
            remove_path(self.path / name)
            self.entries.discard(name)
        if gone:
            self._write_marker()

    # ---- releasing --------------------------------------------------------------------------
    def release(self, failed: bool = False) -> None:
        """Drop the lock. After a failure, a folder this claim created and never filled is
        removed (a part's claim removes only its own files: the other parts may be writing)."""
        if failed and self.created and not self.entries:
            own = [self._lock_name] if self.part is not None else [MARKER, LOCK]
            for name in filter(None, own):
                with contextlib.suppress(FileNotFoundError):
                    (self.path / name).unlink()
            self._remove_stale_staging()
            self._lock_name = None
            with contextlib.suppress(OSError):
                self.path.rmdir()  # only when empty: never deletes anything else
            return
        if self._lock_name is not None:
            with contextlib.suppress(FileNotFoundError):
                (self.path / self._lock_name).unlink()
            self._lock_name = None

    def __enter__(self) -> OutputFolder:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.release(failed=exc_type is not None)


def _check_inputs(path: Path, inputs: Iterable[str | os.PathLike | None]) -> None:
    """Refuse an output folder that is or holds one of the inputs."""
    root = path.resolve()
    for src in inputs:
        if src is None or not Path(src).exists():  # e.g. a Hub model id, not a path
            continue
        s = Path(src).resolve()
        if s == root or s.is_relative_to(root):
            raise OutputFolderError(f"--out {path}: holds the input {src}; outputs never go where "
                                    "the inputs are: choose another --out")


def _check_entry_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or os.sep in name or _is_own_file(name) \
            or name.startswith(STAGING):
        raise ValueError(f"'{name}' is not a plain entry name of an output folder")
