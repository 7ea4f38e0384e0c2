"""Run the storage contract against MemoryStorage, and check the contract suite itself.

The checks of the suite run it in a child pytest process against variants of
MemoryStorage: under anyio instead of pytest-asyncio, and with a broken rule,
which the suite must report.
"""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

import fantasma
from fantasma.storage.base import Storage
from fantasma.storage.memory import MemoryStorage
from fantasma_testing.contract import StorageContract


class TestMemoryStorage(StorageContract):
    pytestmark = pytest.mark.asyncio

    @pytest_asyncio.fixture
    async def storage(self) -> AsyncIterator[Storage]:
        storage = MemoryStorage()
        await storage.start()
        yield storage
        await storage.close()


_REPO_ROOT = Path(fantasma.__file__).resolve().parent.parent

# Runs in a child pytest with no ini file, so it sets only what it needs.
_CHILD_HEADER = """
from __future__ import annotations

import pytest
import pytest_asyncio

from fantasma.storage.memory import MemoryStorage
from fantasma_testing.contract import NOW, StorageContract
"""


def _run_child_suite(pytester: pytest.Pytester, body: str) -> pytest.RunResult:
    pytester.makepyfile(test_child=_CHILD_HEADER + textwrap.dedent(body))
    pytester.makeini(
        """
        [pytest]
        asyncio_default_fixture_loop_scope = function
        filterwarnings = error
        """
    )
    # -v lists every test with its outcome, and -rf adds a FAILED line per
    # failure, so the checks can look for test names in the output. The
    # fantasma plugin is left out because the contract does not use it.
    return pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "-p",
        "no:fantasma",
        "--rootdir",
        str(pytester.path),
        "-v",
        "-rf",
    )


@pytest.fixture
def child_pythonpath(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let the child pytest import fantasma from this checkout."""
    monkeypatch.setenv("PYTHONPATH", str(_REPO_ROOT))


@pytest.mark.usefixtures("child_pythonpath")
def test_contract_runs_under_anyio(pytester: pytest.Pytester) -> None:
    # The anyio subclass comes first so that, if anyio's marks leaked into
    # the shared test functions, the pytest-asyncio subclass would request
    # anyio_backend and its autouse check would fail.
    result = _run_child_suite(
        pytester,
        """
        class TestAnyio(StorageContract):
            pytestmark = pytest.mark.anyio

            @pytest.fixture
            async def storage(self):
                storage = MemoryStorage()
                await storage.start()
                yield storage
                await storage.close()

        class TestAsyncio(StorageContract):
            pytestmark = pytest.mark.asyncio

            @pytest.fixture(autouse=True)
            def check_not_anyio(self, request):
                assert "anyio_backend" not in request.fixturenames

            @pytest_asyncio.fixture
            async def storage(self):
                yield MemoryStorage()
        """,
    )

    outcomes = result.parseoutcomes()
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    assert outcomes["passed"] > 200
    assert "skipped" not in outcomes


@pytest.mark.usefixtures("child_pythonpath")
def test_contract_collects_only_subclasses(pytester: pytest.Pytester) -> None:
    result = _run_child_suite(
        pytester,
        """
        class TestBase(StorageContract):
            __test__ = False

        class TestMemory(TestBase):
            pytestmark = pytest.mark.asyncio

            @pytest_asyncio.fixture
            async def storage(self):
                yield MemoryStorage()
        """,
    )

    collected = result.stdout.str()
    assert result.ret == pytest.ExitCode.OK, collected
    assert "TestBase" not in collected
    assert "test_connection_loss" not in collected


@pytest.mark.usefixtures("child_pythonpath")
def test_contract_collects_connection_tests(pytester: pytest.Pytester) -> None:
    # Memory has no connection to break, so the hook does nothing and both
    # tests pass. What is checked here is that overriding it collects them.
    result = _run_child_suite(
        pytester,
        """
        class TestWithHook(StorageContract):
            pytestmark = pytest.mark.asyncio

            @pytest_asyncio.fixture
            async def storage(self):
                yield MemoryStorage()

            async def break_connection(self, storage):
                pass
        """,
    )

    output = result.stdout.str()
    assert result.ret == pytest.ExitCode.OK, output
    assert "test_connection_loss_read_recovers PASSED" in output
    assert "test_connection_loss_write_all_or_nothing PASSED" in output


@pytest.mark.usefixtures("child_pythonpath")
def test_contract_detects_broken_backend(pytester: pytest.Pytester) -> None:
    # Two rules broken on purpose: claims take one job more than the limit,
    # and a lease that expires exactly at now is kept.
    result = _run_child_suite(
        pytester,
        """
        from datetime import timedelta

        class OffByOneStorage(MemoryStorage):
            async def claim_jobs(self, *, node_id, now, limit, lease_until):
                return await super().claim_jobs(
                    node_id=node_id, now=now, limit=limit + 1, lease_until=lease_until
                )

            async def requeue_expired_jobs(self, *, now):
                return await super().requeue_expired_jobs(
                    now=now - timedelta(microseconds=1)
                )

        class TestBroken(StorageContract):
            pytestmark = pytest.mark.asyncio

            @pytest_asyncio.fixture
            async def storage(self):
                yield OffByOneStorage()
        """,
    )

    # Summary lines read "FAILED test_child.py::TestBroken::test_name - reason".
    failed = {
        line.split("::")[-1].split(" ")[0]
        for line in result.stdout.lines
        if line.startswith("FAILED ")
    }
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert "test_claim_respects_limit" in failed
    assert "test_claim_limit_zero_claims_nothing" in failed
    assert "test_requeue_lease_expiring_now" in failed
    assert "test_job_fields_round_trip" not in failed
