"""Test setup: 8 simulated CPU devices and a small corpus of real English text."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def real_text_files(tmp_path_factory) -> list[Path]:
    """The Python documentation's topic pages (shipped with CPython as pydoc_data), one file each.

    79 real English documents, 0.46 MB of prose and code examples.
    """
    from pydoc_data.topics import topics

    folder = tmp_path_factory.mktemp("pydoc_topics")
    files = []
    for name, text in sorted(topics.items()):
        path = folder / f"{name}.txt"
        path.write_text(text, encoding="utf-8")
        files.append(path)
    return files
