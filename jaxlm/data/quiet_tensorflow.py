"""TensorFlow, imported once without its start-up notices.

Importing TensorFlow prints C++ INFO lines (oneDNN custom operations, CPU instruction sets)
before its logging is set up, so TF_CPP_MIN_LOG_LEVEL does not hold them back. `tensorflow()`
imports it with standard error sent to a temporary file, and replays that file when the import
fails, so that nothing which explains a failure is lost.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile


def tensorflow():
    """The `tensorflow` module (imported quietly the first time)."""
    if "tensorflow" not in sys.modules:
        with _stderr_kept_unless_failing():
            import tensorflow  # noqa: F401
    return sys.modules["tensorflow"]


@contextlib.contextmanager
def _stderr_kept_unless_failing():
    """File descriptor 2 (C++ and Python writes alike) goes to a temporary file within the
    block; the file's text is written to standard error if the block raises."""
    if sys.stderr is None:  # started without standard error: nothing to keep clean
        yield
        return
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # file descriptor 2 closed
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except BaseException:
            sys.stderr.flush()
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
