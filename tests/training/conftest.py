"""Tiny seeded StableSR pipelines and HR image folders for the training tests (CPU, seconds)."""

from __future__ import annotations

import pytest

from tiny_models import write_hr_images


@pytest.fixture(scope="session")
def hr_folder(tmp_path_factory):
    return write_hr_images(tmp_path_factory.mktemp("hr"))
