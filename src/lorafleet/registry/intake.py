"""Push's first step: copy the artifact into a private staging folder; every check then reads that copy.

The source is walked through directory file descriptors (`dir_fd`, openat): each name is looked up
once, relative to a folder already opened, and opened with O_NOFOLLOW, so a symlink is never
followed, at any depth, even one swapped in while the walk runs. Only regular files are copied (the
type is checked with fstat on the open descriptor, not on the name), each read once, hashed while it
is copied, and made read-only. Limits cap the number of files, the folder depth and the bytes copied.

After `stage` returns nothing is read from the source again: the staged folder is what the checks
see and what the store keeps.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from io import FileIO
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from lorafleet.artifact import MANIFEST_NAME
from lorafleet.bounded_json import MAX_JSON_BYTES, MAX_JSON_DEPTH, JsonLimits

_CHUNK = 8 * 2**20
JSON_SUFFIXES = (".json", ".jsonl")


class IntakeLimits(BaseModel):
    """How much a pushed artifact may hold; anything beyond is a refusal naming the file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_files: int = Field(1_000, gt=0, description="files in the whole artifact (PEFT writes about ten)")
    max_depth: int = Field(8, ge=0, description="folder nesting below the artifact's top folder")
    max_file_bytes: int = Field(32 * 2**30, gt=0, description="bytes in one file (a rank-256 adapter of a 70B model is about 7 GB)")
    max_total_bytes: int = Field(64 * 2**30, gt=0, description="bytes in all files together")
    max_json_bytes: int = Field(MAX_JSON_BYTES, gt=0, description="bytes in one .json or .jsonl file")
    max_json_depth: int = Field(MAX_JSON_DEPTH, gt=0, description="nesting of arrays and objects in one JSON document")

    @property
    def json_limits(self) -> JsonLimits:
        return JsonLimits(max_bytes=self.max_json_bytes, max_depth=self.max_json_depth)


@dataclass(frozen=True)
class StagedFile:
    """One copied file: its size and the sha256 of the bytes that were copied."""

    size: int
    sha256: str


@dataclass
class StagedArtifact:
    """The private copy: where it is, what it holds, and what could not be copied (each a refusal)."""

    root: Path
    files: dict[str, StagedFile] = field(default_factory=dict)  # POSIX relative path → copy
    problems: list[str] = field(default_factory=list)

    def checksums(self, include_manifest: bool = True) -> dict[str, str]:
        """Relative path → sha256 of every staged file (the manifest itself only when asked)."""
        return {rel: f.sha256 for rel, f in self.files.items() if include_manifest or rel != MANIFEST_NAME}


BeforeOpen = Callable[[str], None]  # called with a file's relative path just before it is opened (tests)


@contextmanager
def staging_area(parent: Path) -> Iterator[Path]:
    """A fresh folder under `parent` that only this user can enter (0700); removed on exit, whatever it holds."""
    parent.mkdir(parents=True, exist_ok=True)
    area = Path(tempfile.mkdtemp(prefix="push-", dir=parent))
    try:
        yield area
    finally:
        remove_tree(area)


def stage(source: Path, dest: Path, limits: IntakeLimits = IntakeLimits(), before_open: BeforeOpen | None = None) -> StagedArtifact:
    """Copy the regular files under `source` into `dest` (which must not exist yet); see the module docstring.

    Symlinks, special files and files beyond the limits are not copied; each becomes a problem in
    the result. `before_open` is a test hook: it runs just before each file is opened, so a test can
    swap that file for a symlink at the worst moment. Raises OSError when `source` cannot be opened.
    """
    root_fd = os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # the root may be a link the user named
    dest.mkdir(mode=0o700)
    walk = _Walk(StagedArtifact(Path(dest)), limits, before_open)
    try:
        walk.folder(root_fd, "", 0)
    finally:
        os.close(root_fd)
    return walk.result


def remove_tree(path: Path) -> None:
    """Delete `path` and everything under it, read-only folders included (store content is sealed 0555)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        for folder, _dirs, _files in os.walk(path):
            os.chmod(folder, 0o700)
        shutil.rmtree(path, ignore_errors=True)


class _Walk:
    """One staging walk's state: the result so far and the bytes copied."""

    def __init__(self, result: StagedArtifact, limits: IntakeLimits, before_open: BeforeOpen | None):
        self.result, self.limits, self.before_open = result, limits, before_open
        self.total_bytes = 0
        self.too_many = False

    def problem(self, text: str) -> None:
        self.result.problems.append(text)

    def folder(self, dir_fd: int, prefix: str, depth: int) -> None:
        with os.scandir(dir_fd) as entries:
            names = sorted(entry.name for entry in entries)
        for name in names:
            rel = prefix + name
            try:
                info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                self.problem(f"{rel}: disappeared while the artifact was being read")
                continue
            if stat.S_ISLNK(info.st_mode):
                self.problem(f"{rel}: is a symlink; an artifact holds only regular files (copy the target in)")
            elif stat.S_ISDIR(info.st_mode):
                self.subfolder(dir_fd, name, rel, depth + 1)
            elif stat.S_ISREG(info.st_mode):
                self.file(dir_fd, name, rel)
            else:
                self.problem(f"{rel}: is not a regular file")

    def subfolder(self, dir_fd: int, name: str, rel: str, depth: int) -> None:
        if depth > self.limits.max_depth:
            self.problem(f"{rel}: folders nested deeper than {self.limits.max_depth} levels")
            return
        try:
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError as exc:
            self.problem(f"{rel}: changed while the artifact was being read ({exc.strerror}); an artifact holds only regular files")
            return
        try:
            self.folder(fd, rel + "/", depth)
        finally:
            os.close(fd)

    def file(self, dir_fd: int, name: str, rel: str) -> None:
        if len(self.result.files) >= self.limits.max_files:
            if not self.too_many:  # said once, at the first file over the limit
                self.problem(f"{rel}: the artifact has more than {self.limits.max_files} files")
                self.too_many = True
            return
        if self.before_open is not None:
            self.before_open(rel)
        try:
            # O_NONBLOCK: opening a FIFO swapped in after the stat must not hang the push.
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                self.problem(f"{rel}: is a symlink; an artifact holds only regular files (copy the target in)")
            else:
                self.problem(f"{rel}: cannot be read ({exc.strerror})")
            return
        with open(fd, "rb", buffering=0) as source:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                self.problem(f"{rel}: is not a regular file")
                return
            cap, kind = (self.limits.max_json_bytes, "a JSON file") if rel.endswith(JSON_SUFFIXES) else (self.limits.max_file_bytes, "one file")
            if info.st_size > cap:
                self.problem(f"{rel}: {info.st_size:,} bytes, more than the {cap:,} {kind} may have")
                return
            if self.total_bytes + info.st_size > self.limits.max_total_bytes:
                self.problem(f"{rel}: the artifact's files hold more than {self.limits.max_total_bytes:,} bytes in all")
                return
            copied = self.copy(source, rel, cap)
        if copied is not None:
            self.result.files[rel] = copied
            self.total_bytes += copied.size

    def copy(self, source: FileIO, rel: str, cap: int) -> StagedFile | None:
        target = self.result.root / rel
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        digest, size = hashlib.sha256(), 0
        buffer = bytearray(_CHUNK)
        view = memoryview(buffer)
        out_fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with open(out_fd, "wb") as out:
            while n := source.readinto(buffer):
                size += n
                if size > cap:  # grew after the fstat: refuse rather than copy without end
                    self.problem(f"{rel}: grew past {cap:,} bytes while it was being copied")
                    break
                digest.update(view[:n])
                out.write(view[:n])
            os.fchmod(out.fileno(), 0o444)  # the checked bytes are the stored bytes: nobody edits them from here
        if size > cap:
            target.unlink()
            return None
        return StagedFile(size, digest.hexdigest())
