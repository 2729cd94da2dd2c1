"""Where an export's bytes go: stdout, a device or FIFO written in place, a file replaced atomically."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
import sys

__all__ = ["STDOUT", "Target", "is_stdout", "stdout_gone"]

# How errors name `-`.
STDOUT = "standard output"

# /dev/stdout, /dev/fd/N, /proc/self/fd/N: a file this process already has open, at its offset.
_OWN_FD = re.compile(r"/(?:dev|proc/(?:self|thread-self|(?P<pid>\d+)))/fd/(?P<fd>\d+)")


def _named(e: OSError, name: str) -> OSError:
    """The error naming the path the user gave: a failed write names no file, a temporary one is not theirs."""
    return OSError(e.errno, e.strerror, name) if e.errno is not None else e


def _own_fd(path: str) -> int | None:
    """The descriptor a path leads to (through symlinks) when it names one of this process's open files."""
    current = os.path.abspath(path)
    for _ in range(40):
        m = _OWN_FD.fullmatch(current)
        if m and (m["pid"] is None or int(m["pid"]) == os.getpid()):
            return int(m["fd"])
        if not os.path.islink(current):
            return None
        current = os.path.normpath(os.path.join(os.path.dirname(current), os.readlink(current)))
    return None


def is_stdout(output: str) -> bool:
    """Whether output names standard output: `-`, /dev/stdout, /dev/fd/1, /proc/self/fd/1."""
    return output == "-" or _own_fd(output) == 1


class Target:
    """An export's destination, opened before anything is written.

    `-` is stdout. A path that is (or leads through symlinks to) a character or block device, a
    FIFO or one of this process's open files is written in place, never replaced: /dev/full
    stays a device, a FIFO's reader gets the bytes. Anything else (a regular file, or none yet)
    is written to a temporary file beside the symlinks' final target, with the target's mode,
    and renamed onto it only when complete: the target is replaced atomically, a symlink stays a
    symlink. Every OSError names the path as the user gave it.
    """

    def __init__(self, output: str) -> None:
        self.name = STDOUT if output == "-" else output
        self._stdout = output == "-"
        self._fd: int | None = None
        self._temp: str | None = None  # renamed onto _final by place()
        self._final = ""
        try:
            if not self._stdout:
                self._open(output)
        except OSError as e:
            self.discard()
            raise _named(e, self.name) from e
        except BaseException:
            self.discard()
            raise

    def _open(self, output: str) -> None:
        own = _own_fd(output)
        if own is not None:
            self._fd = os.dup(own)
            return
        try:
            st: os.stat_result | None = os.stat(output)
        except FileNotFoundError:
            st = None  # a new file, or a symlink to one not there yet
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), output)
        if st is not None and not stat.S_ISREG(st.st_mode):
            # A device or a FIFO (open waits for its reader; a socket is refused). No O_CREAT:
            # should it vanish meanwhile, no regular file takes its place.
            fd = os.open(output, os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                self._fd = fd
                return
            os.close(fd)  # it became a regular file meanwhile: replaced like one
            st = os.stat(output)
        self._final = os.path.realpath(output)
        directory, base = os.path.split(self._final)
        temp = os.path.join(directory, f".{base}.{secrets.token_hex(4)}.partial")
        # O_EXCL: never through a link someone planted under the temporary name.
        self._fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        self._temp = temp
        if st is not None:
            os.fchmod(self._fd, st.st_mode & 0o777)

    @property
    def replaces_file(self) -> bool:
        """Whether this is a regular file, written under a temporary name and renamed onto its own."""
        return bool(self._final)

    def write(self, data: bytes | bytearray) -> None:
        """Write all of data (to stdout: flushed, so a closed pipe shows at once)."""
        try:
            if self._stdout:
                sys.stdout.buffer.write(data)
                sys.stdout.buffer.flush()
                return
            assert self._fd is not None
            done = 0
            while done < len(data):
                done += os.write(self._fd, data if done == 0 else data[done:])
        except OSError as e:
            raise _named(e, self.name) from e

    def finish(self) -> None:
        """Complete the writing: a new file is synced to disk; whatever was opened is closed."""
        try:
            if self._fd is not None:
                fd = self._fd
                if self._temp is not None:
                    os.fsync(fd)
                self._fd = None
                os.close(fd)
        except OSError as e:
            raise _named(e, self.name) from e

    def place(self) -> None:
        """Put a finished new file under its name: one rename onto the target."""
        if self._temp is not None:
            try:
                os.replace(self._temp, self._final)
            except OSError as e:
                raise _named(e, self.name) from e
            self._temp = None

    def discard(self) -> None:
        """Close what is still open and remove a temporary file never placed (harmless when done)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        if self._temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._temp)
            self._temp = None


def stdout_gone() -> None:
    """Point stdout at /dev/null once its reader went away, so nothing buffered fails again at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no file descriptor (CliRunner): nothing buffered to lose
        pass
