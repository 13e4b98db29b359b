"""What the gateway's tests share: a fresh database of the backend the suite runs on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from gateway.db import make_engine
from tests.conftest import ON_POSTGRES, postgres_server


def database_url(tmp_path: Path) -> str:
    """A fresh database of the backend the tests run on."""
    return postgres_server().create_database() if ON_POSTGRES else "sqlite:///" + str(tmp_path / "s.db")


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    made = make_engine(database_url(tmp_path))
    yield made
    made.dispose()
